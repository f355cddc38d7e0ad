"""The embedded broker: kombu's SQL transport's tables in a SQLite file under WORKING_DIR, woken, not polled fast.

kombu's SQLAlchemy transport polls its table: polled fast, an idle worker
burns CPU; polled slowly, every task waits for the poll (bench/README.md
has the figures). Here a publish wakes the consuming workers
(``wake``), so they react at once, and the poll, kept as a safety net, runs
once a second. Its result store is ``embedded_results``.

The tables are kombu's SQLAlchemy transport's (``kombu_queue``,
``kombu_message``, the same columns, indexes and row states), written with
the standard library's sqlite3: SQLAlchemy was most of what the embedded
broker added to an idle worker's memory (bench/README.md), for four statements.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from contextlib import closing
from datetime import datetime
from json import dumps, loads
from pathlib import Path
from time import monotonic
from typing import Any
from urllib.parse import unquote, urlsplit

from kombu.transport import virtual
from kombu.transport.virtual.base import Empty
from kombu.utils.encoding import bytes_to_str

from farmhand.dispatch import wake

MESSAGES = "kombu_message"  # kombu's default table name, which farmhand never changes
QUEUES = "kombu_queue"

#: kombu's SQLAlchemy models as SQLAlchemy creates them on SQLite: a broker file made by either reads the same.
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {QUEUES} (\n\tid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, \n\tname VARCHAR(200), \n\tUNIQUE (name)\n)",
    f"CREATE TABLE IF NOT EXISTS {MESSAGES} (\n\tid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, \n\tvisible BOOLEAN, \n\ttimestamp DATETIME, "
    f"\n\tpayload TEXT NOT NULL, \n\tversion SMALLINT NOT NULL, \n\tqueue_id INTEGER, \n\tCONSTRAINT \"FK_kombu_message_queue\" "
    f"FOREIGN KEY(queue_id) REFERENCES {QUEUES} (id)\n)",
    f"CREATE INDEX IF NOT EXISTS ix_kombu_message_visible ON {MESSAGES} (visible)",
    f"CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp_id ON {MESSAGES} (timestamp, id)",
    f"CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp ON {MESSAGES} (timestamp)",
)


def _write_ahead_log(db: sqlite3.Connection) -> None:
    """WAL for the broker file: readers no longer block the writer, and a commit is one append and
    fsync instead of a journal file created and deleted (commits were the largest part of a worker's
    busy time at CONCURRENCY=4). The mode is kept in the file, so this is a no-op after the first
    connection; a file still locked by another process keeps its mode for now."""
    try:
        db.execute("PRAGMA journal_mode=WAL").fetchall()
    except sqlite3.OperationalError:
        pass


def _private(path: str) -> str:
    """The broker file holds whole task documents, secret_env values included: it is created readable by
    the worker's user alone (SQLite gives its -wal and -shm files the same mode)."""
    if path and path != ":memory:" and not path.startswith("file:"):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    return path


def _database(url: str) -> str:
    """The SQLite file of ``[farmhand+]sqlite:///PATH`` (``sqlite:////abs/path``: absolute)."""
    path = urlsplit(url.split("+", 1)[-1]).path
    return unquote(path[1:] if path.startswith("/") else path)


def _now() -> str:
    """A DATETIME as SQLAlchemy writes one to SQLite (kombu stamps a message when it hands it over)."""
    return datetime.now().isoformat(" ", "microseconds")


def wake_directory(url: str) -> Path:
    """Where the wake-up sockets of the SQLite file at ``url`` live: beside it."""
    return Path(_database(url) or ".").resolve().parent


def restore_unacknowledged(url: str) -> int:
    """At a worker's start: give back every message a dead process took and never acknowledged.

    kombu's SQLAlchemy transport hides a message when it hands it over and
    has no delivery timeout to show it again, so a worker killed while it
    held a fetched task it had not yet journaled (a full node keeps one)
    lost that task. Acknowledged messages are deleted (``Channel.basic_ack``),
    so what is still hidden at start was never acknowledged. One worker
    serves an embedded broker, so none of it belongs to a live process; a
    task that was journaled after all comes back as a duplicate delivery,
    which the journal refuses to run again. Returns how many came back.
    """
    try:
        with closing(sqlite3.connect(_private(_database(url)), timeout=30)) as db, db:
            return db.execute(f"UPDATE {MESSAGES} SET visible = 1 WHERE visible = 0").rowcount
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # nothing was ever published
            return 0
        raise


