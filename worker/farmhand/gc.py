"""Disk hygiene: what the garbage collector may remove, in which order, and when the node stops taking tasks.

Pure decisions over inventories (``gc_pass`` gathers them from Docker and the
disk, and carries the decisions out), so every rule here is tested without
Docker. The rules:

- Only what farmhand made: images farmhand pulled for a task (``image_usage``
  records that, Docker cannot), cache volumes labelled ``farmhand.cache``,
  containers labelled ``farmhand.task-id`` of this WORKING_DIR's finished
  tasks, this worker's task networks, and its own workspaces and result files.
  An operator's image or volume is never a candidate, nor an image farmhand
  pulled that someone has tagged since, nor one ``gc.keep_images`` matches.
- Nothing a task in progress uses, or a task an earlier worker left and the
  next will re-adopt: a workspace whose lock is held, or that has a
  checkpoint (or no result yet), protects its images, caches, network and
  containers. Nothing in ``pending/`` is ever a candidate.
- Results and logs older than ``gc.retention`` go at every pass. The rest goes
  only while a filesystem is under its threshold, in this order: delivered
  tasks' local copies, images by least recent use by a task, unused cache
  volumes by least recent use, stopped containers, idle networks; and only
  what frees the filesystem that lacks space.
- Under ``gc.min_free`` (or ``min_free_inodes``) after collecting, the node
  takes no task until space is back.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from farmhand.config import FreeThreshold, GcSettings
from farmhand.image_usage import Snapshot

#: The filesystems the collector watches, by the names the config gives their thresholds.
DOCKER, WORKING_DIR = "docker", "working_dir"
#: Kinds of removal, in the order they are made under pressure.
KINDS = ("copies", "workspace", "result", "image", "volume", "container", "network")
#: A task network younger than this is not idle: its task may be about to attach its first container.
NETWORK_MIN_AGE = 60.0
#: Container states in which a container is not "stopped".
LIVE_STATES = frozenset({"running", "paused", "restarting", "removing"})


# -- filesystems --------------------------------------------------------------------------


@dataclass(frozen=True)
class FsState:
    """One filesystem as statvfs saw it. ``inodes`` 0: it has no inode limit (btrfs, some overlays)."""

    name: str
    path: str
    device: int
    total: int
    free: int
    inodes: int
    free_inodes: int


def measure(name: str, path: str) -> FsState:
    """The filesystem holding ``path``, as an unprivileged process sees it (what a task may still use)."""
    st = os.statvfs(path)
    return FsState(
        name=name,
        path=path,
        device=os.stat(path).st_dev,
        total=st.f_blocks * st.f_frsize,
        free=st.f_bavail * st.f_frsize,
        inodes=st.f_files,
        free_inodes=st.f_favail if st.f_files else 0,
    )


@dataclass(frozen=True)
class Need:
    """What a filesystem lacks to be at its threshold again: bytes and inodes (0: nothing)."""

    bytes: int = 0
    inodes: int = 0

    def __bool__(self) -> bool:
        return self.bytes > 0 or self.inodes > 0

    def after(self, size: int, inodes: int | None) -> "Need":
        return Need(max(0, self.bytes - size), max(0, self.inodes - (inodes or 0)))

    def merge(self, other: "Need") -> "Need":
        return Need(max(self.bytes, other.bytes), max(self.inodes, other.inodes))


def need(fs: FsState, threshold: FreeThreshold) -> Need:
    """How far ``fs`` is under ``threshold``: the larger of the absolute and the percent bound, for space and inodes."""
    want = max(threshold.free_space, math.ceil(threshold.free_percent / 100 * fs.total))
    want_inodes = 0 if fs.inodes == 0 else max(threshold.free_inodes, math.ceil(threshold.free_inodes_percent / 100 * fs.inodes))
    return Need(max(0, want - fs.free), max(0, want_inodes - fs.free_inodes) if fs.inodes else 0)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def accepting(filesystems: Iterable[FsState], settings: GcSettings) -> tuple[bool, str]:
    """Whether the node may start a task: every filesystem has ``gc.min_free`` and ``min_free_inodes`` left.

    The reason names the filesystem, what is left and the bound, for the log, the metric and ``farmhand check``.
    """
    problems = []
    for fs in filesystems:
        label = f"Docker's data root {fs.path}" if fs.name == DOCKER else f"WORKING_DIR {fs.path}"
        if fs.free < settings.min_free:
            problems.append(f"{label} has {human(fs.free)} free, under gc.min_free ({human(settings.min_free)})")
        if fs.inodes and fs.free_inodes < settings.min_free_inodes:
            problems.append(f"{label} has {fs.free_inodes} free inodes, under gc.min_free_inodes ({settings.min_free_inodes})")
    return (not problems, "; ".join(problems))


# -- inventories --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """A task's directory under WORKING_DIR/tasks, as the collector sees it."""

    task_id: str
    path: str
    locked: bool  # a process drives the task now
    checkpoint_stage: str | None  # a checkpoint exists: a worker carries the task on from this stage
    finished_at: float | None  # result.json's time; None: no result (in progress, or died before one)
    delivered: bool  # the warehouse confirmed its files (or there were none to send)
    pending: bool  # an upload of it waits in pending/
    images: tuple[str, ...] = ()  # references the task and its services name (normalised)
    caches: tuple[str, ...] = ()  # cache names it uses
    network: str | None = None  # its network, per its checkpoint
    size: int = 0  # the whole directory
    files: int = 0
    copies_size: int = 0  # the local copies of log and artifacts (kept after delivery by upload.keep_local)
    copies_files: int = 0

    @property
    def active(self) -> bool:
        """Driven now, or to be carried on by the next worker: everything it names stays."""
        return self.locked or self.checkpoint_stage is not None or self.finished_at is None


