"""Per-task loopback devices through the engine and a real dockerd.

No loopback module is loaded here (the molecule VM scenario has them): the
pool is made of harmless character devices standing for them, /dev/full and
/dev/zero as two "cameras" and /dev/null as a "sound card"'s nodes. What is
proved is farmhand's side: each task's container gets its device renamed
``/dev/video0`` (``/dev/snd/*C0*``) with a device cgroup rule for that
device alone, no two tasks hold one at once, a third waits and then runs,
and a worker killed mid-task keeps its task's device through the restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import docker
import pytest
import yaml

from farmhand.config import WorkerConfig
from farmhand.devices import AUDIO, VIDEO, DevicePool, LoopbackDevice, journaled
from farmhand.engine import Engine
from farmhand.result import Result
from farmhand.sandbox import ROLE_LABEL, TASK_LABEL
from support import Recorder, busybox_task, wait_until

FULL = LoopbackDevice(VIDEO, "video90", (("/dev/full", "/dev/video0"),))
ZERO = LoopbackDevice(VIDEO, "video91", (("/dev/zero", "/dev/video0"),))
CARD = LoopbackDevice(AUDIO, "card90", (("/dev/null", "/dev/snd/controlC0"), ("/dev/null", "/dev/snd/pcmC0D0p")))
#: Each task waits until the test lets it go, so that several hold their devices at once.
WAIT_FOR_GO = "while [ ! -e /tmp/go ]; do sleep 0.05; done"


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "device-locks"


@pytest.fixture
def dev_config(make_config: Callable[..., WorkerConfig], lock_dir: Path) -> Callable[..., WorkerConfig]:
    def _make(wait: float = 600) -> WorkerConfig:
        return make_config(
            allow={"loopback_devices": True, "capabilities": ["MKNOD"]},
            limits={"kill_grace": 1, "max_run_time": 3600, "device_wait": wait},
            loopback_devices={"lock_dir": str(lock_dir)},
        )

    return _make


def task_container(client: docker.DockerClient, task_id: str) -> Any:
    found = client.containers.list(filters={"label": [f"{TASK_LABEL}={task_id}", f"{ROLE_LABEL}=task"], "status": "running"})
    return found[0] if found else None


def running(client: docker.DockerClient, task_id: str) -> Any:
    return wait_until(lambda: task_container(client, task_id), 120, f"task {task_id}'s container running")


def sh(container: Any, script: str) -> str:
    code, out = container.exec_run(["sh", "-c", script])
    return out.decode().strip() + (f" [exit {code}]" if code else "")


def go(container: Any) -> None:
    assert sh(container, "touch /tmp/go") == ""


class Background:
    """A task run in a thread: the test lets it go when it has looked inside."""

    started: list["Background"] = []

    def __init__(self, engine: Engine, doc: dict[str, Any], resume: bool = False) -> None:
        self.result: Result | None = None
        self.engine = engine
        self._thread = threading.Thread(target=self._run, args=(engine, doc, resume), daemon=True)
        self._thread.start()
        Background.started.append(self)

    def _run(self, engine: Engine, doc: dict[str, Any], resume: bool) -> None:
        self.result = engine.resume(doc, task_id=doc["task_id"]) if resume else engine.run(doc)

    def join(self) -> Result:
        self._thread.join(180)
        assert self.result is not None, "the task did not end"
        return self.result


@pytest.fixture(autouse=True)
def let_every_task_go(client: docker.DockerClient) -> Any:
    """A failed assertion leaves tasks waiting: they are cancelled and their threads joined before the suite's check."""
    yield
    for bg in Background.started:
        bg.engine.cancel()
    for bg in Background.started:
        bg._thread.join(120)
    Background.started.clear()
    for ctr in client.containers.list(all=True, filters={"label": TASK_LABEL}):
        if ctr.labels.get(TASK_LABEL, "").startswith("dev-"):  # a killed worker's, never resumed
            ctr.remove(force=True)


def test_the_container_gets_its_device_as_device_0_with_a_cgroup_rule_for_it_alone(client, dev_config, lock_dir):
    pool = DevicePool([FULL, CARD], lock_dir)
    cfg = dev_config()
    doc = busybox_task(WAIT_FOR_GO, task_id="dev-one", loopback_devices={"video": True, "audio": True}, cap_add=["MKNOD"])
    bg = Background(Engine(cfg, client, devices=pool), doc)
    ctr = running(client, "dev-one")
    devices = client.api.inspect_container(ctr.id)["HostConfig"]["Devices"]
    assert sorted((d["PathOnHost"], d["PathInContainer"], d["CgroupPermissions"]) for d in devices) == [
        ("/dev/full", "/dev/video0", "rwm"),
        ("/dev/null", "/dev/snd/controlC0", "rwm"),
        ("/dev/null", "/dev/snd/pcmC0D0p", "rwm"),
    ]
    # Inside: /dev/full's numbers under the new name, usable (a write gets ENOSPC, not EPERM); no other video node.
    assert sh(ctr, "stat -c %t:%T /dev/video0; ls /dev | grep video; ls /dev/snd") == "1:7\nvideo0\ncontrolC0\npcmC0D0p"
    assert "No space left on device" in sh(ctr, "echo x > /dev/video0")
    # The device cgroup admits what was mapped and nothing else: a node made for another device cannot be opened.
    assert "Operation not permitted" in sh(ctr, "mknod /tmp/kmsg c 1 11 && head -c1 /tmp/kmsg")
    if os.path.exists("/sys/fs/cgroup/devices"):  # cgroup v1 shows the rules themselves
        assert "c 1:7 rwm" in sh(ctr, "cat /sys/fs/cgroup/devices/devices.list").splitlines()
    workspace = cfg.tasks_dir / "dev-one"
    assert pool.holder("video90") == workspace and pool.holder("card90") == workspace
    go(ctr)
    result = bg.join()
    assert result.state == "succeeded", result.message
    # Given back after cleanup: nothing journaled, nobody holds them.
    assert journaled(workspace) == [] and pool.holder("video90") is None and pool.holder("card90") is None


