"""The task contract: parse a task document into a typed, checked ``Task``.

Validation happens in two layers so that every message names its field: the
JSON Schema (shapes and types), then the cross-field rules a schema cannot say
(a secret must be one of the env names, names must be unique...).

Documents may be hostile: files are read by ``farmhand.documents`` (bounded
size and depth, no YAML aliases, no duplicate or non-string keys), and every
check is bounded work whose message quotes values by a short prefix and never
shows a secret.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from farmhand.resources import Resources
from farmhand.documents import DocumentError, read_document
from farmhand.errors import InvalidDocument
from farmhand.validation import bounded, errors_for, load_schema, mask_secrets, quote, secrets_of

SCHEMA = "task-v1.json"
#: farmhand's own names in a task's warehouse folder: the log (and its compressed forms), checksum sidecars.
LOG_NAME = "task.log"
SIDECAR = ".sha256"


@dataclass(frozen=True)
class Readiness:
    command: list[str]
    timeout: float
    interval: float


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    pull: str
    command: list[str] | None
    entrypoint: list[str] | None
    env: dict[str, str]
    readiness: Readiness | None


@dataclass(frozen=True)
class ArtifactSpec:
    path: str
    name: str
    type: str
    optional: bool


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class Task:
    task_id: str
    image: str
    pull: str
    command: list[str] | None
    entrypoint: list[str] | None
    env: dict[str, str]
    secret_env: tuple[str, ...]
    workdir: str | None
    user: str | None
    max_run_time: int
    idle_timeout: int | None
    resources: Resources
    resources_requested: frozenset[str]
    network: str
    services: tuple[Service, ...]
    caches: dict[str, str]
    artifacts: tuple[ArtifactSpec, ...]
    retry_on_exit_codes: frozenset[int]
    upload: str | None
    labels: dict[str, str]
    privileged: bool
    cap_add: tuple[str, ...]
    mounts: tuple[Mount, ...]
    devices: tuple[str, ...]
    loopback_devices: tuple[str, ...] = ()  # the kinds asked for, in farmhand.devices.KINDS order
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def secret_values(self) -> list[str]:
        return [self.env[name] for name in self.secret_env if self.env.get(name)]

    def redacted(self) -> dict[str, Any]:
        """The task document as it may be stored: every occurrence of every secret value replaced.

        Not only task.env's secret names: a secret's value given again (a
        service's env, an argument, a label) is masked wherever it is, and a
        service's variable of a secret name is masked whatever its value.
        """
        values = self.secret_values + [svc.env[name] for svc in self.services for name in self.secret_env if svc.env.get(name)]
        doc = json.loads(json.dumps(mask_secrets(self.raw, values)))
        doc["task_id"] = self.task_id
        envs = [doc.get("env", {})] + [svc.get("env", {}) for svc in doc.get("services", [])]
        for env in envs:
            for name in self.secret_env:
                if name in env:
                    env[name] = "***"
        return doc


def _argv(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return list(value)


def read_task_file(path: str | Path) -> Any:
    """Load a task file: JSON when it is JSON, else YAML, read by the hostile-document rules.

    Problems of the text as a whole (unreadable, too big, not YAML, an alias,
    too deep) start with the file's name and give the line; problems of one
    field (a duplicate or non-string key) start with the field's path.
    """
    try:
        return read_document(path, root="task")
    except DocumentError as exc:
        raise InvalidDocument(exc.what, exc.errors) from None


def _semantic_errors(doc: Mapping[str, Any], secrets: tuple[str, ...] = ()) -> list[str]:
    errors: list[str] = []
    env = doc.get("env", {})
    for i, name in enumerate(doc.get("secret_env", [])):
        if name not in env:
            errors.append(f"task.secret_env[{i}]: {quote(name)} is not a variable in task.env")
    seen: dict[str, int] = {}
    for i, art in enumerate(doc.get("artifacts", [])):
        if art["name"] in seen:
            errors.append(f"task.artifacts[{i}].name: {quote(art['name'], secrets)} is already used by task.artifacts[{seen[art['name']]}]")
        seen.setdefault(art["name"], i)
    for i, art in enumerate(doc.get("artifacts", [])):
        name = art["name"]
        if name == LOG_NAME or name.startswith(LOG_NAME + "."):
            errors.append(f"task.artifacts[{i}].name: {quote(name, secrets)} is reserved for the task's log")
        elif name.endswith(SIDECAR) and name.removesuffix(SIDECAR) in seen:
            errors.append(f"task.artifacts[{i}].name: {quote(name, secrets)} is reserved for the checksum of task.artifacts[{seen[name.removesuffix(SIDECAR)]}]")
    names: dict[str, int] = {}
    for i, svc in enumerate(doc.get("services", [])):
        if svc["name"] in names:
            errors.append(f"task.services[{i}].name: {quote(svc['name'], secrets)} is already used by task.services[{names[svc['name']]}]")
        names.setdefault(svc["name"], i)
    if doc.get("services") and doc.get("network") == "none":
        errors.append("task.services: services need network 'bridge', but task.network is 'none'")
    targets: dict[str, str] = {}
    for name, target in doc.get("caches", {}).items():
        if target in targets:
            errors.append(f"task.caches.{name}: mount path {quote(target, secrets)} is already used by cache {quote(targets[target])}")
        targets.setdefault(target, name)
    commands = [("task.command", doc.get("command")), ("task.entrypoint", doc.get("entrypoint"))]
    for i, svc in enumerate(doc.get("services", [])):
        commands += [
            (f"task.services[{i}].command", svc.get("command")),
            (f"task.services[{i}].entrypoint", svc.get("entrypoint")),
            (f"task.services[{i}].readiness.command", (svc.get("readiness") or {}).get("command")),
        ]
    for where, value in commands:
        if isinstance(value, str):
            try:
                if not shlex.split(value):
                    errors.append(f"{where}: is empty once split into arguments")
            except ValueError as exc:
                errors.append(f"{where}: cannot be split into arguments: {exc}")
    for name, value in doc.get("resources", {}).get("ulimits", {}).items():
        if isinstance(value, dict) and value["hard"] != -1 and (value["soft"] == -1 or value["soft"] > value["hard"]):
            errors.append(f"task.resources.ulimits.{name}: soft limit {value['soft']} is above the hard limit {value['hard']}")
    return errors


def _integer(value: Any) -> Any:
    """JSON's 5e0 or 64.0 where the schema says integer (it accepts integral numbers) as the int it means."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _with_integers(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a valid ``doc`` whose integer fields hold ints, not integral floats; ``doc`` is left as it is."""
    out = dict(doc)
    for key in ("version", "max_run_time", "idle_timeout"):
        if key in out:
            out[key] = _integer(out[key])
    if "retry_on_exit_codes" in out:
        out["retry_on_exit_codes"] = [_integer(c) for c in out["retry_on_exit_codes"]]
    if "resources" in out:
        res = dict(out["resources"])
        for key in ("pids", "memory", "shm_size"):
            if key in res:
                res[key] = _integer(res[key])
        if "ulimits" in res:
            res["ulimits"] = {
                name: {k: _integer(v) for k, v in limit.items()} if isinstance(limit, dict) else _integer(limit)
                for name, limit in res["ulimits"].items()
            }
        out["resources"] = res
    return out


def task_id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a task id, or None: an id names directories, labels and warehouse folders,
    so one from a driver (a command line, a Celery message) is checked before anything uses it."""
    pattern = load_schema(SCHEMA)["properties"]["task_id"]["pattern"]
    if isinstance(value, str) and re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None:
        return None
    return f"{quote(value)} is not a task id: 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"


def _default(*path: str) -> Any:
    """A field's default as the contract documents it (task-v1.json's ``default``), the one place it is written.

    ``path`` names properties, with ``[]`` for an array's items.
    """
    node = load_schema(SCHEMA)
    for key in path:
        node = node["items"] if key == "[]" else node["properties"][key]
    return node["default"]


def parse_task(doc: Any, *, task_id: str | None = None) -> Task:
    """Check ``doc`` against the contract and return the typed task.

    Raises ``InvalidDocument`` listing every problem, each starting with the
    field's path (``task.resources.memory: ...``).
    """
    if not isinstance(doc, dict):
        raise InvalidDocument("task", [f"task: must be a mapping of fields, got {type(doc).__name__}"])
    if task_id is not None:
        # An id chosen by the driver names directories too: it obeys the same contract.
        doc = {**doc, "task_id": task_id}
    secrets = secrets_of(doc)
    errors = errors_for(SCHEMA, doc, "task", secrets)
    if errors:
        raise InvalidDocument("task", errors)
    errors = _semantic_errors(doc, secrets.values)
    if errors:
        raise InvalidDocument("task", bounded(errors, "task"))
    doc = _with_integers(doc)

    requested = doc.get("resources", {})
    services = tuple(
        Service(
            name=s["name"],
            image=s["image"],
            pull=s.get("pull", doc.get("pull", _default("pull"))),
            command=_argv(s.get("command")),
            entrypoint=_argv(s.get("entrypoint")),
            env=dict(s.get("env", {})),
            readiness=Readiness(
                command=_argv(s["readiness"]["command"]) or [],
                timeout=float(s["readiness"].get("timeout", _default("services", "[]", "readiness", "timeout"))),
                interval=float(s["readiness"].get("interval", _default("services", "[]", "readiness", "interval"))),
            )
            if "readiness" in s
            else None,
        )
        for s in doc.get("services", [])
    )
    return Task(
        task_id=doc.get("task_id") or uuid.uuid4().hex,
        image=doc["image"],
        pull=doc.get("pull", _default("pull")),
        command=_argv(doc.get("command")),
        entrypoint=_argv(doc.get("entrypoint")),
        env=dict(doc.get("env", {})),
        secret_env=tuple(doc.get("secret_env", [])),
        workdir=doc.get("workdir"),
        user=doc.get("user"),
        max_run_time=int(doc["max_run_time"]),
        idle_timeout=doc.get("idle_timeout"),
        resources=Resources.from_doc(requested),
        resources_requested=frozenset(requested),
        network=doc.get("network", _default("network")),
        services=services,
        caches=dict(doc.get("caches", {})),
        artifacts=tuple(
            ArtifactSpec(
                path=a["path"],
                name=a["name"],
                type=a.get("type", _default("artifacts", "[]", "type")),
                optional=bool(a.get("optional", _default("artifacts", "[]", "optional"))),
            )
            for a in doc.get("artifacts", [])
        ),
        retry_on_exit_codes=frozenset(doc.get("retry_on_exit_codes", [])),
        upload=doc.get("upload"),
        labels=dict(doc.get("labels", {})),
        privileged=bool(doc.get("privileged", _default("privileged"))),
        cap_add=tuple(doc.get("cap_add", [])),
        mounts=tuple(Mount(m["source"], m["target"], bool(m.get("read_only", _default("mounts", "[]", "read_only")))) for m in doc.get("mounts", [])),
        devices=tuple(doc.get("devices", [])),
        loopback_devices=tuple(k for k in ("video", "audio") if doc.get("loopback_devices", {}).get(k, _default("loopback_devices", k))),
        raw=dict(doc),
    )
