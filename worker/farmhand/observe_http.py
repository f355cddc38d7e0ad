"""The worker's one HTTP server: ``/metrics`` for Prometheus, and, behind a bearer token, what runs and its logs.

- ``GET /metrics``: Prometheus' exposition of ``farmhand.metrics`` (open: it
  listens on loopback unless the operator says otherwise, and holds no
  secret).
- ``GET /tasks``: the tasks running on this node (``farmhand.ps``), JSON.
- ``GET /tasks/ID/log``: the task's log as stored (masked), chunked, and
  followed while the task runs; ``Range: bytes=N-`` resumes at byte N
  (206). ``?follow=0`` gives what is there now and ends.

The last two need ``Authorization: Bearer TOKEN`` with ``worker.api_token``
(compared in constant time); with no token configured they are off (404).
A thread per request (stdlib ``ThreadingHTTPServer``): a follower holds its
thread for as long as it follows, and idles in a poll between reads.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import select
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from farmhand.live_log import LiveLog, LogUnavailable, workspace_of

log = logging.getLogger("farmhand.http")

_LOG_PATH = re.compile(r"^/tasks/([^/]+)/log$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a listening address; ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def token_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries ``token`` as a bearer token; constant time in the token's bytes."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class ObserveServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: Any,
        tasks_dir: Path,
        list_tasks: Callable[[], dict[str, Any]],
        token: str | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry, self.tasks_dir, self.list_tasks, self.token = registry, tasks_dir, list_tasks, token
        self.closing = threading.Event()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}"

    def start(self, poll_interval: float = 1.0) -> "ObserveServer":
        """Serve on a thread; ``poll_interval`` is how soon ``stop`` takes effect (and the idle server's only wake-up)."""
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": poll_interval}, name="observe-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is routine (a follower's Ctrl-C); anything else is logged, never printed."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, exc)
        else:
            log.exception("request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: ObserveServer
    protocol_version = "HTTP/1.1"
    server_version = "farmhand"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        if url.path == "/metrics":
            return self._metrics()
        match = _LOG_PATH.match(url.path)
        if url.path in ("/tasks", "/tasks/") or match:
            if not self._authorized():
                return
            if match is None:
                return self._send(200, json.dumps(self.server.list_tasks(), indent=1).encode(), "application/json")
            follow = parse_qs(url.query).get("follow", ["1"])[-1] not in ("0", "false", "no")
            return self._log(match.group(1), follow)
        self._send(404, b"not found: /metrics, /tasks, /tasks/ID/log\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _metrics(self) -> None:
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(200, encoder(self.server.registry), content_type)

    def _authorized(self) -> bool:
        token = self.server.token
        if not token:
            self._send(404, b"off: this worker has no worker.api_token, so /tasks and the logs are not served\n")
            return False
        if not token_matches(self.headers.get("Authorization"), token):
            self._send(401, b"unauthorized: send Authorization: Bearer <worker.api_token>\n", headers={"WWW-Authenticate": 'Bearer realm="farmhand"'})
            return False
        return True

    def _log(self, task_id: str, follow: bool) -> None:
        offset = 0
        wanted = self.headers.get("Range")
        if wanted:
            m = _RANGE.match(wanted.strip())
            if m is None:
                return self._send(416, b"only Range: bytes=N- is served\n", headers={"Content-Range": "bytes */*"})
            offset = int(m.group(1))
        try:
            reader = LiveLog(workspace_of(self.server.tasks_dir, task_id), offset)
            reader.check()
        except LogUnavailable as exc:
            return self._send(exc.status, f"{exc.message}\n".encode())
        size = reader.size()
        if wanted and size is not None and offset > size and not follow:
            return self._send(416, f"the log has {size} bytes\n".encode(), headers={"Content-Range": f"bytes */{size}"})
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Accept-Ranges", "bytes")
        if wanted:
            # The end is not known while the task runs: the body goes on from `offset` to wherever the log ends.
            self.send_header("Content-Range", f"bytes {offset}-*/*")
        self.end_headers()
        try:
            for data in reader.chunks(follow=follow, stop=_ClientGone(self.connection, self.server.closing)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
        except LogUnavailable as exc:  # delivered and dropped before a byte was read
            note = f"[farmhand] {exc.message}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(note), note))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _ClientGone:
    """A follower's wait between polls that ends when the client hangs up (or the server stops), so a
    silent task's log does not keep a thread polling for a reader who left."""

    def __init__(self, sock: socket.socket, closing: threading.Event) -> None:
        self.sock, self.closing = sock, closing

    def wait(self, timeout: float | None = None) -> bool:
        if self.closing.is_set():
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if readable and self.sock.recv(1, socket.MSG_PEEK) == b"":
                return True  # EOF: the client closed its side
        except OSError:
            return True
        if readable and timeout:
            self.closing.wait(timeout)  # it sent something (a next request): no busy loop on it
        return self.closing.is_set()


def serve(address: str, registry: Any, tasks_dir: Path, list_tasks: Callable[[], dict[str, Any]], token: str | None) -> ObserveServer:
    """Listen on ``address`` and serve on a thread of its own; OSError (address in use...) when it cannot listen."""
    host, port = parse_address(address)
    server = ObserveServer((host, port), registry, tasks_dir, list_tasks, token).start()
    log.info("metrics on %s/metrics%s", server.url, "; tasks and logs on /tasks (bearer token)" if token else "")
    return server


def start_for_worker(config: Any, node: Any, client: Any) -> ObserveServer | None:
    """The worker's server, with its metrics enabled; None when ``worker.metrics_address`` is off.

    Raises ``ConfigError`` naming the key when the address cannot be listened on:
    a node an operator believes watched must not run unwatched.
    """
    address = config.node.metrics_address
    if not address:
        return None
    from farmhand import metrics, pending, ps
    from farmhand.docker_client import error_text
    from farmhand.errors import ConfigError

    try:
        docker_root = client.info().get("DockerRootDir")
    except Exception as exc:  # noqa: BLE001 - Docker's free space is then not reported
        log.warning("Docker's data root is unknown (%s): its free space is not in the metrics", error_text(exc))
        docker_root = None

    def pending_totals() -> tuple[int, int]:
        found = pending.entries(config)
        return len(found), sum(e.size for e in found)

    view = metrics.NodeView(slots=lambda: node.slots, busy=node.busy_slots, running=lambda: len(node.running()), draining=node.draining.is_set)
    registry = metrics.enable(config.working_dir, pending_totals, view, docker_root)

    def list_tasks() -> dict[str, Any]:
        rows, problems = ps.running_tasks(config.tasks_dir, client)
        return {"node": node.name, "tasks": rows, "problems": problems}

    try:
        return serve(address, registry, config.tasks_dir, list_tasks, config.node.api_token)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config.worker.metrics_address: cannot listen on {address}: {getattr(exc, 'strerror', None) or exc}") from None
