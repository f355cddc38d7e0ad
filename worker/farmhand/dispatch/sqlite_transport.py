"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file under WORKING_DIR, woken, not polled fast.

kombu's SQLAlchemy transport polls its table. Polled every 0.1 s, a trivial
task waited about 50 ms for the worker to see it, and an idle worker spent
2 % of a core polling. Here a publish wakes the consuming workers
(``wake``), so they react at once, and the poll, kept as a safety net, runs
once a second. Its result store is ``embedded_results``.

kombu hands every transport option of this transport to SQLAlchemy's
``create_engine``, so the interval is set on the transport class, whose
``drain_events`` reads it there.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.transport.sqlalchemy import Channel as SQLChannel
from kombu.transport.sqlalchemy import Transport as SQLTransport
from kombu.transport.virtual.base import Empty
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from farmhand.dispatch import wake

SAFETY_POLL = 1.0  # seconds between polls when no wake-up comes


@event.listens_for(Engine, "connect")
def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """WAL for the broker and result files: readers no longer block the writer, and a commit is one
    append and fsync instead of a journal file created and deleted (the commits were the largest part
    of a worker's busy time at CONCURRENCY=4). The mode is kept in the file, so this is a no-op after
    the first connection; a file still locked by another process keeps its mode for now."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchall()
        except sqlite3.OperationalError:
            pass


def wake_directory(url: str) -> Path:
    """Where the wake-up sockets of the SQLite file at ``url`` (``[farmhand+]sqlite:///PATH``) live: beside it."""
    return Path(make_url(url.split("+", 1)[-1]).database or ".").resolve().parent


class Channel(SQLChannel):
    polling_interval = SAFETY_POLL

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        super()._put(queue, payload, **kwargs)
        wake.notify(wake_directory(self.connection.client.hostname), "consumer")


class Transport(SQLTransport):
    Channel = Channel
    polling_interval = SAFETY_POLL

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's loop, with its sleep between empty polls replaced by a wait for a publisher's wake-up."""
        listener = self._listener()
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                left = SAFETY_POLL if timeout is None else timeout - (monotonic() - started)
                if left <= 0:
                    raise socket.timeout() from None
                listener.wait(min(SAFETY_POLL, left))

    def _listener(self) -> wake.Listener:
        listener: wake.Listener | None = getattr(self, "_wake", None)
        if listener is None:
            listener = self._wake = wake.Listener(wake_directory(self.client.hostname), "consumer")
        return listener

    def close_connection(self, connection: Any) -> None:
        listener = getattr(self, "_wake", None)
        if listener is not None:
            listener.close()
            self._wake = None
        super().close_connection(connection)
