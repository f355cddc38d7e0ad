"""Decide whether this host lets a task run as asked, before anything exists for it.

Pure logic over (config, task): every violation is listed with the field that
asked for too much, so a dispatcher can tell the submitter exactly what to change.
"""

from __future__ import annotations

import fnmatch
import os.path
from urllib.parse import unquote, urlsplit

from farmhand.config import WorkerConfig
from farmhand.errors import PolicyDenied
from farmhand.resources import Resources
from farmhand.task import Task


def _human(n: int) -> str:
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n} bytes"


def image_allowed(config: WorkerConfig, image: str) -> bool:
    return any(fnmatch.fnmatchcase(image, pattern) for pattern in config.allowed_images)


def _under(path: str, prefixes: list[str]) -> bool:
    norm = os.path.normpath(path)
    for prefix in prefixes:
        p = os.path.normpath(prefix)
        if norm == p or norm.startswith(p.rstrip("/") + "/"):
            return True
    return False


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
        out.append(f"task.resources.memory: {_human(asked.memory)} is above this worker's ceiling of {_human(ceilings.memory)}")
    if "pids" in fields and ceilings.pids is not None and asked.pids is not None and asked.pids > ceilings.pids:
        out.append(f"task.resources.pids: {asked.pids} is above this worker's ceiling of {ceilings.pids}")
    if "shm_size" in fields and ceilings.shm_size is not None and asked.shm_size is not None and asked.shm_size > ceilings.shm_size:
        out.append(f"task.resources.shm_size: {_human(asked.shm_size)} is above this worker's ceiling of {_human(ceilings.shm_size)}")
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
    if not image_allowed(config, task.image):
        out.append(f"task.image: {task.image!r} matches none of this worker's allowed image patterns")
    for i, svc in enumerate(task.services):
        if not image_allowed(config, svc.image):
            out.append(f"task.services[{i}].image: {svc.image!r} matches none of this worker's allowed image patterns")
    if task.max_run_time > config.max_run_time:
        out.append(f"task.max_run_time: {task.max_run_time}s is above this worker's ceiling of {config.max_run_time}s")
    out.extend(_resource_violations(task.resources, task.resources_requested, config.ceilings))
    if task.privileged and not config.allow_privileged:
        out.append("task.privileged: privileged containers are not allowed on this worker")
    for cap in task.cap_add:
        if cap not in config.allowed_capabilities and cap not in config.container_capabilities:
            out.append(f"task.cap_add: capability {cap} is not allowed on this worker")
    for i, mount in enumerate(task.mounts):
        if not _under(mount.source, config.allowed_host_mounts):
            out.append(f"task.mounts[{i}].source: host path {mount.source!r} may not be mounted on this worker")
    for dev in task.devices:
        if dev not in config.allowed_devices:
            out.append(f"task.devices: device {dev} is not allowed on this worker")
    if task.caches and not config.allow_caches:
        out.append("task.caches: cache volumes are not allowed on this worker")
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
