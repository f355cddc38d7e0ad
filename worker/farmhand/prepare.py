"""The Docker side of the prepare stage: images, the task's network, caches and services.

What it makes is the task's: the engine's cleanup removes it whatever
happens next. A cancel (a person's, a draining worker's, the prepare
ceiling's) stops a pull at its next progress report and a service's
readiness wait at once.
"""

from __future__ import annotations

import threading
from typing import Any

import docker

from farmhand import image_usage, policy, sandbox
from farmhand.checkpoint import Attempt
from farmhand.config import WorkerConfig
from farmhand.container_run import container_options, service_options
from farmhand.devices import DevicePool
from farmhand.errors import Cancelled
from farmhand.events import StageEvents
from farmhand.images import ensure_image, full_reference
from farmhand.network_pool import NetworkPool


def prepare_docker(
    client: docker.DockerClient,
    config: WorkerConfig,
    networks: NetworkPool,
    attempt: Attempt,
    events: StageEvents,
    cancel: threading.Event,
    cache_scope: str = sandbox.LOCAL_SCOPE,
    devices: DevicePool | None = None,
) -> dict[str, Any]:
    """Everything the task's container needs before it is created; returns its options.

    ``cache_scope`` (the task's queue) chooses the task's cache volumes: it reaches its own scope's, and the shared ones.
    """
    task = attempt.task
    assert task is not None
    tid = task.task_id

    caches = policy.cache_volumes(config, task, cache_scope)
    usage = image_usage.Usage(config.working_dir)
    # Before any image or volume is looked at: a garbage collection pass then either sees this task, or
    # has finished removing (the task pulls again). See image_usage.
    usage.touch([full_reference(task.image)] + [full_reference(svc.image) for svc in task.services], [c.volume for c in caches])
    used: dict[str, str] = {}
    pulled: set[str] = set()

    def pull(image: str, pull_policy: str) -> str:
        def report(status: str, fields: dict[str, int]) -> None:
            if cancel.is_set():
                raise Cancelled("cancelled while pulling")
            events.say(tid, "prepare", f"pulling {image}: {status}", **fields)

        # farmhand's to remove only if it pulled it: not on the host before, or not as this id.
        before = image_usage.local_id(client, full_reference(image)) if pull_policy != "never" else None
        image_id = ensure_image(client, config, image, pull_policy, report)
        used[full_reference(image)] = image_id
        if pull_policy != "never" and image_id != before:
            pulled.add(image_id)
        return image_id

    try:
        attempt.result.image = {"name": task.image, "id": pull(task.image, task.pull)}
        for svc in task.services:
            pull(svc.image, svc.pull)
    finally:
        if used or pulled:
            usage.record_images(used, pulled)
    loopback: list[str] = []
    if task.loopback_devices:
        assert devices is not None and attempt.workspace is not None
        held = devices.acquire(attempt.workspace, task.loopback_devices, config.device_wait, cancel, lambda m: events.say(tid, "prepare", m))
        if cancel.is_set():
            raise Cancelled("cancelled while waiting for a loopback device")
        attempt.devices = held
        loopback = [entry for dev in held for entry in dev.docker_devices]
        events.say(tid, "prepare", "loopback devices: " + ", ".join(dev.name for dev in held))
    if task.network == "bridge":
        attempt.network = networks.acquire()
        attempt.checkpoint("prepare")  # at once, so a worker killed now gives the network back when it starts over
    volumes = sandbox.ensure_caches(client, caches)
    for svc in task.services:
        assert attempt.network is not None  # checked by the task contract
        sandbox.start_service(client, tid, svc, attempt.network, service_options(config), lambda m: events.say(tid, "prepare", m), cancel)
    return container_options(config, task, policy.effective_resources(config, task), attempt.network, volumes, loopback)
