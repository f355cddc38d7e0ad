"""Decide whether this host lets a task run as asked, before anything exists for it.

Pure logic over (config, task): every violation is listed with the field that
asked for too much, so a dispatcher can tell the submitter exactly what to change.
Two checks need the host and come later, still before any container starts:
an image's size (``images.max_size``, once it is pulled: ``images``) and a
host mount's path on disk (``sandbox.resolve_host_mount``).
"""

from __future__ import annotations

import fnmatch
import os.path
from urllib.parse import unquote, urlsplit

from farmhand.config import WorkerConfig, host_mount_rule
from farmhand.errors import PolicyDenied
from farmhand.resources import Resources
from farmhand.sandbox import CacheVolume
from farmhand.task import Task


def human_size(n: int) -> str:
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n} bytes"


def image_allowed(config: WorkerConfig, image: str) -> bool:
    return any(fnmatch.fnmatchcase(image, pattern) for pattern in config.allowed_images)


def _image_violation(config: WorkerConfig, field: str, image: str) -> str | None:
    if image_allowed(config, image):
        return None
    if not config.allowed_images:
        return f"{field}: {image!r} is not allowed: this worker's images.allowed is empty, so it runs no image until its operator lists some"
    return f"{field}: {image!r} matches none of this worker's allowed image patterns"


def _mount_violation(config: WorkerConfig, i: int, source: str, read_only: bool) -> str | None:
    rule = host_mount_rule(config.host_mounts, os.path.normpath(source))
    if rule is None:
        return f"task.mounts[{i}].source: host path {source!r} may not be mounted on this worker"
    if not read_only and not rule.writable:
        return f"task.mounts[{i}].read_only: host path {source!r} lies under {rule.path}, which tasks may mount read-only only"
    return None


def _cache_violations(config: WorkerConfig, task: Task) -> list[str]:
    if not task.caches:
        return []
    if not config.caches.enabled:
        return ["task.caches: cache volumes are not allowed on this worker"]
    if config.caches.scoped:
        return []
    return [
        f"task.caches.{name}: cache {name!r} is not among the caches this worker shares (allow.caches), and it allows no other"
        for name in task.caches
        if not config.caches.is_shared(name)
    ]


def cache_volumes(config: WorkerConfig, task: Task, scope: str) -> list[CacheVolume]:
    """The task's caches as volumes: in the namespace of ``scope`` (the task's queue), or shared where allow.caches says."""
    own = config.caches.scope_for(scope)
    return [CacheVolume(name, None if config.caches.is_shared(name) else own, target) for name, target in task.caches.items()]


def _normalized_target(uri: str) -> str:
    """A URI with its path normalised, so that ``..`` cannot climb out of an allowed prefix."""
    parts = urlsplit(uri)
    path = os.path.normpath(unquote(parts.path) or "/")
    if parts.path.endswith("/") and not path.endswith("/"):
        path += "/"
    return f"{parts.scheme}://{parts.netloc}{path}"


def upload_allowed(config: WorkerConfig, target: str) -> bool:
    norm = _normalized_target(target)
    allowed = [config.upload_default, *config.upload_allowed_targets]
    for prefix in allowed:
        p = _normalized_target(prefix)
        if norm == p or norm.startswith(p if p.endswith("/") else p + "/") or norm.rstrip("/") == p.rstrip("/"):
            return True
    return False


def _resource_violations(asked: Resources, fields: frozenset[str], ceilings: Resources) -> list[str]:
    out: list[str] = []
    if "cpus" in fields and ceilings.cpus is not None and asked.cpus is not None and asked.cpus > ceilings.cpus:
        out.append(f"task.resources.cpus: {asked.cpus:g} is above this worker's ceiling of {ceilings.cpus:g}")
    if "memory" in fields and ceilings.memory is not None and asked.memory is not None and asked.memory > ceilings.memory:
        out.append(f"task.resources.memory: {human_size(asked.memory)} is above this worker's ceiling of {human_size(ceilings.memory)}")
    if "pids" in fields and ceilings.pids is not None and asked.pids is not None and asked.pids > ceilings.pids:
        out.append(f"task.resources.pids: {asked.pids} is above this worker's ceiling of {ceilings.pids}")
    if "shm_size" in fields and ceilings.shm_size is not None and asked.shm_size is not None and asked.shm_size > ceilings.shm_size:
        out.append(f"task.resources.shm_size: {human_size(asked.shm_size)} is above this worker's ceiling of {human_size(ceilings.shm_size)}")
    for name, (soft, hard) in asked.ulimits.items():
        if name not in ceilings.ulimits:
            # No ceiling is no licence: rtprio 99 or memlock unlimited would reach the host.
            out.append(f"task.resources.ulimits.{name}: this worker sets no ceiling for it (limits.ceilings.ulimits.{name}), so a task may not set it")
            continue
        limit = ceilings.ulimits[name][1]
        if limit == -1:
            continue
        if hard == -1 or hard > limit or soft == -1 or soft > limit:
            out.append(f"task.resources.ulimits.{name}: {hard if hard != -1 else 'unlimited'} is above this worker's ceiling of {limit}")
    return out


def violations(config: WorkerConfig, task: Task) -> list[str]:
    """Every way ``task`` asks for more than ``config`` allows; empty when it may run."""
    out: list[str] = []
    for field, image in [("task.image", task.image), *((f"task.services[{i}].image", svc.image) for i, svc in enumerate(task.services))]:
        found = _image_violation(config, field, image)
        if found:
            out.append(found)
    if task.max_run_time > config.max_run_time:
        out.append(f"task.max_run_time: {task.max_run_time}s is above this worker's ceiling of {config.max_run_time}s")
    out.extend(_resource_violations(task.resources, task.resources_requested, config.ceilings))
    if task.privileged and not config.allow_privileged:
        out.append("task.privileged: privileged containers are not allowed on this worker")
    for cap in task.cap_add:
        if cap not in config.allowed_capabilities and cap not in config.container_capabilities:
            out.append(f"task.cap_add: capability {cap} is not allowed on this worker")
    for i, mount in enumerate(task.mounts):
        found = _mount_violation(config, i, mount.source, mount.read_only)
        if found:
            out.append(found)
    for dev in task.devices:
        if dev not in config.allowed_devices:
            out.append(f"task.devices: device {dev} is not allowed on this worker")
    for kind in task.loopback_devices:
        if not config.allow_loopback_devices:
            out.append(f"task.loopback_devices.{kind}: loopback devices are not allowed on this worker (allow.loopback_devices)")
    out.extend(_cache_violations(config, task))
    if task.upload is not None and not upload_allowed(config, task.upload):
        out.append(f"task.upload: target {task.upload!r} is not among this worker's allowed upload targets")
    return out


def check(config: WorkerConfig, task: Task) -> None:
    found = violations(config, task)
    if found:
        raise PolicyDenied(found)


def effective_resources(config: WorkerConfig, task: Task) -> Resources:
    """The limits the container actually gets: the host's defaults overlaid by the task's asks."""
    return config.default_resources.overlaid_by(task.resources)
