"""sd_notify against a real AF_UNIX datagram socket, named by a path and in the abstract namespace, as systemd binds it."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from farmhand import sd_notify


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's, and the NOTIFY_SOCKET value naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify.sock")
        sock.bind(name)
    else:
        name = f"@farmhand-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name[1:].encode())
    sock.settimeout(10)
    yield sock, name
    sock.close()


def test_ready_and_status_arrive_as_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    assert sd_notify.notify("READY=1", "STATUS=consuming default", environ={"NOTIFY_SOCKET": name})
    assert sock.recv(4096) == b"READY=1\nSTATUS=consuming default"


def test_no_socket_named_means_nothing_is_sent() -> None:
    assert sd_notify.notify("READY=1", environ={}) is False
    assert sd_notify.notify("READY=1", environ={"NOTIFY_SOCKET": "relative/name"}) is False


def test_a_socket_nobody_listens_on_is_reported_not_raised(tmp_path: Path) -> None:
    assert sd_notify.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_watchdog_interval_is_a_quarter_of_watchdog_usec_for_this_pid_only() -> None:
    assert sd_notify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 7.5
    assert sd_notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 7.5
    assert sd_notify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert sd_notify.watchdog_interval({}) is None
    assert sd_notify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def _pings(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(4096) for _ in range(count)]


def test_the_watchdog_pings_through_the_loop_it_is_given(listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    loop_thread: list[str] = []
    ran = threading.Semaphore(0)

    def schedule(ping: Callable[[], None]) -> None:
        """A main loop that runs what it is handed on its own thread."""

        def turn() -> None:
            loop_thread.append(threading.current_thread().name)
            ping()
            ran.release()

        threading.Thread(target=turn, name="main-loop").start()

    dog = sd_notify.Watchdog(0.01, environ={"NOTIFY_SOCKET": name})
    dog.schedule = schedule
    dog.start()
    try:
        assert _pings(sock, 3) == [b"WATCHDOG=1"] * 3
    finally:
        dog.stop()
    assert ran.acquire(timeout=10)
    assert set(loop_thread) == {"main-loop"}, "each ping was sent from the loop"


def test_a_hung_loop_gets_no_ping_and_a_missing_loop_is_pinged_directly(listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    asked = threading.Semaphore(0)
    dog = sd_notify.Watchdog(0.01, environ={"NOTIFY_SOCKET": name})
    dog.schedule = lambda ping: asked.release()  # a loop that takes the ping and never runs it
    dog.start()
    try:
        for _ in range(3):
            assert asked.acquire(timeout=10)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)  # asked three times, never pinged
        sock.settimeout(10)
        dog.schedule = None  # reconnecting: no loop to ask
        assert _pings(sock, 2) == [b"WATCHDOG=1"] * 2
    finally:
        dog.stop()
