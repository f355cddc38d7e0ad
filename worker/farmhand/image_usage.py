"""Which images and cache volumes are farmhand's, and when a task last used each: the garbage collector's memory.

Docker cannot tell: an image has no "last used" time, and nothing tells an
image a task made farmhand pull from one an operator pulled by hand. So the
prepare stage writes it down here (``WORKING_DIR/gc.sqlite``): the references
and cache volumes a task is about to use, then the image ids it got and which
of them farmhand itself pulled. Only those are ever the collector's to remove.

The record is also the lease between a task and the collector. A task writes
its use *before* it looks at an image or a volume, and the collector removes
each thing inside a write transaction of the same database, after checking
that no task in progress names it. Either the task's write comes first, and
the collector sees the task and keeps the thing, or it waits for the removal
to finish, and the task finds the image gone and pulls it again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

DB_NAME = "gc.sqlite"
#: How long a task's write may wait for a removal in progress (one image or volume).
BUSY_TIMEOUT = 120.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    ref       TEXT PRIMARY KEY,   -- repo:tag or repo@digest, as a task named it (normalised)
    image_id  TEXT,               -- what it resolved to when last used
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    image_id  TEXT PRIMARY KEY,
    ours      INTEGER NOT NULL,   -- 1: farmhand pulled it (it was not on the host, or not as this id)
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS volumes (
    name      TEXT PRIMARY KEY,
    last_used REAL NOT NULL
);
"""


@dataclass
class Snapshot:
    """The whole record at one moment, for the collector's decisions."""

    refs: dict[str, tuple[str | None, float]] = field(default_factory=dict)  # ref -> (image id, last used)
    images: dict[str, tuple[bool, float]] = field(default_factory=dict)  # image id -> (ours, last used)
    volumes: dict[str, float] = field(default_factory=dict)  # volume name -> last used


#: One connection per record file and process, shared by its threads under a lock. Opening and closing
#: one per write would cost each task a WAL checkpoint (and its fsyncs) at every close.
_OPEN: dict[str, tuple[sqlite3.Connection, threading.RLock]] = {}
_OPEN_LOCK = threading.Lock()


class Usage:
    """The record of one WORKING_DIR, shared by the threads and processes that use it."""

    def __init__(self, working_dir: Path) -> None:
        self.path = Path(working_dir) / DB_NAME

    def _connection(self) -> tuple[sqlite3.Connection, threading.RLock]:
        key = str(self.path)
        with _OPEN_LOCK:
            found = _OPEN.get(key)
            if found is not None and self.path.exists():
                return found
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Group-writable: `farmhand gc` run as root and the worker's own user share it (the dir is setgid).
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o660)
                try:
                    os.fchmod(fd, 0o660)  # whatever the umask
                finally:
                    os.close(fd)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            _OPEN[key] = (db, threading.RLock())
            return _OPEN[key]

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db, lock = self._connection()
        with lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def touch(self, refs: Iterable[str] = (), volumes: Iterable[str] = (), now: float | None = None) -> None:
        """A task is about to use these image references and cache volumes (written before it looks at them)."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.executemany(
                "INSERT INTO refs (ref, image_id, last_used) VALUES (?, NULL, ?) ON CONFLICT(ref) DO UPDATE SET last_used = excluded.last_used",
                [(r, now) for r in refs],
            )
            db.executemany(
                "INSERT INTO volumes (name, last_used) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET last_used = excluded.last_used",
                [(v, now) for v in volumes],
            )

    def record_images(self, used: Mapping[str, str], pulled: Iterable[str] = (), now: float | None = None) -> None:
        """What the task's references resolved to (``used``: ref -> image id), and which ids farmhand pulled.

        An id once farmhand's stays farmhand's; one farmhand did not pull is
        recorded as used, never as farmhand's.
        """
        now = time.time() if now is None else now
        pulled = set(pulled)
        with self._write() as db:
            for ref, image_id in used.items():
                db.execute(
                    "INSERT INTO refs (ref, image_id, last_used) VALUES (?, ?, ?) "
                    "ON CONFLICT(ref) DO UPDATE SET image_id = excluded.image_id, last_used = excluded.last_used",
                    (ref, image_id, now),
                )
            for image_id in set(used.values()) | pulled:
                db.execute(
                    "INSERT INTO images (image_id, ours, last_used) VALUES (?, ?, ?) "
                    "ON CONFLICT(image_id) DO UPDATE SET ours = max(ours, excluded.ours), last_used = excluded.last_used",
                    (image_id, int(image_id in pulled), now),
                )

    def snapshot(self) -> Snapshot:
        if not self.path.exists():
            return Snapshot()
        db, lock = self._connection()
        with lock:
            return Snapshot(
                refs={r: (i, t) for r, i, t in db.execute("SELECT ref, image_id, last_used FROM refs")},
                images={i: (bool(o), t) for i, o, t in db.execute("SELECT image_id, ours, last_used FROM images")},
                volumes=dict(db.execute("SELECT name, last_used FROM volumes").fetchall()),
            )

    @contextmanager
    def removing(self) -> Iterator["Removal"]:
        """Hold the record's write lock while one thing is checked and removed: no task can start using it meanwhile."""
        with self._write() as db:
            yield Removal(db)


def local_id(client: Any, ref: str) -> str | None:
    """The id ``ref`` names on the host now, or None (before a pull that may replace it)."""
    from farmhand.docker_client import DOCKER_ERRORS

    try:
        return str(client.api.inspect_image(ref)["Id"])
    except DOCKER_ERRORS:
        return None


class Removal:
    """What the collector may read and change inside ``Usage.removing``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def image_last_used(self, image_id: str, refs: Iterable[str]) -> float:
        """The latest use of the image, by id or by any of its references; 0 when never."""
        times = [t for (t,) in self._db.execute("SELECT last_used FROM images WHERE image_id = ?", (image_id,))]
        for ref in refs:
            times += [t for (t,) in self._db.execute("SELECT last_used FROM refs WHERE ref = ?", (ref,))]
        return max(times, default=0.0)

    def volume_last_used(self, name: str) -> float:
        row = self._db.execute("SELECT last_used FROM volumes WHERE name = ?", (name,)).fetchone()
        return float(row[0]) if row else 0.0

    def forget_image(self, image_id: str, refs: Iterable[str]) -> None:
        self._db.execute("DELETE FROM images WHERE image_id = ?", (image_id,))
        self._db.executemany("DELETE FROM refs WHERE ref = ? AND (image_id IS NULL OR image_id = ?)", [(r, image_id) for r in refs])

    def forget_volume(self, name: str) -> None:
        self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
