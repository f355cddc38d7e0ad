"""When the Docker engine goes away or stops answering under a running task.

dockerd restarts under running tasks: an upgrade, a crash, or an operator
clearing a deadlock (Debian 12's dockerd 20.10 can deadlock for good when
containers on one network come and go fast, moby/moby#46661; farmhand's
``network: none`` containers stay off Docker's networking for that reason,
but ``bridge`` tasks and their services do not). With live-restore, which
the appliance's daemon.json sets, the container keeps running meanwhile. So
a broken connection is not the task's end: the wait, the log stream and the
final inspect wait for the engine to answer again, then watch the same
container again, as Nomad's docker driver re-attaches to its containers.

An engine that keeps the connection open and never answers is told apart by
a probe: an inspect of the task's container, which needs the container's
lock in dockerd, answered within ``docker.timeout``. A probe that is not
answered is reported once with what clears it; the task keeps waiting.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any, Callable

import requests
import urllib3

#: A connection to the engine broken under a call, as docker-py, requests, urllib3 and the stdlib raise it.
GONE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    http.client.HTTPException,
    ConnectionError,
)
#: How often a task that runs asks whether its engine still answers (seconds).
PROBE_EVERY = 60.0
#: Ping intervals while the engine is away: quick at first, then at most this often (seconds).
FIRST_PAUSE, MAX_PAUSE = 0.2, 5.0

STUCK = (
    "the Docker engine has not answered an inspect of container {cid} within {timeout:.0f}s: dockerd may be deadlocked "
    "(Debian 12's dockerd 20.10 can be, moby/moby#46661). `systemctl restart docker` clears it; with live-restore the "
    "task runs on and this worker watches it again"
)


def gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection to the engine broke (not that the engine refused something)."""
    return isinstance(exc, GONE)


class EngineWatch:
    """One task's view of its engine's outages, shared by the threads that talk to Docker for it.

    ``outages`` counts the times the engine went away and came back while
    the task's container was watched: a container that exited meanwhile may
    have lost its exit status (see ``run_outcome``).
    """

    def __init__(
        self, api: Any, report: Callable[[str], None], container_id: str, timeout: float, give_up: Callable[[], bool]
    ) -> None:
        """``give_up()``: whether to stop waiting for an engine that is away (the task's clocks ran out, or it was cancelled)."""
        self._api = api
        self._give_up = give_up
        self._report = report
        self._cid = container_id
        self._timeout = timeout
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._probing = False
        self._stuck_told = False
        self._last_probe = time.monotonic()
        self.outages = 0

    def wait_back(self, exc: BaseException) -> bool:
        """After ``exc`` broke a call: wait until the engine answers a ping; False if ``give_up()`` said stop first."""
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                self.outages += 1
                self._report(
                    f"the Docker engine went away ({type(exc).__name__}): waiting for it to answer again; "
                    "the container runs on if dockerd has live-restore"
                )
        pause = FIRST_PAUSE
        while not self._answers():
            if self._give_up():
                return False
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
        with self._lock:
            if self._down_since is not None:
                self._report(f"the Docker engine answers again after {time.monotonic() - self._down_since:.1f}s: watching container {self._cid[:12]} again")
                self._down_since = None
        return True

    def _answers(self) -> bool:
        try:
            return bool(self._api.ping())
        except Exception:  # noqa: BLE001 - anything but an answer means not yet
            return False

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, called again each time the engine went away under it and came back."""
        while True:
            try:
                return fn()
            except BaseException as exc:
                if not gone(exc) or not self.wait_back(exc):
                    raise

    def maybe_probe(self) -> None:
        """Every ``PROBE_EVERY`` seconds, in a thread of its own: does the engine still answer for this container?"""
        now = time.monotonic()
        with self._lock:
            if self._probing or now - self._last_probe < PROBE_EVERY or self._down_since is not None:
                return
            self._probing, self._last_probe = True, now
        threading.Thread(target=self._probe, name=f"probe:{self._cid[:12]}", daemon=True).start()

    def _probe(self) -> None:
        try:
            self._api.inspect_container(self._cid)
        except requests.exceptions.Timeout:
            if not self._stuck_told:
                self._stuck_told = True
                self._report(STUCK.format(cid=self._cid[:12], timeout=self._timeout))
        except Exception:  # noqa: BLE001 - gone, or removed: the wait and the stream see to those
            pass
        finally:
            with self._lock:
                self._probing = False
