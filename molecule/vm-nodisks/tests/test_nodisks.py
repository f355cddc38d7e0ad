"""site.yml's storage role on a VM with no disk but its root disk (molecule vm-nodisks).

The role must leave every disk alone, create no volume group, mount nothing,
write nothing to fstab, tell the operator so, and tell the docker and
farmhand roles that there is no volume (they then stay on the root
filesystem: the default scenario proves that part; this one runs only the
limits and storage roles).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), "molecule", "shared"))
from playbook import run_playbook  # noqa: E402


def test_no_volume_group_and_nothing_mounted(host):
    assert host.check_output("vgs --noheadings -o vg_name") == ""
    assert host.check_output("pvs --noheadings -o pv_name") == ""
    assert not host.mount_point("/mnt").exists
    fstab = host.file("/etc/fstab").content_string
    assert "/mnt" not in fstab and "ephemeral" not in fstab


def test_root_disk_left_alone(host):
    # Only the root disk exists (it matches the vd* pattern): still ext4 on /, no PV label.
    assert host.check_output("lsblk -dn -o NAME | grep '^vd'") == "vda"
    assert host.mount_point("/").device == "/dev/vda"
    assert host.check_output("blkid -o value -s TYPE /dev/vda") == "ext4"


def test_storage_role_says_it_did_nothing(host):
    # Rerun the role verbosely: it says it found no disk (and why the root
    # disk was left alone), sets ephemeral_storage_active false for the docker
    # and farmhand roles, and changes nothing.
    rc, out, recap = run_playbook("--tags", "ephemeral_storage", "-v")
    flat = " ".join(out.split())
    assert rc == 0, out[-4000:]
    assert "ephemeral_storage: no ephemeral disk found; nothing done" in flat, out[-4000:]
    assert "/dev/vda: mounted (/)" in flat, out[-4000:]
    assert "ephemeral_storage_active: false" in flat, out[-4000:]
    assert recap and all(" changed=0 " in line for line in recap), out[-4000:]
