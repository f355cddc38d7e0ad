"""The images `make images` and `make vm-images` bake (packer/), run for real.

- docker: the app image runs `farmhand --version` and holds its rendered config.
- qemu: the baked disk, read offline, holds nothing of the machine that baked
  it (machine-id, SSH host keys, the worker's state, logs, cloud-init's state,
  apt lists). Then the app image boots (software emulation) with two blank
  extra disks, like an instance with two instance-store disks, and a NoCloud
  seed whose cloud-init user-data configures it (packer/README.md, "First
  boot"): a config.d drop-in with the broker (a RabbitMQ this test runs on the
  host's loopback, which the guest reaches as 10.0.2.2) and an env file with
  the queue. At boot the farmhand-ephemeral-storage unit builds the LVM volume
  over both disks and mounts it, the loopback modules load, Docker (its data
  root on the volume) and the farmhand service come up, `farmhand check`
  passes, a task submitted from the host through the broker runs there and
  its result comes back, the secrets stay 0600, and the machine-id and SSH
  host keys are new.

Run by `make images-test` (which builds the images first); slow: see
packer/README.md for timings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from dispatch_support import RabbitMQ  # noqa: E402
from support import wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("FARMHAND_PACKER_OUTPUT", REPO / "build/packer"))
APP_IMAGE = os.environ.get("FARMHAND_APP_IMAGE", "farmhand-app:latest")
APP_DISK = OUTPUT / "qemu-farmhand-app" / "farmhand-app.qcow2"
APP_BOOT = OUTPUT / "farmhand-app-boot"
BASE_DISK = OUTPUT / "qemu-farmhand-base" / "farmhand-base.qcow2"
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "worker/farmhand/__init__.py").read_text()).group(1)
FARMHAND = "/opt/farmhand/venv/bin/farmhand"


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)


# --- docker ---------------------------------------------------------------


@pytest.fixture(scope="module")
def app_image() -> str:
    res = docker("image", "inspect", APP_IMAGE)
    assert res.returncode == 0, f"{APP_IMAGE} is missing: run `make images` ({res.stderr.strip()})"
    return APP_IMAGE


def test_docker_app_image_runs_farmhand(app_image: str) -> None:
    res = docker("run", "--rm", app_image, "farmhand", "--version")
    assert res.returncode == 0, res.stderr
    assert VERSION in res.stdout, res.stdout


def test_docker_app_image_has_a_rendered_config(app_image: str) -> None:
    res = docker("run", "--rm", app_image, "cat", "/etc/farmhand/config.yml")
    assert res.returncode == 0, res.stderr
    print(res.stdout)  # shown with -s: the config the role rendered
    config = yaml.safe_load(res.stdout)
    assert config["working_dir"] == "/mnt/farmhand"
    # The worker reads and accepts it (config errors exit 4).
    res = docker("run", "--rm", app_image, "farmhand", "--config", "/etc/farmhand/config.yml", "pending", "list")
    assert res.returncode == 0, res.stdout + res.stderr


def test_docker_app_image_is_based_on_base_and_boots_storage(app_image: str) -> None:
    script = (
        "set -e; cat /etc/systemd/system.conf.d/50-farmhand-limits.conf; "
        "test -f /etc/modprobe.d/farmhand-loopback.conf; "
        "python3 -c 'import json; print(json.load(open(\"/etc/docker/daemon.json\"))[\"data-root\"])'; "
        "systemctl is-enabled docker farmhand farmhand-ephemeral-storage; "
        "cat /usr/local/lib/farmhand-ephemeral-storage/config.json; "
        "grep -h ^RequiresMountsFor= /etc/systemd/system/docker.service.d/farmhand-storage.conf "
        "/etc/systemd/system/farmhand.service; grep ' /mnt ' /etc/fstab"
    )
    res = docker("run", "--rm", app_image, "bash", "-c", script)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DefaultLimitNOFILE=1048576" in res.stdout
    assert "/mnt/docker" in res.stdout
    assert res.stdout.splitlines().count("enabled") == 3, res.stdout
    assert '"mount_path": "/mnt"' in res.stdout
    # Docker and the worker need the volume's mount, which fstab makes after the boot unit.
    assert {"RequiresMountsFor=/mnt/docker", "RequiresMountsFor=/mnt/farmhand"} <= set(res.stdout.splitlines())
    assert "/dev/mapper/ephemeral-data /mnt ext4" in res.stdout


# --- qemu -----------------------------------------------------------------


class VM:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = env["VM_SSH_PORT"]
        self.key = env["VM_SSH_KEY"]
        self.console = Path(env["VM_CONSOLE"])

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", self.key, "-p", self.port, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout,
        )

    def out(self, command: str, timeout: float = 300) -> str:
        res = self.ssh(command, timeout)
        assert res.returncode == 0, f"{command}: rc {res.returncode}\n{res.stdout}{res.stderr}"
        return res.stdout


# The first boot's configuration, as an operator writes it (packer/README.md, "First boot").
FIRST_BOOT_QUEUE = "firstboot"
FIRST_BOOT_NODE = "firstboot-vm"
FIRST_BOOT_IMAGE = "farmhand-firstboot/dash:1"
DROP_IN = "/etc/farmhand/config.d/50-first-boot.yml"
ENV_FILE = "/etc/farmhand/farmhand.env"
GUEST_HOST = "10.0.2.2"  # the host's 127.0.0.1, seen from qemu's user network


def user_data(broker_port: int) -> str:
    drop_in = {
        "broker": {"url": f"amqp://guest:guest@{GUEST_HOST}:{broker_port}//"},
        "images": {"allowed": ["farmhand-firstboot/*"]},
    }
    doc = {
        "write_files": [
            {"path": DROP_IN, "owner": "farmhand:farmhand", "permissions": "0600", "content": yaml.safe_dump(drop_in)},
            {"path": ENV_FILE, "owner": "root:root", "permissions": "0600",
             "content": f"QUEUES={FIRST_BOOT_QUEUE}\nNODE_NAME={FIRST_BOOT_NODE}\n"},
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


class DiskImage:
    """A qemu disk (ext4, no partition table), read without booting it: converted to raw, read by debugfs."""

    def __init__(self, disk: Path, work: Path) -> None:
        self.raw = work / (disk.stem + ".raw")
        self.work = work
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(self.raw)], check=True, timeout=900)

    def debugfs(self, request: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["debugfs", "-R", request, str(self.raw)], capture_output=True, text=True, timeout=300)

    def exists(self, path: str) -> bool:
        return "File not found" not in self.debugfs(f"stat {path}").stderr

    def read(self, path: str) -> str | None:
        if not self.exists(path):
            return None
        out = self.work / "read.out"
        self.debugfs(f"dump {path} {out}")
        return out.read_text(errors="replace")

    def files(self, path: str) -> dict[str, int]:
        """Every regular file under ``path``: its path, its size."""
        if not self.exists(path):
            return {}
        dump = self.work / ("tree-" + uuid.uuid4().hex)
        dump.mkdir()
        self.debugfs(f"rdump {path} {dump}")
        top = dump / Path(path).name  # rdump copies the directory itself
        found: dict[str, int] = {}
        for root, _, names in os.walk(top):
            for name in names:
                full = Path(root) / name
                if full.is_file() and not full.is_symlink():
                    found["/" + str(full.relative_to(top))] = full.stat().st_size
        return found

    def remove(self) -> None:
        self.raw.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def disks() -> Iterator[dict[str, DiskImage]]:
    """The app disk as baked, and the base disk whose machine baked it (its machine-id, its host keys)."""
    for disk in (APP_DISK, BASE_DISK):
        assert disk.exists(), f"{disk} is missing: run `make vm-images`"
    work = Path(tempfile.mkdtemp(prefix="farmhand-disks-"))
    images: dict[str, DiskImage] = {}
    try:
        images = {"app": DiskImage(APP_DISK, work), "base": DiskImage(BASE_DISK, work)}
        yield images
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def bake_identity(disks: dict[str, DiskImage]) -> dict[str, str]:
    """What identified the machine that baked the app image: the base image's machine-id and SSH host keys."""
    base = disks["base"]
    identity = {"machine-id": (base.read("/etc/machine-id") or "").strip()}
    for kind in ("ed25519", "ecdsa", "rsa"):
        public = (base.read(f"/etc/ssh/ssh_host_{kind}_key.pub") or "").split()
        identity[kind] = public[1] if len(public) > 1 else ""
    assert re.fullmatch(r"[0-9a-f]{32}", identity["machine-id"]), identity
    assert identity["ed25519"], identity
    return identity


