"""The worker's Prometheus metrics: what the engine, the node and the garbage collector report, and what a scrape reads.

Recording is free until ``enable``: the functions below do nothing while no
registry exists, so ``farmhand run-task`` and a worker with metrics off
never import prometheus_client at all (it is imported by ``enable``). Values
that are cheap to read when asked (slots, running tasks, free disk, pending
uploads, whether the node takes tasks) are read at scrape time by a
collector, never kept up to date by hooks.

Names follow Prometheus' conventions: ``farmhand_`` prefix, base units
(seconds, bytes), ``_total`` for counters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from farmhand import __version__

if TYPE_CHECKING:  # imported by enable() only
    from prometheus_client import CollectorRegistry

log = logging.getLogger("farmhand.metrics")

#: Stage and pull durations span a fraction of a second (a cached image) to a day (max_run_time).
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


@dataclass(frozen=True)
class NodeView:
    """What a scrape asks of the node, as callables so the metrics never hold the node itself."""

    slots: Callable[[], int]
    busy: Callable[[], int]
    running: Callable[[], int]
    draining: Callable[[], bool]


class _Accepting:
    """Whether this node takes tasks, and why not; set by the garbage collector (disk) whatever metrics do."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepting = True
        self.reason = ""


_accepting = _Accepting()
_metrics: "_Metrics | None" = None


def set_accepting(accepting: bool, reason: str) -> None:
    """The node takes tasks (``reason`` may be empty) or does not (``reason`` says why, for logs and ``farmhand check``)."""
    with _accepting.lock:
        _accepting.accepting, _accepting.reason = bool(accepting), reason


def accepting() -> tuple[bool, str]:
    with _accepting.lock:
        return _accepting.accepting, _accepting.reason


def record_gc_removal(kind: str, size: int) -> None:
    """One thing the garbage collector removed (``kind``: image, volume, workspace...) and the bytes it freed."""
    m = _metrics
    if m is not None:
        m.gc_removed.labels(kind).inc()
        m.gc_bytes.labels(kind).inc(max(0, int(size)))


def stage_finished(stage: str, outcome: str, duration: float) -> None:
    m = _metrics
    if m is not None:
        m.stage_seconds.labels(stage, outcome).observe(max(0.0, duration))


def task_finished(state: str, reason: str | None, finished_at: float | None = None) -> None:
    m = _metrics
    if m is not None:
        m.tasks_finished.labels(state, reason or "none").inc()
        if state == "succeeded":
            m.last_success.set(finished_at or time.time())


def image_pulled(duration: float, ok: bool) -> None:
    """One pull of an image from its registry (every try of it, as it ended)."""
    m = _metrics
    if m is not None:
        m.pull_seconds.labels("ok" if ok else "error").observe(max(0.0, duration))


def uploaded(size: int, seconds: float) -> None:
    """A delivery the warehouse confirmed: its bytes, and its rate as the latest upload rate."""
    m = _metrics
    if m is not None:
        m.uploaded_bytes.inc(max(0, size))
        if seconds > 0:
            m.upload_rate.set(size / seconds)


def registry() -> "CollectorRegistry | None":
    m = _metrics
    return m.registry if m is not None else None


def enable(working_dir: Path, pending: Callable[[], tuple[int, int]], node: NodeView | None = None, docker_root: str | None = None) -> "CollectorRegistry":
    """Create the registry and every metric (idempotent: a second call returns the first registry).

    ``pending`` gives the number and bytes of uploads waiting in ``pending/``;
    ``docker_root`` is Docker's data root (``docker info``), whose free space
    is reported next to WORKING_DIR's when given.
    """
    global _metrics
    if _metrics is None:
        _metrics = _Metrics(working_dir, pending, node, docker_root)
    return _metrics.registry


def disable() -> None:
    """Forget the registry (tests; a worker keeps its metrics for its life)."""
    global _metrics
    _metrics = None


