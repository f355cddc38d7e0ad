"""Container limits and the sizes they are written in, shared by the task contract and the host's policy.

A task asks for resources and the config sets their defaults and ceilings in
the same shape, so both read them through this one small module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from docker.utils import parse_bytes


def parse_size(value: int | str | None) -> int | None:
    """A size as the schemas allow it (bytes, or Docker's ``512m``/``2g`` notation) in bytes."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return int(parse_bytes(value))


@dataclass(frozen=True)
class HostCapacity:
    """The host a percentage in the config is a share of.

    The shipped defaults are shares ("50%" of memory), because one fixed figure
    is either no protection on a large host or a refusal of everything on a
    small one; a task that names no memory must still not be able to take the
    host's.
    """

    cpus: int
    memory: int

    @classmethod
    def measure(cls) -> "HostCapacity":
        return cls(
            cpus=len(os.sched_getaffinity(0)),
            memory=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        )


def _share(value: str, total: float) -> float:
    return float(value[:-1]) / 100 * total


def _cpus(value: float | str | None, host: HostCapacity | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if host is None:
            raise ValueError(f"cpus: {value!r} is a share of a host, and none was given")
        # Docker takes hundredths of a CPU, and refuses less than one.
        return max(0.01, round(_share(value, host.cpus), 2))
    return float(value)


def _memory(value: int | str | None, host: HostCapacity | None) -> int | None:
    if isinstance(value, str) and value.endswith("%"):
        if host is None:
            raise ValueError(f"memory: {value!r} is a share of a host, and none was given")
        return int(_share(value, host.memory))
    return parse_size(value)


@dataclass(frozen=True)
class Resources:
    """Container limits in Docker's units; None means "not limited"."""

    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None
    shm_size: int | None = None
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], host: HostCapacity | None = None) -> "Resources":
        """``host`` resolves the config's percentages (``cpus: "100%"``); a task's document has none."""
        ulimits: dict[str, tuple[int, int]] = {}
        for name, value in (doc.get("ulimits") or {}).items():
            if isinstance(value, dict):
                ulimits[name] = (int(value["soft"]), int(value["hard"]))
            else:
                ulimits[name] = (int(value), int(value))
        return cls(
            cpus=_cpus(doc.get("cpus"), host),
            memory=_memory(doc.get("memory"), host),
            pids=int(doc["pids"]) if doc.get("pids") is not None else None,
            shm_size=parse_size(doc.get("shm_size")),
            ulimits=ulimits,
        )

    def overlaid_by(self, other: "Resources") -> "Resources":
        """``other``'s values where it has them, ours elsewhere."""
        return Resources(
            cpus=other.cpus if other.cpus is not None else self.cpus,
            memory=other.memory if other.memory is not None else self.memory,
            pids=other.pids if other.pids is not None else self.pids,
            shm_size=other.shm_size if other.shm_size is not None else self.shm_size,
            ulimits={**self.ulimits, **other.ulimits},
        )
