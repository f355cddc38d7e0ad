"""What site.yml must leave on a real kernel (molecule vm scenario).

A Debian 12 qemu VM with two blank 2G disks (vdb, vdc) and the loopback
devices enabled (2 video, 2 audio cards of 4 substreams): everything the container scenario
cannot prove, LVM and kernel modules first.
"""

import json
import re

import pytest

MOUNT = "/mnt"
DISKS = ["/dev/vdb", "/dev/vdc"]


def show(host, prop, unit=None):
    return host.check_output(f"systemctl show -p {prop} --value" + (f" {unit}" if unit else ""))


def test_one_volume_group_over_both_disks(host):
    pvs = host.check_output("pvs --noheadings --separator '|' -o pv_name,vg_name")
    rows = sorted(tuple(f.strip() for f in line.split("|")) for line in pvs.splitlines() if line.strip())
    assert rows == [(d, "ephemeral") for d in DISKS]
    lvs = json.loads(host.check_output("lvs --reportformat json -o lv_name,vg_name,stripes,devices,lv_size --units b"))
    (lv,) = lvs["report"][0]["lv"]
    assert lv["lv_name"] == "data" and lv["stripes"] == "2"
    assert all(d in lv["devices"] for d in DISKS)
    # Striped over two 2 GiB disks: nearly all of both (LVM keeps ~1 MiB each).
    assert int(lv["lv_size"].rstrip("B")) > 2 * 2**30 * 0.95


def test_volume_mounted_with_the_configured_options(host):
    mnt = host.mount_point(MOUNT)
    assert mnt.exists
    assert mnt.device == "/dev/mapper/ephemeral-data"
    assert mnt.filesystem == "ext4"
    assert "noatime" in mnt.options
    fstab = [line.split() for line in host.file("/etc/fstab").content_string.splitlines() if line.strip() and not line.startswith("#")]
    (entry,) = [f for f in fstab if f[1] == MOUNT]
    assert entry[0] == "/dev/mapper/ephemeral-data" and "noatime" in entry[3] and "nofail" in entry[3]


def test_docker_data_root_on_the_volume(host):
    assert host.service("docker").is_running
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["DockerRootDir"] == f"{MOUNT}/docker"
    assert json.loads(host.file("/etc/docker/daemon.json").content_string)["data-root"] == f"{MOUNT}/docker"
    assert host.check_output(f"findmnt -n -o SOURCE -T {MOUNT}/docker/image") == "/dev/mapper/ephemeral-data"


def test_worker_dir_on_the_volume(host):
    cfg = host.check_output("grep '^working_dir:' /etc/farmhand/config.yml")
    assert cfg == f'working_dir: "{MOUNT}/farmhand"'
    wd = host.file(f"{MOUNT}/farmhand")
    assert wd.user == "farmhand" and wd.group == "farmhand" and wd.mode == 0o2770


def test_snd_aloop_loaded_with_the_configured_options(host):
    assert host.file("/sys/module/snd_aloop").is_directory
    assert host.file("/sys/module/snd_aloop/parameters/index").content_string.startswith("10,11,")
    assert host.file("/sys/module/snd_aloop/parameters/pcm_substreams").content_string.startswith("4,4,")
    cards = host.file("/proc/asound/cards").content_string
    assert re.search(r"^\s*10 \[Loopback", cards, re.M) and re.search(r"^\s*11 \[Loopback", cards, re.M), cards


def test_v4l2loopback_built_by_dkms_and_loaded(host):
    kernel = host.check_output("uname -r")
    status = host.check_output("dkms status v4l2loopback")
    assert kernel in status and "installed" in status
    assert host.file("/sys/module/v4l2loopback").is_directory
    assert host.file("/sys/module/v4l2loopback/parameters/exclusive_caps").content_string.startswith("Y,Y")
    for n in (10, 11):
        dev = host.file(f"/dev/video{n}")
        assert host.check_output(f"stat -c %F /dev/video{n}") == "character special file"
        assert host.file(f"/sys/class/video4linux/video{n}/name").content_string.strip() == "farmhand-loopback"
        # The udev rule: group video, 0660.
        assert dev.group == "video" and dev.mode == 0o660


@pytest.mark.parametrize("conf", ["modprobe.d/farmhand-loopback.conf", "modules-load.d/farmhand-loopback.conf"])
def test_module_configuration_for_the_next_boot(host, conf):
    content = host.file(f"/etc/{conf}").content_string
    assert "v4l2loopback" in content and "snd-aloop" in content


def test_systemd_reports_the_raised_limits(host):
    assert show(host, "DefaultLimitNOFILE") == "1048576"
    assert show(host, "DefaultLimitSTACK") == "infinity"
    assert show(host, "LimitNOFILE", "docker") == "1048576"
    assert show(host, "LimitNOFILE", "farmhand") == "1048576"


def test_farmhand_service_active_with_the_limits(host):
    svc = host.service("farmhand")
    assert svc.is_enabled and svc.is_running
    pid = show(host, "MainPID", "farmhand")
    limits = host.file(f"/proc/{pid}/limits").content_string
    (line,) = [x for x in limits.splitlines() if x.startswith("Max open files")]
    assert line.split()[3:5] == ["1048576", "1048576"]


def test_farmhand_check_passes_as_the_service_user(host):
    out = host.run("runuser -u farmhand -g farmhand -G docker -- /opt/farmhand/venv/bin/farmhand --config /etc/farmhand/config.yml check")
    assert out.rc == 0, out.stdout + out.stderr
