"""Helpers shared by the integration tests (imported as ``support``)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from decompressing import open_decompressed

BUSYBOX = "farmhand-test/busybox:latest"


class Recorder:
    """Reporter that keeps what the engine said, for assertions on stages and progress."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def stage_started(self, task_id: str, stage: str) -> None:
        self.events.append(("start", stage))

    def stage_finished(self, task_id: str, stage: str, outcome: str, duration: float) -> None:
        self.events.append(("end", stage, outcome))

    def progress(self, task_id: str, stage: str, message: str, **fields: Any) -> None:
        self.events.append(("progress", stage, message))


def busybox_task(script: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"image": BUSYBOX, "pull": "never", "command": ["sh", "-c", script], "max_run_time": 60}
    doc.update(fields)
    return doc


def web_service(page_command: str) -> dict[str, Any]:
    """A service named ``web`` serving on port 8080 the page that ``page_command`` writes to /www/index.html."""
    return {
        "name": "web",
        "image": BUSYBOX,
        "pull": "never",
        "command": ["sh", "-c", f"mkdir -p /www && {page_command} > /www/index.html && exec httpd -f -p 8080 -h /www"],
        "readiness": {"command": ["wget", "-q", "-O-", "http://127.0.0.1:8080/"], "timeout": 20, "interval": 0.2},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """The suite's one way to wait: poll ``predicate`` until it returns something true (returned), or fail
    naming ``what`` after ``timeout`` seconds. Tests wait on conditions like this, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 20) -> None:
    try:
        wait_until(lambda: listening(port), timeout, f"something to listen on 127.0.0.1:{port}")
    except AssertionError as exc:
        raise RuntimeError(str(exc)) from None


def uploaded_path(location: str) -> Path:
    """The local path of a file:// location."""
    return Path(urlsplit(location).path)


def read_decompressed(path: Path) -> bytes:
    """A file's original bytes: decompressed when it is one of farmhand's compressed logs, as is otherwise."""
    with open_decompressed(path) as fh:
        return fh.read()


def read_log(location: str) -> bytes:
    """The original bytes of an uploaded log, which travels compressed (task.log.zst) by default."""
    return read_decompressed(uploaded_path(location))


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random (incompressible) bytes to ``path``; their sha256, computed as they are written."""
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            fh.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


#: Runs argv in a child forked from this small process and writes that child's peak RSS (KiB)
#: and exit code to the fd given first. Linux carries a process's peak RSS across fork and exec,
#: so a child spawned straight from the test runner would report the runner's own size; like
#: GNU time, this launcher stays small.
_PEAK_RSS_LAUNCHER = """
import os, sys
report_fd, argv = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
os.write(report_fd, f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}".encode())
"""


def run_measuring_peak_rss(argv: list[str], stdout: Any, stderr: Any) -> tuple[int, int]:
    """(exit code, peak RSS in KiB) of ``argv`` alone."""
    import subprocess
    import sys

    read_fd, write_fd = os.pipe()
    try:
        launcher = [sys.executable, "-c", _PEAK_RSS_LAUNCHER, str(write_fd), *argv]
        proc = subprocess.Popen(launcher, stdout=stdout, stderr=stderr, pass_fds=(write_fd,))
        os.close(write_fd)
        write_fd = -1
        report = os.read(read_fd, 100).decode()
        proc.wait()
    finally:
        os.close(read_fd)
        if write_fd != -1:
            os.close(write_fd)
    peak, code = (int(x) for x in report.split())
    return code, peak
