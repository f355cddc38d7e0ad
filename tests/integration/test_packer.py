"""The Packer templates (packer/base, packer/app): `packer fmt -check` and
`packer validate` for every template, with Debian's packer 1.6.6, in seconds.

validate runs without any AWS credential (the amazon-ebs source is checked
offline: Packer looks AWS up only when it builds). Building the images is
`make images` / `make vm-images`, and tests/appliance/test_images.py runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKER_DIR = REPO / "packer"
TEMPLATE_DIRS = sorted({p.parent for p in PACKER_DIR.glob("*/*.pkr.hcl")})
SOURCES = {"docker.debian12", "qemu.debian12", "amazon-ebs.debian12"}


@pytest.fixture(scope="module")
def packer() -> str:
    if shutil.which("packer") is None:
        subprocess.run(["bash", str(REPO / "scripts/setup-packer-tools.sh"), "--no-vagrant"], check=True)
    path = shutil.which("packer")
    assert path, "scripts/setup-packer-tools.sh did not install packer"
    return path


@pytest.fixture(scope="module")
def ansible_playbook() -> Path:
    """validate runs `ansible-playbook --version`: the appliance tools' venv (issue 5's)."""
    cmd = REPO / ".venv-appliance/bin/ansible-playbook"
    if not cmd.exists():
        subprocess.run(["bash", str(REPO / "scripts/setup-appliance-tools.sh")], check=True)
    return cmd


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The qemu source reads its SSH key at validate time: a fresh one, so no VM image is needed."""
    key = tmp_path_factory.mktemp("packer-key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PACKER_"))}
    env.update(
        CHECKPOINT_DISABLE="1",
        PACKER_CACHE_DIR=str(tmp_path / "packer_cache"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def validate_args(ssh_key: Path, ansible_playbook: Path, tmp_path: Path) -> list[str]:
    """Everything that depends on this machine points at fresh paths: no build output, no VM image needed."""
    return [
        f"-var=vm_ssh_key={ssh_key}",
        f"-var=ansible_playbook={ansible_playbook}",
        f"-var=output_dir={tmp_path / 'out'}",
    ]


def run(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_templates_exist() -> None:
    assert [d.name for d in TEMPLATE_DIRS] == ["app", "base"]


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_fmt_check(packer: str, template: Path, tmp_path: Path) -> None:
    res = run([packer, "fmt", "-check", "-diff", str(template)], offline_env(tmp_path))
    assert res.returncode == 0, f"packer fmt -check {template.name}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_validate_without_aws_credentials(
    packer: str, ssh_key: Path, ansible_playbook: Path, template: Path, tmp_path: Path
) -> None:
    args = validate_args(ssh_key, ansible_playbook, tmp_path)
    res = run([packer, "validate", *args, str(template.relative_to(REPO))], offline_env(tmp_path))
    assert res.returncode == 0, f"packer validate {template.name}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_every_template_builds_docker_qemu_and_aws(packer: str, template: Path, tmp_path: Path) -> None:
    res = run([packer, "inspect", str(template.relative_to(REPO))], offline_env(tmp_path))
    assert res.returncode == 0, res.stderr
    listed = {line.strip() for line in res.stdout.splitlines()}
    assert SOURCES <= listed, res.stdout
    assert "manifest" in listed and "ansible" in listed, res.stdout


def test_validate_rejects_a_broken_template(packer: str, ssh_key: Path, ansible_playbook: Path, tmp_path: Path) -> None:
    """validate really checks: an unknown source argument and a wrong-typed variable both fail."""
    broken = tmp_path / "packer"
    shutil.copytree(PACKER_DIR, broken)
    hcl = broken / "base" / "base.pkr.hcl"
    hcl.write_text(hcl.read_text().replace("pull   = false", "pull   = false\n  pulll  = false", 1))
    args = validate_args(ssh_key, ansible_playbook, tmp_path)
    res = run([packer, "validate", *args, str(broken / "base")], offline_env(tmp_path))
    assert res.returncode != 0 and "pulll" in res.stdout + res.stderr, res.stdout + res.stderr

    res = run(
        [packer, "validate", *args, "-var=aws_disk_size=big", "packer/app"],
        offline_env(tmp_path),
    )
    assert res.returncode != 0, res.stdout + res.stderr


def test_fmt_check_rejects_misformatted_hcl(packer: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.pkr.hcl").write_text('variable "a" {\ntype = string\n      default = "b"\n}\n')
    res = run([packer, "fmt", "-check", str(bad)], offline_env(tmp_path))
    assert res.returncode != 0


def test_playbooks_pass_ansible_syntax_check(ansible_playbook: Path, tmp_path: Path) -> None:
    playbook_cmd = ansible_playbook
    env = dict(os.environ, ANSIBLE_CONFIG=str(PACKER_DIR / "ansible.cfg"), ANSIBLE_LOCAL_TEMP=str(tmp_path))
    playbooks = sorted((PACKER_DIR / "playbooks").glob("*.yml"))
    assert playbooks, f"no playbooks under {PACKER_DIR / 'playbooks'}"
    for playbook in playbooks:
        res = subprocess.run(
            [str(playbook_cmd), "--syntax-check", "-i", "localhost,", str(playbook)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )
        assert res.returncode == 0, f"{playbook.name}:\n{res.stdout}{res.stderr}"
