"""site.yml on a VM with no disk but its root disk (molecule vm-nodisks).

The storage role must leave every disk alone, create no volume group, mount
nothing and write nothing to fstab, and tell the operator so; Docker and the
worker then live on the root filesystem.
"""

import json
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


def test_docker_and_worker_on_the_root_filesystem(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["DockerRootDir"] == "/var/lib/docker"
    assert host.check_output("grep '^working_dir:' /etc/farmhand/config.yml") == 'working_dir: "/var/lib/farmhand"'
    assert host.service("farmhand").is_running


def test_storage_role_says_it_did_nothing(host):
    # Rerun just the role: it reports that it found no disk, and changes nothing.
    rc, out, recap = run_playbook("--tags", "ephemeral_storage")
    assert rc == 0, out[-4000:]
    assert "ephemeral_storage: no ephemeral disk found; nothing done" in " ".join(out.split()), out[-4000:]
    assert recap and all(" changed=0 " in line for line in recap), out[-4000:]
