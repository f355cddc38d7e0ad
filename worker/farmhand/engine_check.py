"""``farmhand engine-check``: is the Docker engine stuck, and if it stays so, restart it.

A dockerd that deadlocks (Debian 12's 20.10.24: moby/moby#46661, see
``engine_outage``) answers its ping and ``docker ps`` but never again a
call that needs the locked object: an inspect of the container whose exit
it was handling, a network list. Its tasks then wait for good, and nothing
on the host notices. The appliance runs this check as root from a systemd
timer: each probe below runs in a thread of its own with
``docker.timeout`` to answer. A check where a probe got no answer in time
counts as stuck; ``--after`` stuck checks in a row (the count survives
between runs in ``--state``) restart ``docker.service``. The role sets
live-restore, so running task containers carry on, and their workers
re-attach to them.

An engine that refuses connections is not stuck but down: systemd restarts
dockerd by itself, and the worker waits for it. Slow answers within the
timeout are healthy.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from farmhand.result import write_json_atomic
from farmhand.sandbox import TASK_LABEL

#: Stuck checks in a row before the engine is restarted: one slow moment is not a deadlock.
AFTER = 2
RESTART = ("systemctl", "restart", "docker.service")
#: The API version the probes ask for (Docker 19.03 on): named, so that making the client calls nothing.
API_VERSION = "1.40"


@dataclass(frozen=True)
class Probe:
    """One call and what became of it: ``ok``, ``down`` (refused or broken: not stuck) or ``stuck`` (no answer in time)."""

    name: str
    outcome: str
    detail: str = ""


def probes(api: Any) -> list[tuple[str, Callable[[], Any]]]:
    """The calls that show a stuck engine: its ping, the network list (the network controller's lock), and an
    inspect of each farmhand container (each container's lock). Listing needs no lock in dockerd 20.10."""
    calls: list[tuple[str, Callable[[], Any]]] = [("ping", api.ping), ("networks", api.networks)]
    try:
        ids = [c["Id"] for c in api.containers(all=True, quiet=True, filters={"label": TASK_LABEL})]
    except Exception as exc:  # noqa: BLE001 - the listing's own verdict, given as a probe's
        calls.append(("containers", lambda exc=exc: _raise(exc)))  # bound now: "exc" is unset after the except
        ids = []
    calls += [(f"inspect {cid[:12]}", lambda cid=cid: api.inspect_container(cid)) for cid in ids]
    return calls


def _raise(exc: Exception) -> None:
    raise exc


def run_probes(calls: list[tuple[str, Callable[[], Any]]], timeout: float) -> list[Probe]:
    """Each call in its own thread: one that never returns holds up nothing but its own verdict."""
    found: dict[str, Probe] = {}

    def one(name: str, call: Callable[[], Any]) -> None:
        try:
            call()
            found[name] = Probe(name, "ok")
        except requests.exceptions.Timeout as exc:
            found[name] = Probe(name, "stuck", f"no answer within {timeout:.0f}s ({type(exc).__name__})")
        except Exception as exc:  # noqa: BLE001 - refused, broken, or an error answer: the engine is there or down
            down = isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError))
            found[name] = Probe(name, "down" if down else "ok", f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(name, call), daemon=True) for name, call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)  # the client's own timeout ends each call; this is the net under it
    return [found.get(name, Probe(name, "stuck", f"no answer within {timeout:.0f}s")) for name, _ in calls]


@dataclass(frozen=True)
class Verdict:
    stuck_in_a_row: int
    restart: bool
    line: str


def decide(results: list[Probe], before: int, after: int = AFTER) -> Verdict:
    """What this check concludes, from its probes and the stuck checks in a row before it."""
    stuck = [p for p in results if p.outcome == "stuck"]
    if not stuck:
        down = [p for p in results if p.outcome == "down"]
        if down:
            return Verdict(0, False, f"engine-check: the Docker engine is down ({down[0].detail}): not stuck; systemd restarts dockerd")
        return Verdict(0, False, f"engine-check: the Docker engine answers ({len(results)} probes)")
    count = before + 1
    what = ", ".join(f"{p.name}: {p.detail}" for p in stuck[:5]) + (f" (+{len(stuck) - 5} more)" if len(stuck) > 5 else "")
    if count >= after:
        return Verdict(0, True, f"engine-check: the Docker engine is stuck ({what}), {count} checks in a row: restarting docker.service (live-restore keeps the task containers running)")
    return Verdict(count, False, f"engine-check: the Docker engine is stuck ({what}), {count} of {after} checks in a row before a restart")


def load_count(state: Path) -> int:
    try:
        return int(json.loads(state.read_text(encoding="utf-8")).get("stuck_in_a_row", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def save_count(state: Path, count: int) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state, {"stuck_in_a_row": count})
