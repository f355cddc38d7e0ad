"""sha256 of the bytes being sent, computed on another core while the sending thread encrypts.

Hashing what is actually sent (not the file read again) is what lets the
uploader promise that the warehouse holds the bytes the task produced; doing
it inline costs a third of an upload's CPU. hashlib drops the GIL while it
hashes a buffer, so a helper thread fed in batches of a few MiB (few GIL
hand-overs) runs truly beside the sender.
"""

from __future__ import annotations

import hashlib
import queue
import threading

BATCH = 4 << 20


class BackgroundHash:
    """``update`` in the sending thread, ``finish`` for the hex digest; the bytes are hashed in order."""

    def __init__(self, batch: int = BATCH) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[list[bytes | memoryview] | None] = queue.Queue(maxsize=4)  # bounds memory to a few batches
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._batch = batch
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            for piece in batch:  # each update drops the GIL; no copy of the batch into one buffer first
                self._hash.update(piece)

    def update(self, data: bytes | memoryview) -> None:
        """Queue ``data`` for hashing; it must not be modified afterwards (it is not copied)."""
        if self._digest is not None:
            raise RuntimeError("update after finish")
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self._batch:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._queue.put(self._pending)
            self._pending, self._pending_size = [], 0

    def finish(self) -> str:
        """The hex digest of everything given to ``update``; idempotent."""
        if self._digest is None:
            self._flush()
            self._queue.put(None)
            self._thread.join()
            self._digest = self._hash.hexdigest()
        return self._digest
