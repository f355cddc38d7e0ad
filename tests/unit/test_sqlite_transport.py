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
