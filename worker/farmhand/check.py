"""``farmhand check``: what must hold before this host can serve tasks, each checked for real.

Run by the Ansible role as its last step and by operators after a change;
every line names what was checked and, on failure, what is wrong.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

from farmhand import firewall
from farmhand.config import WorkerConfig, load_config
from farmhand.dispatch import settings
from farmhand.errors import ConfigError, TaskProblem

Check = tuple[str, bool, str]


def checks(config_path: str | None = None) -> Iterator[Check]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        yield ("config", False, str(exc))
        return
    yield ("config", True, config.source)
    yield _working_dir(config)
    yield _docker(config)
    yield _cgroups()
    yield _broker(config)
    yield _sftp(config)
    yield firewall.host_check(config)


def _working_dir(config: WorkerConfig) -> Check:
    try:
        config.working_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=config.working_dir, prefix=".check-"):
            pass
    except OSError as exc:
        return ("working_dir", False, f"{config.working_dir}: not writable: {exc.strerror or exc}")
    return ("working_dir", True, f"{config.working_dir} is writable")


def _docker(config: WorkerConfig) -> Check:
    from farmhand.docker_client import connect

    try:
        client = connect(config)
        version = client.version().get("Version", "?")
    except (ConfigError, Exception) as exc:  # noqa: BLE001 - any failure is the answer
        return ("docker", False, str(exc))
    return ("docker", True, f"Docker engine {version}")


def missing_cgroup_controllers(proc_cgroups: str, mountinfo: str) -> list[str]:
    """Enabled cgroup v1 controllers that no mount in this namespace serves.

    containerd's shim loads every controller of a container's cgroup; when one
    is not mounted it gives up, never watches for OOM kills, and Docker reports
    a container the kernel killed for memory as an ordinary exit 137. A cgroup
    v2-only host has no v1 controllers in use and so nothing missing.
    """
    mounted: set[str] = set()
    for line in mountinfo.splitlines():
        _, sep, tail = line.partition(" - ")
        fields = tail.split()
        if sep and len(fields) >= 3 and fields[0] == "cgroup":
            mounted.update(fields[2].split(","))
    missing = []
    for line in proc_cgroups.splitlines():
        fields = line.split()
        if line.startswith("#") or len(fields) < 4:
            continue
        name, hierarchy, enabled = fields[0], fields[1], fields[3]
        if enabled == "1" and hierarchy != "0" and name not in mounted:
            missing.append(name)
    return missing


def _cgroups() -> Check:
    try:
        missing = missing_cgroup_controllers(Path("/proc/cgroups").read_text(), Path("/proc/self/mountinfo").read_text())
    except OSError as exc:
        return ("cgroups", True, f"not checked: {exc}")
    if missing:
        return (
            "cgroups",
            False,
            f"cgroup v1 controllers {','.join(missing)} are enabled but not mounted: Docker cannot see OOM kills "
            "(mount them under /sys/fs/cgroup, as cgroupfs-mount does)",
        )
    return ("cgroups", True, "every enabled cgroup controller is mounted")


def _broker(config: WorkerConfig) -> Check:
    try:
        url = settings.broker_url(config)
        settings.celery_settings(config)  # every setting's own refusal, named
    except ConfigError as exc:
        return ("broker", False, str(exc))
    if settings.is_embedded(config):
        # Creating the SQLite file is the connection: check the place it lives.
        return ("broker", True, f"embedded SQLite broker at {config.working_dir / 'broker.sqlite'}")
    try:
        settings.probe_broker(config)
    except Exception as exc:  # noqa: BLE001
        return ("broker", False, f"{settings.shown(url)}: {type(exc).__name__}: {settings.shown(str(exc))}")
    b = config.broker
    tls = "no TLS" if b.tls_ca is None else f"TLS (CA {b.tls_ca}" + (f", client certificate {b.tls_cert})" if b.tls_cert else ")")
    queues = f"{b.queue_type} queues" if settings.transport_kind(url) == "amqp" else "Redis lists"
    return ("broker", True, f"{settings.shown(url)} answers; {tls}; {queues}")


def _sftp(config: WorkerConfig) -> Check:
    if not config.upload_default.startswith("sftp://"):
        return ("upload", True, f"default warehouse {config.upload_default}")
    from farmhand.uploaders.sftp import check_startup

    try:
        check_startup(config)
    except (ConfigError, TaskProblem) as exc:
        return ("upload", False, str(exc))
    return ("upload", True, f"SSH key {config.sftp.private_key} and known_hosts {config.sftp.known_hosts} usable")
