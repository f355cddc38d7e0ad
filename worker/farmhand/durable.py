"""What "on disk" means before farmhand deletes the last other copy of something.

A file's bytes survive a power cut once the file is fsynced; its *name* only
once the directory holding it is. Every place that renames a result, a log or
a pending entry into place and then deletes the copy it came from goes through
here, so none of them forgets the second half.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Sync a file someone else wrote (a hard link, a copy) before its other name goes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Sync ``path``'s entries: the names created, renamed or linked in it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot sync a directory (EINVAL) and keep their
        # entries by other means; any other error is a real failure.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def replace(source: Path | str, dest: Path) -> None:
    """``os.replace`` whose new name is on disk when it returns (``source`` already synced by the writer)."""
    os.replace(source, dest)
    fsync_dir(dest.parent)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new entries are on disk: each created directory lives in its parent's entries."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if not missing:
        return
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):  # top down: the existing ancestor first, then each new level
        fsync_dir(created.parent)
