"""One garbage collection pass against the real things, and the worker's guard that stops it taking tasks on a full disk.

``farmhand.gc`` decides; this module looks (Docker's ``system df``, the
workspaces, the usage record, statvfs) and removes, one thing at a time,
checking again just before each removal that no task has started using it
(inside the usage record's write lock, see ``image_usage``), and measuring
again after each one so a pass stops as soon as the filesystem is back above
its threshold. Docker refuses by itself to remove an image or volume a
container uses: nothing here ever forces a removal.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
from docker.errors import DockerException, NotFound

from farmhand import gc, pending
from farmhand.checkpoint import CHECKPOINT_NAME, LOCK_NAME
from farmhand.config import WorkerConfig
from farmhand.delivery import local_copies
from farmhand.docker_client import DOCKER_ERRORS, error_text, parse_time
from farmhand.image_usage import Snapshot, Usage
from farmhand.locks import Held, hold
from farmhand.network_pool import POOL_LABEL
from farmhand.sandbox import TASK_LABEL

log = logging.getLogger("farmhand.gc")

#: Held for a whole pass: one pass at a time per WORKING_DIR, whoever runs it (the worker, `farmhand gc`).
PASS_LOCK = "gc.lock"
#: The embedded result store's directory under WORKING_DIR and Celery's file name prefix there.
RESULTS_DIR = "results"
RESULT_PREFIX = "celery-task-meta-"
#: While the node takes no task: how often free space is looked at again.
PAUSED_RECHECK = 5.0
#: The least time between two passes run because a threshold is crossed (the periodic ones aside).
PASS_GAP = 60.0


# -- looking ----------------------------------------------------------------------------------


def docker_root(config: WorkerConfig, client: docker.DockerClient) -> str | None:
    """Docker's data root as this host sees it (``gc.docker.data_root``, else ``docker info``); None if not visible here."""
    root = config.gc.docker_root
    if root is None:
        try:
            root = client.info().get("DockerRootDir")
        except DOCKER_ERRORS:
            return None
    return root if root and os.path.isdir(root) else None


def filesystems(config: WorkerConfig, root: str | None) -> list[gc.FsState]:
    """WORKING_DIR's filesystem and, when visible, Docker's data root's."""
    config.working_dir.mkdir(parents=True, exist_ok=True)
    found = [gc.measure(gc.WORKING_DIR, str(config.working_dir))]
    if root is not None:
        try:
            found.insert(0, gc.measure(gc.DOCKER, root))
        except OSError:
            pass
    return found


