"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), spoken over the datagram socket it names.

The unit waits for ``READY=1`` before calling the worker started, and kills
and restarts a worker whose ``WATCHDOG=1`` stops coming: a main loop that
hangs (a deadlock, a stuck broker call) is then treated like a crash, and the
next start re-adopts the running tasks as after ``kill -9``. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing, so the worker runs the same
anywhere. The protocol is one datagram of ``KEY=VALUE`` lines; libsystemd is
not needed for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Mapping

log = logging.getLogger("farmhand.sd_notify")


def socket_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """Where systemd listens, or None outside a notify unit. A name starting with '@' is in the
    abstract namespace (a leading NUL byte), as sd_notify(3) specifies."""
    name = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name ('@...'); systemd is not notified", name)
    return None


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``) to systemd; True when sent.

    Never raises: a notification systemd cannot take must not stop the
    worker (systemd then acts on its own timeouts, which is the point).
    """
    address = socket_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("systemd notification %s not sent: %s", fields, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two WATCHDOG=1, or None when this process has no watchdog (none set, or one
    meant for another PID). A quarter of WatchdogSec, where sd_watchdog_enabled(3) advises half: a
    ping waits for the main loop's next turn, which an idle event loop may put off by its poll timeout."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 4e6


class Watchdog:
    """Keeps systemd's watchdog fed from the loop that must not hang.

    A thread asks ``schedule`` (the consumer's ``call_soon``) to run the
    ping inside the main loop: while the loop turns, systemd is fed; when it
    hangs, the pings stop and systemd restarts the worker. With no loop to
    ask (``schedule`` None: reconnecting to the broker), the thread pings
    itself, so a broker outage is not taken for a hang.
    """

    def __init__(self, interval: float, environ: Mapping[str, str] | None = None) -> None:
        self.interval = interval
        self.environ = environ
        self.schedule: Callable[[Callable[[], None]], object] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def ping(self) -> None:
        notify("WATCHDOG=1", environ=self.environ)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            schedule = self.schedule
            if schedule is None:
                self.ping()
                continue
            try:
                schedule(self.ping)
            except Exception as exc:  # noqa: BLE001 - the loop is going away; the next turn pings directly
                log.debug("watchdog ping not scheduled: %s", exc)
