"""A cloud stop/start, played on the VM: the instance-store disks come back blank (molecule vm scenario).

The volume the role built is taken down and both disks are wiped, then:
- with the volume gone, Docker refuses to start and leaves no data root on
  the root disk, and the guard the worker's and dockerd's units run says why;
- after a reboot, farmhand-ephemeral-storage.service has built the volume
  again over the blank disks (no network, no Ansible), the fstab entry has
  mounted it, Docker's data root and the worker's dir are on it, a container
  gets the raised limits, and the worker runs.

Waits are on conditions (SSH back with a new boot id, systemd settled), each
bounded so a VM that never comes back fails the test instead of hanging it.
"""

import json
import re
import shlex
import time

import pytest

MOUNT = "/mnt"
DISKS = ["/dev/vdb", "/dev/vdc"]
IMAGE = "farmhand-molecule/limits-probe:latest"


def boot_id(host):
    return host.file("/proc/sys/kernel/random/boot_id").content_string.strip()


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # the VM is down while it reboots: ansible cannot reach it
            pass
        time.sleep(5)  # a poll interval of a condition, not a wait for time to pass
    pytest.fail(f"gave up after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def wiped(host):
    """The volume taken down and both disks blank, nothing rebooted yet."""
    host.check_output("systemctl stop farmhand docker.socket docker containerd")
    host.check_output(f"umount {MOUNT} && vgchange --activate n ephemeral")
    for disk in DISKS:
        host.check_output(f"wipefs --all --quiet {disk} && dd if=/dev/zero of={disk} bs=1M count=16 status=none")
    assert host.run("vgs ephemeral").rc != 0
    return True


@pytest.fixture(scope="module")
def rebooted(host, wiped):
    before = boot_id(host)
    host.run("systemd-run --on-active=3 --timer-property=AccuracySec=100ms systemctl reboot")
    wait_for(lambda: boot_id(host) != before, 900, "the VM to come back from its reboot")
    wait_for(lambda: host.run("systemctl is-system-running --wait").stdout.strip() in ("running", "degraded"),
             600, "systemd to finish booting")
    return True


def test_without_the_volume_docker_refuses_the_root_disk(host, wiped):
    # docker.service requires the volume's mount, whose device systemd waits for (fstab's
    # x-systemd.device-timeout, minutes: a slow disk at boot is no missing one): docker waits behind it
    # instead of starting on the root disk. The start is given a minute, then its jobs are cancelled.
    res = host.run("timeout 60 systemctl start docker")
    assert res.rc != 0, "docker started without its volume"
    jobs = host.run("systemctl list-jobs --no-legend").stdout
    host.run("systemctl cancel")
    assert "docker.service" in jobs and "mnt.mount" in jobs, jobs
    assert host.run("systemctl is-active docker").stdout.strip() != "active"
    assert host.run(f"mountpoint -q {MOUNT}").rc != 0
    # Nothing was created on the root disk in the volume's place.
    assert not host.file(f"{MOUNT}/docker").exists
    # The guard of dockerd's drop-in, run as systemd runs it, says why in its own words.
    dropin = host.file("/etc/systemd/system/docker.service.d/farmhand-storage.conf").content_string
    (guard,) = re.findall(r"^ExecStartPre=(/bin/sh -c '.*')$", dropin, re.M)
    res = host.run(guard)
    assert res.rc == 1
    assert "not mounted on /mnt: refusing to start dockerd on the root disk" in res.stderr


def test_the_boot_unit_rebuilt_the_volume_on_the_blank_disks(host, rebooted):
    assert host.check_output("systemctl is-active farmhand-ephemeral-storage") == "active"
    log = host.check_output("journalctl -b -o cat --no-pager -u farmhand-ephemeral-storage")
    assert "creating volume group ephemeral over /dev/vdb, /dev/vdc" in log, log
    assert "making ext4 on /dev/ephemeral/data" in log, log
    pvs = host.check_output("pvs --noheadings --separator '|' -o pv_name,vg_name")
    assert sorted(tuple(f.strip() for f in line.split("|")) for line in pvs.splitlines() if line.strip()) == \
        [(d, "ephemeral") for d in DISKS]
    assert host.check_output(f"findmnt -n -o SOURCE {MOUNT}") == "/dev/mapper/ephemeral-data"


def test_the_unit_ran_before_the_mount_docker_and_the_worker(host, rebooted):
    # The ordering systemd used this boot, as it reports it.
    after = host.check_output("systemctl show -p After --value mnt.mount").split()
    assert "farmhand-ephemeral-storage.service" in after
    # systemd adds the unit's other paths (RuntimeDirectory=, PrivateTmp=) to the list.
    assert f"{MOUNT}/docker" in host.check_output("systemctl show -p RequiresMountsFor --value docker").split()
    assert f"{MOUNT}/farmhand" in host.check_output("systemctl show -p RequiresMountsFor --value farmhand").split()
    for unit in ("docker", "farmhand"):
        assert "mnt.mount" in host.check_output(f"systemctl show -p After --value {unit}").split()


def test_docker_and_the_worker_are_on_the_new_volume(host, rebooted):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["DockerRootDir"] == f"{MOUNT}/docker"
    assert host.check_output(f"findmnt -n -o SOURCE -T {MOUNT}/docker/image") == "/dev/mapper/ephemeral-data"
    wd = host.file(f"{MOUNT}/farmhand")
    assert wd.is_directory and wd.user == "farmhand" and wd.group == "farmhand" and wd.mode == 0o2770
    assert host.service("farmhand").is_running


def test_a_container_gets_the_raised_limits_after_the_reboot(host, rebooted):
    build = (
        "set -e; d=$(mktemp -d); cd $d; "
        "for f in /usr/bin/dash $(ldd /usr/bin/dash | grep -o '/[^ ]*'); do cp --parents -L $f .; done; "
        f"tar -c . | docker import - {IMAGE} >/dev/null; rm -rf $d"
    )
    host.check_output(f"bash -c {shlex.quote(build)}")
    out = host.check_output(f"docker run --rm --network none {IMAGE} /usr/bin/dash -c 'echo $(ulimit -n) $(ulimit -s)'")
    assert out.split() == ["1048576", "unlimited"]
