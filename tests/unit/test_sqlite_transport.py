"""The embedded broker's start-up give-back, on SQLite files as kombu leaves them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from farmhand.dispatch.sqlite_transport import restore_unacknowledged, wake_directory


def test_a_broker_nobody_published_to_has_nothing_to_give_back(tmp_path: Path) -> None:
    assert restore_unacknowledged(f"farmhand+sqlite:///{tmp_path}/broker.sqlite") == 0


def test_hidden_messages_become_visible_again(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kombu_message (id INTEGER PRIMARY KEY, visible BOOLEAN, payload TEXT)")
        db.executemany("INSERT INTO kombu_message (visible, payload) VALUES (?, ?)", [(0, "taken"), (1, "queued")])
    assert restore_unacknowledged(f"farmhand+sqlite:///{path}") == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM kombu_message WHERE visible = 1").fetchone()[0] == 2


def test_wake_sockets_live_beside_the_database(tmp_path: Path) -> None:
    assert wake_directory(f"farmhand+sqlite:///{tmp_path}/broker.sqlite") == tmp_path.resolve()
    assert wake_directory(f"sqlite:///{tmp_path}/r.sqlite") == tmp_path.resolve()


def _queue(url: str):  # type: ignore[no-untyped-def]
    import farmhand.dispatch.settings  # noqa: F401 - registers the farmhand+sqlite transport
    from kombu import Connection

    conn = Connection(url)
    return conn, conn.SimpleQueue("default")


def test_messages_go_out_in_order_once_and_come_back_when_given_back(tmp_path: Path) -> None:
    conn, q = _queue(f"farmhand+sqlite:///{tmp_path}/broker.sqlite")
    with conn:
        for n in range(3):
            q.put({"n": n})
        assert q.qsize() == 3
        first = q.get(timeout=1)
        assert first.payload == {"n": 0} and q.qsize() == 2
        first.ack()
        second = q.get(timeout=1)
        second.requeue()  # given back: the same row shows again, no copy
        assert q.qsize() == 2
        assert sorted(q.get(timeout=1).payload["n"] for _ in range(2)) == [1, 2]
        with sqlite3.connect(tmp_path / "broker.sqlite") as db:
            assert db.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 2  # two handed over, not yet settled
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        q.put({"n": 3})
        assert q.clear() == 1


def test_a_broker_file_reads_the_same_with_kombus_sqlalchemy_transport(tmp_path: Path) -> None:
    """The tables are kombu's: a file either transport made serves the other (an upgrade keeps its queue)."""
    theirs, ours = f"sqla+sqlite:///{tmp_path}/a.sqlite", f"farmhand+sqlite:///{tmp_path}/a.sqlite"
    conn, q = _queue(theirs)
    with conn:
        q.put({"from": "sqlalchemy"})
    conn, q = _queue(ours)
    with conn:
        q.put({"from": "farmhand"})
        got = q.get(timeout=1)
        assert got.payload == {"from": "sqlalchemy"}
        got.ack()
    conn, q = _queue(theirs)
    with conn:
        assert q.qsize() == 1 and q.get(timeout=1).payload == {"from": "farmhand"}
    conn, q = _queue(f"farmhand+sqlite:///{tmp_path}/b.sqlite")
    with conn:
        q.put({})
    conn, q = _queue(f"sqla+sqlite:///{tmp_path}/c.sqlite")
    with conn:
        q.put({})
    schema = {}
    for name in ("b", "c"):
        with sqlite3.connect(tmp_path / f"{name}.sqlite") as db:
            schema[name] = sorted(db.execute("SELECT type, name, sql FROM sqlite_master"))
    assert schema["b"] == schema["c"]


def test_the_broker_file_is_readable_by_the_worker_alone(tmp_path: Path) -> None:
    # It holds whole task documents, secret_env values in clear: another local user must not read them.
    conn, q = _queue(f"farmhand+sqlite:///{tmp_path}/broker.sqlite")
    with conn:
        q.put({"secret": "s3cret"})
        q.get(timeout=1).ack()
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("broker.sqlite*")}
    assert "broker.sqlite" in modes and set(modes.values()) == {0o600}, modes


def test_a_wake_up_that_brings_nothing_hands_control_back_to_the_worker_loop(tmp_path: Path) -> None:
    """A freed slot wakes the consumer; its loop must run the pending consume then, not sleep out drain_events."""
    import socket
    import threading

    from farmhand.dispatch import wake

    conn, q = _queue(f"farmhand+sqlite:///{tmp_path}/broker.sqlite")
    with conn:
        q.consumer  # noqa: B018 - consumes "default", which stays empty
        outcome: list[str] = []
        listening = threading.Event()

        def drain() -> None:
            conn.transport._listener()  # made before the wake-up is sent
            listening.set()
            try:
                conn.drain_events(timeout=None)  # forever, but for a wake-up
                outcome.append("delivered")
            except socket.timeout:
                outcome.append("returned")

        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        assert listening.wait(30)
        for _ in range(150):  # up to 30 s of wake-ups, each a chance to return
            if outcome:
                break
            wake.notify(tmp_path, "consumer")
            thread.join(0.2)
        assert outcome == ["returned"]
