"""Uploads that failed wait in ``WORKING_DIR/pending/`` until they land or an operator discards them.

Never lose a result: when every try of an upload failed, the engine hands the
files here (hard links, so no second copy of a large artifact, and deleting
the workspace cannot take them away) with a ``job.json`` saying where they go.
They are tried again in the background (``BackgroundRetrier``, with backoff
per entry) and by ``farmhand pending retry``, across restarts, since all state
is on disk. An entry is locked while it is tried, so a background retrier and
an operator never upload the same entry at once.

Layout of one entry::

    pending/TASK_ID/job.json        target, items (name, size, sha256), tries, last error
    pending/TASK_ID/files/NAME...   the files, under their remote names
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from farmhand import durable, metrics
from farmhand.backoff import backoff_delay
from farmhand.config import WorkerConfig
from farmhand.errors import TaskProblem
from farmhand.result import write_json_atomic
from farmhand.uploaders import UploadItem, uploader_for

log = logging.getLogger("farmhand.pending")

JOB = "job.json"
#: The longest wait between two background tries of an entry, in retry intervals.
MAX_BACKOFF_INTERVALS = 16


class Busy(Exception):
    """Another process or thread is trying this entry right now."""


@dataclass
class Entry:
    """One task's undelivered upload, as ``job.json`` describes it."""

    path: Path
    job: dict[str, Any]

    @property
    def task_id(self) -> str:
        return str(self.job["task_id"])

    @property
    def target(self) -> str:
        return str(self.job["target"])

    @property
    def size(self) -> int:
        return sum(int(i["size"]) for i in self.job["items"])

    def items(self) -> list[UploadItem]:
        return [UploadItem(self.path / "files" / i["remote_name"], i["remote_name"], int(i["size"]), i["sha256"]) for i in self.job["items"]]

    def save(self) -> None:
        write_json_atomic(self.path / JOB, self.job)


