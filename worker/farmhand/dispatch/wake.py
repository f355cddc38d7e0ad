"""Wake-ups between processes sharing the embedded SQLite broker, so nobody polls fast.

A SQLite table cannot tell a reader that a row arrived, so a consumer would
have to poll it often (latency) or rarely (a trivial task waits up to a whole
interval, twice: once for the worker to see it and once for the client to see
its result). Instead each waiting process binds a Unix datagram socket in
``DIR/wake/`` and sleeps on it; whoever writes (a publisher, the result
store) sends one byte to every socket of the role it concerns. Polling stays
as the safety net, at a slow interval: a lost wake-up costs latency, never a
task.

Socket paths are bound through ``/proc/self/fd/N/NAME`` of the directory, so
a long WORKING_DIR does not hit the 108-byte limit of a socket address.
"""

from __future__ import annotations

import os
import select
import socket
import time
import uuid
from pathlib import Path

SUFFIX = ".sock"
SAFETY_POLL = 1.0  # seconds a waiter sleeps at most when no wake-up comes: the net under a lost one


class Listener:
    """One process's wake-up socket for ``role`` (e.g. ``consumer``, ``results``); close it when done."""

    def __init__(self, directory: Path, role: str) -> None:
        self.dir = directory / "wake"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = f"{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with _dir_fd(self.dir) as fd:
            self.sock.bind(f"/proc/self/fd/{fd}/{self.name}")

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout``; True if woken. Every pending wake-up is used up."""
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        woken = False
        while ready:
            try:
                self.sock.recv(64)
                woken = True
            except BlockingIOError:
                break
        return woken

    def close(self) -> None:
        self.sock.close()
        try:
            (self.dir / self.name).unlink()
        except FileNotFoundError:
            pass


class Sleeper:
    """What a process waits on when it may not make a wake-up socket there (permissions): plain polling."""

    def wait(self, timeout: float) -> bool:
        time.sleep(max(timeout, 0))
        return False

    def close(self) -> None:
        pass


def listen(directory: Path, role: str) -> Listener | Sleeper:
    """A wake-up socket for ``role``, or, where one cannot be made, a sleeper: wake-ups save latency, never tasks."""
    try:
        return Listener(directory, role)
    except OSError:
        return Sleeper()


def notify(directory: Path, role: str) -> None:
    """Wake every listener of ``role``; a socket nobody listens on any more (its process died) is removed."""
    wake_dir = directory / "wake"
    try:
        names = [n for n in os.listdir(wake_dir) if n.startswith(f"{role}-") and n.endswith(SUFFIX)]
    except FileNotFoundError:
        return
    if not names:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, _dir_fd(wake_dir) as fd:
        sock.setblocking(False)
        for name in names:
            try:
                sock.sendto(b"!", f"/proc/self/fd/{fd}/{name}")
            except (ConnectionRefusedError, FileNotFoundError):
                _unlink_quietly(wake_dir / name)
            except OSError:  # a full queue is already a wake-up; anything else costs latency only
                pass


class _dir_fd:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY)
        return self.fd

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
