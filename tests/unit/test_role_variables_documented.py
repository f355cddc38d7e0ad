"""Every variable a role reads is declared in its meta/argument_specs.yml and listed in
ansible/inventory/example.yml.

An operator learns what can be set from those two files: a variable a task or a
template reads that neither names is a setting nobody can discover (or a typo
that is silently undefined). Pure: the role's defaults, vars, tasks and
handlers and the templates it renders (through farmhand_templates_root) are
scanned for the role's own prefix; what the role computes itself (register,
set_fact, a task's or the role's vars/) is not an input.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "ansible" / "roles"
TEMPLATES_DIR = REPO / "templates"
EXAMPLE = REPO / "ansible" / "inventory" / "example.yml"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "meta" / "argument_specs.yml").is_file())
# Read by every role, set by the playbooks (documented in example.yml's header, declared by each role).
SHARED = {"farmhand_templates_root"}


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(key)
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def role_files(role: str) -> list[Path]:
    return [p for sub in ("defaults", "vars", "tasks", "handlers") for p in sorted((ROLES_DIR / role / sub).glob("*.yml"))]


@cache
def prefix_re(role: str) -> re.Pattern[str]:
    # The farmhand role's prefix is the project's: other roles' names start with neither.
    return re.compile(r"\b" + re.escape(role) + r"_[a-z0-9_]*[a-z0-9]\b")


def templates_of(role: str) -> list[Path]:
    pattern = re.compile(r"\{\{\s*farmhand_templates_root\s*\}\}/([\w.-]+)")
    names = {m for p in role_files(role) for s in walk(yaml.safe_load(p.read_text())) if isinstance(s, str)
             for m in pattern.findall(s)}
    return [TEMPLATES_DIR / n for n in sorted(names)]


def jinja_text(text: str) -> str:
    """Only what Jinja evaluates: expressions and statements, comments dropped."""
    text = re.sub(r"\{#.*?#\}", "", text, flags=re.S)
    return " ".join(re.findall(r"\{\{.*?\}\}|\{%.*?%\}", text, flags=re.S))


def computed(role: str) -> set[str]:
    """Names the role sets itself: registered results, facts, task/block vars, vars/main.yml."""
    names: set[str] = set()
    for path in role_files(role):
        doc = yaml.safe_load(path.read_text())
        if path.parent.name == "vars" and isinstance(doc, dict):
            names |= set(doc)
            continue
        for node in walk(doc):
            if not isinstance(node, dict):
                continue
            if isinstance(node.get("register"), str):
                names.add(node["register"])
            for key in ("ansible.builtin.set_fact", "set_fact", "vars"):
                if isinstance(node.get(key), dict) and (key != "vars" or "name" in node or "block" in node):
                    names |= set(node[key])
    return names


@cache
def variables_read(role: str) -> dict[str, set[str]]:
    """{variable: {where}} for every role-prefixed name in what Ansible evaluates."""
    found: dict[str, set[str]] = {}
    pattern = prefix_re(role)
    for path in role_files(role):
        for node in walk(yaml.safe_load(path.read_text())):
            if isinstance(node, str):
                # when:/that: and loop values are bare expressions; elsewhere only {{ }} is evaluated.
                for name in pattern.findall(node):
                    found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    for template in templates_of(role):
        for name in pattern.findall(jinja_text(template.read_text())):
            found.setdefault(name, set()).add(str(template.relative_to(REPO)))
    # defaults/main.yml keys are read by the role by definition.
    defaults = yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text()) or {}
    for name in defaults:
        found.setdefault(name, set()).add(f"ansible/roles/{role}/defaults/main.yml")
    own = computed(role) - set(defaults)
    return {n: w for n, w in found.items() if n not in own and n not in SHARED}


def declared(role: str) -> set[str]:
    specs = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())
    return set(specs["argument_specs"]["main"].get("options") or {})


@cache
def example_names() -> set[str]:
    """Keys of example.yml's vars, set or shown commented out (`# name: value`)."""
    names = set(yaml.safe_load(EXAMPLE.read_text())["farmhand_workers"]["vars"])
    names |= set(re.findall(r"^\s*#\s*([a-z][a-z0-9_]*):\s", EXAMPLE.read_text(), flags=re.M))
    return names


def test_the_scan_sees_what_the_roles_read() -> None:
    # Names known to be read in tasks, in a rendered template, and only in a template.
    assert "docker_limit_nofile" in variables_read("docker")
    assert "farmhand_limit_nofile" in variables_read("farmhand")
    assert "ephemeral_storage_found" not in variables_read("ephemeral_storage")  # registered: an output


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_read_is_declared_in_argument_specs(role: str) -> None:
    missing = {n: sorted(w) for n, w in variables_read(role).items() if n not in declared(role)}
    assert not missing, f"{role} reads variables its meta/argument_specs.yml does not declare: {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_read_is_in_the_example_inventory(role: str) -> None:
    missing = {n: sorted(w) for n, w in variables_read(role).items() if n not in example_names()}
    assert not missing, f"{role} reads variables ansible/inventory/example.yml does not list: {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_every_declared_variable_is_read(role: str) -> None:
    # A declared option nothing reads is a setting that does nothing.
    unread = declared(role) - set(variables_read(role)) - SHARED
    assert not unread, f"{role} declares variables it never reads: {sorted(unread)}"


def test_the_example_inventory_names_no_unknown_role_variable() -> None:
    known = set().union(*(declared(r) for r in ROLES)) | SHARED
    prefixes = tuple(f"{r}_" for r in ROLES)
    unknown = sorted(n for n in example_names() if n.startswith(prefixes) and n not in known)
    assert not unknown, f"example.yml sets variables no role declares: {unknown}"


def test_vagrant_enables_the_management_ui_it_forwards() -> None:
    # The Vagrantfile forwards RabbitMQ's management port: the plugin must be on for it to answer.
    text = (REPO / "Vagrantfile").read_text()
    assert re.search(r'forwarded_port", guest: 15672', text)
    assert re.search(r"^\s*rabbitmq-plugins enable [^\n]*\brabbitmq_management\b", text, flags=re.M)