class GuestRabbitMQ(RabbitMQ):
    """The integration suite's RabbitMQ, with a consumer timeout for a worker under software emulation."""

    CONSUMER_TIMEOUT_MS = 1_800_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    rabbit = GuestRabbitMQ(tmp_path_factory.mktemp("first-boot-rabbitmq")).start()
    try:
        yield rabbit
    finally:
        rabbit.stop()


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, broker: RabbitMQ, bake_identity: dict[str, str]) -> Iterator[VM]:
    assert APP_DISK.exists(), f"{APP_DISK} is missing: run `make vm-images`"
    image_dir = subprocess.run(
        ["bash", str(REPO / "scripts/build-vm-image.sh"), "--print-dir"], capture_output=True, text=True, check=True
    ).stdout.strip().splitlines()[-1]
    work = tmp_path_factory.mktemp("app-vm")
    (work / "user-data").write_text(user_data(broker.port))
    subprocess.run(["bash", str(REPO / "scripts/make-nocloud-seed.sh"), str(work / "seed.iso"), str(work / "user-data"),
                    f"farmhand-test-{uuid.uuid4().hex[:8]}"], check=True, timeout=300)
    pidfile = work / "qemu.pid"
    boot = subprocess.run(
        ["bash", str(REPO / "scripts/boot-vm.sh"), "--disk", str(APP_DISK),
         "--kernel", str(APP_BOOT / "vmlinuz"), "--initrd", str(APP_BOOT / "initrd.img"),
         "--ssh-key", f"{image_dir}/id_ed25519", "--extra-disks", "2", "--extra-disk-size", "2G",
         "--seed", str(work / "seed.iso"),
         "--memory", "2048", "--workdir", str(work), "--pidfile", str(pidfile), "--timeout", "900"],
        capture_output=True, text=True, timeout=1000,
    )
    assert boot.returncode == 0, boot.stderr
    env = dict(line.split("=", 1) for line in boot.stdout.splitlines() if "=" in line)
    machine = VM(env)
    try:
        # Boot is over when every unit settled: the storage unit runs ansible-playbook first.
        res = machine.ssh("systemctl is-system-running --wait", timeout=900)
        print("system:", res.stdout.strip())
        print(machine.ssh("systemd-analyze blame | head -5; journalctl -b -u farmhand-ephemeral-storage --no-pager | tail -25").stdout)
        yield machine
    finally:
        subprocess.run(["bash", str(REPO / "scripts/boot-vm.sh"), "--stop", "--pidfile", str(pidfile)], check=False)