def hand_off(
    config: WorkerConfig,
    task_id: str,
    target: str,
    items: list[UploadItem],
    *,
    error: str,
    workspace: Path | None = None,
    local_copies: list[Path] | None = None,
) -> Entry:
    """Keep ``items`` in a new pending entry and return it; the originals are left where they are.

    ``local_copies`` are removed once the entry is delivered (unless
    ``upload.keep_local``): they are the same bytes, kept meanwhile.
    """
    root = config.pending_dir
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".incoming-{task_id}-{uuid.uuid4().hex[:8]}"
    files = staging / "files"
    try:
        for item in items:
            dest = files.joinpath(*item.remote_name.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(item.local_path, dest)
            except OSError:  # another filesystem, or links not allowed: copy instead
                shutil.copyfile(item.local_path, dest)
            if dest.stat().st_size != item.size:
                raise OSError(f"pending copy of {item.remote_name} has {dest.stat().st_size} bytes, not {item.size}")
            # The workspace's copy may be deleted once the entry exists: this one's bytes must be on disk first.
            durable.fsync_path(dest)
        now = time.time()
        job = {
            "task_id": task_id,
            "target": target,
            "created_at": now,
            "workspace": str(workspace) if workspace else None,
            "local_copies": [str(p) for p in local_copies or []],
            "items": [{"remote_name": i.remote_name, "size": i.size, "sha256": i.sha256} for i in items],
            "tries": 1,
            "last_error": error,
            "last_try_at": now,
            "next_try_at": now + config.pending_retry_interval,
        }
        write_json_atomic(staging / JOB, job)
        for directory in sorted({staging, *(p for p in staging.rglob("*") if p.is_dir())}, key=lambda p: -len(p.parts)):
            durable.fsync_dir(directory)  # deepest first: each file's name, then each directory's
        dest_dir = root / task_id
        if dest_dir.exists():  # an older entry of the same id (its workspace was removed and the id reused)
            dest_dir = root / f"{task_id}.{uuid.uuid4().hex[:8]}"
        os.rename(staging, dest_dir)
        durable.fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Entry(dest_dir, job)


def entries(config: WorkerConfig) -> list[Entry]:
    """Every pending entry, oldest first; unreadable ones are reported in the log and skipped."""
    root = config.pending_dir
    out = []
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            out.append(Entry(path, json.loads((path / JOB).read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            log.error("pending entry %s is unreadable: %s", path, exc)
    return sorted(out, key=lambda e: e.job.get("created_at", 0))


def find(config: WorkerConfig, name: str) -> Entry:
    """The entry named ``name`` (its directory, normally the task id)."""
    for entry in entries(config):
        if entry.path.name == name:
            return entry
    raise KeyError(f"no pending upload named {name!r} in {config.pending_dir}")


@contextmanager
def _locked(entry: Entry) -> Iterator[None]:
    with open(entry.path / JOB, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{entry.path.name} is being uploaded by another process right now") from None
        yield


def deliver(config: WorkerConfig, entry: Entry, report: Callable[..., None] = lambda m, **f: None) -> dict[str, str]:
    """Upload the entry; on success remove it (and the kept local copies), on failure record the try and raise.

    Raises ``Busy`` when someone else holds it, ``TaskProblem`` when the upload fails.
    """
    with _locked(entry):
        try:  # what another process may have recorded since we listed it
            entry.job = json.loads((entry.path / JOB).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise Busy(f"{entry.path.name} was delivered or discarded meanwhile") from None
        try:
            uploader = uploader_for(entry.target, config)
            began = time.monotonic()
            locations = uploader.upload(entry.task_id, entry.items(), report)
            metrics.uploaded(entry.size, time.monotonic() - began)
        except Exception as exc:
            message = exc.message if isinstance(exc, TaskProblem) else f"{type(exc).__name__}: {exc}"
            now = time.time()
            entry.job["tries"] = int(entry.job.get("tries", 0)) + 1
            entry.job["last_error"] = message
            entry.job["last_try_at"] = now
            interval = config.pending_retry_interval
            entry.job["next_try_at"] = now + backoff_delay(entry.job["tries"] - 1, interval, interval * MAX_BACKOFF_INTERVALS)
            entry.save()
            if isinstance(exc, TaskProblem):
                raise
            raise TaskProblem(message, reason="upload-failed") from exc
        _record_delivery(entry, locations)
        _remove_entry(config, entry)
    return locations


def _record_delivery(entry: Entry, locations: dict[str, str]) -> None:
    """Leave a note beside the task's result: it said upload-failed, the files have landed since."""
    workspace = entry.job.get("workspace")
    if workspace and Path(workspace).is_dir():
        write_json_atomic(Path(workspace) / "delivered.json", {"delivered_at": time.time(), "target": entry.target, "locations": locations})


def remove_paths(paths: Iterable[Path]) -> None:
    """Delete files and whole directories (a link is removed, never followed); what is already gone is fine."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _remove_entry(config: WorkerConfig, entry: Entry, *, keep_local: bool | None = None) -> None:
    if not (config.keep_local if keep_local is None else keep_local):
        remove_paths(Path(copy) for copy in entry.job.get("local_copies", []))
    # Rename first: a half-deleted entry must never look like a valid one.
    trash = entry.path.with_name(f".trash-{entry.path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(entry.path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def discard(config: WorkerConfig, entry: Entry) -> None:
    """Give up on an entry: its files and the task's local copies are deleted, nothing is uploaded."""
    with _locked(entry):
        _remove_entry(config, entry, keep_local=False)


class BackgroundRetrier:
    """Tries due entries again every ``upload.pending_retry_interval`` seconds, in a daemon thread.

    Each entry waits its own backoff (``next_try_at``) after a failed try, so a
    warehouse that is down is not hammered; ``stop`` returns promptly, and an
    upload cut short resumes on the next try.
    """

    def __init__(self, config: WorkerConfig, interval: float | None = None) -> None:
        self.config = config
        self.interval = interval if interval is not None else config.pending_retry_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pending-retrier", daemon=True)
        self.delivered: list[str] = []

    def start(self) -> "BackgroundRetrier":
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def run_once(self) -> None:
        """Try every entry whose time has come."""
        for entry in entries(self.config):
            if self._stop.is_set():
                return
            if float(entry.job.get("next_try_at", 0)) > time.time():
                continue
            try:
                deliver(self.config, entry)
                self.delivered.append(entry.task_id)
                log.info("pending upload of task %s delivered to %s", entry.task_id, entry.target)
            except Busy:
                continue
            except TaskProblem as exc:
                log.warning("pending upload of task %s still failing: %s", entry.task_id, exc.message)
            except Exception:  # noqa: BLE001 - one bad entry must not stop the others
                log.exception("pending upload of task %s", entry.task_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - keep retrying whatever happens
                log.exception("pending retrier")
            self._stop.wait(self.interval)
