"""A task's log as this host holds it, followed while the task runs: for ``farmhand logs`` and ``GET /tasks/ID/log``.

What is read is the task's own ``tasks/ID/task.log``, the file the log pump
writes (masked as it is written, capped and timestamped), so a reader sees
exactly the log that will be stored, never the container's raw output. The
file only grows while the run stage lasts; it is final once the task's
checkpoint names a later stage, once the result is written, or when no
process drives the task any more (its lock is free: the worker stopped). A
follower polls: the file is local, a stat is cheap, and no watcher outlives
a reader that went away.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Protocol

from farmhand.checkpoint import CHECKPOINT_NAME, LOCK_NAME
from farmhand.task import LOG_NAME, task_id_problem

READ_SIZE = 1 << 20
POLL_INTERVAL = 0.25
#: Stages after which the log is no longer written.
_FINAL_STAGES = {"collect", "cleanup", "upload", "finish", "finished"}


class Waiter(Protocol):
    """What a follower waits on between polls: True ends the follow (a ``threading.Event`` is one)."""

    def wait(self, timeout: float | None = None) -> bool: ...


class LogUnavailable(Exception):
    """The log cannot be read here; ``status`` is the HTTP status that says so (404 unknown, 410 gone, 400 bad id)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def workspace_of(tasks_dir: Path, task_id: str) -> Path:
    """The task's directory; an id that is no task id is refused before it names a path."""
    problem = task_id_problem(task_id)
    if problem is not None:
        raise LogUnavailable(f"task_id: {problem}", 400)
    workspace = tasks_dir / task_id
    if not workspace.is_dir():
        raise LogUnavailable(f"no task {task_id} on this host (nothing in {tasks_dir})", 404)
    return workspace


#: inode -> [(device as /proc/locks writes it, holder's pid)]
Held = dict[int, list[tuple[str, int]]]


def locked_inodes() -> Held:
    """Every file some process holds a flock on (granted, not waited for), with the holder's pid (from /proc/locks)."""
    held: Held = {}
    try:
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return held
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # "->": a waiter
            continue
        dev, _, inode = fields[5].rpartition(":")
        try:
            held.setdefault(int(inode), []).append((dev, int(fields[4])))
        except ValueError:
            continue
    return held


def driver_pid(workspace: Path, held: Held | None = None) -> int | None:
    """The pid of the process that drives the task now (holds its lock), or None: none does."""
    try:
        st = os.stat(workspace / LOCK_NAME)
    except OSError:
        return None
    holders = (locked_inodes() if held is None else held).get(st.st_ino, [])
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    for where, pid in holders:
        if where == dev:
            return pid
    # Some filesystems (btrfs subvolumes) show another device in stat than in /proc/locks: the inode alone, if unambiguous.
    return holders[0][1] if len(holders) == 1 else None


def stage_of(workspace: Path) -> str:
    """The stage the task is in (its checkpoint names it), ``finished`` once its result is written."""
    if (workspace / "result.json").exists():
        return "finished"
    try:
        saved = json.loads((workspace / CHECKPOINT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "prepare"
    return str(saved.get("stage") or saved.get("phase") or "prepare")


def is_final(workspace: Path) -> bool:
    """Whether the log can still grow: no once the run stage is over, or when nobody drives the task."""
    return stage_of(workspace) in _FINAL_STAGES or driver_pid(workspace) is None


def _gone_reason(workspace: Path) -> LogUnavailable:
    """Why a finished task has no log here: delivered and dropped, or it never ran."""
    try:
        result = json.loads((workspace / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {}
    location = (result.get("log") or {}).get("location")
    if location:
        return LogUnavailable(f"the log of task {workspace.name} was delivered to {location} and is no longer kept on this host", 410)
    return LogUnavailable(f"task {workspace.name} has no log on this host (it ended before its container ran)", 404)


@dataclass
class LiveLog:
    """One reader of one task's log, from ``offset`` on."""

    workspace: Path
    offset: int = 0
    poll: float = POLL_INTERVAL

    @property
    def path(self) -> Path:
        return self.workspace / LOG_NAME

    def check(self) -> None:
        """Raise ``LogUnavailable`` now when there is nothing to read and never will be (before a reply is sent)."""
        if not self.path.exists() and is_final(self.workspace):
            raise _gone_reason(self.workspace)

    def size(self) -> int | None:
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    def chunks(self, follow: bool = True, stop: "Waiter | None" = None) -> Iterator[bytes]:
        """The log's bytes from ``offset``; with ``follow``, until the task's log is final (or ``stop`` is set).

        Whether it is final is decided before each read, so what was written
        before that is still read. A log replaced while followed (a restarted
        worker re-reads a re-adopted container's output from its first line)
        is reopened at the same offset.
        """
        stop = stop or threading.Event()
        fh = None
        try:
            while True:
                log_final = is_final(self.workspace)
                final = log_final or not follow
                fh = self._reopened(fh)
                if fh is None and final:
                    if log_final and self.offset == 0:
                        raise _gone_reason(self.workspace)
                    return  # not written yet (the task prepares), or removed after we read it
                while fh is not None:
                    data = os.pread(fh.fileno(), READ_SIZE, self.offset)
                    if not data:
                        break
                    self.offset += len(data)
                    yield data
                if final or stop.wait(self.poll):
                    return
        finally:
            if fh is not None:
                fh.close()

    def _reopened(self, fh):  # type: ignore[no-untyped-def]
        """The open log, reopened when the path names another file now; None while there is none."""
        try:
            current = os.stat(self.path).st_ino
        except OSError:
            return fh  # removed (delivered): what is open stays readable
        if fh is not None and os.fstat(fh.fileno()).st_ino == current:
            return fh
        if fh is not None:
            fh.close()
        try:
            return open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        except OSError:
            return None


# -- --since: the log's lines carry Docker's timestamps ---------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_stamp(text: str, now: datetime | None = None) -> bytes:
    """``--since``'s value as the log's own stamp (``2006-01-02T15:04:05.000000000Z``), so lines compare as bytes.

    A duration (``90s``, ``10m``, ``2h``, ``1d``) counts back from now; else an
    ISO 8601 time (a time without a zone is UTC).
    """
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        when = (now or datetime.now(timezone.utc)) - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    else:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since: {text!r} is neither a duration (90s, 10m, 2h, 1d) nor a time (2026-11-29T15:00:00Z)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S").encode() + f".{when.microsecond * 1000:09d}Z".encode()


_STAMPED = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


class SinceFilter:
    """Drops the lines stamped before ``since``; an unstamped line (farmhand's own notes, a long line's
    continuation) goes with the line before it. Fed any chunks, gives whole lines."""

    def __init__(self, since: bytes) -> None:
        self.since = since
        self._rest = b""
        self._keep = False

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        return self._lines(data[:cut])

    def flush(self) -> bytes:
        rest, self._rest = self._rest, b""
        return self._lines(rest)

    def _lines(self, data: bytes) -> bytes:
        out = []
        for line in data.splitlines(keepends=True):
            if _STAMPED.match(line):
                self._keep = line[: len(self.since)] >= self.since
            if self._keep:
                out.append(line)
        return b"".join(out)


def age_of(workspace: Path, now: float | None = None) -> float | None:
    """Seconds since the task was accepted here (its task.json, written in prepare, else its directory)."""
    for path in (workspace / "task.json", workspace):
        try:
            return max(0.0, (now or time.time()) - path.stat().st_mtime)
        except OSError:
            continue
    return None
