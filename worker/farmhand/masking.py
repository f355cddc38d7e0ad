"""Replace secret values in a byte stream, including where a secret straddles two chunks.

``StreamMasker`` masks a plain byte stream; ``FrameMasker`` masks the output
of a task as Docker's logs endpoint returns it, timestamped frames, and
writes it back timestamped (see there).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

MASK = b"***"


class StreamMasker:
    """Masks every occurrence of the given secrets in a stream fed chunk by chunk.

    Up to ``len(longest secret) - 1`` bytes are held back between chunks, since
    they could be the start of a secret that the next chunk completes; ``flush``
    releases them at the end of the stream.
    """

    def __init__(self, secrets: Iterable[str | bytes]) -> None:
        values = {s.encode() if isinstance(s, str) else s for s in secrets}
        values.discard(b"")
        # Longest first, so that a secret containing another is masked whole.
        ordered = sorted(values, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(v) for v in ordered)) if ordered else None
        self._hold = max((len(v) for v in ordered), default=1) - 1
        self._carry = b""

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def feed(self, chunk: bytes) -> bytes:
        if self._pattern is None:
            return chunk
        buf = self._carry + chunk
        safe_end = len(buf) - self._hold
        out: list[bytes] = []
        pos = 0
        for match in self._pattern.finditer(buf):
            if match.start() >= safe_end:
                break
            out.append(buf[pos:match.start()])
            out.append(MASK)
            pos = match.end()
        cut = max(pos, safe_end)
        out.append(buf[pos:cut])
        self._carry = buf[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._carry = self._carry, b""
        if self._pattern is None:
            return rest
        return self._pattern.sub(MASK, rest)

    def spans(self, buf: bytes, final: bool) -> tuple[list[tuple[int, int]], int]:
        """The secrets to mask in ``buf`` (start, end), and how much of it can be released.

        What is past the returned length may be the start of a secret that
        more data completes (at most ``len(longest) - 1`` bytes); ``final``
        says there is no more data.
        """
        assert self._pattern is not None
        safe_end = len(buf) if final else len(buf) - self._hold
        found: list[tuple[int, int]] = []
        pos = 0
        for match in self._pattern.finditer(buf):
            if match.start() >= safe_end:
                break
            found.append(match.span())
            pos = match.end()
        return found, max(pos, safe_end)


#: Each frame of Docker's logs endpoint with timestamps=1: "2006-01-02T15:04:05.000000000Z " + payload.
STAMP = len("2006-01-02T15:04:05.000000000Z ")


class FrameMasker:
    """Masks the task's output in Docker's timestamped frames, as the task printed it, and stamps it again.

    Docker logs one frame per line, and a line longer than 16 KiB as several
    frames, all but the last without a newline; with timestamps each frame is
    ``STAMP payload``. Secrets are matched in the payloads joined, across
    lines, frames and batches, never in the stamped text, so a multi-line
    secret or one cut by Docker's split is masked whole.

    The text written is the masked payload stream with a stamp at the start
    of each line: the stamp of the frame that line's first byte came from (a
    mask: the frame its secret started in). For frames that are whole lines
    with no secret, that is exactly what Docker sent (``docker logs -t``); a
    line Docker split comes out as one line, with the stamp of its first part.

    Between batches at most ``len(longest secret) - 1`` payload bytes are held
    back (with their frames' stamps); ``flush`` releases them at the end.
    """

    def __init__(self, masker: StreamMasker) -> None:
        self._masker = masker
        self._active = masker.active
        self._pending: list[tuple[bytes, bytes]] = []  # (stamp, payload not yet written), oldest first
        self._pending_len = 0
        self._bol = True  # the next byte written starts a line

    @property
    def held(self) -> int:
        """Payload bytes held back, waiting for more output."""
        return self._pending_len

    def feed(self, frames: Sequence[bytes]) -> bytes:
        if not frames:
            return b""
        if not self._active:
            if len(frames) == 1 and self._bol:
                frame = frames[0]
                if frame.find(b"\n", STAMP) == len(frame) - 1:  # one whole line, the usual frame
                    return frame
            return self._plain(frames)
        return self._masked(frames)

    def flush(self) -> bytes:
        if not self._pending:
            return b""
        pieces, self._pending, self._pending_len = self._pending, [], 0
        buf = b"".join([data for _, data in pieces])
        spans, _ = self._masker.spans(buf, final=True)
        out: list[bytes] = []
        self._release(out, pieces, buf, spans, len(buf))
        return b"".join(out)

    # -- internals ---------------------------------------------------------------------------

    def _whole_lines(self, frames: Sequence[bytes], text: bytes) -> bool:
        """Whether each frame is one line, newline last (as Docker logs all but the parts of a long line)."""
        return (
            text.count(b"\n") == len(frames)
            and min(map(len, frames)) > STAMP
            and all(frame[-1] == 10 for frame in frames)
        )

    def _plain(self, frames: Sequence[bytes]) -> bytes:
        text = b"".join(frames)
        if self._bol and self._whole_lines(frames, text):
            return text  # Docker's own text: each line its stamp, the next byte at a line start
        out: list[bytes] = []
        for frame in frames:
            self._emit(out, frame[:STAMP], frame[STAMP:])
        return b"".join(out)

    def _emit(self, out: list[bytes], stamp: bytes, data: bytes) -> None:
        """Write ``data`` (from a frame stamped ``stamp``), stamping each line it starts."""
        if not data:
            return
        if self._bol:
            out.append(stamp)
        if data.find(b"\n", 0, len(data) - 1) != -1:  # more than one line in one piece
            data = data[:-1].replace(b"\n", b"\n" + stamp) + data[-1:]
        out.append(data)
        self._bol = data[-1] == 10

    def _masked(self, frames: Sequence[bytes]) -> bytes:
        payloads = [frame[STAMP:] for frame in frames]
        held = self._pending_len
        buf = b"".join([data for _, data in self._pending] + payloads)
        spans, cut = self._masker.spans(buf, final=False)
        out: list[bytes] = []
        pending = self._pending
        if not spans:
            # The usual case, no secret here: what was held goes (up to the cut), then the
            # frames up to the cut, as Docker sent them where they are whole lines.
            self._pending, self._pending_len = [], 0
            if cut < held:  # frames shorter than the longest secret: the cut falls among the held pieces
                self._release_plain(out, pending, cut)
                self._pending.extend(zip([frame[:STAMP] for frame in frames], payloads))
                self._pending_len = len(buf) - cut
                return b"".join(out)
            for stamp, data in pending:
                self._emit(out, stamp, data)
            keep = len(buf) - cut  # payload bytes to hold back, from the end
            last = len(frames)
            while last > 0 and keep >= len(payloads[last - 1]):
                keep -= len(payloads[last - 1])
                last -= 1
            whole = frames[:last] if keep == 0 or last == 0 else frames[: last - 1]
            if whole:
                text = b"".join(whole)
                if self._bol and self._whole_lines(whole, text):
                    out.append(text)
                else:
                    for frame in whole:
                        self._emit(out, frame[:STAMP], frame[STAMP:])
            if keep and last:
                # the frame the cut falls in: its head now, its tail held
                stamp, data = frames[last - 1][:STAMP], payloads[last - 1]
                self._emit(out, stamp, data[: len(data) - keep])
                self._pending.append((stamp, data[len(data) - keep :]))
            for i in range(last, len(frames)):
                self._pending.append((frames[i][:STAMP], payloads[i]))
            self._pending_len = len(buf) - cut
            return b"".join(out)
        pieces = pending + [(frame[:STAMP], data) for frame, data in zip(frames, payloads)]
        self._pending, self._pending_len = [], 0
        self._release(out, pieces, buf, spans, cut)
        return b"".join(out)

    def _release_plain(self, out: list[bytes], pieces: list[tuple[bytes, bytes]], cut: int) -> None:
        """Write the first ``cut`` bytes of ``pieces`` (no secret in them); hold the rest."""
        start = 0
        for i, (stamp, data) in enumerate(pieces):
            end = start + len(data)
            if end > cut:
                if cut > start:
                    self._emit(out, stamp, data[: cut - start])
                    data = data[cut - start :]
                self._pending.append((stamp, data))
                self._pending.extend(pieces[i + 1 :])
                return
            self._emit(out, stamp, data)
            start = end

    def _release(self, out: list[bytes], pieces: list[tuple[bytes, bytes]], buf: bytes, spans: list[tuple[int, int]], cut: int) -> None:
        """Write ``buf[:cut]`` (the payloads of ``pieces`` joined) with ``spans`` masked; hold the rest."""
        pos = 0  # next byte of buf not yet written or masked
        si = 0
        start = 0
        for stamp, data in pieces:
            end = start + len(data)
            limit = min(end, cut)
            while pos < limit:
                if si < len(spans) and spans[si][0] < limit:
                    s, e = spans[si]
                    if s > pos:
                        self._emit(out, stamp, data[pos - start : s - start])
                    self._emit(out, stamp, MASK)
                    pos = e
                    si += 1
                else:
                    self._emit(out, stamp, data[pos - start : limit - start])
                    pos = limit
            if end > cut:
                tail = data[max(cut, start) - start :]
                self._pending.append((stamp, tail))
                self._pending_len += len(tail)
            start = end


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """Mask secrets in a whole string (messages, error texts)."""
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text
