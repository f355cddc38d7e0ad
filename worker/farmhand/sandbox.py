"""Everything a task owns on the Docker host besides its main container: its helper
services and its cache volumes; the host paths it may bind-mount, resolved; and
the cleanup that removes its containers. (Its network comes from ``network_pool``.)

Ownership is recorded as labels (``farmhand.task-id``), so cleanup and a later
worker can find a task's objects from Docker alone, with no state of ours.
Cache volumes are labelled with their name and scope (``farmhand.cache``,
``farmhand.cache.scope``), so a later GC finds them the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import docker
from docker.errors import NotFound

from farmhand.config import HostMountRule, host_mount_rule, under
from farmhand.docker_client import DOCKER_ERRORS, error_text
from farmhand.errors import Cancelled, PolicyDenied, ServiceUnready, TaskProblem
from farmhand.in_container import HOST_MOUNTS, hint
from farmhand.task import Service

TASK_LABEL = "farmhand.task-id"
ROLE_LABEL = "farmhand.role"
CACHE_LABEL = "farmhand.cache"
CACHE_SCOPE_LABEL = "farmhand.cache.scope"
#: The scope of the caches of ``farmhand run-task`` (a worker's tasks are scoped by their queue).
LOCAL_SCOPE = "local"
#: ``farmhand.cache.scope`` of a cache the policy shares across every scope.
SHARED_SCOPE_LABEL = "*"
#: The scope part of a shared cache's volume name: no scope maps to it (see ``scope_token``).
_SHARED_TOKEN = "_shared"
_PLAIN_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,63}$")


def task_labels(task_id: str, role: str) -> dict[str, str]:
    return {TASK_LABEL: task_id, ROLE_LABEL: role}


def scope_token(scope: str | None) -> str:
    """A scope as it is written in a volume name: one-to-one, and free of ``-``.

    A plain scope (letters, digits, ``_``; starting with a letter or digit) is
    itself; any other is a readable slug, a dot and 16 hex digits of its
    SHA-256, so no two scopes meet and every one makes a valid Docker name.
    Shared caches (``None``) get ``_shared``, which neither form produces.
    """
    if scope is None:
        return _SHARED_TOKEN
    if _PLAIN_SCOPE.match(scope):
        return scope
    slug = re.sub(r"[^A-Za-z0-9_]", "_", scope)[:32]
    return f"{slug}.{hashlib.sha256(scope.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def cache_volume_name(name: str, scope: str | None) -> str:
    """``farmhand-cache-SCOPE-NAME``: the first ``-`` after the prefix ends the scope, which holds none."""
    return f"farmhand-cache-{scope_token(scope)}-{name}"


@dataclass(frozen=True)
class CacheVolume:
    """One cache of a task: its name, the scope that owns its volume (None: shared by all), its mount path."""

    name: str
    scope: str | None
    target: str

    @property
    def volume(self) -> str:
        return cache_volume_name(self.name, self.scope)

    @property
    def labels(self) -> dict[str, str]:
        return {CACHE_LABEL: self.name, CACHE_SCOPE_LABEL: SHARED_SCOPE_LABEL if self.scope is None else self.scope}


def ensure_caches(client: docker.DockerClient, caches: Iterable[CacheVolume]) -> dict[str, dict[str, str]]:
    """Named volumes for the task's caches, created on first use and never removed by cleanup.

    A volume of that name whose labels say another cache or scope (made by
    hand, or by something else) is not used: the task would read what it holds.
    """
    binds: dict[str, dict[str, str]] = {}
    for cache in caches:
        vol = cache.volume
        try:
            found = client.volumes.get(vol)
        except NotFound:
            client.volumes.create(vol, labels=cache.labels)
        else:
            labels = (found.attrs or {}).get("Labels") or {}
            if any(labels.get(k) != v for k, v in cache.labels.items()):
                raise TaskProblem(
                    f"task.caches.{cache.name}: volume {vol} exists on this host without the labels of this cache "
                    f"({', '.join(f'{k}={v}' for k, v in cache.labels.items())}); it is not used",
                    reason="internal-error",
                )
        binds[vol] = {"bind": cache.target, "mode": "rw"}
    return binds


def resolve_host_mount(source: str, rules: Sequence[HostMountRule], *, writable: bool, field: str) -> str:
    """The host path to bind-mount for ``source``, resolved now without following a link.

    The policy judged the source by its name; this looks at the host, when the
    container is about to be made. The outermost allowed prefix holding the
    source is the operator's and is resolved as written (its links are the
    operator's own: no task can write above it); below it every component is
    looked at with ``lstat``, and a symbolic link anywhere (a task may have
    left ``esc -> /`` in a shared directory) refuses the mount, as does a
    source that does not exist (dockerd would create it, as root). What is
    returned holds no link below the prefix: it is the path Docker mounts.
    Raises ``PolicyDenied`` naming ``field`` (``task.mounts[i].source``).
    """
    norm = os.path.normpath(source)
    rule = host_mount_rule(rules, norm)
    if rule is None:
        raise PolicyDenied([f"{field}: host path {source!r} may not be mounted on this worker"])
    if writable and not rule.writable:
        raise PolicyDenied([f"{field.rsplit('.', 1)[0]}.read_only: host path {source!r} lies under {rule.path}, which tasks may mount read-only only"])
    outer = min((r for r in rules if under(norm, r.path)), key=lambda r: len(r.path))
    path = os.path.realpath(outer.path)
    rest = os.path.relpath(norm, outer.path)
    for part in [] if rest == "." else rest.split("/"):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise PolicyDenied([f"{field}: host path {source!r} does not exist on this host{hint(HOST_MOUNTS)}"]) from None
        except OSError as exc:
            raise PolicyDenied([f"{field}: host path {source!r} cannot be looked at ({path}: {exc.strerror})"]) from None
        if stat.S_ISLNK(st.st_mode):
            raise PolicyDenied([f"{field}: host path {source!r} goes through a symbolic link ({path}); it is not mounted"])
    if not os.path.lexists(path):
        raise PolicyDenied([f"{field}: host path {source!r} does not exist on this host{hint(HOST_MOUNTS)}"])
    return path


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
        except DOCKER_ERRORS:
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


def cleanup(client: docker.DockerClient, task_id: str, known: Sequence[str] | None = None) -> list[str]:
    """Remove the task's containers (with their anonymous volumes).

    Runs whatever happened before; returns what could not be removed instead of
    raising, so a cleanup hiccup never hides the task's real outcome. ``known``:
    every container the task has, when the caller made each one itself and so
    knows; otherwise they are found by the task's label.
    """
    problems: list[str] = []
    if known is not None:
        ids = list(known)
    else:
        try:
            # Ids only: docker-py's containers.list inspects each one, a call per container for nothing.
            ids = [c["Id"] for c in client.api.containers(all=True, quiet=True, filters={"label": f"{TASK_LABEL}={task_id}"})]
        except DOCKER_ERRORS as exc:
            return [f"cannot list the task's containers: {error_text(exc)}"]
    for cid in ids:
        try:
            client.api.remove_container(cid, force=True, v=True)
        except NotFound:
            pass
        except DOCKER_ERRORS as exc:
            problems.append(f"container {cid[:12]}: {error_text(exc)}")
    return problems
