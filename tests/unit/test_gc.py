"""The garbage collector's decisions (farmhand.gc), its usage record, and the worker's disk guard, without Docker."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from farmhand import gc, gc_pass, metrics
from farmhand.config import DEFAULTS, FreeThreshold, GcSettings
from farmhand.gc_pass import DiskGuard, PassReport
from farmhand.image_usage import Snapshot, Usage

NOW = 1_000_000.0
MiB = 1 << 20


def settings(**over: Any) -> GcSettings:
    doc = {**DEFAULTS["gc"], **over}
    return GcSettings.from_doc(doc)


def fs(name: str, free: int, total: int = 1000 * MiB, device: int | None = None, inodes: int = 0, free_inodes: int = 0) -> gc.FsState:
    return gc.FsState(name, f"/{name}", device if device is not None else hash(name) % 1000, total, free, inodes, free_inodes)


def ws(task_id: str, **over: Any) -> gc.Workspace:
    doc: dict[str, Any] = {
        "task_id": task_id, "path": f"/w/tasks/{task_id}", "locked": False, "checkpoint_stage": None,
        "finished_at": NOW - 60, "delivered": True, "pending": False,
    }
    doc.update(over)
    return gc.Workspace(**doc)


def image(image_id: str, *tags: str, size: int = 10 * MiB, containers: tuple[str, ...] = ()) -> gc.ImageInfo:
    return gc.ImageInfo(image_id, tags, (), size, size, containers, NOW - 10_000)


def usage(images: dict[str, float] = {}, refs: dict[str, tuple[str, float]] = {}, volumes: dict[str, float] = {}, theirs: tuple[str, ...] = ()) -> Snapshot:
    snap = Snapshot()
    snap.images = {i: (i not in theirs, t) for i, t in images.items()}
    snap.refs = {r: (i, t) for r, (i, t) in refs.items()}
    snap.volumes = dict(volumes)
    return snap


# -- thresholds and the node's state -------------------------------------------------------


def test_the_larger_of_the_absolute_and_the_percent_bound_decides() -> None:
    t = FreeThreshold(free_space=100 * MiB, free_percent=20, free_inodes=0, free_inodes_percent=0)
    assert gc.need(fs("docker", free=150 * MiB, total=1000 * MiB), t) == gc.Need(bytes=50 * MiB)  # 20% = 200 MiB wins
    assert not gc.need(fs("docker", free=150 * MiB, total=400 * MiB), t)  # 20% = 80 MiB: 100 MiB wins, and is there
    t_inodes = FreeThreshold(free_space=0, free_percent=0, free_inodes=500, free_inodes_percent=10)
    assert gc.need(fs("docker", 0, total=1, inodes=10_000, free_inodes=700), t_inodes) == gc.Need(inodes=300)
    assert not gc.need(fs("docker", 0, total=1, inodes=0, free_inodes=0), t_inodes)  # no inode limit: no inode need


def test_the_node_stops_under_min_free_and_says_where() -> None:
    s = settings(min_free="1g", min_free_inodes=100)
    ok, why = gc.accepting([fs("docker", free=2 << 30), fs("working_dir", free=512 * MiB)], s)
    assert not ok and "WORKING_DIR /working_dir has 512.0 MiB free, under gc.min_free (1.0 GiB)" in why
    ok, why = gc.accepting([fs("docker", free=2 << 30, inodes=1000, free_inodes=50)], s)
    assert not ok and "50 free inodes, under gc.min_free_inodes (100)" in why
    assert gc.accepting([fs("docker", free=2 << 30), fs("working_dir", free=1 << 30)], s) == (True, "")


# -- the plan ------------------------------------------------------------------------------------


def item(kind: str, name: str, size: int, fs_name: str = gc.DOCKER, always: bool = False, files: int | None = None) -> gc.Item:
    return gc.Item(kind, name, size, "why", fs_name, name, always=always, files=files)


def test_the_plan_takes_items_in_order_until_the_need_is_covered_and_only_for_the_short_filesystem() -> None:
    items = [
        item("copies", "ws1", 5 * MiB, gc.WORKING_DIR),
        item("workspace", "old", 1 * MiB, gc.WORKING_DIR, always=True),
        item("image", "a", 10 * MiB),
        item("image", "b", 10 * MiB),
        item("image", "c", 10 * MiB),
        item("volume", "v", 10 * MiB),
    ]
    chosen = gc.plan(items, {gc.DOCKER: gc.Need(bytes=15 * MiB), gc.WORKING_DIR: gc.Need()})
    # Due items first whatever the space; the working dir is not short, so its copies stay; two images cover 15 MiB.
    assert [i.name for i in chosen] == ["old", "a", "b"]
    assert [i.name for i in gc.plan(items, {gc.DOCKER: gc.Need(), gc.WORKING_DIR: gc.Need()})] == ["old"]


def test_one_device_under_both_names_has_one_need_and_the_copies_go_before_images() -> None:
    items = [item("copies", "ws1", 5 * MiB, gc.WORKING_DIR), item("image", "a", 10 * MiB), item("image", "b", 10 * MiB)]
    needs = {gc.DOCKER: gc.Need(bytes=12 * MiB), gc.WORKING_DIR: gc.Need(bytes=3 * MiB)}
    same = gc.shared_devices([fs("docker", 0, device=7), fs("working_dir", 0, device=7)])
    assert same == {gc.WORKING_DIR: gc.DOCKER}
    assert [i.name for i in gc.plan(items, needs, same)] == ["ws1", "a"]  # 5 + 10 covers max(12, 3)
    assert [i.name for i in gc.plan(items, needs)] == ["ws1", "a", "b"]  # apart: each filesystem its own need


def test_under_inode_pressure_items_of_unknown_inode_count_are_all_planned() -> None:
    items = [item("copies", "ws1", 0, gc.WORKING_DIR, files=40), item("copies", "ws2", 0, gc.WORKING_DIR, files=70), item("image", "a", 0)]
    assert [i.name for i in gc.plan(items, {gc.WORKING_DIR: gc.Need(inodes=100)})] == ["ws1", "ws2"]
    assert [i.name for i in gc.plan(items, {gc.DOCKER: gc.Need(inodes=1)})] == ["a"]


# -- what is a candidate, and what stays -------------------------------------------------------


def test_images_only_farmhands_least_recently_used_first_and_never_one_a_task_needs() -> None:
    inv = gc.Inventory(
        now=NOW,
        images=[
            image("sha256:new", "reg:5000/a:1"),
            image("sha256:old", "reg:5000/b:1"),
            image("sha256:dangling"),
            image("sha256:operator", "operator/own:1"),
            image("sha256:keep", "reg:5000/base:2"),
            image("sha256:stopped", "reg:5000/c:1", containers=("some-container",)),
            image("sha256:retagged", "reg:5000/d:1", "mine/d:prod"),
            image("sha256:running", "busybox:latest"),
        ],
        usage=usage(
            images={"sha256:new": NOW - 10, "sha256:old": NOW - 1000, "sha256:dangling": NOW - 5000, "sha256:keep": NOW - 9000,
                    "sha256:stopped": NOW - 9000, "sha256:retagged": NOW - 9000, "sha256:running": NOW - 9000, "sha256:operator": NOW - 9999},
            refs={"reg:5000/a:1": ("sha256:new", NOW - 10), "reg:5000/b:1": ("sha256:old", NOW - 1000), "reg:5000/d:1": ("sha256:retagged", NOW - 9000),
                  "docker.io/library/busybox:latest": ("sha256:running", NOW - 9000)},
            theirs=("sha256:operator",),
        ),
        workspaces=[ws("t-run", locked=True, finished_at=None, images=("docker.io/library/busybox",))],
    )
    items, kept = gc.candidates(inv, settings(keep_images=["reg:5000/base:*"]))
    assert [i.key for i in items if i.kind == "image"] == ["sha256:dangling", "sha256:old", "sha256:new"]
    reasons = {k.name: k.reason for k in kept if k.kind == "image"}
    assert "not pulled by farmhand" in reasons["operator/own:1"]
    assert "gc.keep_images 'reg:5000/base:*'" in reasons["reg:5000/base:2"]
    assert "used by container some-container" in reasons["reg:5000/c:1"]
    assert "tagged mine/d:prod" in reasons["reg:5000/d:1"]
    assert "used by task t-run" in reasons["busybox:latest"]  # named docker.io/library/busybox by the task, listed busybox:latest


def test_a_workspace_is_a_candidate_only_when_finished_nobody_drives_it_and_its_upload_is_not_pending() -> None:
    inv = gc.Inventory(
        now=NOW,
        workspaces=[
            ws("delivered", copies_size=5 * MiB, copies_files=3, size=6 * MiB, files=6),
            ws("nothing-kept", copies_size=0, size=8192),
            ws("expired", finished_at=NOW - 7200, size=7 * MiB, files=9, copies_size=5 * MiB),
            ws("undelivered", delivered=False, copies_size=5 * MiB),
            ws("pending", pending=True, finished_at=NOW - 7200, copies_size=5 * MiB),
            ws("locked", locked=True, copies_size=5 * MiB),
            ws("readoptable", checkpoint_stage="collect", finished_at=None),
            ws("no-result", finished_at=None),
        ],
        results=[gc.ResultFile("/w/results/celery-task-meta-x", "x", NOW - 7200, 4096), gc.ResultFile("/w/results/celery-task-meta-no-result", "no-result", NOW - 7200, 4096),
                 gc.ResultFile("/w/results/celery-task-meta-y", "y", NOW - 60, 4096)],
    )
    items, kept = gc.candidates(inv, settings(retention=3600))
    assert [(i.kind, i.name, i.always) for i in items] == [("copies", "delivered", False), ("workspace", "expired", True), ("result", "x", True)]
    assert items[1].size == 7 * MiB and items[1].files == 9
    reasons = {k.name: k.reason for k in kept if k.kind == "workspace"}
    assert "pending/" in reasons["pending"]
    assert "lock is held" in reasons["locked"]
    assert "checkpoint: collect" in reasons["readoptable"]
    assert "no result yet" in reasons["no-result"]
    items, _ = gc.candidates(inv, settings(retention=None))  # null: results are kept until removed by hand
    assert [(i.kind, i.name) for i in items] == [("copies", "expired"), ("copies", "delivered")]  # oldest first


def test_volumes_only_farmhands_caches_unused_least_recently_used_first() -> None:
    def vol(name: str, cache: str | None, refcount: int = 0, created: float = NOW - 100) -> gc.VolumeInfo:
        return gc.VolumeInfo(name, {"farmhand.cache": cache, "farmhand.cache.scope": "q"} if cache else {}, MiB, refcount, created)

    inv = gc.Inventory(
        now=NOW,
        volumes=[vol("farmhand-cache-q-a", "a"), vol("farmhand-cache-q-b", "b"), vol("farmhand-cache-q-old", "old", created=NOW - 9999),
                 vol("operator-data", None), vol("farmhand-cache-q-mounted", "mounted", refcount=1), vol("farmhand-cache-q-pip", "pip")],
        usage=usage(volumes={"farmhand-cache-q-a": NOW - 50, "farmhand-cache-q-b": NOW - 500}),
        workspaces=[ws("t-prep", locked=True, finished_at=None, caches=("pip",))],
    )
    items, kept = gc.candidates(inv, settings())
    assert [i.name for i in items] == ["farmhand-cache-q-old", "farmhand-cache-q-b", "farmhand-cache-q-a"]  # never used: its creation counts
    reasons = {k.name: k.reason for k in kept}
    assert "not a farmhand cache volume" in reasons["operator-data"]
    assert "mounted by a container" in reasons["farmhand-cache-q-mounted"]
    assert "used by task t-prep" in reasons["farmhand-cache-q-pip"]


def test_containers_and_networks_only_this_working_dirs_and_never_a_task_in_progress() -> None:
    def ctr(name: str, task_id: str | None, state: str = "exited") -> gc.ContainerInfo:
        return gc.ContainerInfo(name, name, {"farmhand.task-id": task_id} if task_id else {}, state, 4096)

    def net(name: str, owner: str, containers: int = 0, age: float = 600) -> gc.NetworkInfo:
        return gc.NetworkInfo(name, name, {"farmhand.network": owner}, containers, NOW - age)

    inv = gc.Inventory(
        now=NOW,
        workspaces=[ws("done"), ws("collecting", checkpoint_stage="collect", finished_at=None, network="net-busy-task")],
        containers=[ctr("c-done", "done"), ctr("c-collect", "collecting"), ctr("c-running", "done", "running"), ctr("c-elsewhere", "other-node-task"), ctr("operator", None)],
        networks=[net("net-idle", "farmhand"), net("net-pool", "node-1"), net("net-other", "node-9"), net("net-attached", "farmhand", containers=1),
                  net("net-busy-task", "farmhand"), net("net-new", "farmhand", age=1)],
        network_owners=frozenset({"farmhand", "node-1"}),
        live_owners=frozenset({"node-1"}),
    )
    items, kept = gc.candidates(inv, settings())
    assert [(i.kind, i.name) for i in items] == [("container", "c-done"), ("network", "net-idle")]
    reasons = {k.name: k.reason for k in kept}
    assert "checkpoint: collect" in reasons["c-collect"]
    assert "running" in reasons["c-running"]
    assert "not this WORKING_DIR's" in reasons["c-elsewhere"]
    assert "operator" not in reasons  # not farmhand's: not even listed
    assert "running worker" in reasons["net-pool"]
    assert "not this one" in reasons["net-other"]
    assert "attached" in reasons["net-attached"]
    assert "task collecting" in reasons["net-busy-task"]
    assert "moments ago" in reasons["net-new"]


def test_the_kinds_come_in_the_order_of_removal() -> None:
    inv = gc.Inventory(
        now=NOW,
        workspaces=[ws("old", finished_at=NOW - 9999, size=1), ws("delivered", copies_size=1)],
        images=[image("sha256:i", "reg:5000/i:1")],
        volumes=[gc.VolumeInfo("farmhand-cache-q-v", {"farmhand.cache": "v"}, 1, 0, NOW - 10)],
        containers=[gc.ContainerInfo("c", "c", {"farmhand.task-id": "delivered"}, "exited", 1)],
        networks=[gc.NetworkInfo("n", "n", {"farmhand.network": "farmhand"}, 0, NOW - 999)],
        usage=usage(images={"sha256:i": NOW - 10}, refs={"reg:5000/i:1": ("sha256:i", NOW - 10)}),
        network_owners=frozenset({"farmhand"}),
    )
    items, _ = gc.candidates(inv, settings(retention=3600))
    assert [i.kind for i in items] == ["copies", "workspace", "image", "volume", "container", "network"]


@pytest.mark.parametrize(
    ("ref", "forms"),
    [
        ("busybox", {"busybox:latest", "library/busybox:latest", "docker.io/busybox:latest", "docker.io/library/busybox:latest"}),
        ("docker.io/openzim/zimit:1", {"openzim/zimit:1", "docker.io/openzim/zimit:1"}),
        ("127.0.0.1:5000/a/b", {"127.0.0.1:5000/a/b:latest"}),
        ("ghcr.io/x/y@sha256:abc", {"ghcr.io/x/y@sha256:abc"}),
    ],
)
def test_one_reference_has_the_spellings_docker_and_tasks_use(ref: str, forms: set[str]) -> None:
    assert gc.ref_forms(ref) == forms


# -- the usage record ------------------------------------------------------------------------------


def test_the_usage_record_keeps_what_farmhand_pulled_and_when_tasks_used_it(tmp_path: Path) -> None:
    record = Usage(tmp_path)
    record.touch(["reg/a:1"], ["farmhand-cache-q-pip"], now=10)
    record.record_images({"reg/a:1": "sha256:a"}, pulled=["sha256:a"], now=11)
    record.record_images({"operator/x:1": "sha256:x"}, now=12)  # on the host already: used, not farmhand's
    record.record_images({"reg/a:1": "sha256:a"}, now=20)  # used again, not pulled this time: still farmhand's
    snap = record.snapshot()
    assert snap.images == {"sha256:a": (True, 20), "sha256:x": (False, 12)}
    assert snap.refs["reg/a:1"] == ("sha256:a", 20) and snap.volumes == {"farmhand-cache-q-pip": 10}
    assert (tmp_path / "gc.sqlite").stat().st_mode & 0o777 == 0o660
    with record.removing() as r:
        assert r.image_last_used("sha256:a", ["reg/a:1"]) == 20
        r.forget_image("sha256:a", ["reg/a:1"])
    assert "sha256:a" not in record.snapshot().images


def test_a_task_that_starts_during_a_removal_waits_for_it(tmp_path: Path) -> None:
    """The record is the lease: a task's touch cannot land between the collector's check and its removal."""
    record = Usage(tmp_path)
    record.touch(["reg/a:1"], now=1)
    order: list[str] = []
    inside = threading.Event()

    def task() -> None:
        inside.wait()
        record.touch(["reg/a:1"], now=2)
        order.append("task touched")

    thread = threading.Thread(target=task)
    thread.start()
    with record.removing():
        inside.set()
        thread.join(0.3)  # it cannot finish while the removal holds the record
        order.append("removed")
    thread.join(10)
    assert order == ["removed", "task touched"]


# -- the worker's guard ------------------------------------------------------------------------------


class FakeCollector:
    """Filesystems the test sets; a pass frees what the test says it frees."""

    def __init__(self, free: int, frees: int = 0) -> None:
        gc_settings = settings(min_free=100 * MiB, min_free_inodes=0, docker={**DEFAULTS["gc"]["docker"], "free_space": 200 * MiB, "free_percent": 0})
        self.config = SimpleNamespace(gc=gc_settings)
        self.free, self.frees, self.passes = free, frees, 0

    def filesystems(self) -> list[gc.FsState]:
        return [fs("docker", self.free)]

    def run(self, dry_run: bool = False) -> PassReport:
        self.passes += 1
        self.free += self.frees
        ok, why = gc.accepting(self.filesystems(), self.config.gc)
        return PassReport(dry_run=False, started_at=0, before=[], after=self.filesystems(), accepting=ok, reason=why)


def test_below_the_threshold_a_pass_runs_before_the_task_which_then_starts() -> None:
    collector = FakeCollector(free=150 * MiB, frees=100 * MiB)
    guard = DiskGuard(collector)  # type: ignore[arg-type]
    assert guard.before_task(lambda: False) is True
    assert collector.passes == 1 and guard.accepting


def test_under_min_free_the_node_stops_says_why_and_takes_tasks_again_when_space_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_pass, "PAUSED_RECHECK", 0.02)
    collector = FakeCollector(free=50 * MiB)  # nothing a pass can free is farmhand's
    changes: list[tuple[bool, str]] = []
    changed = threading.Event()
    guard = DiskGuard(collector, on_change=lambda ok, why: (changes.append((ok, why)), changed.set()))  # type: ignore[arg-type]
    started = threading.Event()
    thread = threading.Thread(target=lambda: guard.before_task(lambda: False) and started.set())
    thread.start()
    try:
        assert changed.wait(10)
        assert changes[0][0] is False and "under gc.min_free" in changes[0][1]
        assert metrics.accepting() == (False, changes[0][1])
        assert not started.is_set() and collector.passes == 1
        collector.free = 300 * MiB  # an operator made room
        assert started.wait(10)
        assert changes[-1] == (True, "") and metrics.accepting() == (True, "")
    finally:
        guard.stop()
        thread.join(10)


def test_a_task_cancelled_while_the_node_waits_for_space_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_pass, "PAUSED_RECHECK", 0.02)
    guard = DiskGuard(FakeCollector(free=50 * MiB))  # type: ignore[arg-type]
    cancelled = threading.Event()
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(guard.before_task(cancelled.is_set)))
    thread.start()
    cancelled.set()
    thread.join(10)
    assert outcome == [False] and not guard.accepting


def test_a_disk_that_stays_short_costs_the_tasks_one_pass_a_minute_not_one_each() -> None:
    collector = FakeCollector(free=150 * MiB)  # above gc.min_free, under the threshold, and nothing to free
    guard = DiskGuard(collector)  # type: ignore[arg-type]
    assert guard.before_task(lambda: False) and guard.before_task(lambda: False) and guard.before_task(lambda: False)
    assert collector.passes == 1 and guard.accepting


def test_the_worker_runs_a_pass_every_interval() -> None:
    collector = FakeCollector(free=900 * MiB)  # nothing short: only the periodic passes run
    none = {"free_space": 0, "free_percent": 0, "free_inodes": 0, "free_inodes_percent": 0}
    collector.config.gc = GcSettings.from_doc({**DEFAULTS["gc"], "interval": 0.01, "min_free": 0, "docker": {**none, "data_root": None}, "working_dir": none})
    ran = threading.Event()
    real_run = collector.run

    def run(dry_run: bool = False) -> PassReport:
        report = real_run(dry_run)
        if collector.passes >= 3:
            ran.set()
        return report

    collector.run = run  # type: ignore[method-assign]
    guard = DiskGuard(collector).start()  # type: ignore[arg-type]
    try:
        assert ran.wait(10)
    finally:
        guard.stop()


@pytest.mark.parametrize(
    ("section", "field"),
    [({"min_free": "lots"}, "config.gc.min_free"), ({"docker": {"free_percent": 150}}, "config.gc.docker.free_percent"),
     ({"keep_images": "busybox"}, "config.gc.keep_images"), ({"retention": -1}, "config.gc.retention"), ({"sweep": True}, "config.gc")],
)
def test_a_bad_gc_setting_is_refused_naming_it(tmp_path: Path, section: dict[str, Any], field: str) -> None:
    import yaml

    from farmhand.config import load_config
    from farmhand.errors import ConfigError

    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"gc": section}))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path, environ={})