def test_concurrent_tasks_hold_different_devices_and_a_third_waits(client, dev_config, lock_dir):
    pool = DevicePool([FULL, ZERO], lock_dir)
    cfg = dev_config()
    ask = {"loopback_devices": {"video": True}}
    a = Background(Engine(cfg, client, devices=pool), busybox_task(WAIT_FOR_GO, task_id="dev-a", **ask))
    ctr_a = running(client, "dev-a")
    b = Background(Engine(cfg, client, devices=pool), busybox_task(WAIT_FOR_GO, task_id="dev-b", **ask))
    ctr_b = running(client, "dev-b")
    seen = {sh(ctr_a, "stat -c %t:%T /dev/video0"), sh(ctr_b, "stat -c %t:%T /dev/video0")}
    assert seen == {"1:7", "1:5"}, "each task sees its own device as /dev/video0"

    # A task that may not wait is refused at once, naming why; nothing of it is left.
    refused = Engine(dev_config(wait=0), client, devices=pool).run(busybox_task("true", task_id="dev-refused", **ask))
    assert (refused.state, refused.reason) == ("exception", "device-unavailable"), refused.message
    assert "limits.device_wait" in refused.message

    # One that may wait says so, and runs once a device is given back.
    said = Recorder()
    c = Background(Engine(cfg, client, said, devices=pool), busybox_task(WAIT_FOR_GO, task_id="dev-c", **ask))
    wait_until(lambda: any(e[0] == "progress" and "waiting up to" in e[2] for e in said.events), 60, "task c waiting")
    assert task_container(client, "dev-c") is None
    freed = sh(ctr_a, "stat -c %t:%T /dev/video0")
    go(ctr_a)
    assert a.join().state == "succeeded"
    ctr_c = running(client, "dev-c")
    assert sh(ctr_c, "stat -c %t:%T /dev/video0") == freed
    go(ctr_b)
    go(ctr_c)
    assert b.join().state == "succeeded" and c.join().state == "succeeded"
    assert pool.holder("video90") is None and pool.holder("video91") is None


WORKER = """
import json, sys
import docker
from farmhand.config import load_config
from farmhand.devices import DevicePool, LoopbackDevice
from farmhand.engine import Engine

cfg = load_config(sys.argv[1], environ={})
pool = DevicePool([LoopbackDevice("video", "video90", (("/dev/full", "/dev/video0"),))], cfg.device_lock_dir)
Engine(cfg, docker.from_env(), devices=pool).run(json.loads(sys.argv[2]))
"""


def test_a_worker_restart_keeps_the_running_tasks_device(client, dev_config, lock_dir, tmp_path):
    pool = DevicePool([FULL], lock_dir)
    cfg = dev_config()
    config_file = tmp_path / "worker-config.yml"
    config_file.write_text(yaml.safe_dump({"working_dir": str(cfg.working_dir), "images": {"allowed": ["farmhand-test/*"]},
                                           "allow": {"loopback_devices": True}, "loopback_devices": {"lock_dir": str(lock_dir)}}))
    doc = busybox_task(WAIT_FOR_GO, task_id="dev-held", loopback_devices={"video": True})
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(config_file), json.dumps(doc)])
    try:
        ctr = running(client, "dev-held")
    finally:
        worker.kill()  # the worker dies mid-task; its container runs on with the device
        worker.wait(30)
    workspace = cfg.tasks_dir / "dev-held"
    assert pool.holder("video90") == workspace

    # Meanwhile a task of another process asks: the device is not handed out.
    other = Engine(dev_config(wait=0), client, devices=pool).run(busybox_task("true", task_id="dev-other", loopback_devices={"video": True}))
    assert other.reason == "device-unavailable", other.message

    # The restarted worker re-adopts the task: it keeps the device until its container is gone.
    restarted = Engine(cfg, client, Recorder(), devices=DevicePool([FULL], lock_dir))
    resumed = Background(restarted, doc, resume=True)
    wait_until(lambda: any(e[0] == "progress" and "re-adopted" in e[2] for e in restarted.events.reporter.events), 60, "the task re-adopted")
    assert pool.holder("video90") == workspace
    go(ctr)
    result = resumed.join()
    assert result.state == "succeeded", result.message
    assert any("resumed after the worker restarted" in w for w in result.warnings)
    assert pool.holder("video90") is None
    after = Engine(cfg, client, devices=pool).run(busybox_task("stat -c %t:%T /dev/video0", task_id="dev-after", loopback_devices={"video": True}))
    assert after.state == "succeeded", after.message
