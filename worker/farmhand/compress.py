"""Compress a task's log before it travels: logs are text, often repetitive, and many times smaller compressed.

Streams in blocks, so a multi-gigabyte log costs a few MiB of memory (zstd
level 3; xz at preset 3, whose 4 MiB dictionary keeps the worker's memory
bounded), and hashes the compressed bytes as it writes them so the uploader
can verify what lands in the warehouse without reading the file twice.
"""

from __future__ import annotations

import hashlib
import lzma
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from farmhand import durable

BLOCK = 1 << 20

#: config ``logs.compression`` -> file suffix ("" means stored as is).
SUFFIXES = {"zstd": ".zst", "xz": ".xz", "none": ""}


@dataclass(frozen=True)
class Compressed:
    path: Path
    size: int
    sha256: str


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)


def _zstd(src: BinaryIO, out: _HashingWriter) -> None:
    import zstandard  # loaded by the first task that compresses with it

    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:  # type: ignore[arg-type]
        for block in iter(lambda: src.read(BLOCK), b""):
            writer.write(block)


def _xz(src: BinaryIO, out: _HashingWriter) -> None:
    comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=3)
    for block in iter(lambda: src.read(BLOCK), b""):
        out.write(comp.compress(block))
    out.write(comp.flush())


_METHODS: dict[str, Callable[[BinaryIO, _HashingWriter], None]] = {"zstd": _zstd, "xz": _xz}


def compressed_name(name: str, method: str) -> str:
    return name + SUFFIXES[method]


def compress_file(src: Path, method: str) -> Compressed:
    """Write ``src`` compressed beside it (``task.log`` -> ``task.log.zst``) and return its size and sha256.

    Written to a temporary name and renamed, so a crash never leaves a
    truncated archive that looks complete.
    """
    if method not in _METHODS:
        raise ValueError(f"logs.compression: unknown method {method!r}")
    dest = src.with_name(compressed_name(src.name, method))
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as raw:
            out = _HashingWriter(raw)
            _METHODS[method](fin, out)
            raw.flush()
            os.fsync(raw.fileno())
        durable.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Compressed(dest, out.size, out.hash.hexdigest())