def test_vm_baked_image_holds_nothing_of_the_baking_machine(disks: dict[str, DiskImage]) -> None:
    """Read offline, before any boot: what the bake must have cleaned (packer/playbooks/clean.yml)."""
    app = disks["app"]
    assert app.read("/etc/machine-id") == "", "machine-id: not emptied"
    assert not app.exists("/var/lib/dbus/machine-id")
    assert not [f for f in app.files("/etc/ssh") if "ssh_host_" in f], app.files("/etc/ssh")
    # The worker's state: its working dir (journal, embedded broker, results, pending uploads).
    working_dir = yaml.safe_load(app.read("/etc/farmhand/config.yml") or "{}")["working_dir"]
    assert app.exists(working_dir) and app.files(working_dir) == {}, app.files(working_dir)
    assert app.files("/var/lib/farmhand") == {}
    # Logs: no journal file at all; every other log empty, wtmp aside (poweroff writes its record after the clean).
    logs = app.files("/var/log")
    assert not [f for f in logs if f.startswith("/journal/")], logs
    assert {f: size for f, size in logs.items() if size and f != "/wtmp"} == {}, logs
    # cloud-init runs again at the first boot; apt's lists are fetched again by whoever needs them.
    assert app.files("/var/lib/cloud") == {}, app.files("/var/lib/cloud")
    assert not app.exists("/var/lib/cloud/instance")
    assert {f for f in app.files("/var/lib/apt/lists") if f != "/lock"} == set(), app.files("/var/lib/apt/lists")
    assert app.files("/var/cache/apt/archives").keys() <= {"/lock"}
    # What makes the keys back at boot is there, cloud-init included.
    assert app.exists("/etc/systemd/system/farmhand-ssh-host-keys.service")
    assert app.exists("/etc/systemd/system/ssh.service.wants/farmhand-ssh-host-keys.service")
    assert app.exists("/usr/bin/cloud-init")
    # cloud-init stayed off at the bake's boot (no seed, no datasource): none of its instance set-up is baked in.
    assert not app.exists("/home/debian")


