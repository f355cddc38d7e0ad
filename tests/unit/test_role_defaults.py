"""The Ansible roles' defaults have one value each, wherever they are written.

Pure: the role files and templates/config.yml.j2 are read with yaml.safe_load
and Jinja2, nothing runs Ansible or Docker.

- The farmhand role's variables that feed a config key (as
  templates/config.yml.j2 maps them) default to the worker's own default
  for that key, farmhand.config.DEFAULTS, in defaults/main.yml and in
  meta/argument_specs.yml alike; rendered with the role's defaults, the
  config is exactly DEFAULTS.
- In every role, defaults/main.yml and meta/argument_specs.yml agree: each
  default is declared, with the same value, and each declared default is set.
- The roles reach the shared templates/ through farmhand_templates_root only,
  and read no other role's variables (the playbooks pass them).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nativetypes
import pytest
import yaml

from farmhand.config import DEFAULTS

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "ansible" / "roles"
TEMPLATES_DIR = REPO / "templates"
CONFIG_TEMPLATE = TEMPLATES_DIR / "config.yml.j2"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "meta" / "argument_specs.yml").is_file())
TEMPLATES_ROOT_VAR = "farmhand_templates_root"

# argument_specs types -> the Python types (from YAML) a default of that type may have.
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


# --- reading the role files -------------------------------------------------

@cache
def role_defaults(role: str) -> dict[str, Any]:
    path = ROLES_DIR / role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


@cache
def role_options(role: str) -> dict[str, dict[str, Any]]:
    specs = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"].get("options") or {}


def is_templated(value: Any) -> bool:
    if isinstance(value, dict):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(is_templated(v) for v in value)
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def type_accepts(spec_type: str, value: Any) -> bool:
    if spec_type == "raw" or spec_type not in SPEC_TYPES:
        return True
    if isinstance(value, bool) and spec_type != "bool":
        return False  # bool is an int to Python, never to Ansible
    return isinstance(value, SPEC_TYPES[spec_type])


_native = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)


def resolve(role: str, name: str, _seen: tuple[str, ...] = ()) -> Any:
    """A role default as Ansible would give it with nothing else set: templated values are
    rendered (native types, like Ansible) against the role's other defaults."""
    value = role_defaults(role)[name]
    if not is_templated(value):
        return value
    assert name not in _seen, f"{role}: {name} refers to itself through {_seen}"
    needed = jinja2.meta.find_undeclared_variables(_native.parse(value))
    context = {var: resolve(role, var, (*_seen, name)) for var in needed if var in role_defaults(role)}
    return _native.from_string(value).render(**context)


# --- templates/config.yml.j2: which variable feeds which config key -----------

def render_config(**variables: Any) -> dict[str, Any]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    doc = yaml.safe_load(env.from_string(CONFIG_TEMPLATE.read_text()).render(**variables))
    assert doc.pop("version") == 1
    return doc


def leaf_paths(doc: Any, prefix: tuple[str, ...] = ()):
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaf_paths(value, (*prefix, key))
    else:
        yield prefix, doc


@cache
def config_key_of() -> dict[str, tuple[str, ...]]:
    """{variable: config key path}: the template rendered with a marker in every variable."""
    env = jinja2.Environment()
    variables = jinja2.meta.find_undeclared_variables(env.parse(CONFIG_TEMPLATE.read_text()))
    markers = {f"@@{var}@@": var for var in variables}
    rendered = render_config(**{var: marker for marker, var in markers.items()})
    return {markers[value]: path for path, value in leaf_paths(rendered) if value in markers}


def worker_default(path: tuple[str, ...]) -> Any:
    value: Any = DEFAULTS
    for key in path:
        value = value[key]
    return value


def test_the_template_maps_role_variables_to_config_keys():
    """The mapping the next tests rely on is found (and is the one the template spells out)."""
    mapping = config_key_of()
    assert mapping["farmhand_working_dir"] == ("working_dir",)
    assert mapping["farmhand_sftp_private_key"] == ("sftp", "private_key")
    assert mapping["farmhand_broker_password"] == ("broker", "password")
    assert mapping["farmhand_queues"] == ("worker", "queues")
    # Every variable feeds a key the worker knows, and every leaf of the
    # worker's defaults is fed by exactly one variable (some feed a whole dict).
    for var, path in mapping.items():
        worker_default(path)
    for leaf, _ in leaf_paths(DEFAULTS):
        feeding = [var for var, path in mapping.items() if leaf[: len(path)] == path]
        assert len(feeding) == 1, f"config key {'.'.join(leaf)} is fed by {feeding}"


