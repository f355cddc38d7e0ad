"""Everything a task owns on the Docker host besides its main container: its helper
services and its cache volumes; and the cleanup that removes its containers.
(Its network comes from ``network_pool``.)

Ownership is recorded as labels (``farmhand.task-id``), so cleanup and a later
worker can find a task's objects from Docker alone, with no state of ours.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import docker
from docker.errors import APIError, DockerException, NotFound

from farmhand.docker_client import error_text
from farmhand.errors import Cancelled, ServiceUnready
from farmhand.task import Service

TASK_LABEL = "farmhand.task-id"
ROLE_LABEL = "farmhand.role"
CACHE_LABEL = "farmhand.cache"


def task_labels(task_id: str, role: str) -> dict[str, str]:
    return {TASK_LABEL: task_id, ROLE_LABEL: role}


def cache_volume_name(name: str) -> str:
    return f"farmhand-cache-{name}"


def ensure_caches(client: docker.DockerClient, caches: dict[str, str]) -> dict[str, dict[str, str]]:
    """Named volumes for the task's caches, created on first use and never removed by cleanup."""
    binds: dict[str, dict[str, str]] = {}
    for name, target in caches.items():
        vol = cache_volume_name(name)
        try:
            client.volumes.get(vol)
        except NotFound:
            client.volumes.create(vol, labels={CACHE_LABEL: name})
        binds[vol] = {"bind": target, "mode": "rw"}
    return binds


def start_service(
    client: docker.DockerClient,
    task_id: str,
    service: Service,
    network: str,
    options: dict[str, Any],
    report: Callable[[str], None],
    cancel: threading.Event | None = None,
) -> None:
    """Start one helper container, reachable as ``service.name``, and wait until it is ready.

    ``options`` are the container settings every task container gets (hardening, limits).
    A cancel (``cancel`` set) ends the wait at once with ``Cancelled``.
    """
    cancel = cancel or threading.Event()
    container = client.containers.create(
        service.image,
        command=service.command,
        entrypoint=service.entrypoint,
        environment=service.env,
        labels={**task_labels(task_id, "service"), "farmhand.service": service.name},
        hostname=service.name,
        network=network,
        # A network alias is what makes the service reachable by its bare name.
        networking_config={network: client.api.create_endpoint_config(aliases=[service.name])},
        detach=True,
        **options,
    )
    container.start()
    report(f"service {service.name} started")
    deadline = time.monotonic() + (service.readiness.timeout if service.readiness else 0)
    while True:
        container.reload()
        if container.status not in ("running", "created"):
            tail = container.logs(tail=20).decode("utf-8", "replace").strip()
            code = container.attrs["State"].get("ExitCode")
            raise ServiceUnready(f"service {service.name!r} exited with code {code} before it was ready" + (f"; its last output:\n{tail}" if tail else ""))
        if service.readiness is None:
            return
        code, output = _probe(client, container.id, service.readiness.command, deadline, cancel)
        if code == 0:
            report(f"service {service.name} is ready")
            return
        if time.monotonic() >= deadline:
            text = output.decode("utf-8", "replace").strip()
            raise ServiceUnready(
                f"service {service.name!r} was not ready after {service.readiness.timeout:g}s: "
                + (f"readiness command exited {code}" if code is not None else "its readiness command did not finish")
                + (f": {text}" if text else "")
            )
        if cancel.wait(service.readiness.interval):
            raise Cancelled("the task was cancelled while its services started", reason="cancelled")


#: What a readiness command may say that is kept (its last bytes), whatever it prints.
PROBE_OUTPUT = 500


def _probe(client: docker.DockerClient, container_id: str, command: list[str], deadline: float, cancel: threading.Event) -> tuple[int | None, bytes]:
    """Run one readiness check; its exit code (None if it outlived the deadline) and its last output.

    Read on a thread of its own, keeping only a bounded tail, so a check that
    prints without end or never returns costs the worker neither memory nor
    the rest of its prepare time; what is left of it goes with the service.
    """
    exec_id = client.api.exec_create(container_id, command)["Id"]
    tail = bytearray()
    done = threading.Event()

    def read() -> None:
        try:
            for chunk in client.api.exec_start(exec_id, stream=True):
                tail.extend(chunk)
                del tail[:-PROBE_OUTPUT]
        except DockerException:
            pass
        finally:
            done.set()

    threading.Thread(target=read, name=f"probe:{container_id[:12]}", daemon=True).start()
    while not done.wait(0.05):
        if cancel.is_set():
            raise Cancelled("the task was cancelled while its services started", reason="cancelled")
        if time.monotonic() >= deadline:
            return None, bytes(tail)
    return client.api.exec_inspect(exec_id).get("ExitCode"), bytes(tail)


def find_task_container(client: docker.DockerClient, task_id: str) -> Any | None:
    """The task's own container (not a service's), running or not, if it still exists."""
    found = client.containers.list(all=True, filters={"label": [f"{TASK_LABEL}={task_id}", f"{ROLE_LABEL}=task"]})
    return found[0] if found else None


def cleanup(client: docker.DockerClient, task_id: str) -> list[str]:
    """Remove the task's containers (with their anonymous volumes).

    Runs whatever happened before; returns what could not be removed instead of
    raising, so a cleanup hiccup never hides the task's real outcome.
    """
    problems: list[str] = []
    try:
        # Ids only: docker-py's containers.list inspects each one, a call per container for nothing.
        ids = [c["Id"] for c in client.api.containers(all=True, quiet=True, filters={"label": f"{TASK_LABEL}={task_id}"})]
    except DockerException as exc:
        return [f"cannot list the task's containers: {exc}"]
    for cid in ids:
        try:
            client.api.remove_container(cid, force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            problems.append(f"container {cid[:12]}: {error_text(exc)}")
    return problems
