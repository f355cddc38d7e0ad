"""Per-task loopback devices on a real kernel (molecule vm scenario: v4l2loopback and snd-aloop loaded).

A worker of its own (embedded broker, CONCURRENCY 4, WORKING_DIR on the
volume) serves tasks in an image built here from the VM's own files (python3
for VIDIOC_QUERYCAP, aplay/arecord from alsa-utils). The scenario's pools are
2 cameras and 2 cards. Each task waits for /tmp/go, written by the test with
``docker exec``, so that several hold their devices at once.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

FARMHAND = "/opt/farmhand/venv/bin/farmhand"
BASE = "/mnt/fh-devices"
CONFIG = f"{BASE}/config.yml"
IMAGE = "farmhand-test/av:1"
LOCKS = "/run/farmhand/devices"
#: The worker writes its pid into the lock it holds on WORKING_DIR.
WORKER_PID = f"$(cat {BASE}/work/worker.lock)"

# Builds a small image of the VM's own binaries and libraries: nothing is pulled.
BUILD_IMAGE = r"""
set -eu
cd /  # coreutils 9.1's cp -a --parents fails on a source's parents when run from elsewhere
docker image inspect IMAGE >/dev/null 2>&1 && exit 0
command -v aplay >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends alsa-utils >/dev/null
R=$(mktemp -d)
for f in /usr/bin/python3 /usr/bin/aplay /usr/bin/arecord /bin/sh /bin/sleep; do
  cp --parents -L "$f" "$R"
  for lib in $(ldd "$f" | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$R"; done
done
for so in /usr/lib/python3.11/lib-dynload/*.so; do
  for lib in $(ldd "$so" | grep -o '/[^ ]*'); do cp --parents -nL "$lib" "$R"; done
done
cp -a --parents /usr/lib/python3.11 /usr/share/alsa "$R"
rm -rf "$R/usr/lib/python3.11/test" "$R/usr/lib/python3.11/idlelib"
mkdir -p "$R/tmp" "$R/etc" && chmod 1777 "$R/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
tar -C "$R" -c . | docker import - IMAGE >/dev/null
rm -rf "$R"
""".replace("IMAGE", IMAGE)

# Inside a task: the camera's VIDIOC_QUERYCAP, kept in /tmp/cap for the test to read; then wait to be let go.
QUERYCAP = r"""
import fcntl, os, time
fd = os.open("/dev/video0", os.O_RDWR)
buf = bytearray(104)
fcntl.ioctl(fd, 0x80685600, buf)  # VIDIOC_QUERYCAP
driver, card, bus = (bytes(buf[a:b]).split(b"\0")[0].decode() for a, b in ((0, 16), (16, 48), (48, 80)))
open("/tmp/cap", "w").write(f"{driver}|{card}|{bus}")
print("camera:", driver, card, bus, flush=True)
while not os.path.exists("/tmp/go"):
    time.sleep(0.1)
"""

# A 440 Hz tone played into the card (hw:0,0) while recorded from its other side (hw:0,1); exit 0 only if heard.
TONE = r"""
import array, math, os, subprocess, sys
rate, seconds = 48000, 2
tone = array.array("h", (int(12000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate * seconds) for _ in (0, 1)))
open("/tmp/tone.raw", "wb").write(tone.tobytes())
fmt = ["-t", "raw", "-f", "S16_LE", "-r", str(rate), "-c", "2"]
rec = subprocess.Popen(["arecord", "-D", "hw:0,1", *fmt, "-d", str(seconds + 2), "/tmp/rec.raw"])
play = subprocess.run(["aplay", "-D", "hw:0,0", *fmt, "/tmp/tone.raw"])
rec.wait()
got = array.array("h")
got.frombytes(open("/tmp/rec.raw", "rb").read())
peak = max((abs(s) for s in got), default=0)
print("played", play.returncode, "recorded", len(got), "samples, peak", peak, flush=True)
sys.exit(0 if play.returncode == 0 and rec.returncode == 0 and peak > 1000 else 1)
"""


def sh(host, command: str) -> str:
    out = host.run(command)
    assert out.rc == 0, f"{command}\n{out.stdout}{out.stderr}"
    return out.stdout.strip()


def wait_for(host, what: str, command: str, timeout: float = 300) -> str:
    """Poll ``command`` in the VM until it succeeds with output (software emulation: generous timeouts)."""
    deadline = time.monotonic() + timeout
    while True:
        out = host.run(command)
        if out.rc == 0 and out.stdout.strip():
            return out.stdout.strip()
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {out.stdout}{out.stderr}"
        time.sleep(1)


def container_of(task_id: str) -> str:
    return f"docker ps -q --filter label=farmhand.task-id={task_id} --filter label=farmhand.role=task --filter status=running"


def start_worker(host) -> None:
    # setsid -f: the worker in a session of its own, and the shell (so ssh) returns at once. With `... &` the
    # shell's background subshell kept ssh's output open while it waited for the worker: the call never returned.
    sh(host, f"cd / && setsid -f {FARMHAND} --config {CONFIG} worker > {BASE}/worker.log 2>&1 < /dev/null")
    wait_for(host, "the worker ready", f"grep -l 'ready' {BASE}/worker.log || grep -l 'celery@' {BASE}/worker.log", 300)


def submit(host, task_id: str, script: str, **asked: bool) -> None:
    doc = {"image": IMAGE, "pull": "never", "command": ["python3", "-c", script], "max_run_time": 900, "network": "none",
           "loopback_devices": asked}
    sh(host, f"printf %s {shlex.quote(json.dumps(doc))} > {BASE}/{task_id}.json")
    sh(host, f"{FARMHAND} --config {CONFIG} submit --task-id {task_id} {BASE}/{task_id}.json")


def result(host, task_id: str) -> dict:
    out = sh(host, f"{FARMHAND} --config {CONFIG} status --wait --timeout 600 --json {task_id}")
    doc = json.loads(out)
    return doc.get("result") or doc


def cap(host, task_id: str) -> str:
    ctr = wait_for(host, f"{task_id}'s container", container_of(task_id))
    return wait_for(host, f"{task_id}'s camera", f"docker exec {ctr} python3 -c 'print(open(\"/tmp/cap\").read())'", 120)


def let_go(host, task_id: str) -> None:
    ctr = wait_for(host, f"{task_id}'s container", container_of(task_id))
    sh(host, f"docker exec {ctr} python3 -c 'open(\"/tmp/go\", \"w\")'")


def holders(host) -> dict[str, str]:
    """Which task each device's claim names, as the lock directory says (a claim counts while the task journals it)."""
    out = host.run(f"cd {LOCKS} && ls -1 -- *.claim 2>/dev/null || true")
    found = {}
    for claim_file in out.stdout.split():
        name = claim_file.removesuffix(".claim")
        task_dir = json.loads(host.file(f"{LOCKS}/{claim_file}").content_string)["task_dir"]
        if host.file(f"{task_dir}/devices.json").exists and name in host.file(f"{task_dir}/devices.json").content_string:
            found[name] = task_dir.rsplit("/", 1)[-1]
    return found


@pytest.fixture(scope="module")
def worker(host):
    sh(host, f"mkdir -p {BASE} && rm -rf {BASE}/work")
    config = {
        "working_dir": f"{BASE}/work",
        "images": {"allowed": ["farmhand-test/*"]},
        "allow": {"loopback_devices": True},
        "limits": {"device_wait": 900},
        # Its own port: the service serves 9464.
        "worker": {"node_name": "devices-vm", "concurrency": 4, "queues": ["default"], "metrics_address": "127.0.0.1:9465"},
    }
    sh(host, f"printf %s {shlex.quote(json.dumps(config))} > {CONFIG}")
    sh(host, BUILD_IMAGE)
    start_worker(host)
    yield
    host.run(f"kill {WORKER_PID}")


def test_check_lists_the_pool(host):
    out = host.run(f"{FARMHAND} --config /etc/farmhand/config.yml check")
    assert "video10 (/dev/video10)" in out.stdout and "video11 (/dev/video11)" in out.stdout, out.stdout
    assert "card10 (/dev/snd/controlC10, " in out.stdout and "card11" in out.stdout, out.stdout


def test_the_headers_metapackage_follows_the_kernel_flavour(host):
    flavour = sh(host, "uname -r").split("-", 2)[2]
    assert host.package(f"linux-headers-{flavour}").is_installed


def test_tasks_get_their_own_camera_and_a_third_waits_then_runs_and_a_restart_keeps_them(host, worker):
    submit(host, "cam-a", QUERYCAP, video=True)
    submit(host, "cam-b", QUERYCAP, video=True)
    a, b = cap(host, "cam-a"), cap(host, "cam-b")
    assert a.split("|")[1] == b.split("|")[1] == "farmhand-loopback", (a, b)
    assert a != b, "two tasks share one camera"  # bus_info names the v4l2loopback device
    assert sorted(holders(host)) == ["video10", "video11"]

    # A third waits in prepare: no container while both are held.
    submit(host, "cam-c", QUERYCAP, video=True)
    wait_for(host, "cam-c waiting", f"grep -h 'waiting up to' {BASE}/worker.log")
    assert sh(host, container_of("cam-c")) == ""
    freed = {v: k for k, v in holders(host).items()}["cam-a"]
    let_go(host, "cam-a")
    assert result(host, "cam-a")["state"] == "succeeded"
    assert cap(host, "cam-c") == a, "cam-c gets the camera cam-a gave back"
    assert holders(host)[freed] == "cam-c"

    # The worker is killed mid-task and restarted: b and c keep their cameras; a new task waits.
    before = holders(host)
    sh(host, f"kill -9 {WORKER_PID} && until flock -n {BASE}/work/worker.lock true; do sleep 0.2; done")
    start_worker(host)
    submit(host, "cam-d", QUERYCAP, video=True)
    wait_for(host, "both tasks re-adopted", f"test $(grep -c 're-adopted' {BASE}/worker.log) -ge 2 && echo yes")
    assert holders(host) == before
    assert sh(host, container_of("cam-d")) == ""
    let_go(host, "cam-b")
    assert result(host, "cam-b")["state"] == "succeeded"
    assert cap(host, "cam-d") == b
    for task in ("cam-c", "cam-d"):
        let_go(host, task)
        assert result(host, task)["state"] == "succeeded"
    assert holders(host) == {}


def test_a_tone_played_into_the_card_is_recorded_from_its_other_side(host, worker):
    submit(host, "tone", TONE, audio=True)
    res = result(host, "tone")
    assert res["state"] == "succeeded", res
