"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file under WORKING_DIR, woken, not polled fast.

kombu's SQLAlchemy transport polls its table: polled fast, an idle worker
burns CPU; polled slowly, every task waits for the poll (bench/README.md
has the figures). Here a publish wakes the consuming workers
(``wake``), so they react at once, and the poll, kept as a safety net, runs
once a second. Its result store is ``embedded_results``.
"""

from __future__ import annotations

import socket
import sqlite3
from contextlib import closing
from json import loads
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.transport.sqlalchemy import Channel as SQLChannel
from kombu.transport.sqlalchemy import Transport as SQLTransport
from kombu.transport.virtual.base import Empty
from kombu.utils.encoding import bytes_to_str
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url

from farmhand.dispatch import wake

MESSAGES = "kombu_message"  # kombu's default table name, which farmhand never changes


@event.listens_for(Engine, "connect")
def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """WAL for the broker file: readers no longer block the writer, and a commit is one append and
    fsync instead of a journal file created and deleted (commits were the largest part of a worker's
    busy time at CONCURRENCY=4). The mode is kept in the file, so this is a no-op after the first
    connection; a file still locked by another process keeps its mode for now."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchall()
        except sqlite3.OperationalError:
            pass


def _database(url: str) -> str:
    """The SQLite file of ``[farmhand+]sqlite:///PATH``."""
    return make_url(url.split("+", 1)[-1]).database or ""


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
        with closing(sqlite3.connect(_database(url), timeout=30)) as db, db:
            return db.execute(f"UPDATE {MESSAGES} SET visible = 1 WHERE visible = 0").rowcount
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # nothing was ever published
            return 0
        raise


class Channel(SQLChannel):
    """Wakes consumers on publish; deletes a message once acknowledged, and shows it again if given back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: dict[str, int] = {}  # delivery tag -> message row, for messages handed over and not yet settled
        url = self.connection.client.hostname
        self._database, self._wake_dir = _database(url), wake_directory(url)  # once, not per publish and ack

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        super()._put(queue, payload, **kwargs)
        wake.notify(self._wake_dir, "consumer")

    def _get(self, queue: str) -> Any:
        obj = self._get_or_create(queue)
        self.session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = (
                self.session.query(self.message_cls)
                .filter(self.message_cls.queue_id == obj.id, self.message_cls.visible != False)  # noqa: E712 - SQL
                .order_by(self.message_cls.sent_at, self.message_cls.id)
                .limit(1)
                .first()
            )
            if msg is None:
                raise Empty()
            msg.visible = False
            payload = loads(bytes_to_str(msg.payload))
            self._rows[payload["properties"]["delivery_tag"]] = msg.id
            return payload
        finally:
            self.session.commit()

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


class Transport(SQLTransport):
    Channel = Channel
    polling_interval = wake.SAFETY_POLL

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's loop, with its sleep between empty polls replaced by a wait for a publisher's wake-up."""
        listener = self._listener()
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                left = wake.SAFETY_POLL if timeout is None else timeout - (monotonic() - started)
                if left <= 0:
                    raise socket.timeout() from None
                listener.wait(min(wake.SAFETY_POLL, left))

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