def test_vm_boot_units_succeeded(vm: VM) -> None:
    for unit in ["farmhand-ephemeral-storage", "docker", "farmhand"]:
        res = vm.ssh(f"systemctl is-active {unit}")
        assert res.stdout.strip() == "active", f"{unit}: {res.stdout}\n" + vm.ssh(
            f"systemctl status --no-pager {unit}; journalctl -b -u {unit} --no-pager | tail -40").stdout
    assert vm.ssh("systemctl is-failed --quiet farmhand-ephemeral-storage").returncode != 0


def test_vm_ephemeral_volume_spans_both_extra_disks_and_is_mounted(vm: VM) -> None:
    pvs = json.loads(vm.out("pvs --reportformat json -o pv_name,vg_name"))["report"][0]["pv"]
    assert sorted(p["pv_name"] for p in pvs if p["vg_name"] == "ephemeral") == ["/dev/vdb", "/dev/vdc"]
    lvs = json.loads(vm.out("lvs --reportformat json -o lv_name,vg_name,stripes"))["report"][0]["lv"]
    assert {(lv["lv_name"], lv["vg_name"], lv["stripes"]) for lv in lvs} == {("data", "ephemeral", "2")}
    source, fstype, options = vm.out("findmnt -n -o SOURCE,FSTYPE,OPTIONS /mnt").split()
    assert source == "/dev/mapper/ephemeral-data" and fstype == "ext4" and "noatime" in options.split(",")
    assert vm.out("findmnt -n -o SOURCE --target /mnt/farmhand").strip() == "/dev/mapper/ephemeral-data"
    assert vm.out("stat -c '%U:%G %a' /mnt/farmhand").strip() == "farmhand:farmhand 2770"


def test_vm_docker_runs_on_the_volume(vm: VM) -> None:
    assert vm.out("docker info -f '{{.DockerRootDir}}'").strip() == "/mnt/docker"
    assert vm.out("findmnt -n -o SOURCE --target /mnt/docker").strip() == "/dev/mapper/ephemeral-data"


def test_vm_loopback_modules_loaded(vm: VM) -> None:
    modules = vm.out("lsmod | cut -d' ' -f1")
    assert "snd_aloop" in modules.split() and "v4l2loopback" in modules.split(), modules
    assert vm.ssh("test -c /dev/video10 && test -c /dev/video11").returncode == 0, vm.out("ls -l /dev/video* || true")


def test_vm_limits_raised(vm: VM) -> None:
    assert vm.out("systemctl show -p DefaultLimitNOFILE --value").strip() == "1048576"
    assert vm.out("systemctl show docker -p LimitNOFILE --value").strip() == "1048576"


def test_vm_farmhand_check_passes(vm: VM) -> None:
    cmd = f"runuser -u farmhand -g farmhand -G docker -- {FARMHAND} --config /etc/farmhand/config.yml check"
    res = vm.ssh(cmd)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    # It says which drop-in it merged, and reaches the broker the drop-in names.
    assert DROP_IN in res.stdout, res.stdout
    assert VERSION in vm.out(f"{FARMHAND} --version")
    assert "/mnt/farmhand" in vm.out("grep -E '^working_dir:' /etc/farmhand/config.yml")


# --- qemu: configured at first boot by cloud-init ----------------------------

#: Run in the VM, which has no registry: the task's image is made there from its own dash.
DASH_IMAGE = (REPO / "scripts" / "dash-image.sh").read_text()