class Channel(virtual.Channel):
    """Wakes consumers on publish; deletes a message once acknowledged, and shows it again if given back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: dict[str, int] = {}  # delivery tag -> message row, for messages handed over and not yet settled
        url = self.connection.client.hostname
        self._database, self._wake_dir = _database(url), wake_directory(url)  # once, not per publish and ack
        self._db: sqlite3.Connection | None = None  # the channel's own connection, opened on first use
        self._lock = threading.Lock()
        self._queue_ids: dict[str, int] = {}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(_private(self._database), timeout=30, isolation_level=None, check_same_thread=False)
            _write_ahead_log(db)
            for statement in SCHEMA:
                db.execute(statement)
            self._db = db
        return self._db

    def _queue_id(self, queue: str) -> int:
        qid = self._queue_ids.get(queue)
        if qid is None:
            self.db.execute(f"INSERT OR IGNORE INTO {QUEUES} (name) VALUES (?)", (queue,))
            qid = self._queue_ids[queue] = self.db.execute(f"SELECT id FROM {QUEUES} WHERE name = ?", (queue,)).fetchone()[0]
        return qid

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        with self._lock:
            self._queue_id(queue)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        with self._lock:
            self.db.execute(
                f"INSERT INTO {MESSAGES} (visible, payload, version, queue_id) VALUES (1, ?, 1, ?)", (dumps(payload), self._queue_id(queue))
            )
        wake.notify(self._wake_dir, "consumer")

    def _get(self, queue: str) -> Any:
        with self._lock:
            qid = self._queue_id(queue)
            db = self.db
            db.execute("BEGIN IMMEDIATE TRANSACTION")
            try:
                found = db.execute(
                    f"SELECT id, payload FROM {MESSAGES} WHERE queue_id = ? AND visible != 0 ORDER BY timestamp, id LIMIT 1", (qid,)
                ).fetchone()
                if found is None:
                    raise Empty()
                db.execute(f"UPDATE {MESSAGES} SET visible = 0, timestamp = ?, version = version + 1 WHERE id = ?", (_now(), found[0]))
                payload = loads(bytes_to_str(found[1]))
                self._rows[payload["properties"]["delivery_tag"]] = found[0]
                return payload
            finally:
                db.execute("COMMIT")

    def _size(self, queue: str) -> int:
        with self._lock:
            return int(self.db.execute(f"SELECT count(*) FROM {MESSAGES} WHERE queue_id = ? AND visible = 1", (self._queue_id(queue),)).fetchone()[0])

    def _purge(self, queue: str) -> int:
        """Every message of ``queue`` goes; the count is of those still waiting, as kombu's."""
        with self._lock:
            qid, db = self._queue_id(queue), self.db
            db.execute("BEGIN IMMEDIATE TRANSACTION")
            try:
                waiting = int(db.execute(f"SELECT count(*) FROM {MESSAGES} WHERE queue_id = ? AND visible = 1", (qid,)).fetchone()[0])
                db.execute(f"DELETE FROM {MESSAGES} WHERE queue_id = ?", (qid,))
            finally:
                db.execute("COMMIT")
            return waiting

    def close(self) -> None:
        super().close()
        if self._db is not None:
            self._db.close()
            self._db = None

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        self._settle(delivery_tag, "DELETE FROM {table} WHERE id = ?")

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)  # a requeue comes back through _restore first
        self._settle(delivery_tag, "DELETE FROM {table} WHERE id = ?")

    def _restore(self, message: Any) -> None:
        """Given back (requeued, or unacknowledged at a clean stop): show the row again, not a copy of it."""
        if not self._settle(message.delivery_tag, "UPDATE {table} SET visible = 1 WHERE id = ?"):
            super()._restore(message)

    def _settle(self, delivery_tag: str, statement: str) -> bool:
        # Acks come from the task threads: a connection of their own, never the consumer's session.
        row = self._rows.pop(delivery_tag, None)
        if row is None:
            return False
        with closing(sqlite3.connect(self._database, timeout=30)) as db, db:
            db.execute(statement.format(table=MESSAGES), (row,))
        return True


class Transport(virtual.Transport):
    Channel = Channel
    polling_interval = wake.SAFETY_POLL
    can_parse_url = True
    default_port = 0
    driver_type = "sql"
    driver_name = "sqlite"
    connection_errors = (sqlite3.OperationalError,)

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's loop, with its sleep between empty polls replaced by a wait for a publisher's wake-up."""
        listener = self._listener()
        started = monotonic()
        woken = False
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                left = wake.SAFETY_POLL if timeout is None else timeout - (monotonic() - started)
                if left <= 0 or woken:
                    # A wake-up that brought nothing for the queues consumed now is often a freed slot: the
                    # worker's loop must get control back to run its pending consume, not sleep out the timeout.
                    raise socket.timeout() from None
                woken = listener.wait(min(wake.SAFETY_POLL, left))

    def _listener(self) -> wake.Listener | wake.Sleeper:
        listener: wake.Listener | wake.Sleeper | None = getattr(self, "_wake", None)
        if listener is None:
            listener = self._wake = wake.listen(wake_directory(self.client.hostname), "consumer")
        return listener

    def close_connection(self, connection: Any) -> None:
        listener = getattr(self, "_wake", None)
        if listener is not None:
            listener.close()
            self._wake = None
        super().close_connection(connection)
