"""The embedded result store: Celery's file-per-task backend under WORKING_DIR, written atomically, woken.

Celery's SQLAlchemy result backend cost ORM work on every state of every task
(bench/README.md has the figures) and serialised the workers' slots on one SQLite file, and a
waiting client had to poll it. Celery's own file-system backend stores each
task's state as one small file instead: here each write goes to a temporary
file, is fsynced and renamed into place (a reader never sees half a result,
and a power cut never takes a reported one), and a finished task wakes the
clients waiting for results (``wake``), whose poll, kept as a safety net,
runs once a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from time import monotonic
from typing import Any

from celery import states
from celery.backends.filesystem import FilesystemBackend
from celery.exceptions import TimeoutError as CeleryTimeout
from kombu.utils.encoding import ensure_bytes

from farmhand import durable
from farmhand.dispatch import wake


class ResultStore(FilesystemBackend):
    def __init__(self, url: str | None = None, *args: Any, **kwargs: Any) -> None:
        self.directory = Path(self._find_path(url))
        self.directory.mkdir(parents=True, exist_ok=True)  # the client may start before any worker
        super().__init__(url, *args, **kwargs)

    def set(self, key: bytes | str, value: Any) -> None:
        path = self._filename(ensure_bytes(key))
        temporary = path + b".tmp-%d" % os.getpid()
        with open(temporary, "wb") as out:
            out.write(ensure_bytes(value))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        durable.fsync_dir(Path(os.fsdecode(path)).parent)

    def _set_with_state(self, key: bytes | str, value: Any, state: str) -> Any:
        stored = super()._set_with_state(key, value, state)
        if state in states.READY_STATES:
            wake.notify(self.directory, "results")
        return stored

    def wait_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5, no_ack: bool = True, on_interval: Any = None
    ) -> dict[str, Any]:
        """Celery's poll loop, sleeping on a wake-up from the store instead of a fixed interval."""
        listener = wake.listen(self.directory, "results")
        try:
            started = monotonic()
            while True:
                meta = self.get_task_meta(task_id)
                if meta["status"] in states.READY_STATES:
                    return meta
                if on_interval:
                    on_interval()
                left = None if timeout is None else timeout - (monotonic() - started)
                if left is not None and left <= 0:
                    raise CeleryTimeout("The operation timed out.")
                listener.wait(wake.SAFETY_POLL if left is None else min(wake.SAFETY_POLL, left))
        finally:
            listener.close()
