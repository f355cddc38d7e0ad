"""The run stage: start the task's container under its limits and watch it to the end.

Three threads cooperate: one copies output to the log, one waits for the exit,
one samples usage; this thread only enforces the clocks (max_run_time,
idle_timeout) and reads the verdict, so no stream can stall the supervision.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any, Callable

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container, ContainerCollection
from docker.types import LogConfig, Mount, Ulimit

from farmhand.config import WorkerConfig
from farmhand.docker_client import error_text, parse_time
from farmhand.docker_logs import OutputStream, rotated_head_check
from farmhand.engine_outage import GONE, EngineWatch
from farmhand.errors import StartFailed
from farmhand.logpump import LogPump
from farmhand.masking import StreamMasker
from farmhand.resources import Resources
from farmhand.run_outcome import RunOutcome
from farmhand.sandbox import resolve_host_mount
from farmhand.task import Task


#: Docker's own log of a task is kept in this many files, rotated (json-file).
LOG_FILES = 4
#: A service's output is only shown when it fails its readiness check: a little is plenty.
SERVICE_LOG = LogConfig(type="json-file", config={"max-size": "4m", "max-file": "2"})


def task_log_config(log_max_bytes: int) -> LogConfig:
    """Docker's log of the task, bounded in step with farmhand's own cap.

    Without a bound a task can fill the host's disk through dockerd whatever
    ``logs.max_bytes`` says. farmhand follows the log as it is written and
    keeps its first ``logs.max_bytes``; Docker keeps the last
    ``LOG_FILES - 1`` to ``LOG_FILES`` files of ``logs.max_bytes / 2`` each
    (JSON-wrapped), so what farmhand still has to read is never rotated away
    unless farmhand falls that far behind.
    """
    return LogConfig(type="json-file", config={"max-size": str(max(log_max_bytes // 2, 1 << 20)), "max-file": str(LOG_FILES)})


def hardening(config: WorkerConfig) -> dict[str, Any]:
    """Options every container of a task gets, services included."""
    return {
        "cap_drop": ["ALL"],
        "cap_add": list(config.container_capabilities),
        "security_opt": ["no-new-privileges:true"],
    }


def service_options(config: WorkerConfig) -> dict[str, Any]:
    """A service's container: the task's hardening, the host's default limits, a small log."""
    return {**hardening(config), **resource_options(config.default_resources), "log_config": SERVICE_LOG}


def resource_options(res: Resources) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if res.cpus is not None:
        opts["nano_cpus"] = int(res.cpus * 1e9)
    if res.memory is not None:
        # Same value for memory+swap: a task cannot dodge its limit by swapping.
        opts["mem_limit"] = res.memory
        opts["memswap_limit"] = res.memory
    if res.pids is not None:
        opts["pids_limit"] = res.pids
    if res.shm_size is not None:
        opts["shm_size"] = res.shm_size
    if res.ulimits:
        opts["ulimits"] = [Ulimit(name=n, soft=s, hard=h) for n, (s, h) in sorted(res.ulimits.items())]
    return opts


def container_options(
    config: WorkerConfig,
    task: Task,
    resources: Resources,
    network: str | None,
    volumes: dict[str, dict[str, str]],
    loopback: list[str] | None = None,
) -> dict[str, Any]:
    """The task container's settings. Host mounts are resolved here, on the host, just before the
    container is made: a source through a symbolic link, or missing, is refused (``PolicyDenied``).
    ``loopback``: docker ``devices`` entries of the loopback devices the task holds (``farmhand.devices``)."""
    opts = hardening(config)
    opts["cap_add"] = sorted(set(opts["cap_add"]) | set(task.cap_add))
    opts.update(resource_options(resources))
    # Mounts, not Binds: a path is given as it is, never parsed out of a "src:dst:mode" string.
    host_mounts = [
        Mount(
            target=mount.target,
            source=resolve_host_mount(mount.source, config.host_mounts, writable=not mount.read_only, field=f"task.mounts[{i}].source"),
            type="bind",
            read_only=mount.read_only,
        )
        for i, mount in enumerate(task.mounts)
    ]
    opts.update(
        command=task.command,
        entrypoint=task.entrypoint,
        environment={**task.env, "FARMHAND_TASK_ID": task.task_id},
        working_dir=task.workdir,
        user=task.user or "",
        volumes=volumes or None,
        mounts=host_mounts or None,
        privileged=task.privileged,
        devices=[f"{d}:{d}:rwm" for d in task.devices] + list(loopback or []) or None,
        log_config=task_log_config(config.log_max_bytes),
        detach=True,
    )
    if network is None:
        # No network at all, and none of Docker's networking machinery either (``NetworkDisabled``):
        # the kernel gives the container a namespace of its own holding only ``lo``, as ``--network
        # none`` does, but dockerd makes no sandbox, endpoint or ``libnetwork-setkey`` hook for it.
        # That is most of the cost of starting a container, and Debian 12's dockerd 20.10 can deadlock
        # for good when containers on one network (every "none" container shares one) come and go
        # fast (moby/moby#46661). The /etc/hosts Docker would have written is copied in before start.
        opts["network_mode"] = "none"
        opts["network_disabled"] = True
    else:
        opts["network"] = network
    return opts


