"""The Packer templates (packer/base, packer/app): `packer fmt -check` and
`packer validate` for every template and every source, with Debian's packer
1.6.6, in seconds.

The cloud sources (amazon-ebs for amd64 and arm64, googlecompute, azure-arm)
are validated offline: with no cloud credential in the environment and, where
the machine allows a user namespace, in a network namespace with no network
at all (Packer's builders look the clouds up only when they build). Only the
identifiers a cloud build cannot do without are given, as made-up values.
Building the images is `make images` / `make vm-images` (docker and qemu), and
tests/appliance/test_images.py runs them; the cloud sources are never built here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKER_DIR = REPO / "packer"
TEMPLATE_DIRS = sorted({p.parent for p in PACKER_DIR.glob("*/*.pkr.hcl")})
LOCAL_SOURCES = ["docker.debian12", "qemu.debian12"]
CLOUD_SOURCES = ["amazon-ebs.debian12", "googlecompute.debian12", "azure-arm.debian12"]
SOURCES = {*LOCAL_SOURCES, *CLOUD_SOURCES}
# What a cloud build cannot do without and no default can give: made up, never contacted.
CLOUD_IDS = {
    "base": ["-var=gcp_project_id=farmhand-validate", "-var=azure_subscription_id=00000000-0000-0000-0000-000000000000"],
    "app": [
        "-var=gcp_project_id=farmhand-validate", "-var=azure_subscription_id=00000000-0000-0000-0000-000000000000",
        "-var=azure_base_image=farmhand-base-20000101000000",
    ],
}
# Environment variables through which a cloud SDK or a template's variable default could find credentials.
CLOUD_ENV_PREFIXES = ("AWS_", "PACKER_", "ARM_", "AZURE_", "GOOGLE_", "CLOUDSDK_", "GCE_", "MSI_")


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLOUD_ENV_PREFIXES)}
    env.update(
        CHECKPOINT_DISABLE="1",
        PACKER_CACHE_DIR=str(tmp_path / "packer_cache"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_EC2_METADATA_DISABLED="true",
        # No gcloud or az login either (they live under HOME).
        HOME=str(tmp_path / "home"),
        CLOUDSDK_CONFIG=str(tmp_path / "no-gcloud"),
        AZURE_CONFIG_DIR=str(tmp_path / "no-azure"),
    )
    return env


@functools.cache
def no_network_prefix() -> tuple[str, ...]:
    """`unshare -rn` runs a command in a new network namespace (only a loopback, down): no cloud is reachable."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    ok = subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0
    return (unshare, "-rn") if ok else ()


def validate_args(ssh_key: Path, ansible_playbook: Path, tmp_path: Path) -> list[str]:
    """Everything that depends on this machine points at fresh paths: no build output, no VM image needed."""
    return [
        f"-var=vm_ssh_key={ssh_key}",
        f"-var=ansible_playbook={ansible_playbook}",
        f"-var=output_dir={tmp_path / 'out'}",
    ]


def run(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*no_network_prefix(), *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def console(packer: str, template: str, expr: str, args: list[str], tmp_path: Path) -> str:
    """What an expression of the template evaluates to, with these -var arguments (`packer console`)."""
    res = subprocess.run(
        [*no_network_prefix(), packer, "console", *args, template], input=expr + "\n",
        cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def source_block(template: Path, source: str) -> str:
    """The text of one source block (`source "TYPE" "NAME" {` up to the closing brace at column 0)."""
    kind, name = source.split(".", 1)
    text = "\n".join(p.read_text() for p in sorted(template.glob("*.pkr.hcl")))
    match = re.search(rf'^source "{re.escape(kind)}" "{re.escape(name)}" {{\n(.*?)^}}', text, re.S | re.M)
    assert match, f"no source {source} in {template.name}"
    return match.group(1)


def test_templates_exist() -> None:
    assert [d.name for d in TEMPLATE_DIRS] == ["app", "base"]


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_fmt_check(packer: str, template: Path, tmp_path: Path) -> None:
    res = run([packer, "fmt", "-check", "-diff", str(template)], offline_env(tmp_path))
    assert res.returncode == 0, f"packer fmt -check {template.name}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_validate_without_cloud_credentials(
    packer: str, ssh_key: Path, ansible_playbook: Path, template: Path, tmp_path: Path
) -> None:
    args = [*validate_args(ssh_key, ansible_playbook, tmp_path), *CLOUD_IDS[template.name]]
    res = run([packer, "validate", *args, str(template.relative_to(REPO))], offline_env(tmp_path))
    assert res.returncode == 0, f"packer validate {template.name}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize(
    ("source", "arch"), [*((s, "amd64") for s in [*LOCAL_SOURCES, *CLOUD_SOURCES]), ("amazon-ebs.debian12", "arm64")]
)
@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_validate_each_source(
    packer: str, ssh_key: Path, ansible_playbook: Path, template: Path, source: str, arch: str, tmp_path: Path
) -> None:
    """Each source alone (`-only=`, as `make images` and a cloud bake run it); amazon-ebs for both architectures."""
    args = [*validate_args(ssh_key, ansible_playbook, tmp_path), f"-var=aws_arch={arch}"]
    if source in CLOUD_SOURCES:
        args += CLOUD_IDS[template.name]
    res = run([packer, "validate", f"-only={source}", *args, str(template.relative_to(REPO))], offline_env(tmp_path))
    assert res.returncode == 0, f"packer validate -only={source} {template.name}:\n{res.stdout}{res.stderr}"


