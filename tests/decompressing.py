"""Read back a log as it travelled: the tests' side of farmhand.compress, which only ever writes."""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import BinaryIO

import zstandard


def open_decompressed(path: Path) -> BinaryIO:
    """A readable stream of ``path``'s original bytes, whichever of farmhand's formats it is in."""
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # type: ignore[return-value]
    if path.name.endswith(".xz"):
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")
