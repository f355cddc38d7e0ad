"""What runs on this node now, for ``farmhand ps`` and ``GET /tasks``: read from WORKING_DIR and Docker, no worker needed.

A task runs while a process holds its lock (``tasks/ID/.lock``, seen in
/proc/locks without touching it: taking it, even for an instant, could make
the worker's own attempt fail) or while its container runs with no process
driving it (a stopped worker leaves it for the next start to re-adopt).
Memory and pids are Docker's one-shot stats of the task's container.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from farmhand.docker_client import error_text
from farmhand.live_log import age_of, driver_pid, locked_inodes, stage_of
from farmhand.sandbox import ROLE_LABEL, TASK_LABEL


def _image_of(workspace: Path) -> str | None:
    try:
        return str(json.loads((workspace / "task.json").read_text(encoding="utf-8")).get("image"))
    except (OSError, ValueError, AttributeError):
        return None


def _containers(client: Any) -> dict[str, dict[str, Any]]:
    """The task containers (not services) Docker has, by task id."""
    found = client.api.containers(all=True, filters={"label": [TASK_LABEL, f"{ROLE_LABEL}=task"]})
    return {c["Labels"][TASK_LABEL]: c for c in found}


def _usage(client: Any, container_id: str) -> tuple[int | None, int | None, int | None]:
    """Memory used (less the page cache, as ``docker stats`` shows it), its limit, and the number of pids."""
    stats = client.api.stats(container_id, stream=False, one_shot=True)
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is not None:
        details = mem.get("stats") or {}
        usage -= details.get("inactive_file", details.get("total_inactive_file", 0))
    return usage, mem.get("limit"), (stats.get("pids_stats") or {}).get("current")


def running_tasks(tasks_dir: Path, client: Any | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The tasks running on this node, oldest first, and what could not be learned (Docker unreachable...)."""
    held = locked_inodes()
    now = time.time()
    rows: dict[str, dict[str, Any]] = {}
    try:
        entries = list(os.scandir(tasks_dir))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.is_dir():
            continue
        workspace = Path(entry.path)
        pid = driver_pid(workspace, held)
        if pid is None:
            continue
        rows[entry.name] = {
            "task_id": entry.name,
            "stage": stage_of(workspace),
            "age": age_of(workspace, now),
            "driver_pid": pid,
            "image": _image_of(workspace),
            "container": None,
            "status": None,
            "memory": None,
            "memory_limit": None,
            "pids": None,
        }
    problems: list[str] = []
    if client is not None:
        try:
            containers = _containers(client)
        except Exception as exc:  # noqa: BLE001 - the working dir's view still stands
            problems.append(f"docker: {error_text(exc)}")
            containers = {}
        for task_id, c in containers.items():
            row = rows.get(task_id)
            if row is None:
                if c.get("State") != "running":
                    continue  # a finished task's container, about to be removed
                workspace = tasks_dir / task_id
                row = rows[task_id] = {
                    "task_id": task_id,
                    "stage": "run (no worker drives it)",
                    "age": now - float(c.get("Created") or now),
                    "driver_pid": None,
                    "image": _image_of(workspace) or c.get("Image"),
                    "memory": None,
                    "memory_limit": None,
                    "pids": None,
                }
            row["container"] = (c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/")
            row["status"] = c.get("State")
            if c.get("State") == "running":
                try:
                    row["memory"], row["memory_limit"], row["pids"] = _usage(client, c["Id"])
                except Exception as exc:  # noqa: BLE001 - gone meanwhile, or Docker busy
                    problems.append(f"{task_id}: no stats: {error_text(exc)}")
    return sorted(rows.values(), key=lambda r: -(r["age"] or 0)), problems


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024  # type: ignore[assignment]
    return "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def table(rows: list[dict[str, Any]]) -> str:
    """``farmhand ps`` as a person reads it: one task a line."""
    head = ("TASK", "STAGE", "AGE", "CONTAINER", "MEMORY", "PIDS", "IMAGE")
    lines = [head] + [
        (
            r["task_id"],
            r["stage"],
            _age(r["age"]),
            r.get("container") or "-",
            _size(r["memory"]) + (f"/{_size(r['memory_limit'])}" if r.get("memory_limit") else ""),
            "-" if r["pids"] is None else str(r["pids"]),
            r["image"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1] for line in lines)
