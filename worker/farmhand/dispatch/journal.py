"""The worker's journal: every task it accepted, from before its container starts until its result is reported.

A message a broker delivered is acknowledged only once the task is written
here (SQLite, fsynced, under WORKING_DIR), so from then on the task's fate is
the worker's: a worker killed at any point finds the task here on its next
start and carries it on (see ``Engine.resume``), and the broker's delivery
timeouts can never hand the same task to a second run. The result is
recorded here before it is reported, so a report lost to a crash is made
again, from the same document.

The journal knows nothing of the dispatcher: ``context`` is the dispatcher's
own (a Celery reply-to, say), kept so a report can be made after a restart.
It also keeps every cancellation for good, and carries requests (cancel,
drain) from local commands to the worker, for brokers that cannot broadcast.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id     TEXT PRIMARY KEY,
    document    TEXT,             -- the task as received (secrets included; the file is 0600); dropped once reported
    context     TEXT NOT NULL,    -- the dispatcher's reply details
    accepted_at REAL NOT NULL,
    stage       TEXT NOT NULL,    -- received, prepare, run, collect, cleanup, upload, finished
    result      TEXT,             -- the result document, once recorded
    reported_at REAL
);
CREATE TABLE IF NOT EXISTS revoked (
    task_id    TEXT PRIMARY KEY,  -- cancelled: never to run, however late or often it is delivered
    revoked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    command    TEXT NOT NULL,
    argument   TEXT,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    task_id: str
    document: Any
    context: dict[str, Any]
    accepted_at: float
    stage: str
    result: dict[str, Any] | None
    reported_at: float | None

    @property
    def finished(self) -> bool:
        return self.result is not None


class Journal:
    """One connection shared by the worker's threads, serialised by a lock (SQLite's own rule)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # task documents can carry secrets
        os.close(fd)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged task must survive a power cut
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # -- tasks -------------------------------------------------------------------
    def accept(self, task_id: str, document: Any, context: dict[str, Any]) -> bool:
        """Record a newly delivered task; False when it is already here (a second delivery)."""
        cur = self._run(
            "INSERT OR IGNORE INTO tasks (task_id, document, context, accepted_at, stage) VALUES (?, ?, ?, ?, 'received')",
            (task_id, json.dumps(document), json.dumps(context), time.time()),
        )
        return cur.rowcount == 1

    def set_stage(self, task_id: str, stage: str) -> None:
        """For people and logs only (a resume goes on from the task's checkpoint), so not synced: the
        next synced commit (a result, an acceptance) carries it to disk with its own."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("UPDATE tasks SET stage = ? WHERE task_id = ? AND result IS NULL", (stage, task_id))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def record_result(self, task_id: str, result: dict[str, Any]) -> None:
        self._run("UPDATE tasks SET stage = 'finished', result = ? WHERE task_id = ?", (json.dumps(result), task_id))

    def mark_reported(self, task_id: str) -> None:
        """The dispatcher has the result: forget the document (and its secrets), keep the record."""
        self._run("UPDATE tasks SET reported_at = ?, document = NULL WHERE task_id = ?", (time.time(), task_id))

    def get(self, task_id: str) -> Entry | None:
        row = self._run("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _entry(row) if row else None

    def unreported(self) -> list[Entry]:
        """Tasks accepted by an earlier process whose results nobody has heard yet, oldest first."""
        rows = self._run("SELECT * FROM tasks WHERE reported_at IS NULL ORDER BY accepted_at").fetchall()
        return [_entry(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._run("SELECT stage, COUNT(*) FROM tasks WHERE reported_at IS NULL GROUP BY stage").fetchall()
        return {stage: n for stage, n in rows}

    # -- cancellations -------------------------------------------------------------
    def revoke(self, task_id: str) -> None:
        """Remember for good that ``task_id`` is cancelled: unlike Celery's revoked set it survives
        restarts of any kind and never expires, and it is plain data (Celery keeps its set in a pickle)."""
        self._run("INSERT OR IGNORE INTO revoked (task_id, revoked_at) VALUES (?, ?)", (task_id, time.time()))

    def is_revoked(self, task_id: str) -> bool:
        return self._run("SELECT 1 FROM revoked WHERE task_id = ?", (task_id,)).fetchone() is not None

    # -- local requests ----------------------------------------------------------
    def request(self, command: str, argument: str | None = None) -> None:
        self._run("INSERT INTO requests (command, argument, created_at) VALUES (?, ?, ?)", (command, argument, time.time()))

    def take_requests(self) -> list[tuple[str, str | None]]:
        """Requests made since the last call, each handed out once."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT id, command, argument FROM requests ORDER BY id").fetchall()
                self._db.execute("DELETE FROM requests WHERE id <= ?", (rows[-1][0] if rows else -1,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [(command, argument) for _, command, argument in rows]


def _entry(row: tuple[Any, ...]) -> Entry:
    task_id, document, context, accepted_at, stage, result, reported_at = row
    return Entry(
        task_id=task_id,
        document=json.loads(document) if document is not None else None,
        context=json.loads(context),
        accepted_at=accepted_at,
        stage=stage,
        result=json.loads(result) if result is not None else None,
        reported_at=reported_at,
    )
