#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Find the ephemeral (instance-store) disks this role may take.

Discovery is a module rather than Jinja over `lsblk` output because the
safety rules need the whole block-device tree at once: a disk is taken only
when nothing on it is in use, and the reason every other candidate was left
alone is reported so the play can say why it did nothing.
"""

DOCUMENTATION = r"""
module: ephemeral_disks
short_description: List whole disks that are safe to put into the ephemeral volume group
description:
  - Reads C(lsblk) and C(pvs). Read-only; supports check mode.
  - A disk is taken when its name matches one of O(patterns) (or it is in O(disks)) and it is
    not mounted, has no partitions or holders, carries no filesystem or RAID signature and is not
    a physical volume of a volume group other than O(vg).
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

from ansible.module_utils.basic import AnsibleModule


def _walk(dev):
    yield dev
    for child in dev.get("children") or []:
        yield from _walk(child)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            disks=dict(type="list", elements="str", default=[]),
            patterns=dict(type="list", elements="str", default=[]),
            vg=dict(type="str", required=True),
            allow_signatures=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    rc, out, err = module.run_command(
        ["lsblk", "--json", "--paths", "--bytes", "-o", "NAME,KNAME,TYPE,FSTYPE,MOUNTPOINT,RO,RM"]
    )
    if rc != 0:
        module.fail_json(msg="lsblk failed: %s" % err.strip())
    tree = json.loads(out).get("blockdevices") or []

    pv_vg = {}
    pvs = module.get_bin_path("pvs")
    if pvs:
        rc, out, err = module.run_command([pvs, "--noheadings", "--separator", "|", "-o", "pv_name,vg_name"])
        if rc == 0:
            for line in out.splitlines():
                name, _, vg = line.strip().partition("|")
                if name:
                    pv_vg[name.strip()] = vg.strip()

    wanted = set(p["disks"])
    regexes = [re.compile(r) for r in p["patterns"]]
    disks, skipped = [], []
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
        vg = pv_vg.get(path)
        if not os.path.exists(path):
            # lsblk reads /sys: in a container it lists the host's disks,
            # which have no node here and are not ours to touch.
            skipped.append("%s: no device node here" % path)
        elif vg == p["vg"]:
            # Ours from an earlier run: its LV is mounted, which is expected.
            disks.append(path)
        elif mounted:
            skipped.append("%s: mounted (%s)" % (path, ", ".join(mounted)))
        elif str(dev.get("ro")) in ("1", "True", "true"):
            skipped.append("%s: read-only" % path)
        elif vg is not None and vg != p["vg"]:
            skipped.append("%s: physical volume of another volume group (%s)" % (path, vg or "none"))
        elif dev.get("children"):
            skipped.append("%s: has partitions or holders" % path)
        elif dev.get("fstype") and not p["allow_signatures"]:
            skipped.append("%s: carries a %s signature" % (path, dev["fstype"]))
        else:
            disks.append(path)
    missing = sorted(wanted - {d["name"] for d in tree})
    skipped.extend("%s: no such disk" % m for m in missing)
    module.exit_json(changed=False, disks=sorted(disks), skipped=skipped)


if __name__ == "__main__":
    main()
