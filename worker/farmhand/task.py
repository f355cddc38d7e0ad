"""The task contract: parse a task document into a typed, checked ``Task``.

Validation happens in two layers so that every message names its field: the
JSON Schema (shapes and types), then the cross-field rules a schema cannot say
(a secret must be one of the env names, names must be unique...).
"""

from __future__ import annotations

import json
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from farmhand.config import Resources
from farmhand.errors import InvalidDocument
from farmhand.validation import errors_for

SCHEMA = "task-v1.json"


@dataclass(frozen=True)
class Readiness:
    command: list[str]
    timeout: float = 60.0
    interval: float = 0.5


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
    type: str = "file"
    optional: bool = False


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = True


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
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def secret_values(self) -> list[str]:
        return [self.env[name] for name in self.secret_env if self.env.get(name)]

    def redacted(self) -> dict[str, Any]:
        """The task document as it may be stored: secret values replaced."""
        doc = json.loads(json.dumps(self.raw))
        doc["task_id"] = self.task_id
        for name in self.secret_env:
            if name in doc.get("env", {}):
                doc["env"][name] = "***"
        return doc


def _argv(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return list(value)


def read_task_file(path: str | Path) -> Any:
    """Load a task file as YAML (JSON is YAML too); parse errors name the line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidDocument(f"task file {p}", [f"cannot be read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise InvalidDocument(f"task file {p}", [f"is not UTF-8 text: {exc.reason}"]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidDocument(f"task file {p}", [f"{where}not valid YAML or JSON: {problem}"]) from exc


def _semantic_errors(doc: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    env = doc.get("env", {})
    for i, name in enumerate(doc.get("secret_env", [])):
        if name not in env:
            errors.append(f"task.secret_env[{i}]: {name!r} is not a variable in task.env")
    seen: dict[str, int] = {}
    for i, art in enumerate(doc.get("artifacts", [])):
        if art["name"] in seen:
            errors.append(f"task.artifacts[{i}].name: {art['name']!r} is already used by task.artifacts[{seen[art['name']]}]")
        seen.setdefault(art["name"], i)
    names: dict[str, int] = {}
    for i, svc in enumerate(doc.get("services", [])):
        if svc["name"] in names:
            errors.append(f"task.services[{i}].name: {svc['name']!r} is already used by task.services[{names[svc['name']]}]")
        names.setdefault(svc["name"], i)
    if doc.get("services") and doc.get("network") == "none":
        errors.append("task.services: services need network 'bridge', but task.network is 'none'")
    targets: dict[str, str] = {}
    for name, target in doc.get("caches", {}).items():
        if target in targets:
            errors.append(f"task.caches.{name}: mount path {target!r} is already used by cache {targets[target]!r}")
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
    errors = errors_for(SCHEMA, doc, "task")
    if errors:
        raise InvalidDocument("task", errors)
    errors = _semantic_errors(doc)
    if errors:
        raise InvalidDocument("task", errors)

    requested = doc.get("resources", {})
    services = tuple(
        Service(
            name=s["name"],
            image=s["image"],
            pull=s.get("pull", doc.get("pull", "if-not-present")),
            command=_argv(s.get("command")),
            entrypoint=_argv(s.get("entrypoint")),
            env=dict(s.get("env", {})),
            readiness=Readiness(
                command=_argv(s["readiness"]["command"]) or [],
                timeout=float(s["readiness"].get("timeout", 60)),
                interval=float(s["readiness"].get("interval", 0.5)),
            )
            if "readiness" in s
            else None,
        )
        for s in doc.get("services", [])
    )
    return Task(
        task_id=doc.get("task_id") or uuid.uuid4().hex,
        image=doc["image"],
        pull=doc.get("pull", "if-not-present"),
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
        network=doc.get("network", "bridge"),
        services=services,
        caches=dict(doc.get("caches", {})),
        artifacts=tuple(
            ArtifactSpec(path=a["path"], name=a["name"], type=a.get("type", "file"), optional=bool(a.get("optional", False)))
            for a in doc.get("artifacts", [])
        ),
        retry_on_exit_codes=frozenset(doc.get("retry_on_exit_codes", [])),
        upload=doc.get("upload"),
        labels=dict(doc.get("labels", {})),
        privileged=bool(doc.get("privileged", False)),
        cap_add=tuple(doc.get("cap_add", [])),
        mounts=tuple(Mount(m["source"], m["target"], bool(m.get("read_only", True))) for m in doc.get("mounts", [])),
        devices=tuple(doc.get("devices", [])),
        raw=dict(doc),
    )