#: What Docker writes to /etc/hosts for a container on its "none" network: ``localhost`` must resolve.
NO_NETWORK_HOSTS = (
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
)


@cache
def _hosts_archive() -> bytes:
    """``etc/hosts`` (root, 0644) as a tar stream for Docker's archive API."""
    data = NO_NETWORK_HOSTS.encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        entry = tarfile.TarInfo("etc/hosts")
        entry.size, entry.mode, entry.mtime = len(data), 0o644, 0
        tar.addfile(entry, io.BytesIO(data))
    return out.getvalue()


def give_hosts_file(client: docker.DockerClient, container_id: str, options: dict[str, Any]) -> None:
    """The /etc/hosts of a container made with ``network_disabled`` (see ``container_options``), before it starts.

    dockerd writes none for such a container, and an image's own is often
    empty, so ``localhost`` would not resolve. The copy lands in the
    container's own layer, writable as Docker's would be.
    """
    if options.get("network_disabled"):
        client.api.put_archive(container_id, "/", _hosts_archive())


STATS_DELAY = 0.5  # seconds a container runs before its usage is sampled


class _Created(ContainerCollection):
    """docker-py's ``containers.create``, less the inspect it makes of the new container: what a
    task's run needs of it is its id (the verdict is read by ``inspect_container`` once it exits)."""

    def get(self, container_id: str) -> Container:
        return self.prepare_model({"Id": container_id})