def disk_free(path: str) -> tuple[int, int, int] | None:
    """Free bytes (for unprivileged users, as tasks' files are), free inodes and size of the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_favail, st.f_blocks * st.f_frsize


class _Metrics:
    def __init__(self, working_dir: Path, pending: Callable[[], tuple[int, int]], node: NodeView | None, docker_root: str | None) -> None:
        import platform

        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = reg = CollectorRegistry(auto_describe=True)
        self.tasks_finished = Counter("farmhand_tasks_finished", "Tasks that ended on this node, by state and reason.", ["state", "reason"], registry=reg)
        self.stage_seconds = Histogram(
            "farmhand_stage_duration_seconds", "How long each stage of a task took, by outcome.", ["stage", "outcome"], buckets=DURATION_BUCKETS, registry=reg
        )
        self.pull_seconds = Histogram("farmhand_image_pull_duration_seconds", "Image pulls from a registry, by outcome.", ["outcome"], buckets=DURATION_BUCKETS, registry=reg)
        self.uploaded_bytes = Counter("farmhand_uploaded_bytes", "Bytes the warehouse confirmed (logs and artifacts).", registry=reg)
        self.upload_rate = Gauge("farmhand_upload_rate_bytes_per_second", "The rate of the latest confirmed upload.", registry=reg)
        self.last_success = Gauge("farmhand_last_success_timestamp_seconds", "When the latest succeeded task finished (Unix time).", registry=reg)
        self.gc_removed = Counter("farmhand_gc_removed", "What the garbage collector removed, by kind.", ["kind"], registry=reg)
        self.gc_bytes = Counter("farmhand_gc_removed_bytes", "Bytes the garbage collector freed, by kind.", ["kind"], registry=reg)
        Info("farmhand_build", "The farmhand version this worker runs.", registry=reg).info({"version": __version__, "python": platform.python_version()})
        reg.register(_Scraped(working_dir, pending, node, docker_root))


class _Scraped:
    """Read when scraped: slots, running tasks, pending uploads, free disk and inodes, whether the node takes tasks."""

    def __init__(self, working_dir: Path, pending: Callable[[], tuple[int, int]], node: NodeView | None, docker_root: str | None) -> None:
        self.paths = {"working_dir": str(working_dir)}
        if docker_root:
            self.paths["docker"] = docker_root
        self.pending, self.node = pending, node

    def describe(self) -> list[Any]:
        return []  # names are known from collect(); none collides with the registry's own

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self.node is not None:
            yield GaugeMetricFamily("farmhand_slots", "Tasks this node runs at once.", value=self.node.slots())
            yield GaugeMetricFamily("farmhand_slots_busy", "Slots held by a task (admitted, running or resumed).", value=self.node.busy())
            yield GaugeMetricFamily("farmhand_tasks_running", "Tasks an engine of this node drives now.", value=self.node.running())
        ok, _reason = accepting()
        if self.node is not None and self.node.draining():
            ok = False
        yield GaugeMetricFamily("farmhand_accepting_tasks", "1 while the node takes tasks; 0 when draining or short of disk.", value=int(ok))
        try:
            count, size = self.pending()
        except OSError as exc:
            log.debug("pending uploads not counted: %s", exc)
        else:
            yield GaugeMetricFamily("farmhand_pending_uploads", "Uploads waiting in pending/ to be tried again.", value=count)
            yield GaugeMetricFamily("farmhand_pending_upload_bytes", "Bytes of the uploads waiting in pending/.", value=size)
        free = GaugeMetricFamily("farmhand_disk_free_bytes", "Free bytes of the filesystem (for unprivileged users).", labels=["volume", "path"])
        inodes = GaugeMetricFamily("farmhand_disk_free_inodes", "Free inodes of the filesystem.", labels=["volume", "path"])
        total = GaugeMetricFamily("farmhand_disk_size_bytes", "Size of the filesystem.", labels=["volume", "path"])
        for volume, path in self.paths.items():
            got = disk_free(path)
            if got is not None:
                free.add_metric([volume, path], got[0])
                inodes.add_metric([volume, path], got[1])
                total.add_metric([volume, path], got[2])
        yield from (free, inodes, total)
