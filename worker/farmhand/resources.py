"""Container limits and the sizes they are written in, shared by the task contract and the host's policy.

A task asks for resources and the config sets their defaults and ceilings in
the same shape, so both read them through this one small module.
"""

from __future__ import annotations

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
class Resources:
    """Container limits in Docker's units; None means "not limited"."""

    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None
    shm_size: int | None = None
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "Resources":
        ulimits: dict[str, tuple[int, int]] = {}
        for name, value in (doc.get("ulimits") or {}).items():
            if isinstance(value, dict):
                ulimits[name] = (int(value["soft"]), int(value["hard"]))
            else:
                ulimits[name] = (int(value), int(value))
        return cls(
            cpus=float(doc["cpus"]) if doc.get("cpus") is not None else None,
            memory=parse_size(doc.get("memory")),
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
