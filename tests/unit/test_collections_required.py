"""Every collection the appliance uses is in ansible/requirements.yml.

With ansible-core alone, a module of a collection nobody installed fails the
play when it is reached (`community.general.modprobe` could not be resolved).
The tasks of every role and playbook are read as YAML, so a module is found
wherever it is called; short names are allowed only for a role's own
library/ modules, which cannot come from a collection.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TASK_FILES = sorted(
    [*REPO.glob("ansible/roles/*/tasks/*.yml"), *REPO.glob("ansible/roles/*/handlers/*.yml"),
     REPO / "ansible/site.yml", *REPO.glob("packer/playbooks/*.yml"), *(p for p in REPO.glob("molecule/*/*.yml") if p.name != "molecule.yml")]
)
# Collections named outside tasks: callbacks, connections.
OTHER_FILES = sorted([*REPO.glob("packer/*/*.pkr.hcl"), *REPO.glob("molecule/*/molecule.yml"),
                      *REPO.glob("ansible/*.cfg"), *REPO.glob("packer/*.cfg")])
KEYWORDS = {
    "name", "when", "loop", "loop_control", "register", "notify", "listen", "tags", "become", "become_user", "vars",
    "block", "rescue", "always", "delegate_to", "run_once", "check_mode", "changed_when", "failed_when",
    "environment", "until", "retries", "delay", "ignore_errors", "no_log", "diff", "args", "any_errors_fatal",
    "throttle", "timeout", "with_items", "collections", "module_defaults", "local_action", "async", "poll",
    "connection", "debugger", "ignore_unreachable", "delegate_facts",
}
PLAY_KEYS = {"hosts", "import_playbook", "ansible.builtin.import_playbook", "roles", "tasks", "pre_tasks", "post_tasks"}
LOCAL_MODULES = {p.stem for p in REPO.glob("ansible/roles/*/library/*.py")}


def required() -> set[str]:
    doc = yaml.safe_load((REPO / "ansible/requirements.yml").read_text())
    return {c["name"] for c in doc["collections"]}


def tasks_in(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from tasks_in(item)
    elif isinstance(node, dict):
        if PLAY_KEYS & node.keys():
            for key in ("tasks", "pre_tasks", "post_tasks", "handlers"):
                yield from tasks_in(node.get(key) or [])
            return
        yield node
        for key in ("block", "rescue", "always"):
            yield from tasks_in(node.get(key) or [])


def modules_used() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for path in TASK_FILES:
        for task in tasks_in(yaml.safe_load(path.read_text())):
            modules = [k for k in task if k not in KEYWORDS]
            if "block" in task:
                continue
            assert len(modules) == 1, f"{path.relative_to(REPO)}: cannot tell the module of task {task.get('name')}: {modules}"
            used.setdefault(modules[0], set()).add(str(path.relative_to(REPO)))
    return used


def test_the_scan_finds_the_collection_modules_in_use() -> None:
    # The scan itself works: modules known to be used are seen.
    used = modules_used()
    assert "community.general.modprobe" in used and "ansible.builtin.template" in used


def test_every_task_module_is_fully_qualified_or_a_role_library_module() -> None:
    bare = {m: sorted(files) for m, files in modules_used().items() if m.count(".") != 2 and m not in LOCAL_MODULES}
    assert not bare, f"modules without a collection name (write namespace.collection.module): {bare}"


def test_every_collection_of_a_task_is_required() -> None:
    missing = {}
    for module, files in modules_used().items():
        if module.count(".") == 2 and not module.startswith("ansible.builtin."):
            collection = module.rsplit(".", 1)[0]
            if collection not in required():
                missing[module] = sorted(files)
    assert not missing, f"not in ansible/requirements.yml: {missing}"


@pytest.mark.parametrize("path", OTHER_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_collection_named_in_configs_is_required(path: Path) -> None:
    names = {m.group(1) for m in re.finditer(r"\b((?:community|ansible)\.[a-z_]+)\.[a-z_]+\b", path.read_text())}
    names.discard("ansible.builtin")
    assert names <= required(), f"{path.relative_to(REPO)} uses {sorted(names - required())}, not in ansible/requirements.yml"


def test_requirements_have_version_ranges() -> None:
    doc = yaml.safe_load((REPO / "ansible/requirements.yml").read_text())
    for c in doc["collections"]:
        assert re.fullmatch(r">=\d+\.\d+\.\d+,<\d+\.\d+\.\d+", c.get("version", "")), c
