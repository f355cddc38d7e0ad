"""Copy a container's output to the task's log file as it is produced.

Memory stays bounded whatever the task prints: each frame is masked, written
and dropped. The file is capped; past the cap output is counted but discarded,
and the truncation is marked in the file itself.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from farmhand.digest import sha256_file
from farmhand.masking import StreamMasker


@dataclass
class LogSummary:
    path: Path
    size: int
    sha256: str
    truncated: bool
    dropped_bytes: int
    complete: bool


class LogPump:
    """Drains an iterable of output chunks into ``path`` on a thread of its own.

    ``last_output`` (a monotonic time) lets the run stage detect an idle task
    without touching the stream.
    """

    def __init__(self, chunks: Iterable[bytes], path: Path, max_bytes: int, masker: StreamMasker) -> None:
        self._chunks = chunks
        self.path = path
        self.max_bytes = max_bytes
        self._masker = masker
        self.last_output = time.monotonic()
        self._written = 0
        self._dropped = 0
        self._truncated = False
        self._hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logpump:{path.parent.name}", daemon=True)

    def start(self) -> "LogPump":
        self.path.touch()  # a task that prints nothing still has a (empty) log to upload
        self._thread.start()
        return self

    def _write(self, fh, data: bytes) -> None:
        if not data:
            return
        room = self.max_bytes - self._written
        if len(data) > room:
            keep = data[: max(room, 0)]
            self._dropped += len(data) - len(keep)
            data = keep
            if not self._truncated:
                self._truncated = True
                marker = (
                    f"\n[farmhand] log truncated: the limit of {self.max_bytes} bytes was reached; "
                    "further output is discarded\n"
                ).encode()
                data += marker
        if data:
            fh.write(data)
            self._hash.update(data)
            self._written += len(data)

    def _run(self) -> None:
        try:
            with open(self.path, "ab", buffering=1 << 20) as fh:
                for chunk in self._chunks:
                    self.last_output = time.monotonic()
                    if self._truncated:
                        self._dropped += len(chunk)
                        continue
                    self._write(fh, self._masker.feed(chunk))
                if not self._truncated:
                    self._write(fh, self._masker.flush())
        except BaseException as exc:  # noqa: BLE001 - reported through wait()
            self._error = exc
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> LogSummary:
        """Block until the stream ends (the container stopped) or ``timeout`` passes.

        When the stream is still going after ``timeout``, the summary describes
        the file as it is on disk at that moment and says it is not complete.
        """
        finished = self._done.wait(timeout)
        if finished:
            size, digest = self._written, self._hash.hexdigest()
        else:
            size = self.path.stat().st_size if self.path.exists() else 0
            digest = sha256_file(self.path) if self.path.exists() else hashlib.sha256().hexdigest()
        return LogSummary(
            path=self.path,
            size=size,
            sha256=digest,
            truncated=self._truncated,
            dropped_bytes=self._dropped,
            complete=finished and self._error is None,
        )
