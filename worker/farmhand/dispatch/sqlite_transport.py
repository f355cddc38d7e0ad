"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled often.

kombu hands every transport option of this transport to SQLAlchemy's
``create_engine`` (so ``polling_interval`` cannot be passed as one); the
interval is set on the transport class instead, whose ``drain_events`` sleeps
it between empty polls (kombu's default is 1 s, which made submit→start take
0.5 s on average). 0.1 s keeps submit→start latency low; an idle poll of a
SQLite table costs next to nothing (bench/dispatch.py measures both).
"""

from __future__ import annotations

from kombu.transport.sqlalchemy import Channel as SQLChannel
from kombu.transport.sqlalchemy import Transport as SQLTransport


class Channel(SQLChannel):
    polling_interval = 0.1


class Transport(SQLTransport):
    Channel = Channel
    polling_interval = 0.1  # kombu's virtual Transport.drain_events reads it here, not on the channel

