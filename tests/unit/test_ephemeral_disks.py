"""The ephemeral_storage role's disk rules, on `lsblk --json` texts as clouds give them.

ansible/roles/ephemeral_storage/library/ephemeral_disks.py decides which disks
the volume group may take, at converge and (imported by the boot script) at
every boot. A wrong "yes" wipes someone's data, so each rule is checked on the
output of `lsblk --json --paths --bytes -o NAME,KNAME,TYPE,FSTYPE,MOUNTPOINT,
RO,RM,MODEL,PTTYPE` (util-linux 2.38, Debian 12: JSON booleans, models as the
kernel pads them) for the machines it meets: AWS instance store next to EBS
volumes, GCE local SSDs next to persistent disks, Azure's resource disk, a
partitioned disk, an empty partition table, another volume group's PV.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible/roles/ephemeral_storage"
_spec = importlib.util.spec_from_file_location("ephemeral_disks", ROLE / "library/ephemeral_disks.py")
ephemeral_disks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ephemeral_disks)

import yaml  # noqa: E402

DEFAULTS = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
PATTERNS = DEFAULTS["ephemeral_storage_disk_patterns"]
EXCLUDED = DEFAULTS["ephemeral_storage_exclude_models"]


def part(name, fstype=None, mountpoint=None, pttype="gpt"):
    return {"name": name, "kname": name, "type": "part", "fstype": fstype, "mountpoint": mountpoint,
            "ro": False, "rm": False, "model": None, "pttype": pttype}


def disk(name, model, children=None, fstype=None, pttype=None, ro=False, mountpoint=None):
    d = {"name": name, "kname": name, "type": "disk", "fstype": fstype, "mountpoint": mountpoint,
         "ro": ro, "rm": False, "model": model, "pttype": pttype}
    if children:
        d["children"] = children
    return d


def lsblk_text(*devices):
    """What `lsblk --json` prints (indented the way util-linux does)."""
    return json.dumps({"blockdevices": list(devices)}, indent=3)


# AWS m5d.xlarge on Debian 12: an EBS root (GPT: ext4 /, BIOS boot, EFI),
# two instance-store NVMe disks, and an attached, still blank EBS data volume
# (the kernel pads NVMe models to 40 characters).
AWS = lsblk_text(
    disk("/dev/nvme0n1", "Amazon Elastic Block Store".ljust(40), pttype="gpt", children=[
        part("/dev/nvme0n1p1", "ext4", "/"), part("/dev/nvme0n1p14"), part("/dev/nvme0n1p15", "vfat", "/boot/efi")]),
    disk("/dev/nvme1n1", "Amazon EC2 NVMe Instance Storage".ljust(40)),
    disk("/dev/nvme2n1", "Amazon EC2 NVMe Instance Storage".ljust(40)),
    disk("/dev/nvme3n1", "Amazon Elastic Block Store".ljust(40)),
)

# GCE n2 with local SSDs on both interfaces: the boot persistent disk (SCSI),
# a SCSI local SSD, an NVMe local SSD, an attached blank persistent disk on
# SCSI and one on NVMe (hyperdisk-style).
GCE = lsblk_text(
    disk("/dev/sda", "PersistentDisk", pttype="gpt", children=[
        part("/dev/sda1", "ext4", "/"), part("/dev/sda14"), part("/dev/sda15", "vfat", "/boot/efi")]),
    disk("/dev/sdb", "EphemeralDisk"),
    disk("/dev/nvme0n1", "nvme_card"),
    disk("/dev/sdc", "PersistentDisk"),
    disk("/dev/nvme1n1", "nvme_card-pd"),
)

# Azure D4ds_v5: OS disk, and the resource ("temporary") disk the platform
# hands out pre-partitioned (NTFS, or ext4 mounted by the agent on /mnt).
AZURE = lsblk_text(
    disk("/dev/sda", "Virtual Disk", pttype="gpt", children=[
        part("/dev/sda1", "ext4", "/"), part("/dev/sda14"), part("/dev/sda15", "vfat", "/boot/efi")]),
    disk("/dev/sdb", "Virtual Disk", pttype="dos", children=[part("/dev/sdb1", "ntfs", pttype="dos")]),
)
AZURE_AGENT_MOUNTED = lsblk_text(
    disk("/dev/sdb", "Virtual Disk", pttype="dos", children=[part("/dev/sdb1", "ext4", "/mnt", pttype="dos")]),
)

# A qemu/KVM host: the root disk, a disk with a partition and nothing on it,
# one with an empty GPT, one holding another VG (its LV not mounted), a
# lone PV pvs cannot name, a disk formatted whole, a read-only disk, a blank one.
KVM = lsblk_text(
    disk("/dev/vda", None, pttype="dos", children=[part("/dev/vda1", "ext4", "/", pttype="dos")]),
    disk("/dev/vdb", None, pttype="gpt", children=[part("/dev/vdb1")]),
    disk("/dev/vdc", None, pttype="gpt"),
    disk("/dev/vdd", None, fstype="LVM2_member", children=[
        {"name": "/dev/mapper/backup-data", "kname": "/dev/dm-0", "type": "lvm", "fstype": "xfs", "mountpoint": None,
         "ro": False, "rm": False, "model": None, "pttype": None}]),
    disk("/dev/vde", None, fstype="LVM2_member"),
    disk("/dev/vdf", None, fstype="ext4"),
    disk("/dev/vdg", None, ro=True),
    disk("/dev/vdh", None),
    {"name": "/dev/sr0", "kname": "/dev/sr0", "type": "rom", "fstype": "iso9660", "mountpoint": None, "ro": False,
     "rm": True, "model": "QEMU DVD-ROM", "pttype": None},
)
KVM_PVS = "  /dev/vdd|backup\n  /dev/vde|\n"

# The role's own volume after the first converge: both disks are PVs of
# "ephemeral" and its LV is mounted on /mnt.
OURS = lsblk_text(
    disk("/dev/vda", None, pttype="dos", children=[part("/dev/vda1", "ext4", "/", pttype="dos")]),
    *[disk(f"/dev/vd{x}", None, fstype="LVM2_member", children=[
        {"name": "/dev/mapper/ephemeral-data", "kname": "/dev/dm-0", "type": "lvm", "fstype": "ext4", "mountpoint": "/mnt",
         "ro": False, "rm": False, "model": None, "pttype": None}]) for x in "bc"],
)
OURS_PVS = "  /dev/vdb|ephemeral\n  /dev/vdc|ephemeral\n"


def select(text, pvs="", **kw):
    kw.setdefault("patterns", PATTERNS)
    kw.setdefault("exclude_models", EXCLUDED)
    kw.setdefault("exists", lambda path: True)
    return ephemeral_disks.select_disks(ephemeral_disks.parse_lsblk(text), ephemeral_disks.parse_pvs(pvs), "ephemeral", **kw)


def reasons(skipped):
    return {line.split(":", 1)[0]: line.split(": ", 1)[1] for line in skipped}


def test_aws_takes_instance_store_and_never_an_ebs_volume():
    disks, skipped = select(AWS)
    assert disks == ["/dev/nvme1n1", "/dev/nvme2n1"]
    why = reasons(skipped)
    assert why["/dev/nvme0n1"].startswith("mounted (/, /boot/efi)")
    # Blank, unpartitioned, matching the pattern: only its model tells it apart.
    assert why["/dev/nvme3n1"] == "a Amazon Elastic Block Store (a network volume, not instance store)"


def test_without_the_model_rule_a_blank_ebs_volume_would_be_taken():
    # What the model rule is for: with no excluded model the same blank EBS disk passes every other rule.
    disks, _ = select(AWS, exclude_models=[])
    assert "/dev/nvme3n1" in disks


def test_gce_takes_local_ssds_on_scsi_and_nvme_not_persistent_disks():
    disks, skipped = select(GCE)
    assert disks == ["/dev/nvme0n1", "/dev/sdb"]
    why = reasons(skipped)
    assert why["/dev/sda"].startswith("mounted")
    assert "network volume" in why["/dev/sdc"] and "network volume" in why["/dev/nvme1n1"]


def test_azure_resource_disk_is_left_alone_as_the_platform_formats_it():
    disks, skipped = select(AZURE)
    assert disks == []
    assert reasons(skipped)["/dev/sdb"] == "has partitions or holders"
    disks, skipped = select(AZURE_AGENT_MOUNTED)
    assert disks == [] and reasons(skipped)["/dev/sdb"] == "mounted (/mnt)"


def test_each_kind_of_used_disk_is_left_alone_with_its_reason():
    disks, skipped = select(KVM, KVM_PVS)
    assert disks == ["/dev/vdh"]
    assert reasons(skipped) == {
        "/dev/vda": "mounted (/)",
        "/dev/vdb": "has partitions or holders",
        "/dev/vdc": "carries a gpt partition table",
        "/dev/vdd": "physical volume of another volume group (backup)",
        "/dev/vde": "physical volume of another volume group (none)",
        "/dev/vdf": "carries a ext4 signature",
        "/dev/vdg": "read-only",
    }
    # /dev/sr0 is no disk and matches no pattern: not even a candidate.
    assert "/dev/sr0" not in reasons(skipped)


def test_lvm_members_are_refused_even_when_pvs_cannot_say_whose():
    # Before lvm2 is installed (first converge) pvs is missing: lsblk's signature still protects them.
    disks, skipped = select(KVM, "")
    assert disks == ["/dev/vdh"]
    why = reasons(skipped)
    assert why["/dev/vdd"] == "has partitions or holders"
    assert why["/dev/vde"] == "an LVM physical volume"


def test_allow_signatures_takes_a_formatted_disk_but_never_a_pv_or_a_partition_table():
    disks, _ = select(KVM, "", allow_signatures=True)
    assert disks == ["/dev/vdf", "/dev/vdh"]


def test_our_own_volume_group_is_found_again_although_mounted():
    disks, skipped = select(OURS, OURS_PVS)
    assert disks == ["/dev/vdb", "/dev/vdc"]
    assert reasons(skipped) == {"/dev/vda": "mounted (/)"}


def test_explicit_disks_replace_the_patterns_and_missing_ones_are_named():
    disks, skipped = select(AWS, disks=["/dev/nvme2n1", "/dev/nvme9n1"])
    assert disks == ["/dev/nvme2n1"]
    assert reasons(skipped) == {"/dev/nvme9n1": "no such disk"}
    # Naming a disk does not bypass the rules.
    disks, skipped = select(AWS, disks=["/dev/nvme3n1"])
    assert disks == [] and "network volume" in reasons(skipped)["/dev/nvme3n1"]


def test_disks_without_a_device_node_here_are_not_touched():
    # In a container lsblk lists the host's disks from /sys.
    disks, skipped = select(AWS, exists=lambda path: False)
    assert disks == [] and set(reasons(skipped).values()) == {"no device node here"}


def test_older_lsblk_strings_for_booleans():
    text = lsblk_text({**disk("/dev/vdb", None), "ro": "1"}, {**disk("/dev/vdc", None), "ro": "0"})
    disks, skipped = select(text)
    assert disks == ["/dev/vdc"] and reasons(skipped) == {"/dev/vdb": "read-only"}


def test_pvs_output_is_parsed_as_pvs_prints_it():
    assert ephemeral_disks.parse_pvs("  /dev/vdb|ephemeral\n  /dev/vdc|\n\n") == {"/dev/vdb": "ephemeral", "/dev/vdc": ""}


def test_the_module_asks_lsblk_for_the_columns_the_rules_read():
    columns = ephemeral_disks.LSBLK[ephemeral_disks.LSBLK.index("-o") + 1].split(",")
    assert {"NAME", "TYPE", "FSTYPE", "MOUNTPOINT", "RO", "MODEL", "PTTYPE"} <= set(columns)
    assert "--json" in ephemeral_disks.LSBLK and "--paths" in ephemeral_disks.LSBLK
