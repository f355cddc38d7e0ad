"""Bridge networks for tasks, kept between tasks by a long-lived worker.

dockerd takes about 45 ms to create a bridge network and about 165 ms to
remove one (bridge and iptables teardown, serialised in the daemon): together
more than the whole ``docker run`` of a trivial task, and the removal also caps
how many tasks a host finishes per second. So a worker keeps up to ``keep``
idle networks: a task takes one that no container uses and gives it back once
its containers are removed. The isolation stays per task: a network serves one
task at a time, and one that still holds a container after cleanup is never
handed to another task.

Networks carry the label ``farmhand.network=OWNER`` (the node's name), so a
restarted worker finds what an earlier process of the same node left idle
(``sweep``) and never touches another node's networks on the same engine.
``keep=0`` (``farmhand run-task``) creates a network per task and removes it at
cleanup.

Every task network's bridge interface is named ``fh-`` and the network's own
12 hex digits (``com.docker.network.bridge.name``), so the static rules of
``farmhand firewall`` match all of them with one wildcard (``-i fh-+``)
whatever networks come and go. A network without such a bridge (made by a
worker older than the rules) is never handed to a task: ``acquire`` removes
it and takes another.
"""

from __future__ import annotations

import threading
import uuid

import docker
from docker.errors import NotFound

from farmhand.docker_client import DOCKER_ERRORS, error_text
from farmhand.firewall import BRIDGE_PREFIX

POOL_LABEL = "farmhand.network"
#: Docker's option naming a bridge network's interface (every task network's starts with BRIDGE_PREFIX).
BRIDGE_OPTION = "com.docker.network.bridge.name"
_NAME_PREFIX = "farmhand-net-"


def bridge_name(network: str) -> str:
    """The interface of task network ``farmhand-net-HEX12``: ``fh-HEX12`` (15 characters, the kernel's limit)."""
    return BRIDGE_PREFIX + network.removeprefix(_NAME_PREFIX)


class NetworkPool:
    def __init__(self, client: docker.DockerClient, owner: str, keep: int = 0) -> None:
        self.client, self.owner, self.keep = client, owner, keep
        self._idle: list[str] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> str:
        """A bridge network no container uses, for one task alone until ``release``."""
        while True:
            with self._lock:
                name = self._idle.pop() if self._idle else None
            if name is None:
                return self._create()
            try:
                options = self.client.api.inspect_network(name).get("Options") or {}  # an operator's prune may have taken it
            except NotFound:
                continue
            if not str(options.get(BRIDGE_OPTION, "")).startswith(BRIDGE_PREFIX):
                self._remove(name)  # an older worker's network: its bridge escapes the firewall's rules
                continue
            return name

    def release(self, name: str) -> list[str]:
        """Take a network back after its task's containers are removed; returns what went wrong, never raises."""
        try:
            in_use = self._in_use(name)
        except DOCKER_ERRORS as exc:
            return [f"network {name}: cannot list its containers: {error_text(exc)}"]
        if not in_use:
            with self._lock:
                if not self._closed and len(self._idle) < self.keep:
                    self._idle.append(name)
                    return []
        return self._remove(name)

    def _in_use(self, name: str) -> bool:
        """Whether any container, in any state, is attached. (A network's inspect lists only running ones:
        a container created and not yet started, as a worker killed mid-run leaves one, would not count.)"""
        return bool(self.client.api.containers(all=True, quiet=True, filters={"network": name}))

    def close(self) -> list[str]:
        """Remove the idle networks (the worker is stopping); networks in use stay with their tasks."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        problems: list[str] = []
        for name in idle:
            problems += self._remove(name)
        return problems

    def sweep(self) -> int:
        """At start: remove this owner's networks that no container uses (an earlier process's idle ones).

        Networks that still hold a container, even one never started, belong
        to tasks the worker will resume; each is released when its task ends.
        Returns how many were removed.
        """
        removed = 0
        for net in self.client.api.networks(filters={"label": f"{POOL_LABEL}={self.owner}"}):
            if not self._in_use(net["Name"]) and not self._remove(net["Name"]):
                removed += 1
        return removed

    def _create(self) -> str:
        name = f"{_NAME_PREFIX}{uuid.uuid4().hex[:12]}"
        self.client.networks.create(
            name, driver="bridge", labels={POOL_LABEL: self.owner}, options={BRIDGE_OPTION: bridge_name(name)}, check_duplicate=True
        )
        return name

    def _remove(self, name: str) -> list[str]:
        try:
            self.client.api.remove_network(name)
        except NotFound:
            pass
        except DOCKER_ERRORS as exc:
            return [f"network {name}: {error_text(exc)}"]
        return []
