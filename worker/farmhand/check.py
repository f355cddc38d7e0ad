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
    yield _disk(config)
    yield _cgroups()
    yield _broker(config)
    yield _sftp(config)
    yield firewall.host_check(config)
    yield _loopback_devices(config)


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


def _disk(config: WorkerConfig) -> Check:
    """Free space and inodes of WORKING_DIR and Docker's data root against ``gc``: under min_free the worker takes no task."""
    from farmhand import gc
    from farmhand.gc_pass import docker_root, filesystems

    try:
        from farmhand.docker_client import connect

        root = docker_root(config, connect(config))
    except Exception:  # noqa: BLE001 - the docker line says why; the working dir is still measured
        root = None
    try:
        found = filesystems(config, root)
    except OSError as exc:
        return ("disk", False, f"cannot measure {config.working_dir}: {exc.strerror or exc}")
    ok, why = gc.accepting(found, config.gc)
    if not ok:
        return ("disk", False, f"the worker takes no tasks: {why} (`farmhand gc --dry-run` shows what may go)")
    parts = []
    for fs in found:
        short = gc.need(fs, config.gc.docker if fs.name == gc.DOCKER else config.gc.working_dir)
        parts.append(
            f"{fs.name} {fs.path}: {gc.human(fs.free)} free"
            + (f", {fs.free_inodes} inodes" if fs.inodes else "")
            + (" (under its gc threshold: collected before the next task)" if short else "")
        )
    if root is None:
        parts.append("Docker's data root is not visible from here: not measured")
    return ("disk", True, "; ".join(parts))


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
    ok, reached = _reached(config, url)
    if not ok:
        return ("broker", False, reached)
    b = config.broker
    tls = "no TLS" if b.tls_ca is None else f"TLS (CA {b.tls_ca}" + (f", client certificate {b.tls_cert})" if b.tls_cert else ")")
    queues = f"{b.queue_type} queues" if settings.transport_kind(url) == "amqp" else "Redis lists"
    return ("broker", True, f"{reached}; {tls}; {queues}")


def _reached(config: WorkerConfig, url: str) -> tuple[bool, str]:
    """What answers: the primary a Sentinel set names, else each node of the (failover) list. One node
    that answers is enough to serve (the worker fails over to it), the others are named all the same."""

    def failure(u: str, exc: Exception) -> str:
        return f"{settings.shown(u)}: {type(exc).__name__}: {settings.shown(str(exc))}"

    if settings.is_sentinel(url):
        try:
            master = settings.probe_broker(config)["master"]
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            return False, failure(url, exc)
        return True, f"sentinels {settings.shown(url)} name primary {config.broker.master_name!r} at {master}, which answers"
    urls = settings.split_urls(url)
    answers, silent = [], []
    for u in urls:
        try:
            props = settings.probe_broker(config, url=u)
        except Exception as exc:  # noqa: BLE001
            silent.append(failure(u, exc))
            continue
        cluster = props.get("cluster_name")
        answers.append(settings.shown(u) + (f" (cluster {cluster.decode() if isinstance(cluster, bytes) else cluster})" if cluster else ""))
    if len(urls) == 1:
        return (True, f"{answers[0]} answers") if answers else (False, silent[0])
    text = f"{len(answers)} of {len(urls)} nodes answer: " + ", ".join(answers or ["none"])
    return bool(answers), text + "".join(f"; does not answer: {s}" for s in silent)


def _sftp(config: WorkerConfig) -> Check:
    if not config.upload_default.startswith("sftp://"):
        return ("upload", True, f"default warehouse {config.upload_default}")
    from farmhand.uploaders.sftp import check_startup

    try:
        check_startup(config)
    except (ConfigError, TaskProblem) as exc:
        return ("upload", False, str(exc))
    return ("upload", True, f"SSH key {config.sftp.private_key} and known_hosts {config.sftp.known_hosts} usable")


def _loopback_devices(config: WorkerConfig, sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")) -> Check:
    """The pool the worker will find, each device's holder, and how many device tasks the node can run at once."""
    from farmhand.devices import KINDS, DevicePool
    from farmhand.in_container import LOOPBACK_DEVICES, hint

    pool = DevicePool.discover(config.loopback_video_label, config.device_lock_dir, sys_root, proc_root)
    sizes = pool.sizes()
    found = "; ".join(pool.describe()) or "none"
    if not config.allow_loopback_devices:
        return ("loopback devices", True, f"tasks may not ask for any (allow.loopback_devices is false); found: {found}")
    if not pool.devices:
        return (
            "loopback devices",
            False,
            f"allow.loopback_devices is true but this host has none (no video4linux device named {config.loopback_video_label!r}, no snd-aloop card): "
            f"enable the loopback_devices role{hint(LOOPBACK_DEVICES)}",
        )
    slots = config.node.slots
    capped = min(sizes[k] for k in KINDS if sizes[k]) if any(sizes.values()) else 0
    advice = (
        f"; CONCURRENCY is {slots}: at most {capped} tasks asking for a device of each kind run at once, the others wait "
        f"(limits.device_wait {config.device_wait:g}s); set CONCURRENCY to {capped} or give the loopback_devices role more devices"
        if capped < slots
        else ""
    )
    return ("loopback devices", True, f"{sizes['video']} video, {sizes['audio']} audio: {found}{advice}")