def lock_held(path: Path) -> bool:
    """Whether a live process holds the flock on ``path`` (``locks.hold``); a missing file is not held."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def tree_size(path: Path) -> tuple[int, int]:
    """Bytes (allocated) and inodes under ``path``, links never followed."""
    size = files = 0
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0, 0
    size, files = st.st_blocks * 512, 1
    if path.is_dir() and not path.is_symlink():
        for root, dirs, names in os.walk(path):
            for name in dirs + names:
                try:
                    st = os.lstat(os.path.join(root, name))
                except FileNotFoundError:
                    continue
                size += st.st_blocks * 512
                files += 1
    return size, files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def scan_workspace(config: WorkerConfig, path: Path, pending_names: set[str], sizes: Callable[[gc.Workspace], bool] | None = None) -> gc.Workspace:
    """The workspace as the collector sees it; its sizes (a walk of the whole tree) only where ``sizes`` says they matter."""
    task_id = path.name
    has_checkpoint = (path / CHECKPOINT_NAME).exists()
    saved = _read_json(path / CHECKPOINT_NAME) if has_checkpoint else None
    result_path = path / "result.json"
    finished_at: float | None = None
    delivered = False
    if result_path.exists():
        try:
            finished_at = result_path.stat().st_mtime
        except FileNotFoundError:
            finished_at = None
        result = _read_json(result_path) or {}
        delivered = (path / "delivered.json").exists() or result.get("reason") != "upload-failed"
    task = _read_json(path / "task.json") or {}
    images = [task.get("image")] + [s.get("image") for s in task.get("services") or [] if isinstance(s, dict)]
    caches = task.get("caches") if isinstance(task.get("caches"), dict) else {}
    ws = gc.Workspace(
        task_id=task_id,
        path=str(path),
        locked=lock_held(path / LOCK_NAME),
        checkpoint_stage=(str((saved or {}).get("stage") or (saved or {}).get("phase") or "unreadable") if has_checkpoint else None),
        finished_at=finished_at,
        delivered=delivered,
        pending=task_id in pending_names or str(path) in pending_names,
        images=tuple(i for i in images if isinstance(i, str)),
        caches=tuple(str(c) for c in caches),
        network=(saved or {}).get("network"),
    )
    if sizes is not None and not ws.active and not ws.pending and sizes(ws):
        size, files = tree_size(path)
        copies = [tree_size(p) for p in local_copies(path, config)]
        ws = gc.Workspace(**{**ws.__dict__, "size": size, "files": files, "copies_size": sum(c[0] for c in copies), "copies_files": sum(c[1] for c in copies)})
    return ws


def _pending_names(config: WorkerConfig) -> set[str]:
    names: set[str] = set()
    for entry in pending.entries(config):
        names.add(entry.task_id)
        if entry.job.get("workspace"):
            names.add(str(entry.job["workspace"]))
    return names


def scan_workspaces(config: WorkerConfig, sizes: Callable[[gc.Workspace], bool] | None = None) -> list[gc.Workspace]:
    root = config.tasks_dir
    if not root.is_dir():
        return []
    names = _pending_names(config)
    return [scan_workspace(config, p, names, sizes) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def scan_results(config: WorkerConfig) -> list[gc.ResultFile]:
    root = config.working_dir / RESULTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in os.scandir(root):
        if entry.name.startswith(RESULT_PREFIX) and entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            found.append(gc.ResultFile(entry.path, entry.name[len(RESULT_PREFIX) :], st.st_mtime, st.st_blocks * 512))
    return found


def _created(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return parse_time(str(value)) or 0.0 if value else 0.0


def scan_docker(client: docker.DockerClient, inv: gc.Inventory) -> None:
    """Images, containers and volumes with their sizes (one ``system df``), and farmhand's task networks."""
    df = client.df()
    containers = df.get("Containers") or []
    used_by: dict[str, list[str]] = {}
    for c in containers:
        used_by.setdefault(c.get("ImageID") or "", []).append((c.get("Names") or ["?"])[0].lstrip("/"))
        inv.containers.append(
            gc.ContainerInfo(c["Id"], (c.get("Names") or [c["Id"][:12]])[0].lstrip("/"), c.get("Labels") or {}, c.get("State") or "", int(c.get("SizeRw") or 0))
        )
    for img in df.get("Images") or []:
        size, shared = int(img.get("Size") or 0), int(img.get("SharedSize") if img.get("SharedSize") is not None else -1)
        inv.images.append(
            gc.ImageInfo(
                id=img["Id"],
                tags=tuple(t for t in img.get("RepoTags") or () if t != "<none>:<none>"),
                digests=tuple(d for d in img.get("RepoDigests") or () if d != "<none>@<none>"),
                size=size,
                unique_size=size - shared if shared >= 0 else -1,
                containers=tuple(used_by.get(img["Id"], ())),
                created=_created(img.get("Created")),
            )
        )
    for vol in df.get("Volumes") or []:
        usage = vol.get("UsageData") or {}
        inv.volumes.append(
            gc.VolumeInfo(vol["Name"], vol.get("Labels") or {}, int(usage.get("Size", -1)), int(usage.get("RefCount", -1)), _created(vol.get("CreatedAt")))
        )
    for net in client.api.networks(filters={"label": POOL_LABEL}):
        attached = len(client.api.containers(all=True, quiet=True, filters={"network": net["Name"]}))
        inv.networks.append(gc.NetworkInfo(net["Id"], net["Name"], net.get("Labels") or {}, attached, _created(net.get("Created"))))


def inventory(
    config: WorkerConfig, client: docker.DockerClient, owners: frozenset[str], live: frozenset[str], docker_visible: bool, working_dir_short: bool
) -> gc.Inventory:
    """Everything a pass looks at. A finished workspace is measured (walked) only when its size matters: it is
    older than the retention, or WORKING_DIR is short and its local copies may go."""
    now = time.time()
    retention = config.gc.retention

    def sizes(ws: gc.Workspace) -> bool:
        return working_dir_short or (retention is not None and ws.finished_at is not None and now - ws.finished_at > retention)

    inv = gc.Inventory(
        now=now,
        workspaces=scan_workspaces(config, sizes),
        results=scan_results(config),
        usage=Usage(config.working_dir).snapshot(),
        network_owners=owners,
        live_owners=live,
        docker_visible=docker_visible,
    )
    scan_docker(client, inv)
    return inv


