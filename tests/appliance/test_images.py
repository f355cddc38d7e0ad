"""The images `make images` and `make vm-images` bake (packer/), run for real.

- docker: the app image runs `farmhand --version` and holds its rendered config.
- qemu: the app image boots (software emulation) with two blank extra disks,
  like an instance with two instance-store disks; at boot the
  farmhand-ephemeral-storage unit builds the LVM volume over both and mounts
  it, the loopback modules load, Docker (its data root on the volume) and the
  farmhand service come up, and `farmhand check` passes.

Run by `make images-test` (which builds the images first); slow: see
packer/README.md for timings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("FARMHAND_PACKER_OUTPUT", REPO / "build/packer"))
APP_IMAGE = os.environ.get("FARMHAND_APP_IMAGE", "farmhand-app:latest")
APP_DISK = OUTPUT / "qemu-farmhand-app" / "farmhand-app.qcow2"
APP_BOOT = OUTPUT / "farmhand-app-boot"
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


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    assert APP_DISK.exists(), f"{APP_DISK} is missing: run `make vm-images`"
    image_dir = subprocess.run(
        ["bash", str(REPO / "scripts/build-vm-image.sh"), "--print-dir"], capture_output=True, text=True, check=True
    ).stdout.strip().splitlines()[-1]
    work = tmp_path_factory.mktemp("app-vm")
    pidfile = work / "qemu.pid"
    boot = subprocess.run(
        ["bash", str(REPO / "scripts/boot-vm.sh"), "--disk", str(APP_DISK),
         "--kernel", str(APP_BOOT / "vmlinuz"), "--initrd", str(APP_BOOT / "initrd.img"),
         "--ssh-key", f"{image_dir}/id_ed25519", "--extra-disks", "2", "--extra-disk-size", "2G",
         "--memory", "2048", "--workdir", str(work), "--pidfile", str(pidfile), "--timeout", "600"],
        capture_output=True, text=True, timeout=700,
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
    assert VERSION in vm.out(f"{FARMHAND} --version")
    assert "/mnt/farmhand" in vm.out("grep -E '^working_dir:' /etc/farmhand/config.yml")