class _UsageSampler:
    """Keeps the peaks of Docker's stats stream; stops by itself when the container does.

    Started by the supervising loop once the container has run ``STATS_DELAY``:
    dockerd's first sample comes about a second after the request, so a
    container gone sooner would give none, and its stats request, dockerd's
    collector and this thread are saved.
    """

    def __init__(self, client: docker.DockerClient, container_id: str, exited: threading.Event) -> None:
        self._client = client
        self._id = container_id
        self._exited = exited
        self.peak_memory = 0
        self.cpu_ns = 0
        self.peak_pids = 0
        self.samples = 0
        self.started = False
        self._thread = threading.Thread(target=self._run, name=f"stats:{container_id[:12]}", daemon=True)

    def start(self) -> "_UsageSampler":
        self.started = True
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._exited.is_set():
            return
        try:
            for s in self._client.api.stats(self._id, stream=True, decode=True):
                mem = s.get("memory_stats") or {}
                if not mem and not s.get("pids_stats"):
                    continue
                self.samples += 1
                self.peak_memory = max(self.peak_memory, int(mem.get("max_usage") or 0), int(mem.get("usage") or 0))
                self.cpu_ns = max(self.cpu_ns, int(((s.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0))
                self.peak_pids = max(self.peak_pids, int((s.get("pids_stats") or {}).get("current") or 0))
        except (DockerException, ValueError, OSError):
            pass

    def summary(self) -> dict[str, Any]:
        sampled = self.samples > 0
        return {
            "peak_memory_bytes": self.peak_memory if sampled else None,
            "cpu_seconds": round(self.cpu_ns / 1e9, 3) if sampled else None,
            "peak_pids": self.peak_pids if sampled else None,
            "samples": self.samples,
        }


def run_container(
    client: docker.DockerClient,
    config: WorkerConfig,
    task: Task,
    options: dict[str, Any],
    labels: dict[str, str],
    log_path: Path,
    report: Callable[[str], None],
    cancel: threading.Event | None = None,
    tick: float = 0.25,
) -> RunOutcome:
    """Create, start and supervise the task's container until it exits or is stopped."""
    try:
        container = _Created(client=client).create(task.image, labels=labels, **options)
    except APIError as exc:
        if exc.is_client_error() and exc.status_code != 404:
            raise StartFailed(f"the container could not be created: {error_text(exc)}") from exc
        raise
    give_hosts_file(client, container.id, options)
    _start(container)
    report(f"container {container.short_id} started")
    return supervise(client, config, task, container, log_path, report, cancel, tick=tick)


def adopt_container(
    client: docker.DockerClient,
    config: WorkerConfig,
    task: Task,
    container: Any,
    log_path: Path,
    report: Callable[[str], None],
    cancel: threading.Event | None = None,
    tick: float = 0.25,
) -> RunOutcome:
    """Watch a container an earlier worker process started (it was killed or restarted).

    The log is read again from the container's first line, so the log file is
    rewritten whole; the clocks count from the container's own start time.
    Docker may have rotated the head of its log away meanwhile (json-file
    max-size/max-file): the log then starts with a ``[farmhand]`` line that
    says so, and its summary is not complete and carries that warning.
    """
    info = client.api.inspect_container(container.id)
    state = info["State"]
    if state.get("Status") == "created":  # the earlier process died between create and start
        give_hosts_file(client, container.id, {"network_disabled": (info.get("Config") or {}).get("NetworkDisabled")})
        _start(container)
        state = client.api.inspect_container(container.id)["State"]
    head_check = rotated_head_check(client.api, container.id, log_path)  # reads the earlier log before it goes
    log_path.unlink(missing_ok=True)
    started_wall = parse_time(state.get("StartedAt"))
    report(f"container {container.short_id} re-adopted ({state.get('Status')})")
    outcome = supervise(
        client, config, task, container, log_path, report, cancel, tick=tick, started_wall=started_wall, head_check=head_check
    )
    for warning in outcome.log.warnings:
        report(f"log: {warning}")
    return outcome


def _start(container: Any) -> None:
    try:
        container.start()
    except APIError as exc:
        # Create accepted the options, so what fails here is the task's own
        # command, user or working directory as the image knows them.
        raise StartFailed(f"the container could not start: {error_text(exc)}") from exc


def supervise(
    client: docker.DockerClient,
    config: WorkerConfig,
    task: Task,
    container: Any,
    log_path: Path,
    report: Callable[[str], None],
    cancel: threading.Event | None = None,
    tick: float = 0.25,
    started_wall: float | None = None,
    head_check: Callable[[bytes | None], str | None] | None = None,
) -> RunOutcome:
    """Copy the output to the log, enforce the clocks, and read the verdict.

    ``head_check`` (see ``LogPump``) can declare the head of the log missing.
    """
    masker = StreamMasker(task.secret_values)
    # A re-adopted container has been running for a while: its clocks started then.
    already = max(0.0, time.time() - started_wall) if started_wall else 0.0
    started = time.monotonic() - already

    exited = threading.Event()
    deadline = started + task.max_run_time
    # An engine that went away is waited for until the task's clocks are out or it is cancelled.
    watch = EngineWatch(
        client.api,
        report,
        container.id,
        config.docker_timeout,
        give_up=lambda: time.monotonic() > deadline + config.kill_grace + 60 or (cancel is not None and cancel.is_set()),
    )
    pump = LogPump(
        OutputStream(client, container.id, exited, watch=watch),
        log_path,
        config.log_max_bytes,
        masker,
        head_check=head_check,
    ).start()
    sampler = _UsageSampler(client, container.id, exited)
    sample_from = started + STATS_DELAY
    wait_result: dict[str, Any] = {}

    def _wait() -> None:
        try:
            wait_result.update(watch.call(container.wait))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            wait_result["error"] = exc
        finally:
            exited.set()

    threading.Thread(target=_wait, name=f"wait:{container.short_id}", daemon=True).start()

    stopped_for: str | None = None
    while not exited.wait(min(tick, max(0.0, sample_from - time.monotonic())) if not sampler.started else tick):
        now = time.monotonic()
        watch.maybe_probe()
        if not sampler.started and now >= sample_from:
            sampler.start()
        if cancel is not None and cancel.is_set():
            stopped_for = "cancelled"
        elif now >= deadline:
            stopped_for = "max-run-time"
        elif task.idle_timeout is not None and now - max(pump.last_output, started) >= task.idle_timeout:
            stopped_for = "idle-timeout"
        if stopped_for:
            report(f"stopping container: {stopped_for}")
            _stop(container, config.kill_grace, report)
            if not exited.wait(config.kill_grace + 60):
                report("the container did not stop; cleanup will remove it by force")
            break

    log = pump.wait(timeout=300)
    if "error" in wait_result:
        raise wait_result["error"]
    try:
        state = watch.call(lambda: client.api.inspect_container(container.id))["State"]
    except NotFound:
        state = {}
    exit_code = state.get("ExitCode", wait_result.get("StatusCode"))
    return RunOutcome(
        container_id=container.id,
        exit_code=exit_code,
        oom_killed=bool(state.get("OOMKilled")),
        stopped_for=stopped_for,
        log=log,
        usage=sampler.summary(),
        engine_outages=watch.outages,
    )


def _stop(container: Any, grace: float, report: Callable[[str], None]) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; a container already gone is fine."""
    try:
        container.stop(timeout=int(max(0, grace)))
    except NotFound:
        pass
    except APIError:
        try:
            container.kill()
        except (NotFound, APIError):
            pass
    except GONE as exc:
        report(f"the container could not be stopped: the Docker engine is away ({type(exc).__name__})")