@pytest.mark.parametrize("var", sorted(config_key_of()))
def test_farmhand_role_defaults_are_the_workers(var):
    """A farmhand_* variable feeding a config key defaults to DEFAULTS for that key, in
    defaults/main.yml (as rendered) and in argument_specs; and its declared type takes it."""
    path = config_key_of()[var]
    expected = worker_default(path)
    where = f"{var} (config key {'.'.join(path)})"
    if var in role_defaults("farmhand"):
        assert resolve("farmhand", var) == expected, f"defaults/main.yml: {where} must default to {expected!r}"
    spec = role_options("farmhand").get(var)
    if spec is None:
        return
    if "default" in spec:
        default = spec["default"]
        if is_templated(default):
            assert default == role_defaults("farmhand").get(var), f"argument_specs: {where}"
        else:
            assert default == expected, f"argument_specs: {where} must default to {expected!r}"
    if expected is not None:
        assert type_accepts(spec.get("type", "str"), expected), (
            f"argument_specs: {where} is type {spec.get('type', 'str')}, the worker's default is {expected!r}"
        )


def test_the_farmhand_role_renders_the_workers_defaults():
    """Nothing set but the role's defaults: the rendered config is exactly the worker's DEFAULTS."""
    defaults = role_defaults("farmhand")
    variables = {var: resolve("farmhand", var) for var in config_key_of() if var in defaults}
    assert render_config(**variables) == DEFAULTS


# --- every role: defaults/main.yml == meta/argument_specs.yml ------------------

@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_declared_with_the_same_value(role):
    options = role_options(role)
    problems = []
    for name, value in role_defaults(role).items():
        spec = options.get(name)
        if spec is None:
            problems.append(f"{name}: in defaults/main.yml, not declared in argument_specs")
            continue
        if spec.get("required"):
            problems.append(f"{name}: required in argument_specs, yet defaulted in defaults/main.yml")
        if "default" in spec:
            if spec["default"] != value:
                problems.append(f"{name}: defaults/main.yml says {value!r}, argument_specs {spec['default']!r}")
        elif not is_templated(value):
            # A plain value belongs in both (ansible-doc shows it); a templated one is described in words.
            problems.append(f"{name}: defaults/main.yml says {value!r}, argument_specs gives no default")
        if not is_templated(value) and not type_accepts(spec.get("type", "str"), value):
            problems.append(f"{name}: {value!r} is not of its declared type {spec.get('type', 'str')}")
    assert not problems, f"{role}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_every_declared_default_is_set(role):
    defaults = role_defaults(role)
    problems = [
        f"{name}: argument_specs default {spec['default']!r}, "
        + (f"defaults/main.yml {defaults[name]!r}" if name in defaults else "missing from defaults/main.yml")
        for name, spec in role_options(role).items()
        if "default" in spec and (name not in defaults or defaults[name] != spec["default"])
    ]
    assert not problems, f"{role}:\n  " + "\n  ".join(problems)


# --- every role: templates through farmhand_templates_root, no other role's variables

def role_yaml_strings(role: str):
    """(file, string) for every string (keys and values) of the role's defaults, vars, tasks and handlers."""
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(key)
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, str):
            yield node

    for sub in ("defaults", "vars", "tasks", "handlers"):
        for path in sorted((ROLES_DIR / role / sub).glob("*.yml")):
            for text in walk(yaml.safe_load(path.read_text())):
                yield path.relative_to(ROLES_DIR / role), text


def templates_rendered_by(role: str) -> list[str]:
    pattern = re.compile(r"\{\{\s*" + TEMPLATES_ROOT_VAR + r"\s*\}\}/([\w.-]+)")
    return sorted({m for _, text in role_yaml_strings(role) for m in pattern.findall(text)})


@pytest.mark.parametrize("role", ROLES)
def test_templates_come_from_the_one_templates_root(role):
    strings = list(role_yaml_strings(role))
    assert not [t for _, t in strings if "role_path" in t and ".." in t], f"{role}: a path climbing out of role_path"
    assert not [t for _, t in strings if re.search(r"\w+_templates_dir\b", t)], f"{role}: a per-role templates dir"
    rendered = templates_rendered_by(role)
    for name in rendered:
        assert (TEMPLATES_DIR / name).is_file(), f"{role} renders templates/{name}, which does not exist"
    if rendered:
        spec = role_options(role).get(TEMPLATES_ROOT_VAR)
        assert spec and spec.get("required") and spec.get("type") == "path", (
            f"{role}: renders from {TEMPLATES_ROOT_VAR} but does not declare it required (type path) in argument_specs"
        )


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reads_another_roles_variables(role):
    others = sorted((r for r in ROLES if r != role), key=len, reverse=True)
    foreign = re.compile(r"\b(?:" + "|".join(map(re.escape, others)) + r")_\w+")
    found = {(str(where), m) for where, text in role_yaml_strings(role) for m in foreign.findall(text)}
    for name in templates_rendered_by(role):
        text = re.sub(r"\{#.*?#\}", "", (TEMPLATES_DIR / name).read_text(), flags=re.S)
        found |= {(f"templates/{name}", m) for m in foreign.findall(text)}
    found = {(where, m) for where, m in found if m != TEMPLATES_ROOT_VAR}
    assert not found, f"{role} reads other roles' variables (pass them as its own parameters): {sorted(found)}"
