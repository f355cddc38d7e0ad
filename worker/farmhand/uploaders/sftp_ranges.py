"""One file written over several SFTP channels at once, and exactly what of an earlier try can be kept.

Why several channels: one channel stalls on its flow-control window and
on the single sftp-server process behind it, while the sender's CPU is
the scarce thing; several keep the pipe full. The file is still read
once, in order, by one thread that hashes what it reads, and each
request-sized ``Block`` goes to whichever channel is free, so the bytes
hashed are the bytes sent.

Blocks land in any order, so an interrupted try leaves a ``.part`` with
holes anywhere. ``ResumePlan`` records, while the ``.part`` is read back
and compared with the local file, which ranges are identical (kept, never
sent again) and which are not (sent again, and checked to still hash as
they did when compared, so every byte of the result was hashed once).
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

from farmhand.uploaders.hashpipe import BackgroundHash
from farmhand.uploaders.sftp_stream import END, NOT_YET, Block, SftpStream, SourceChanged, StatusError


def split(offset: int, length: int, size: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` pieces of at most ``size`` bytes covering ``length`` bytes from ``offset``."""
    if size <= 0:
        raise ValueError(f"block size must be positive, not {size}")
    end = offset + length
    while offset < end:
        n = min(size, end - offset)
        yield offset, n
        offset += n


@dataclass
class ResumePlan:
    """What is left to send of a ``size``-byte file once the ``.part`` on the server has been compared with it.

    ``note`` is called with consecutive stretches from byte 0; what was
    compared is kept (``kept`` bytes) or must be sent again (``resend``,
    adjacent stretches merged, each with the sha256 of the local bytes as
    they were when compared). Everything from ``tail`` on was not compared
    and is sent, hashed as it is read.
    """

    size: int
    kept: int = 0
    tail: int = 0
    resend: list[tuple[int, int, Any]] = field(default_factory=list)  # (offset, length, running sha256 of those local bytes)

    def note(self, local: bytes | memoryview, remote: bytes | memoryview) -> bool:
        """The local and remote bytes at ``tail``: kept when equal, else queued to send again. Whether they were equal."""
        n = len(local)
        if len(remote) != n:
            raise ValueError(f"compared {n} local bytes with {len(remote)} remote ones")
        same = local == remote
        if same:
            self.kept += n
        elif self.resend and self.resend[-1][0] + self.resend[-1][1] == self.tail:
            offset, length, digest = self.resend[-1]
            digest.update(local)
            self.resend[-1] = (offset, length + n, digest)
        else:
            self.resend.append((self.tail, n, hashlib.sha256(local)))
        self.tail += n
        return same

    @property
    def to_send(self) -> int:
        return sum(length for _, length, _ in self.resend) + self.size - self.tail

    def ranges(self) -> list[tuple[int, int]]:
        """The ``(offset, length)`` ranges still to send, in file order, adjacent ones merged."""
        out: list[tuple[int, int]] = []
        for offset, length in [(o, n) for o, n, _ in self.resend] + ([(self.tail, self.size - self.tail)] if self.tail < self.size else []):
            if out and out[-1][0] + out[-1][1] == offset:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((offset, length))
        return out


class ParallelWriter:
    """Writes the blocks ``put`` to it into one remote file over several ``SftpStream``s at once.

    Every handle is opened before the first write (the first one empties
    the file when asked), so no write can land before the truncation.
    The first failure of any channel stops them all: what is in flight is
    drained, nothing more is taken, ``put`` returns False, and ``finish``
    raises it, the server's refusals (``StatusError``) as they are, a
    broken channel as ``ChannelFailed``.
    """

    def __init__(self, streams: list[SftpStream], path: str, *, truncate: bool, on_acked: Callable[[int], None]) -> None:
        if not streams:
            raise ValueError("no channel to write on")
        self.path = path
        self._on_acked = on_acked
        self._cond = threading.Condition()
        self._blocks: deque[Block] = deque()
        self._limit = 2 * len(streams)
        self._closed = False
        self._failures: list[BaseException] = []
        self._handles = [s.open_write(path, truncate=truncate and i == 0) for i, s in enumerate(streams)]
        self._threads = [
            threading.Thread(target=self._drive, args=(i, s, h), name=f"sftp-range-{i}", daemon=True)
            for i, (s, h) in enumerate(zip(streams, self._handles))
        ]
        self._count = len(streams)
        for t in self._threads:
            t.start()

    def _take(self, wait: bool) -> Block | None | object:
        with self._cond:
            while not self._blocks:
                if self._closed or self._failures:
                    return END
                if not wait:
                    return NOT_YET
                self._cond.wait()
            if self._failures:
                return END
            block = self._blocks.popleft()
            self._cond.notify_all()
            return block

    def _drive(self, index: int, stream: SftpStream, handle: bytes) -> None:
        try:
            failure = stream.write_blocks(handle, self._take, self._on_acked)
            try:
                stream.close_handle(self.path, handle)
            except StatusError as exc:
                failure = failure or exc
            if failure is not None:
                self._fail(failure)
        except BaseException as exc:  # noqa: BLE001 - handed to the producing thread by finish()
            self._fail(ChannelFailed(f"channel {index + 1} of {self._count} writing {self.path} failed: {exc or type(exc).__name__}"))

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self._failures.append(exc)
            self._blocks.clear()
            self._cond.notify_all()

    def put(self, block: Block) -> bool:
        """Queue ``block`` for the next free channel, waiting while every channel has enough; False once stopped."""
        with self._cond:
            while len(self._blocks) >= self._limit and not self._failures:
                self._cond.wait()
            if self._failures:
                return False
            self._blocks.append(block)
            self._cond.notify_all()
            return True

    def finish(self) -> None:
        """Wait until every block put is acknowledged and every handle closed; raise the first failure."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        if self._failures:
            raise self._failures[0]

    def abort(self) -> None:
        """Stop: nothing more is sent, what is in flight is drained, the handles closed."""
        self._fail(_Aborted())
        for t in self._threads:
            t.join()


class ChannelFailed(Exception):
    """One of the channels writing a file broke (the connection, or the server's sftp process, went away)."""


class _Aborted(Exception):
    pass


def send(writer: ParallelWriter, src: BinaryIO, plan: ResumePlan, hasher: BackgroundHash, block_size: int) -> bool:
    """Put what ``plan`` says is left of ``src`` into ``writer``: the stretches to send again, then the tail.

    The tail is hashed into ``hasher`` as it is read (the compared part
    was, while compared). A stretch sent again must hash as it did when it
    was compared: otherwise the file changed, and ``SourceChanged`` says so.
    Returns False when the writer stopped (its ``finish`` says why).
    """
    for offset, length, digest in plan.resend:
        src.seek(offset)
        again = hashlib.sha256()
        for off, n in split(offset, length, block_size):
            block = _read(src, off, n, plan.size)
            again.update(block.data)
            if not writer.put(block):
                return False
        if again.digest() != digest.digest():
            raise SourceChanged(f"bytes {offset}-{offset + length} differ from what was compared with the warehouse's copy: the file changed while being uploaded")
    src.seek(plan.tail)
    for off, n in split(plan.tail, plan.size - plan.tail, block_size):
        block = _read(src, off, n, plan.size)
        hasher.update(block.data)
        if not writer.put(block):
            return False
    return True


def _read(src: BinaryIO, offset: int, n: int, size: int) -> Block:
    block = Block.read(src, offset, n)
    if block.size < n:
        raise SourceChanged(f"the local file ended at byte {offset + block.size} of {size}: it changed while being uploaded")
    return block