def test_validate_runs_without_a_network() -> None:
    """The packer runs above are offline: in a network namespace whose only interface is a loopback."""
    if not no_network_prefix():
        pytest.skip("no user namespaces here (unshare -rn): validate ran with the network, still without credentials")
    res = subprocess.run([*no_network_prefix(), "cat", "/proc/net/dev"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    interfaces = [line.split(":", 1)[0].strip() for line in res.stdout.splitlines()[2:]]
    assert interfaces == ["lo"], res.stdout


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_the_cloud_sources_need_their_ids(
    packer: str, ssh_key: Path, ansible_playbook: Path, template: Path, tmp_path: Path
) -> None:
    """Without a project, the googlecompute source fails validate: the cloud sources are really checked."""
    args = [a for a in CLOUD_IDS[template.name] if "gcp_project_id" not in a]
    res = run(
        [packer, "validate", "-only=googlecompute.debian12", *validate_args(ssh_key, ansible_playbook, tmp_path),
         *args, str(template.relative_to(REPO))],
        offline_env(tmp_path),
    )
    assert res.returncode != 0 and "project_id" in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("arch", "ami_arch", "instance_type"), [("amd64", "x86_64", "m5d.large"), ("arm64", "arm64", "m6gd.large")]
)
@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_aws_arch_picks_the_ami_and_the_instance_type(
    packer: str, template: Path, arch: str, ami_arch: str, instance_type: str, tmp_path: Path
) -> None:
    rel = str(template.relative_to(REPO))
    args = [f"-var=aws_arch={arch}"]
    # One console run for all of them: the values, space-separated.
    wanted = {"local.aws_ami_arch": ami_arch, "local.aws_instance_type": instance_type}
    if template.name == "base":
        wanted["local.aws_source"] = f"debian-12-{arch}-*"
    expr = '"' + " ".join(f"${{{name}}}" for name in wanted) + '"'
    assert console(packer, rel, expr, args, tmp_path).split() == list(wanted.values())
    given = [*args, "-var=aws_instance_type=c6gd.xlarge"]
    assert console(packer, rel, "local.aws_instance_type", given, tmp_path) == "c6gd.xlarge"
    # ...and the amazon-ebs source uses them (the AMI filter by architecture: the app finds the base of its arch).
    block = source_block(template, "amazon-ebs.debian12")
    assert re.search(r"^\s*instance_type\s*=\s*local\.aws_instance_type$", block, re.M), block
    assert re.search(r"^\s*architecture\s*=\s*local\.aws_ami_arch$", block, re.M), block


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_validate_rejects_an_unknown_aws_arch(
    packer: str, ssh_key: Path, ansible_playbook: Path, template: Path, tmp_path: Path
) -> None:
    args = [*validate_args(ssh_key, ansible_playbook, tmp_path), "-var=aws_arch=x86_64"]
    res = run([packer, "validate", "-only=amazon-ebs.debian12", *args, str(template.relative_to(REPO))],
              offline_env(tmp_path))
    said = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0 and "The aws_arch variable must be amd64 or arm64." in said, said


@pytest.mark.parametrize("template", TEMPLATE_DIRS, ids=lambda p: p.name)
def test_every_template_has_every_source(packer: str, template: Path, tmp_path: Path) -> None:
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
    res = run([packer, "validate", *args, *CLOUD_IDS["base"], str(broken / "base")], offline_env(tmp_path))
    assert res.returncode != 0 and "pulll" in res.stdout + res.stderr, res.stdout + res.stderr

    res = run(
        [packer, "validate", *args, *CLOUD_IDS["app"], "-var=aws_disk_size=big", "packer/app"],
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


# Renders expressions of packer/playbooks/base.yml with Ansible's own templating (the appliance venv's
# ansible-core), for the given variables: what the play would decide, without a host.
RENDER = r"""
import json, sys
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
job = json.load(sys.stdin)
templar = Templar(loader=DataLoader(), variables=job["variables"])
print(json.dumps({name: templar.template(expr) for name, expr in job["expressions"].items()}))
"""


def render(ansible_playbook: Path, variables: dict[str, object], expressions: dict[str, str]) -> dict[str, object]:
    python = ansible_playbook.parent / "python"
    res = subprocess.run(
        [str(python), "-c", RENDER], input=json.dumps({"variables": variables, "expressions": expressions}),
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def base_play() -> dict[str, Any]:
    return yaml.safe_load((PACKER_DIR / "playbooks/base.yml").read_text())[0]


def kernel_swap() -> dict[str, Any]:
    """The playbook's block that swaps the cloud kernel, and its tasks by name."""
    updates = next(t for t in base_play()["pre_tasks"] if t.get("name") == "OS updates")
    swap = next(t for t in updates["block"] if t.get("name") == "Swap Debian's cloud kernel for the generic one")
    return swap


@pytest.mark.parametrize(
    ("builder", "swaps"),
    [("docker", False), ("qemu", False), ("amazon-ebs", True), ("googlecompute", True), ("azure-arm", True)],
)
def test_only_cloud_bakes_swap_the_kernel(ansible_playbook: Path, builder: str, swaps: bool) -> None:
    """docker and qemu keep their kernel (qemu's is held: it boots from outside the disk)."""
    play_vars = base_play()["vars"]
    got = render(ansible_playbook, {**play_vars, "packer_builder_type": builder},
                 {"swap": "{{ farmhand_generic_kernel | bool }}"})
    assert got["swap"] is swaps


CLOUD_KERNEL_PACKAGES = [
    "linux-image-cloud-{a}", "linux-image-6.1.0-27-cloud-{a}", "linux-image-6.1.0-27-cloud-{a}-unsigned",
    "linux-headers-cloud-{a}", "linux-headers-6.1.0-27-cloud-{a}",
]
KEPT_PACKAGES = [
    "linux-image-{a}", "linux-image-6.1.0-28-{a}", "linux-headers-{a}", "linux-headers-6.1.0-28-{a}",
    "linux-headers-6.1.0-28-common", "linux-headers-6.1.0-27-common", "linux-base", "cloud-init", "cloud-utils",
]


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_kernel_swap_installs_the_generic_kernel_and_purges_only_cloud_kernels(ansible_playbook: Path, arch: str) -> None:
    swap = kernel_swap()
    tasks = {t["name"]: t for t in swap["block"]}
    install = tasks["Install the generic kernel and its headers metapackage"]["ansible.builtin.apt"]
    purge = tasks["Purge the cloud kernels"]["ansible.builtin.apt"]
    assert purge["state"] == "absent" and purge["purge"] is True
    cloud = [p.format(a=arch) for p in CLOUD_KERNEL_PACKAGES]
    kept = [p.format(a=arch) for p in KEPT_PACKAGES]
    variables = {
        **swap["vars"], "farmhand_generic_kernel": True,
        "ansible_facts": {"kernel": f"6.1.0-27-cloud-{arch}", "packages": {p: [{}] for p in cloud + kept}},
    }
    when = "{{ " + " and ".join(f"({c})" for c in swap["when"]) + " }}"
    got = render(ansible_playbook, variables, {
        "when": when,
        "install": install["name"],
        "purge": purge["name"],
    })
    assert got["when"] is True
    assert sorted(got["install"]) == [f"linux-headers-{arch}", f"linux-image-{arch}"]
    assert sorted(got["purge"]) == sorted(cloud)

    # Once the generic kernel runs, nothing is swapped again.
    variables["ansible_facts"]["kernel"] = f"6.1.0-28-{arch}"
    assert render(ansible_playbook, variables, {"when": when}) == {"when": False}
