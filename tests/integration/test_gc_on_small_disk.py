"""The garbage collector against a real dockerd whose data root (and the working dir) sit on a small tmpfs.

One engine (``small_dockerd``) is filled with what a farmhand host gathers:
images tasks made farmhand pull, cache volumes, the local copies of a
delivered task, an old result, a failed upload waiting in pending/, a stopped
container a cleanup missed, an idle task network; and beside them what is not
farmhand's (an operator's image and volume, another node's network) or must
stay (an image gc.keep_images names, a task running now). Passes then free
what the thresholds ask for, in order, and never anything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import docker
import pytest
import yaml

from farmhand import gc
from farmhand.config import WorkerConfig, load_config
from farmhand.engine import Engine
from farmhand.delivery import local_copies
from farmhand.gc_pass import Collector, tree_size
from farmhand.network_pool import POOL_LABEL
from farmhand.result import Result
from farmhand.sandbox import ROLE_LABEL, TASK_LABEL, find_task_container
from small_dockerd import SmallDockerd
from support import BUSYBOX, wait_until

MiB = 1 << 20
NODE = "gc-node@farmhand-test"


@pytest.fixture(scope="module")
def small(client: docker.DockerClient) -> Iterator[SmallDockerd]:
    dd = SmallDockerd(size_mib=320)
    try:
        yield dd.start(client)
    finally:
        dd.stop()
    # A second engine in the host's network namespace must leave the host engine's bridge alone
    # (with --bridge=none a dockerd deletes docker0 at start, and every later task on it failed).
    client.containers.run(BUSYBOX, ["true"], remove=True)


def write_config(dd: SmallDockerd, registry: Any, path: Path, **gc_over: Any) -> WorkerConfig:
    doc = {
        "working_dir": str(dd.mount / "work"),
        "docker": {"base_url": dd.base_url},
        "registries": {registry.host: {"username": registry.username, "password": registry.password}},
        "images": {"allowed": ["farmhand-test/*", "127.0.0.1:*"], "pull_attempts": 1},
        "limits": {"kill_grace": 1, "max_run_time": 600},
        "upload": {"keep_local": True, "allowed_targets": [f"file://{dd.base}/"]},
        "worker": {"node_name": NODE},
        "gc": {
            "retention": 3600,
            "min_free": 0,
            "min_free_inodes": 0,
            "keep_images": [f"{registry.host}/gc/kept:*"],
            **gc_over,
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, environ={})


def thresholds(free_space: int) -> dict[str, Any]:
    one = {"free_space": free_space, "free_percent": 0, "free_inodes": 0, "free_inodes_percent": 0}
    return {"docker": dict(one), "working_dir": dict(one)}


def push(dd: SmallDockerd, registry: Any, name: str, size: int) -> str:
    """An image of ``size`` random bytes in the registry (made on the small engine, pushed, removed there)."""
    assert dd.client is not None
    repo = f"{registry.host}/gc/{name}"
    dd.image_with_bytes(repo, "1", size)
    auth = {"username": registry.username, "password": registry.password}
    for event in dd.client.api.push(repo, "1", stream=True, decode=True, auth_config=auth):
        assert "error" not in event, event
    dd.client.api.remove_image(f"{repo}:1")
    return f"{repo}:1"


def task(image: str, script: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"image": image, "pull": "if-not-present", "command": ["sh", "-c", script], "max_run_time": 120, "network": "none"}
    doc.update(over)
    return doc


def image_ids(dd: SmallDockerd) -> dict[str, str]:
    assert dd.client is not None
    return {tag: img["Id"] for img in dd.client.api.images() for tag in img.get("RepoTags") or ()}


def volume_names(dd: SmallDockerd) -> set[str]:
    assert dd.client is not None
    return {v["Name"] for v in dd.client.api.volumes().get("Volumes") or []}


def test_a_pass_frees_what_the_thresholds_ask_in_order_and_nothing_else(small: SmallDockerd, registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dd = small
    assert dd.client is not None
    api = dd.client.api
    cfg_path = tmp_path / "config.yml"
    config = write_config(dd, registry, cfg_path, **thresholds(0))
    monkeypatch.setattr(gc, "NETWORK_MIN_AGE", 0.0)  # the idle network below was made a moment ago

    # Used in the order c, b, a (least recent use is not name order), each with a cache (zeta, alpha, mid: likewise).
    refs = {name: push(dd, registry, name, 16 * MiB) for name in ("img-a", "img-b", "img-c", "kept", "running")}

    def run(doc: dict[str, Any]) -> Result:
        result = Engine(config, dd.client).run(doc)
        assert result.state == "succeeded", result.to_dict()
        return result

    t1 = run(task(refs["img-c"], "mkdir -p /out && head -c 8388608 /dev/urandom > /out/blob && head -c 1048576 /dev/zero > /c/fill",
                  caches={"zeta": "/c"}, artifacts=[{"path": "/out/blob", "name": "blob"}]))
    t2 = run(task(refs["img-b"], "head -c 2097152 /dev/zero > /c/fill", caches={"alpha": "/c"}))
    t3 = run(task(refs["img-a"], "head -c 2097152 /dev/zero > /c/fill", caches={"mid": "/c"}))
    tk = run(task(refs["kept"], "true"))
    # A result older than gc.retention; another as old whose upload failed and waits in pending/.
    old = run(task(BUSYBOX, "echo old", pull="never"))
    (dd.base / "blocker").write_text("a file where the warehouse's directory should be")
    failed = Engine(config, dd.client).run(task(BUSYBOX, "echo unsent", pull="never", upload=f"file://{dd.base}/blocker/"))
    assert failed.reason == "upload-failed", failed.to_dict()
    for result in (old, failed):
        stamp = time.time() - 7200
        os.utime(Path(result.workspace) / "result.json", (stamp, stamp))
    # What a cleanup left: a stopped container of finished task t2; an idle network of this WORKING_DIR's run-task.
    api.create_container(BUSYBOX, ["true"], labels={TASK_LABEL: t2.task_id, ROLE_LABEL: "task"}, name="left-by-t2")
    api.create_network("farmhand-net-idle", labels={POOL_LABEL: "farmhand"})
    api.create_network("farmhand-net-theirs", labels={POOL_LABEL: "another-node@elsewhere"})
    # Not farmhand's: an operator's image and volume.
    dd.image_with_bytes("operator/own", "1", 16 * MiB)
    api.create_volume("operator-data")
    dd.client.containers.run(BUSYBOX, ["sh", "-c", "head -c 4194304 /dev/zero > /d/fill"], volumes={"operator-data": {"bind": "/d"}}, remove=True, network_disabled=True)
    # A task running now, on its own image and cache.
    running_engine = Engine(config, dd.client)
    running: dict[str, Result] = {}
    thread = threading.Thread(target=lambda: running.setdefault("r", running_engine.run(
        task(refs["running"], "touch /c/mark; while true; do sleep 0.05; done", caches={"cr": "/c"}, task_id="running-task"))))
    thread.start()
    try:
        wait_until(lambda: (c := find_task_container(dd.client, "running-task")) is not None and c.status == "running", 60, "the running task's container")
        before_ids = image_ids(dd)
        before_volumes = volume_names(dd)
        delivered = (t1, t2, t3, tk)  # in the order they finished; their copies are kept by upload.keep_local
        copies = sum(tree_size(p)[0] for t in delivered for p in local_copies(Path(t.workspace), config))
        # Short by the delivered copies, one image and half another: the pass must take the copies, img-c, img-b.
        short_by = copies + 16 * MiB + 8 * MiB
        config = write_config(dd, registry, cfg_path, **thresholds(dd.free() + short_by))

        # --dry-run (the CLI, --json): what would go, in order; nothing goes.
        shown = subprocess.run(
            [sys.executable, "-m", "farmhand", "--config", str(cfg_path), "gc", "--dry-run", "--json"], capture_output=True, text=True, timeout=120
        )
        assert shown.returncode == 0, shown.stderr
        dry = json.loads(shown.stdout)
        planned = [(i["kind"], i["name"]) for i in dry["items"]]
        expected = [("workspace", old.task_id)] + [("copies", t.task_id) for t in delivered] + [("image", refs["img-c"]), ("image", refs["img-b"])]
        assert planned == expected, planned
        assert {i["outcome"] for i in dry["items"]} == {"would remove"}
        assert image_ids(dd) == before_ids and volume_names(dd) == before_volumes and Path(old.workspace).exists()
        kept = {(k["kind"], k["name"]): k["reason"] for k in dry["kept"]}
        assert "not pulled by farmhand" in kept[("image", "operator/own:1")]
        assert "gc.keep_images" in kept[("image", refs["kept"])]
        assert "used by" in kept[("image", refs["running"])]
        assert "pending" in kept[("workspace", failed.task_id)]
        assert "not a farmhand cache volume" in kept[("volume", "operator-data")]
        assert "another-node" in kept[("network", "farmhand-net-theirs")]

        # The pass itself: the same items, removed, in that order; then the filesystem is above its threshold.
        collector = Collector(config, dd.client, owners=frozenset({NODE, "farmhand"}))
        report = collector.run()
        done = [(o.item.kind, o.item.name, o.outcome) for o in report.items]
        assert done == [(kind, name, "removed") for kind, name in expected], done
        after_ids = image_ids(dd)
        assert refs["img-c"] not in after_ids and refs["img-b"] not in after_ids and refs["img-a"] in after_ids
        assert not Path(old.workspace).exists()
        assert (Path(t1.workspace) / "result.json").exists() and not (Path(t1.workspace) / "artifacts").exists()
        assert all(not gc.need(fs, config.gc.docker) for fs in report.after)
        assert volume_names(dd) == before_volumes  # caches come after images

        # Far short of everything: the rest of farmhand's goes too (images, caches by last use, the container,
        # the network), and not one thing of the operator's, the running task's, keep_images' or pending/.
        config = write_config(dd, registry, cfg_path, min_free=1 << 40, **thresholds(1 << 40))
        report = Collector(config, dd.client, owners=frozenset({NODE, "farmhand"})).run()
        done = [(o.item.kind, o.item.name) for o in report.items if o.outcome == "removed"]
        caches = [f"farmhand-cache-local-{name}" for name in ("zeta", "alpha", "mid")]  # least recently used first
        assert done == [("image", refs["img-a"])] + [("volume", v) for v in caches] + [("container", "left-by-t2"), ("network", "farmhand-net-idle")], done
        after_ids = image_ids(dd)
        for ref in (refs["kept"], refs["running"], "operator/own:1", BUSYBOX):
            assert ref in after_ids, f"{ref} was removed"
        assert {"operator-data", "farmhand-cache-local-cr"} <= volume_names(dd)
        assert Path(failed.workspace).exists() and any((config.working_dir / "pending").iterdir())
        assert [n["Name"] for n in api.networks(filters={"label": POOL_LABEL})] == ["farmhand-net-theirs"]
        assert find_task_container(dd.client, "running-task").status == "running"
        assert not report.accepting and "gc.min_free" in report.reason
    finally:
        running_engine.cancel()
        thread.join(60)
    assert running["r"].reason == "cancelled"
    api.remove_network("farmhand-net-theirs")


def test_a_worker_short_of_disk_takes_no_task_says_why_and_takes_it_once_space_is_back(small: SmallDockerd, tmp_path: Path) -> None:
    from dispatch_support import WorkerProcess

    dd = small
    work = dd.mount / "worker"
    worker = WorkerProcess(
        tmp_path,
        {},
        {
            "working_dir": str(work),
            "docker": {"base_url": dd.base_url},
            "gc": {"min_free": "64m", "min_free_inodes": 0, "interval": 3600, **thresholds(0)},
        },
        name="short",
    )
    # An operator's file fills the disk to 32 MiB short of gc.min_free: nothing a pass may remove.
    filler = dd.mount / "operator-filler"
    subprocess.run(["fallocate", "-l", str(max(0, dd.free() - 32 * MiB)), str(filler)], check=True)
    cli = [sys.executable, "-m", "farmhand", "--config", str(worker.config_path)]
    try:
        worker.start()
        wait_until(lambda: "disk: taking no tasks" in worker.log(), 30, "the worker to say it takes no tasks")
        assert "under gc.min_free (64.0 MiB)" in worker.log()
        port = int(worker.log().split("metrics on http://127.0.0.1:")[1].split("/")[0])
        assert "farmhand_accepting_tasks 0.0" in _metrics(port)
        checked = subprocess.run([*cli, "check"], capture_output=True, text=True, timeout=120)
        disk_line = next(line for line in checked.stdout.splitlines() if " disk: " in line)
        assert disk_line.startswith("FAIL") and "takes no tasks" in disk_line and "gc.min_free" in disk_line, checked.stdout

        doc = tmp_path / "task.yml"
        doc.write_text(yaml.safe_dump(task(BUSYBOX, "echo ran", pull="never")))
        submitted = subprocess.run([*cli, "submit", str(doc)], capture_output=True, text=True, timeout=60, check=True)
        task_id = submitted.stdout.strip()
        filler.unlink()  # the operator makes room
        done = subprocess.run([*cli, "status", task_id, "--wait", "--timeout", "60", "--json"], capture_output=True, text=True, timeout=90)
        assert json.loads(done.stdout)["state"] == "succeeded", done.stdout + done.stderr
        log = worker.log()
        # The task started only once space was back, and the node said so.
        assert log.index("disk: space is back") < log.index(f"{task_id} prepare: started")
        assert "farmhand_accepting_tasks 1.0" in _metrics(port)
    finally:
        worker.stop()
        filler.unlink(missing_ok=True)


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()