@dataclass(frozen=True)
class ResultFile:
    """One task's entry in the embedded result store (WORKING_DIR/results)."""

    path: str
    task_id: str
    mtime: float
    size: int


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    digests: tuple[str, ...]
    size: int
    unique_size: int  # what removing it frees (not shared with another image); -1: Docker did not say
    containers: tuple[str, ...]  # names of containers (any state) made from it
    created: float


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    labels: Mapping[str, str]
    size: int  # -1: Docker did not say
    refcount: int  # containers (any state) that mount it; -1: not known
    created: float


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    labels: Mapping[str, str]
    state: str
    size: int


@dataclass(frozen=True)
class NetworkInfo:
    id: str
    name: str
    labels: Mapping[str, str]
    containers: int  # attached, in any state
    created: float


@dataclass
class Inventory:
    """Everything the collector looks at, gathered at ``now``."""

    now: float
    workspaces: list[Workspace] = field(default_factory=list)
    results: list[ResultFile] = field(default_factory=list)
    images: list[ImageInfo] = field(default_factory=list)
    volumes: list[VolumeInfo] = field(default_factory=list)
    containers: list[ContainerInfo] = field(default_factory=list)
    networks: list[NetworkInfo] = field(default_factory=list)
    usage: Snapshot = field(default_factory=Snapshot)
    #: Owners (``farmhand.network``) of the networks this WORKING_DIR's processes make.
    network_owners: frozenset[str] = frozenset()
    #: Owners whose pool is alive now (a running worker keeps its idle networks on purpose).
    live_owners: frozenset[str] = frozenset()
    docker_visible: bool = True  # the data root could be measured: Docker's objects free a known filesystem


@dataclass(frozen=True)
class Item:
    """One thing to remove: what, its size (bytes it frees, as well as known), why, and which filesystem it frees."""

    kind: str
    name: str
    size: int
    reason: str
    fs: str
    key: str  # what removing it takes: a path, an image id, a volume or network name, a container id
    last_used: float = 0.0
    files: int | None = None  # inodes it frees, when known
    always: bool = False  # due whatever the free space (older than the retention)
    refs: tuple[str, ...] = ()  # an image's tags and digests

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["refs"] = list(self.refs)
        return doc


