"""Wake-ups between processes on the embedded broker: delivered, used up, and safe with dead listeners."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from farmhand.dispatch import wake


def test_a_notify_wakes_the_listeners_of_its_role_only(tmp_path: Path) -> None:
    consumer, results = wake.Listener(tmp_path, "consumer"), wake.Listener(tmp_path, "results")
    try:
        wake.notify(tmp_path, "consumer")
        assert consumer.wait(1) is True
        assert results.wait(0) is False
    finally:
        consumer.close()
        results.close()


def test_pending_wake_ups_are_used_up_by_one_wait(tmp_path: Path) -> None:
    listener = wake.Listener(tmp_path, "consumer")
    try:
        for _ in range(5):
            wake.notify(tmp_path, "consumer")
        assert listener.wait(1) is True
        started = time.monotonic()
        assert listener.wait(0.2) is False
        assert time.monotonic() - started >= 0.15
    finally:
        listener.close()


def test_a_wait_returns_as_soon_as_another_thread_notifies(tmp_path: Path) -> None:
    listener = wake.Listener(tmp_path, "results")
    try:
        threading.Timer(0.1, wake.notify, args=(tmp_path, "results")).start()
        started = time.monotonic()
        assert listener.wait(5) is True
        assert time.monotonic() - started < 2
    finally:
        listener.close()


def test_a_working_dir_longer_than_a_socket_address_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    listener = wake.Listener(deep, "consumer")
    try:
        assert len(str(deep / "wake" / listener.name)) > 108
        wake.notify(deep, "consumer")
        assert listener.wait(1) is True
    finally:
        listener.close()
    assert os.listdir(deep / "wake") == []


def test_the_socket_of_a_dead_listener_is_removed_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "wake").mkdir()
    dead = tmp_path / "wake" / "consumer-1-dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(dead))  # bound, then closed: what a killed worker leaves
    live = wake.Listener(tmp_path, "consumer")
    try:
        wake.notify(tmp_path, "consumer")
        assert live.wait(1) is True
        assert not dead.exists()
    finally:
        live.close()


def test_notify_with_no_listener_does_nothing(tmp_path: Path) -> None:
    wake.notify(tmp_path, "consumer")
    assert not (tmp_path / "wake").exists()


def test_where_no_socket_can_be_made_waiting_falls_back_to_sleeping(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    waiter = wake.listen(blocked, "results")
    assert isinstance(waiter, wake.Sleeper)
    started = time.monotonic()
    assert waiter.wait(0.1) is False
    assert time.monotonic() - started >= 0.09
    waiter.close()