# -- a pass -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    item: gc.Item
    outcome: str  # removed | would remove | not needed | kept | failed
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "outcome": self.outcome, "detail": self.detail}


@dataclass
class PassReport:
    dry_run: bool
    started_at: float
    before: list[gc.FsState]
    after: list[gc.FsState] = field(default_factory=list)
    items: list[Outcome] = field(default_factory=list)
    kept: list[gc.Kept] = field(default_factory=list)
    accepting: bool = True
    reason: str = ""

    @property
    def freed(self) -> int:
        return sum(o.item.size for o in self.items if o.outcome == "removed")

    def to_dict(self) -> dict[str, Any]:
        def fs(f: gc.FsState) -> dict[str, Any]:
            return {"name": f.name, "path": f.path, "total": f.total, "free": f.free, "inodes": f.inodes, "free_inodes": f.free_inodes}

        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "filesystems_before": [fs(f) for f in self.before],
            "filesystems_after": [fs(f) for f in self.after],
            "items": [o.to_dict() for o in self.items],
            "kept": [k.to_dict() for k in self.kept],
            "freed": self.freed,
            "accepting": self.accepting,
            "reason": self.reason,
        }


class Collector:
    """Runs passes for one WORKING_DIR on one Docker engine.

    ``owners``: the ``farmhand.network`` owners this WORKING_DIR's processes
    create networks as (the node's name; ``farmhand`` for run-task);
    ``live``: those whose pool is alive now, whose idle networks stay.
    """

    def __init__(self, config: WorkerConfig, client: docker.DockerClient, owners: frozenset[str], live: frozenset[str] = frozenset()) -> None:
        self.config, self.client, self.owners, self.live = config, client, owners, live
        self.usage = Usage(config.working_dir)
        self.root = docker_root(config, client)
        self._lock = threading.Lock()

    def filesystems(self) -> list[gc.FsState]:
        return filesystems(self.config, self.root)

    def run(self, dry_run: bool = False) -> PassReport:
        """One pass: plan from an inventory, then remove in order (unless ``dry_run``), measuring as it goes."""
        with self._lock, _pass_lock(self.config.working_dir / PASS_LOCK):
            before = self.filesystems()
            report = PassReport(dry_run=dry_run, started_at=time.time(), before=before)
            needs = {f.name: gc.need(f, self.config.gc.docker if f.name == gc.DOCKER else self.config.gc.working_dir) for f in before}
            same = gc.shared_devices(before)
            short = {same.get(name, name) for name, need in needs.items() if need}
            inv = inventory(self.config, self.client, self.owners, self.live, any(f.name == gc.DOCKER for f in before), same.get(gc.WORKING_DIR, gc.WORKING_DIR) in short)
            items, report.kept = gc.candidates(inv, self.config.gc)
            if not dry_run:
                _remove_leftovers(self.config)
            chosen = gc.plan(items, needs, same)
            done_with: set[str] = set()
            for item in chosen:
                group = same.get(item.fs, item.fs)
                if dry_run:
                    report.items.append(Outcome(item, "would remove"))
                    continue
                if not item.always and group in done_with:
                    report.items.append(Outcome(item, "not needed", "the filesystem is above its threshold again"))
                    continue
                report.items.append(self._remove(item))
                if not item.always and not self._still_short(group, same):
                    done_with.add(group)
            report.after = before if dry_run else self.filesystems()
            report.accepting, report.reason = gc.accepting(report.after, self.config.gc)
            return report

    def _still_short(self, group: str, same: dict[str, str]) -> bool:
        for f in self.filesystems():
            if same.get(f.name, f.name) == group and gc.need(f, self.config.gc.docker if f.name == gc.DOCKER else self.config.gc.working_dir):
                return True
        return False

    # -- removals, each checked again at the last moment --------------------------------------
    def _remove(self, item: gc.Item) -> Outcome:
        try:
            detail = getattr(self, f"_remove_{item.kind}")(item)
        except (DockerException, OSError) as exc:
            text = error_text(exc) if isinstance(exc, DockerException) else str(exc)
            log.warning("gc: %s %s not removed: %s", item.kind, item.name, text)
            return Outcome(item, "failed", text)
        if detail:
            return Outcome(item, "kept", detail)
        log.info("gc: removed %s %s (%s): %s", item.kind, item.name, gc.human(item.size), item.reason)
        _metric_removal(item.kind, item.size)
        return Outcome(item, "removed")

    def _take_workspace(self, item: gc.Item) -> tuple[IO[str] | None, str]:
        """The workspace's lock, when it is still a finished task nobody drives; else why not."""
        path = Path(item.key)
        try:
            lock = hold(path / LOCK_NAME, f"task_id {item.name!r}")
        except Held:
            return None, "its task started again meanwhile"
        ws = scan_workspace(self.config, path, _pending_names(self.config))
        if ws.checkpoint_stage is not None or ws.finished_at is None or ws.pending:
            lock.close()
            return None, "its task is in progress or its upload is pending"
        return lock, ""

    def _remove_copies(self, item: gc.Item) -> str:
        lock, why = self._take_workspace(item)
        if lock is None:
            return why
        try:
            pending.remove_paths(local_copies(Path(item.key), self.config))
        finally:
            lock.close()
        return ""

    def _remove_workspace(self, item: gc.Item) -> str:
        lock, why = self._take_workspace(item)
        if lock is None:
            return why
        path = Path(item.key)
        try:
            # Renamed first, under its lock: a half-removed workspace never looks like a task's.
            trash = path.with_name(f".gc-{path.name}-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
        finally:
            lock.close()
        shutil.rmtree(trash, ignore_errors=True)
        return ""

    def _remove_result(self, item: gc.Item) -> str:
        Path(item.key).unlink(missing_ok=True)
        return ""

    def _active(self) -> gc.Protected:
        return gc.protected(scan_workspaces(self.config), self.usage.snapshot())

    def _remove_image(self, item: gc.Item) -> str:
        with self.usage.removing() as record:
            guard = self._active()
            try:
                attrs = self.client.api.inspect_image(item.key)
            except NotFound:
                record.forget_image(item.key, item.refs)
                return ""
            tags = tuple(t for t in attrs.get("RepoTags") or () if t != "<none>:<none>")
            forms = set().union(*(gc.ref_forms(r) for r in tags)) if tags else set()
            user = guard.image_ids.get(item.key) or next((guard.refs[f] for f in forms if f in guard.refs), None)
            if user:
                return f"task {user} started using it"
            if set(tags) - set(item.refs):
                return "tagged anew since it was listed"
            spellings = set().union(*(gc.ref_forms(r) for r in item.refs)) if item.refs else set()
            if record.image_last_used(item.key, spellings) > item.last_used:
                return "a task used it since it was listed"
            for tag in tags:
                self.client.api.remove_image(tag)
            try:
                self.client.api.remove_image(item.key)
            except NotFound:
                pass
            record.forget_image(item.key, item.refs)
        return ""

    def _remove_volume(self, item: gc.Item) -> str:
        with self.usage.removing() as record:
            guard = self._active()
            try:
                attrs = self.client.api.inspect_volume(item.key)
            except NotFound:
                record.forget_volume(item.key)
                return ""
            from farmhand.sandbox import CACHE_LABEL

            cache = (attrs.get("Labels") or {}).get(CACHE_LABEL)
            if cache in guard.caches:
                return f"task {guard.caches[cache]} started using cache {cache!r}"
            if record.volume_last_used(item.key) > item.last_used:
                return "a task used it since it was listed"
            self.client.api.remove_volume(item.key)  # Docker refuses while a container mounts it
            record.forget_volume(item.key)
        return ""

    def _remove_container(self, item: gc.Item) -> str:
        try:
            attrs = self.client.api.inspect_container(item.key)
        except NotFound:
            return ""
        task_id = (attrs.get("Config", {}).get("Labels") or {}).get(TASK_LABEL)
        if task_id in self._active().tasks:
            return f"task {task_id} is in progress again"
        self.client.api.remove_container(item.key, v=True)  # never forced: one that started since is refused
        return ""

    def _remove_network(self, item: gc.Item) -> str:
        if self.client.api.containers(all=True, quiet=True, filters={"network": item.key}):
            return "a container is attached now"
        if item.key in self._active().networks:
            return "a task took it meanwhile"
        try:
            self.client.api.remove_network(item.key)
        except NotFound:
            pass
        return ""


def _remove_leftovers(config: WorkerConfig) -> None:
    """Workspaces an earlier pass renamed for removal and did not finish removing (it was killed)."""
    if config.tasks_dir.is_dir():
        for trash in config.tasks_dir.glob(".gc-*"):
            shutil.rmtree(trash, ignore_errors=True)


def _pass_lock(path: Path) -> Any:
    """An exclusive flock for the pass, waited for (another pass is short)."""
    from contextlib import contextmanager

    @contextmanager
    def held() -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o660)  # flock needs no write access: root and the worker share it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    return held()


