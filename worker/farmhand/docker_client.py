"""Talking to Docker: the one connection, its timestamps, its error texts.

The rule the rest of the package follows for which of docker-py's two APIs
to call:

- the model API (``client.containers``, ``networks``, ``volumes``, ``images``)
  for an object we hold: create, start, stop, wait, archive, remove;
- the low-level client (``client.api``) only where the model API would cost
  a request per object or cannot say what we need: listing by label
  (``api.containers(quiet=True)`` returns ids, where ``containers.list``
  inspects each one), removing by id without fetching first, ``inspect`` for
  state and exit code, streams (logs read in batches by ``docker_logs``,
  stats, pull progress), and a service's network aliases.
"""

from __future__ import annotations

import calendar
import os
import time
from typing import Any

import docker
from docker.errors import DockerException, NotFound, create_api_error_from_http_exception
from docker.utils import decode_json_header
from requests import HTTPError, RequestException

from farmhand.config import WorkerConfig
from farmhand.errors import ConfigError


#: A Docker call that failed: the engine refused it (docker-py's errors), or the connection broke or
#: timed out under it (requests' errors, which docker-py lets through as they are).
DOCKER_ERRORS: tuple[type[Exception], ...] = (DockerException, RequestException)


def connect(config: WorkerConfig) -> docker.DockerClient:
    """A Docker client for the configured engine, checked to answer."""
    if (config.docker_base_url or os.environ.get("DOCKER_HOST") or "").startswith("ssh://"):
        _load_ssh_transport()
    try:
        client = make_client(config)
        if client.api.base_url.startswith("http+docker://"):
            # A Unix socket has no proxy and no netrc: without this, requests scans the
            # environment and looks for ~/.netrc on each of a task's dozen API calls.
            client.api.trust_env = False
        client.ping()
    except DockerException as exc:
        from farmhand.in_container import DOCKER_SOCKET, hint

        where = config.docker_base_url or "DOCKER_HOST or /var/run/docker.sock"
        raise ConfigError(f"docker: cannot reach the Docker engine at {where}: {exc}{hint(DOCKER_SOCKET)}") from exc
    return client


def make_client(config: WorkerConfig, **kwargs: Any) -> docker.DockerClient:
    """A client for the configured engine (``docker.base_url``, else DOCKER_HOST or the local socket), unchecked."""
    kwargs.setdefault("timeout", int(config.docker_timeout))
    if config.docker_base_url:
        return docker.DockerClient(base_url=config.docker_base_url, **kwargs)
    return docker.from_env(**kwargs)


def _load_ssh_transport() -> None:
    """docker-py's ``ssh://`` transport, which ``farmhand`` loads docker-py without (it imports paramiko):
    bound where docker-py's client looks for it, as its own import would have."""
    import docker.api.client
    from docker.transport.sshconn import SSHHTTPAdapter

    docker.api.client.SSHHTTPAdapter = SSHHTTPAdapter  # type: ignore[attr-defined]


def _split_time(text: str) -> tuple[int, str]:
    """Docker's RFC 3339 UTC time ('Z', up to nine fraction digits) as whole epoch seconds and nine digits of nanoseconds.

    Kept as integer and digits, not a float: a log resume point must name the
    very nanosecond it stopped at.
    """
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(head[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds, (frac[:9]).ljust(9, "0")


def parse_time(text: str | None) -> float | None:
    """A container's ``StartedAt``/``FinishedAt`` as epoch seconds; None for Docker's zero time."""
    if not text or text.startswith("0001-"):
        return None
    seconds, nanos = _split_time(text)
    return seconds + int(nanos) / 1e9


def since_param(timestamp: bytes) -> str:
    """Docker's ``since`` (seconds.nanoseconds) for a log frame's timestamp; it includes that instant."""
    seconds, nanos = _split_time(timestamp.decode("ascii"))
    return f"{seconds}.{nanos}"


def error_text(exc: BaseException) -> str:
    """What Docker said, as text: its ``explanation`` when it gave one, else the exception."""
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text)


def stat_path(container: Any, path: str) -> dict[str, Any] | None:
    """What Docker's archive API says of ``path`` in the container (name, size, mode, linkTarget); None if absent.

    It resolves the links of the path's parents inside the container but not
    the last component's (as lstat does), which is what lets the collect
    stage refuse a link anywhere on an artifact's path. docker-py has no call
    for this HEAD request.
    """
    api = container.client.api
    url = f"{api.base_url}/v{api.api_version}/containers/{container.id}/archive"
    response = api.head(url, params={"path": path})
    try:
        response.raise_for_status()
    except HTTPError as exc:
        if response.status_code == 404:
            return None
        raise create_api_error_from_http_exception(exc) from exc
    header = response.headers.get("X-Docker-Container-Path-Stat")
    if header is None:
        raise NotFound(f"Docker sent no stat for {path}")
    stat: dict[str, Any] = decode_json_header(header)
    return stat
