#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Find the ephemeral (instance-store) disks this role may take.

Discovery is a module rather than Jinja over `lsblk` output because the
safety rules need the whole block-device tree at once: a disk is taken only
when nothing on it is in use, and the reason every other candidate was left
alone is reported so the play can say why it did nothing.

The same file is installed next to the boot-time script
(files/farmhand-ephemeral-storage), which imports select_disks() from it: at
boot the disks are judged by exactly these rules, without Ansible. So the
rules are plain functions over parsed `lsblk --json` and `pvs` output, and
Ansible is imported only by main().
"""

DOCUMENTATION = r"""
module: ephemeral_disks
short_description: List whole disks that are safe to put into the ephemeral volume group
description:
  - Reads C(lsblk) and C(pvs). Read-only; supports check mode.
  - A disk is taken when its name matches one of O(patterns) (or it is in O(disks)) and it is
    not mounted, read-only, partitioned (or carrying an empty partition table), held by anything,
    signed with a filesystem or RAID signature, a physical volume of a volume group other than
    O(vg), or a disk whose model is in O(exclude_models) (network volumes such as EBS, which keep
    data across a stop/start and are never instance store).
  - Disks already in O(vg) are taken (so a second run finds the same set).
options:
  disks:
    description: Explicit device paths; when set, O(patterns) is not used.
    type: list
    elements: str
    default: []
  patterns:
    description: Regular expressions matched against kernel names (vdb, nvme1n1).
    type: list
    elements: str
    default: []
  vg:
    description: Name of the role's volume group.
    type: str
    required: true
  allow_signatures:
    description: Take disks with a foreign filesystem signature too (some clouds pre-format instance store).
    type: bool
    default: false
  exclude_models:
    description: Disk models (lsblk MODEL, compared without surrounding blanks) never taken.
    type: list
    elements: str
    default: []
"""

RETURN = r"""
disks:
  description: Device paths to use, sorted.
  type: list
  returned: always
skipped:
  description: One line per candidate left alone, with the reason.
  type: list
  returned: always
"""

import json
import os
import re

LSBLK = ["lsblk", "--json", "--paths", "--bytes", "-o", "NAME,KNAME,TYPE,FSTYPE,MOUNTPOINT,RO,RM,MODEL,PTTYPE"]
PVS = ["--noheadings", "--separator", "|", "-o", "pv_name,vg_name"]


def _walk(dev):
    yield dev
    for child in dev.get("children") or []:
        yield from _walk(child)


def _true(value):
    # lsblk of util-linux 2.38 writes JSON booleans; older ones wrote "0"/"1".
    return str(value).strip().lower() in ("1", "true")


def parse_lsblk(text):
    """The top-level devices of `lsblk --json` output."""
    return json.loads(text).get("blockdevices") or []


def parse_pvs(text):
    """{pv path: vg name ('' when the PV belongs to none)} from `pvs` PVS-formatted output."""
    pv_vg = {}
    for line in text.splitlines():
        name, _, vg = line.strip().partition("|")
        if name.strip():
            pv_vg[name.strip()] = vg.strip()
    return pv_vg


def select_disks(tree, pv_vg, vg, disks=(), patterns=(), allow_signatures=False, exclude_models=(), exists=os.path.exists):
    """(disks to take, sorted; one 'path: reason' line per candidate left alone).

    Order matters: a disk of our own VG is ours even though its LV is mounted;
    every other rule only ever leaves a disk alone.
    """
    wanted = set(disks)
    regexes = [re.compile(r) for r in patterns]
    excluded = {m.strip() for m in exclude_models}
    taken, skipped = [], []
    for dev in tree:
        if dev.get("type") != "disk":
            continue
        path = dev["name"]
        short = path.rsplit("/", 1)[-1]
        if wanted:
            if path not in wanted:
                continue
        elif not any(r.fullmatch(short) for r in regexes):
            continue
        nodes = list(_walk(dev))
        mounted = [n["mountpoint"] for n in nodes if n.get("mountpoint")]
        owner = pv_vg.get(path)
        model = (dev.get("model") or "").strip()
        if not exists(path):
            # lsblk reads /sys: in a container it lists the host's disks,
            # which have no node here and are not ours to touch.
            skipped.append("%s: no device node here" % path)
        elif owner == vg:
            # Ours from an earlier run: its LV is mounted, which is expected.
            taken.append(path)
        elif mounted:
            skipped.append("%s: mounted (%s)" % (path, ", ".join(mounted)))
        elif _true(dev.get("ro")):
            skipped.append("%s: read-only" % path)
        elif model in excluded:
            skipped.append("%s: a %s (a network volume, not instance store)" % (path, model))
        elif owner is not None:
            skipped.append("%s: physical volume of another volume group (%s)" % (path, owner or "none"))
        elif dev.get("children"):
            skipped.append("%s: has partitions or holders" % path)
        elif dev.get("pttype"):
            skipped.append("%s: carries a %s partition table" % (path, dev["pttype"]))
        elif dev.get("fstype") == "LVM2_member":
            # A PV pvs did not list (its VG is incomplete or filtered): someone's data.
            skipped.append("%s: an LVM physical volume" % path)
        elif dev.get("fstype") and not allow_signatures:
            skipped.append("%s: carries a %s signature" % (path, dev["fstype"]))
        else:
            taken.append(path)
    missing = sorted(wanted - {d["name"] for d in tree})
    skipped.extend("%s: no such disk" % m for m in missing)
    return sorted(taken), skipped


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec=dict(
            disks=dict(type="list", elements="str", default=[]),
            patterns=dict(type="list", elements="str", default=[]),
            vg=dict(type="str", required=True),
            allow_signatures=dict(type="bool", default=False),
            exclude_models=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    rc, out, err = module.run_command(LSBLK)
    if rc != 0:
        module.fail_json(msg="lsblk failed: %s" % err.strip())
    tree = parse_lsblk(out)
    pv_vg = {}
    pvs = module.get_bin_path("pvs")
    if pvs:
        rc, out, err = module.run_command([pvs] + PVS)
        if rc == 0:
            pv_vg = parse_pvs(out)
    disks, skipped = select_disks(tree, pv_vg, p["vg"], p["disks"], p["patterns"], p["allow_signatures"],
                                  p["exclude_models"])
    module.exit_json(changed=False, disks=disks, skipped=skipped)


if __name__ == "__main__":
    main()
