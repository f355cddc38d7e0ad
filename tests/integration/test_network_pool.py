"""Task networks kept between tasks: reuse, isolation, and what a restarted worker removes."""

from __future__ import annotations

import uuid
from typing import Iterator

import docker
import pytest

from farmhand.engine import Engine
from farmhand.network_pool import POOL_LABEL, NetworkPool
from support import BUSYBOX, busybox_task, read_log, web_service


@pytest.fixture
def owner(client: docker.DockerClient) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    for net in client.networks.list(filters={"label": f"{POOL_LABEL}={name}"}):
        net.reload()
        for cid in net.attrs.get("Containers") or {}:
            client.containers.get(cid).remove(force=True)
        net.remove()


def _names(client: docker.DockerClient, owner: str) -> set[str]:
    return {n.name for n in client.networks.list(filters={"label": f"{POOL_LABEL}={owner}"})}


def test_a_released_network_serves_the_next_task(client, owner):
    pool = NetworkPool(client, owner, keep=2)
    first = pool.acquire()
    assert pool.release(first) == []
    assert pool.acquire() == first
    second = pool.acquire()
    assert second != first, "two tasks at once never share a network"
    assert pool.release(first) == [] and pool.release(second) == []
    assert _names(client, owner) == {first, second}
    assert pool.close() == []
    assert _names(client, owner) == set()


def test_beyond_keep_a_released_network_is_removed(client, owner):
    pool = NetworkPool(client, owner, keep=0)
    name = pool.acquire()
    assert _names(client, owner) == {name}
    assert pool.release(name) == []
    assert _names(client, owner) == set()


def test_a_network_still_holding_a_container_is_never_reused(client, owner):
    pool = NetworkPool(client, owner, keep=2)
    name = pool.acquire()
    survivor = client.containers.run(BUSYBOX, ["sleep", "60"], network=name, detach=True)
    try:
        problems = pool.release(name)
        assert problems and name in problems[0], problems  # dockerd refuses to remove it: said, not raised
        assert pool.acquire() != name
    finally:
        survivor.remove(force=True)


def test_a_pruned_idle_network_is_replaced(client, owner):
    pool = NetworkPool(client, owner, keep=1)
    name = pool.acquire()
    pool.release(name)
    client.networks.get(name).remove()  # an operator's `docker network prune`
    fresh = pool.acquire()
    assert fresh != name and fresh in _names(client, owner)
    pool.release(fresh)
    pool.close()


def test_sweep_removes_only_this_owners_unused_networks(client, owner):
    earlier = NetworkPool(client, owner, keep=3)  # a process that died without closing its pool
    _idle, busy, created = earlier.acquire(), earlier.acquire(), earlier.acquire()
    other = NetworkPool(client, owner + "-other", keep=1)
    others = other.acquire()
    holder = client.containers.run(BUSYBOX, ["sleep", "60"], network=busy, detach=True)
    not_started = client.containers.create(BUSYBOX, ["true"], network=created)  # killed between create and start
    try:
        assert NetworkPool(client, owner, keep=3).sweep() == 1
        assert _names(client, owner) == {busy, created}, "the networks of tasks to be resumed stay"
        assert others in _names(client, owner + "-other")
    finally:
        holder.remove(force=True)
        not_started.remove(force=True)
        other.release(others)
        assert other.close() == []


def test_tasks_in_turn_reuse_one_network_and_their_services_resolve(client, config, owner):
    pool = NetworkPool(client, owner, keep=1)
    web = web_service("hostname")
    seen = []
    for _ in range(2):
        result = Engine(config, client, networks=pool).run(busybox_task("wget -q -O- http://web:8080/", services=[web]))
        assert result.state == "succeeded", result.message
        assert result.warnings == []
        seen.append(_names(client, owner))
        assert read_log(result.log.location).decode().strip().endswith(" web")
    assert len(seen[0]) == 1 and seen[0] == seen[1], "the second task ran on the first one's network"
    assert pool.close() == []
    assert _names(client, owner) == set()