def test_vm_cloud_init_ran_from_the_nocloud_seed(vm: VM) -> None:
    status = vm.ssh("cloud-init status --long --wait", timeout=600)
    print(status.stdout)
    assert "status: done" in status.stdout, status.stdout + status.stderr
    assert "NoCloud" in status.stdout, status.stdout
    # The worker started after cloud-init wrote its files (the unit's After=).
    order = vm.out("systemctl show farmhand -p After --value").split()
    assert "cloud-init.service" in order and "cloud-config.service" in order, order


def test_vm_first_boot_secrets_stay_0600(vm: VM) -> None:
    assert vm.out(f"stat -c '%a %U:%G' {DROP_IN} {ENV_FILE}").split("\n")[:2] == ["600 farmhand:farmhand", "600 root:root"]
    assert vm.out("stat -c '%a %U:%G' /etc/farmhand /etc/farmhand/config.d").split("\n")[:2] == ["750 root:farmhand"] * 2
    # The worker's user reads its drop-in; any other user reads neither.
    assert vm.ssh(f"runuser -u farmhand -- cat {DROP_IN}").returncode == 0
    for path in (DROP_IN, ENV_FILE):
        res = vm.ssh(f"runuser -u nobody -- cat {path}")
        assert res.returncode != 0 and "guest:guest" not in res.stdout, res.stdout
    # The env file reached the service (systemd read it as root).
    env = vm.out("tr '\\0' '\\n' < /proc/$(systemctl show farmhand -p MainPID --value)/environ")
    assert f"QUEUES={FIRST_BOOT_QUEUE}" in env.splitlines(), env


def test_vm_machine_id_and_ssh_host_keys_are_new(vm: VM, bake_identity: dict[str, str]) -> None:
    machine_id = vm.out("cat /etc/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
    assert machine_id != bake_identity["machine-id"]
    for kind in ("ed25519", "ecdsa", "rsa"):
        key = vm.out(f"cut -d' ' -f2 /etc/ssh/ssh_host_{kind}_key.pub").strip()
        assert key and key != bake_identity.get(kind), kind
    # Only this boot's journal: none of the bake's.
    boots = [line for line in vm.out("journalctl --list-boots --no-pager").splitlines() if line.strip() and "BOOT ID" not in line]
    assert len(boots) == 1, boots


def test_vm_task_submitted_through_the_host_broker_runs(vm: VM, broker: RabbitMQ, tmp_path: Path) -> None:
    """The worker, configured only by the seed, consumes the env file's queue on the drop-in's broker."""
    vm.out(f"sh -c {shlex.quote(DASH_IMAGE)} dash-image {FIRST_BOOT_IMAGE}")
    try:
        wait_until(lambda: broker._queue_counts("consumers").get(FIRST_BOOT_QUEUE, 0) >= 1, 300,
                   f"the VM's worker to consume {FIRST_BOOT_QUEUE!r} on the host's RabbitMQ")
    except AssertionError:
        print(vm.ssh("systemctl status --no-pager farmhand; journalctl -b -u farmhand --no-pager | tail -40").stdout)
        raise
    task_id = f"first-boot-{uuid.uuid4().hex[:8]}"
    task = {
        "task_id": task_id,
        "image": FIRST_BOOT_IMAGE,
        "pull": "never",
        "network": "none",
        "max_run_time": 600,
        "command": ["/usr/bin/dash", "-c", "echo configured at first boot > /tmp/hello.txt"],
        "artifacts": [{"path": "/tmp/hello.txt", "name": "hello.txt"}],
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    (tmp_path / "config.yml").write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), "broker": {"url": broker.url}}))
    res = subprocess.run(
        [str(REPO / ".venv/bin/farmhand"), "--config", str(tmp_path / "config.yml"), "submit", "--queue", FIRST_BOOT_QUEUE,
         "--wait", "--timeout", "900", "--json", str(tmp_path / "task.json")],
        capture_output=True, text=True, timeout=960, env={**os.environ, "FARMHAND_CONFIG": ""},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(res.stdout)  # the result document
    assert result["state"] == "succeeded", result
    (artifact,) = result["artifacts"]
    location = artifact["location"]
    assert location.startswith("file:///mnt/farmhand/"), artifact
    assert vm.out(f"cat {location[len('file://'):]}") == "configured at first boot\n"
    assert task_id in vm.out("journalctl -b -u farmhand -o cat --no-pager")
