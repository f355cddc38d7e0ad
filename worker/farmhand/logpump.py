"""Copy a container's output to the task's log file as it is produced.

Memory stays bounded whatever the task prints: each batch of frames is
masked, written and dropped (the masker holds back at most the longest
secret's length minus one bytes). Secrets are masked in the output as the
task printed it, across lines and Docker's 16 KiB splits, and the file is
timestamped like ``docker logs -t`` (``masking.FrameMasker``). The file is
capped; past the cap output is counted but discarded, and the truncation is
marked in the file itself.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from farmhand.digest import sha256_file
from farmhand.masking import STAMP, FrameMasker, StreamMasker


@dataclass
class LogSummary:
    path: Path
    size: int
    sha256: str
    truncated: bool
    dropped_bytes: int
    complete: bool
    #: Why the log is not whole when the stream itself was (e.g. Docker rotated its head away).
    warnings: list[str] = field(default_factory=list)


#: ``head_check(stamp)``: given the stamp of the first frame read (None: no output), why the log's head is missing, or None.
HeadCheck = Callable[[bytes | None], str | None]


class LogPump:
    """Drains a container's output into ``path`` on a thread of its own.

    ``source`` is an ``OutputStream`` (its ``frame_batches()`` are read) or
    any iterable of batches of timestamped frames. ``last_output`` (a
    monotonic time) lets the run stage detect an idle task without touching
    the stream. ``head_check``, called once the first frame has arrived and
    before anything is written, can declare the head of the log missing: its
    answer is written first in the file, marked ``[farmhand]``, is one of the
    summary's warnings, and the summary is not complete.
    """

    def __init__(
        self,
        source: Iterable[Sequence[bytes]],
        path: Path,
        max_bytes: int,
        masker: StreamMasker,
        head_check: HeadCheck | None = None,
    ) -> None:
        frame_batches = getattr(source, "frame_batches", None)
        self._batches: Iterable[Sequence[bytes]] = frame_batches() if callable(frame_batches) else source
        self.path = path
        self.max_bytes = max_bytes
        self._masker = FrameMasker(masker)
        self._head_check = head_check
        self._warnings: list[str] = []
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
                batches = iter(self._batches)
                first = next(batches, None)
                if self._head_check is not None:
                    missing = self._head_check(bytes(first[0][: STAMP - 1]) if first else None)
                    if missing:
                        self._warnings.append(missing)
                        self._write(fh, f"[farmhand] {missing}\n".encode())
                if first is None:
                    return
                self._pump(fh, first)
                for frames in batches:
                    self._pump(fh, frames)
                if not self._truncated:
                    self._write(fh, self._masker.flush())
        except BaseException as exc:  # noqa: BLE001 - reported through wait()
            self._error = exc
        finally:
            self._done.set()

    def _pump(self, fh, frames: Sequence[bytes]) -> None:
        self.last_output = time.monotonic()
        if self._truncated:
            self._dropped += sum(map(len, frames))
            return
        self._write(fh, self._masker.feed(frames))
        fh.flush()  # a batch is one read of the stream: on disk at once for `farmhand logs -f` and /tasks/ID/log

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
            complete=finished and self._error is None and not self._warnings,
            warnings=list(self._warnings),
        )
