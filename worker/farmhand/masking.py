"""Replace secret values in a byte stream, including where a secret straddles two chunks."""

from __future__ import annotations

import re
from typing import Iterable

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


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """Mask secrets in a whole string (messages, error texts)."""
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text
