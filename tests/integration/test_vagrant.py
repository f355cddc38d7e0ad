"""The Vagrant environment: `vagrant validate` on the Vagrantfile (Debian's
vagrant, installed when missing), its provisioning scripts and its inventory.

No box can be downloaded and no provider runs here, so validation ignores the
provider blocks (`--ignore-provider`); `vagrant up` itself is for developers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vagrant() -> str:
    if shutil.which("vagrant") is None:
        subprocess.run(["bash", str(REPO / "scripts/setup-packer-tools.sh")], check=True)
    path = shutil.which("vagrant")
    assert path, "scripts/setup-packer-tools.sh did not install vagrant"
    return path


def validate(vagrant: str, cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    return subprocess.run(
        [vagrant, "validate", "--ignore-provider", "--no-color"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )


def copy_env(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(REPO / "Vagrantfile", root / "Vagrantfile")
    shutil.copytree(REPO / "vagrant", root / "vagrant")
    return root


def test_vagrant_validate(vagrant: str, tmp_path: Path) -> None:
    res = validate(vagrant, copy_env(tmp_path), tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout


def test_vagrant_validate_catches_a_missing_provisioner_script(vagrant: str, tmp_path: Path) -> None:
    root = copy_env(tmp_path)
    (root / "vagrant" / "warehouse.sh").unlink()
    res = validate(vagrant, root, tmp_path)
    assert res.returncode != 0
    assert "warehouse.sh" in res.stdout + res.stderr


def test_vagrantfile_runs_site_yml_on_debian12() -> None:
    text = (REPO / "Vagrantfile").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in text
    assert 'ansible.playbook = "site.yml"' in text and (REPO / "ansible/site.yml").exists()
    assert 'ansible.inventory_path = "/vagrant/vagrant/inventory.yml"' in text


def test_provisioning_scripts_parse() -> None:
    scripts = sorted((REPO / "vagrant").glob("*.sh"))
    assert scripts, "no provisioning scripts under vagrant/"
    for script in scripts:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script.name}: {res.stderr}"


def test_local_inventory_puts_the_vm_in_farmhand_workers(tmp_path: Path) -> None:
    cmd = REPO / ".venv-appliance/bin/ansible-inventory"
    if not cmd.exists():
        subprocess.run(["bash", str(REPO / "scripts/setup-appliance-tools.sh")], check=True)
    res = subprocess.run(
        [str(cmd), "-i", str(REPO / "vagrant/inventory.yml"), "--list"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path)),
    )
    assert res.returncode == 0, res.stderr
    inv = json.loads(res.stdout)
    assert inv["farmhand_workers"]["hosts"] == ["farmhand-dev"]
    hostvars = inv["_meta"]["hostvars"]["farmhand-dev"]
    assert hostvars["ansible_connection"] == "local"
    assert hostvars["farmhand_broker_url"].startswith("amqp://127.0.0.1:5672/")
    assert hostvars["farmhand_upload_default"] == "sftp://warehouse@127.0.0.1:22/upload/"