@dataclass(frozen=True)
class Kept:
    kind: str
    name: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- references ---------------------------------------------------------------------------


def ref_forms(ref: str) -> set[str]:
    """The spellings of one image reference: ``busybox:1``, ``library/busybox:1``, ``docker.io/library/busybox:1``...

    Docker lists Docker Hub images without their registry, tasks may name them
    with it; a reference without a tag or digest means ``:latest``.
    """
    ref = ref.strip()
    if "@" not in ref and ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    else:
        first = ref.split("/", 1)[0]
        if "/" in ref and ("." in first or ":" in first or first == "localhost"):
            return {ref}  # another registry's: one spelling
    short = ref.removeprefix("library/")
    forms = {short, f"docker.io/{short}"}
    if "/" not in short:  # an official image
        forms |= {f"library/{short}", f"docker.io/library/{short}"}
    return forms


def _matches(forms: Iterable[str], patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        for form in forms:
            if fnmatch.fnmatchcase(form, pattern):
                return pattern
    return None


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


# -- decisions ----------------------------------------------------------------------------


@dataclass
class Protected:
    """What the tasks in progress (and the re-adoptable ones) use, by task id."""

    tasks: dict[str, str] = field(default_factory=dict)  # task id -> why it is in progress
    refs: dict[str, str] = field(default_factory=dict)  # a spelling of an image reference -> task id
    image_ids: dict[str, str] = field(default_factory=dict)
    caches: dict[str, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)


def protected(workspaces: Iterable[Workspace], usage: Snapshot) -> Protected:
    out = Protected()
    for ws in workspaces:
        if not ws.active:
            continue
        out.tasks[ws.task_id] = (
            "its task is running (its lock is held)"
            if ws.locked
            else f"its task is to be carried on by the next worker (checkpoint: {ws.checkpoint_stage})"
            if ws.checkpoint_stage
            else "its task has no result yet"
        )
        for ref in ws.images:
            for form in ref_forms(ref):
                out.refs[form] = ws.task_id
                image_id = usage.refs.get(form, (None, 0.0))[0]
                if image_id:
                    out.image_ids[image_id] = ws.task_id
        for cache in ws.caches:
            out.caches[cache] = ws.task_id
        if ws.network:
            out.networks[ws.network] = ws.task_id
    return out


def workspace_items(inv: Inventory, settings: GcSettings, guard: Protected) -> tuple[list[Item], list[Kept]]:
    """Finished tasks: the whole workspace once older than the retention; before that, under pressure,
    the local copies a delivered task kept (``upload.keep_local``)."""
    items: list[Item] = []
    kept: list[Kept] = []
    for ws in sorted(inv.workspaces, key=lambda w: (w.finished_at or 0.0, w.task_id)):
        name = ws.task_id
        if ws.active:
            kept.append(Kept("workspace", name, guard.tasks.get(name, "its task is in progress")))
            continue
        if ws.pending:
            kept.append(Kept("workspace", name, "its upload waits in pending/ (never removed)"))
            continue
        assert ws.finished_at is not None
        age = inv.now - ws.finished_at
        if settings.retention is not None and age > settings.retention:
            items.append(
                Item("workspace", name, ws.size, f"result and log of a task finished {_age(age)} ago, older than gc.retention ({_age(settings.retention)})",
                     WORKING_DIR, ws.path, ws.finished_at, ws.files, always=True)
            )
        elif ws.delivered and ws.copies_size > 0:
            items.append(
                Item("copies", name, ws.copies_size, f"local copies of a task delivered {_age(age)} ago (kept by upload.keep_local)",
                     WORKING_DIR, ws.path, ws.finished_at, ws.copies_files)
            )
    return items, kept


def result_items(inv: Inventory, settings: GcSettings, guard: Protected) -> list[Item]:
    """Entries of the embedded result store older than the retention (a task in progress keeps its own)."""
    if settings.retention is None:
        return []
    items = []
    for res in sorted(inv.results, key=lambda r: r.mtime):
        age = inv.now - res.mtime
        if age > settings.retention and res.task_id not in guard.tasks:
            items.append(Item("result", res.task_id, res.size, f"result store entry written {_age(age)} ago, older than gc.retention", WORKING_DIR, res.path, res.mtime, 1, always=True))
    return items


def image_items(inv: Inventory, settings: GcSettings, guard: Protected) -> tuple[list[Item], list[Kept]]:
    """Images farmhand pulled, least recently used by a task first; anyone else's, or one a task needs, stays."""
    ours_refs: set[str] = set()
    for ref in inv.usage.refs:
        ours_refs |= ref_forms(ref)
    items: list[Item] = []
    kept: list[Kept] = []
    for img in inv.images:
        name = img.tags[0] if img.tags else img.digests[0] if img.digests else img.id[:19]
        refs = img.tags + img.digests
        forms = set().union(*(ref_forms(r) for r in refs)) if refs else set()
        owned, used_at = inv.usage.images.get(img.id, (False, 0.0))
        if not owned:
            kept.append(Kept("image", name, "not pulled by farmhand (an operator's, or present before a task used it)"))
            continue
        pattern = _matches(forms, settings.keep_images)
        if pattern:
            kept.append(Kept("image", name, f"matches gc.keep_images {pattern!r}"))
            continue
        if img.containers:
            kept.append(Kept("image", name, f"used by container {img.containers[0]}"))
            continue
        user = guard.image_ids.get(img.id) or next((guard.refs[f] for f in forms if f in guard.refs), None)
        if user:
            kept.append(Kept("image", name, f"used by task {user}: {guard.tasks.get(user, 'in progress')}"))
            continue
        foreign = [t for t in img.tags if not (ref_forms(t) & ours_refs)]
        if foreign:
            kept.append(Kept("image", name, f"tagged {foreign[0]}, which no task of farmhand named"))
            continue
        last = max([used_at] + [inv.usage.refs.get(f, (None, 0.0))[1] for f in forms if inv.usage.refs.get(f, (None, 0.0))[0] == img.id])
        size = img.unique_size if img.unique_size >= 0 else img.size
        items.append(Item("image", name, size, f"pulled by farmhand, last used by a task {_age(inv.now - last)} ago", DOCKER, img.id, last, refs=refs))
    items.sort(key=lambda i: (i.last_used, i.name))
    return items, kept


def volume_items(inv: Inventory, guard: Protected) -> tuple[list[Item], list[Kept]]:
    """Cache volumes (``farmhand.cache``) no container mounts, least recently used first."""
    from farmhand.sandbox import CACHE_LABEL

    items: list[Item] = []
    kept: list[Kept] = []
    for vol in inv.volumes:
        cache = vol.labels.get(CACHE_LABEL)
        if cache is None:
            kept.append(Kept("volume", vol.name, "not a farmhand cache volume"))
            continue
        if vol.refcount != 0:
            kept.append(Kept("volume", vol.name, "mounted by a container" if vol.refcount > 0 else "Docker did not say whether a container mounts it"))
            continue
        if cache in guard.caches:
            user = guard.caches[cache]
            kept.append(Kept("volume", vol.name, f"cache {cache!r} is used by task {user}: {guard.tasks.get(user, 'in progress')}"))
            continue
        last = inv.usage.volumes.get(vol.name) or vol.created
        items.append(Item("volume", vol.name, max(vol.size, 0), f"cache {cache!r}, unused, last used by a task {_age(inv.now - last)} ago", DOCKER, vol.name, last))
    items.sort(key=lambda i: (i.last_used, i.name))
    return items, kept


def container_items(inv: Inventory, guard: Protected) -> tuple[list[Item], list[Kept]]:
    """Stopped containers of this WORKING_DIR's finished tasks (their cleanup failed, or was never reached)."""
    from farmhand.sandbox import TASK_LABEL

    ours = {ws.task_id: ws for ws in inv.workspaces}
    items: list[Item] = []
    kept: list[Kept] = []
    for c in inv.containers:
        task_id = c.labels.get(TASK_LABEL)
        if task_id is None:
            continue  # not farmhand's: not even listed
        if c.state in LIVE_STATES:
            kept.append(Kept("container", c.name, f"{c.state} (task {task_id})"))
        elif task_id not in ours:
            kept.append(Kept("container", c.name, f"task {task_id} is not this WORKING_DIR's"))
        elif task_id in guard.tasks:
            kept.append(Kept("container", c.name, f"task {task_id}: {guard.tasks[task_id]}"))
        else:
            items.append(Item("container", c.name, max(c.size, 0), f"{c.state} container of finished task {task_id}", DOCKER, c.id))
    return items, kept


def network_items(inv: Inventory, guard: Protected) -> tuple[list[Item], list[Kept]]:
    """Task networks of this WORKING_DIR's processes that no container uses and no live pool keeps."""
    from farmhand.network_pool import POOL_LABEL

    items: list[Item] = []
    kept: list[Kept] = []
    for net in inv.networks:
        owner = net.labels.get(POOL_LABEL)
        if owner is None:
            continue
        if owner not in inv.network_owners:
            kept.append(Kept("network", net.name, f"owned by node {owner!r}, not this one"))
        elif owner in inv.live_owners:
            kept.append(Kept("network", net.name, f"kept by the running worker {owner!r} for its next task"))
        elif net.containers:
            kept.append(Kept("network", net.name, f"{net.containers} container(s) attached"))
        elif net.name in guard.networks:
            user = guard.networks[net.name]
            kept.append(Kept("network", net.name, f"the network of task {user}: {guard.tasks.get(user, 'in progress')}"))
        elif inv.now - net.created < NETWORK_MIN_AGE:
            kept.append(Kept("network", net.name, "created moments ago: its task may be about to use it"))
        else:
            items.append(Item("network", net.name, 0, f"idle task network of {owner!r}", DOCKER, net.name, net.created))
    return items, kept


def candidates(inv: Inventory, settings: GcSettings) -> tuple[list[Item], list[Kept]]:
    """Every removable thing, in the order of removal; and what stays, each with why."""
    guard = protected(inv.workspaces, inv.usage)
    ws_items, kept = workspace_items(inv, settings, guard)
    items = [i for i in ws_items if i.kind == "copies"] + [i for i in ws_items if i.kind == "workspace"] + result_items(inv, settings, guard)
    for found, also_kept in (image_items(inv, settings, guard), volume_items(inv, guard), container_items(inv, guard), network_items(inv, guard)):
        items += found
        kept += also_kept
    return items, kept


def plan(items: list[Item], needs: Mapping[str, Need], same: Mapping[str, str] | None = None) -> list[Item]:
    """What one pass removes, in order: every item due at any rate (``always``); then, per filesystem that
    lacks space or inodes (``needs``, by filesystem name), items that free it, in order, until what they
    free covers the need. ``same`` maps a filesystem name to another it shares a device with (their need is
    one). An item whose inodes are not known counts none, so under inode pressure every item of its
    filesystem is planned; the pass measures again after each removal and stops once the filesystem is
    back above its threshold."""
    same = dict(same or {})
    group = lambda fs: same.get(fs, fs)  # noqa: E731
    left: dict[str, Need] = {}
    for fs, value in needs.items():
        left[group(fs)] = left.get(group(fs), Need()).merge(value)
    chosen: list[Item] = []
    for item in [i for i in items if i.always] + [i for i in items if not i.always]:
        key = group(item.fs)
        if item.always or left.get(key):
            chosen.append(item)
            if key in left:
                left[key] = left[key].after(item.size, item.files)
    return chosen


def shared_devices(filesystems: Iterable[FsState]) -> dict[str, str]:
    """For ``plan``: each filesystem name that sits on the device of an earlier one, mapped to that one."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for fs in filesystems:
        if fs.device in first:
            out[fs.name] = first[fs.device]
        else:
            first[fs.device] = fs.name
    return out