def _metric_removal(kind: str, size: int) -> None:
    from farmhand import metrics

    metrics.record_gc_removal(kind, size)


def _metric_accepting(accepting: bool, reason: str) -> None:
    from farmhand import metrics

    metrics.set_accepting(accepting, reason)


# -- the worker's guard -----------------------------------------------------------------------


class DiskGuard:
    """The worker's side: passes every ``gc.interval`` and before a task when a threshold is crossed, and
    whether the node takes tasks (``accepting``; ``on_change`` hears each change, the node stops or
    resumes consuming).

    A pass before a task runs at most every PASS_GAP seconds: on a disk that stays short (the operator's
    own files), a pass per task would cost every task a ``system df`` for nothing.
    """

    def __init__(self, collector: Collector, on_change: Callable[[bool, str], None] = lambda ok, why: None) -> None:
        self.collector = collector
        self.settings = collector.config.gc
        self.on_change = on_change
        self._state = threading.Condition()
        self.accepting, self.reason = True, ""
        self._stop = threading.Event()
        self._last_pass = -PASS_GAP  # monotonic time of the last pass, whatever ran it
        self._next_periodic = time.monotonic() + self.settings.interval
        self._thread = threading.Thread(target=self._loop, name="gc", daemon=True)

    def start(self) -> "DiskGuard":
        self.check(collect=self.settings.enabled)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._state:
            self._state.notify_all()

    def _thresholds(self, fs: gc.FsState) -> Any:
        return self.settings.docker if fs.name == gc.DOCKER else self.settings.working_dir

    def check(self, collect: bool) -> bool:
        """Measure; when ``collect`` and a threshold is crossed (or the node is short), run a pass unless one ran
        within PASS_GAP; then update ``accepting``. Returns it."""
        fss = self.collector.filesystems()
        ok, why = gc.accepting(fss, self.settings)
        short = any(gc.need(f, self._thresholds(f)) for f in fss)
        if collect and (short or not ok) and time.monotonic() - self._last_pass >= PASS_GAP:
            ok, why = self._collect()
        self._set(ok, why)
        return ok

    def _collect(self) -> tuple[bool, str]:
        self._last_pass = time.monotonic()
        try:
            report = self.collector.run()
        except Exception:  # noqa: BLE001 - a failed pass must not stop the worker; min_free still decides
            log.exception("gc pass failed")
            return gc.accepting(self.collector.filesystems(), self.settings)
        return report.accepting, report.reason

    def _set(self, ok: bool, why: str) -> None:
        with self._state:
            changed = ok != self.accepting or (not ok and why != self.reason)
            self.accepting, self.reason = ok, why
            self._state.notify_all()
        if changed:
            if ok:
                log.warning("disk: space is back; taking tasks again")
            else:
                log.warning("disk: taking no tasks: %s", why)
            _metric_accepting(ok, why)
            self.on_change(ok, why)

    def before_task(self, give_up: Callable[[], bool]) -> bool:
        """Before a task starts: collect if a threshold is crossed; while under ``gc.min_free`` wait for space
        (the node takes nothing meanwhile). False when ``give_up`` said so first (the task was cancelled)."""
        ok = self.check(collect=self.settings.enabled)
        while not ok:
            if give_up() or self._stop.is_set():
                return False
            with self._state:
                self._state.wait(PAUSED_RECHECK)
            ok = self.check(collect=self.settings.enabled)
        return True

    def _loop(self) -> None:
        """Every ``gc.interval`` a pass; while the node takes no task, a look every PAUSED_RECHECK seconds."""
        while not self._stop.wait(PAUSED_RECHECK if not self.accepting else max(0.0, self._next_periodic - time.monotonic())):
            try:
                if time.monotonic() >= self._next_periodic:
                    self._next_periodic = time.monotonic() + self.settings.interval
                    if self.settings.enabled:
                        self._set(*self._collect())
                        continue
                self.check(collect=self.settings.enabled)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("gc")
