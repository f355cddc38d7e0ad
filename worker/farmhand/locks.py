"""Exclusive holds on a path, between processes, that die with their holder.

``flock`` rather than a pid file: the kernel drops the lock when the process
dies, kill -9 included, so a crash never leaves a stale lock for an
operator to clear, and a live holder is never mistaken for a dead one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class Held(Exception):
    """Another live process holds the lock; the message says who, where known."""


def hold(path: Path, what: str) -> IO[str]:
    """Take ``path``'s lock without waiting, write our pid in it, and return the open file (close it to let go)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+", encoding="ascii")  # noqa: SIM115 - the caller holds it open: that is the lock
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise Held(f"{what} is held by another process{f' (pid {holder})' if holder else ''} ({path})") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh
