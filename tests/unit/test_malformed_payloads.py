"""Malformed task payloads end as exception/invalid-task, naming the field, touching no Docker and no disk.

Each generated payload starts from a valid minimal task and is broken by one or
more *breakers*; a breaker knows the key it touches and the field path the
worker's message must name. Every value a breaker writes is invalid by
construction (a wrong type, a string that fails its pattern at the first
character, a number out of range...), so no example is accidentally valid.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable
from unittest import mock

import docker
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from farmhand.config import WorkerConfig, load_config
from farmhand.engine import Engine
from farmhand.task import parse_task
from farmhand.validation import load_schema

VALID: dict[str, Any] = {"image": "farmhand-test/busybox:latest", "max_run_time": 10}

SCHEMA = load_schema("task-v1.json")
TOP = set(SCHEMA["properties"])
RESOURCES = set(SCHEMA["properties"]["resources"]["properties"])
ULIMIT_NAMES = SCHEMA["properties"]["resources"]["properties"]["ulimits"]["propertyNames"]["enum"]
SERVICE = set(SCHEMA["properties"]["services"]["items"]["properties"])
READINESS = set(SCHEMA["properties"]["services"]["items"]["properties"]["readiness"]["properties"])
ARTIFACT = set(SCHEMA["properties"]["artifacts"]["items"]["properties"])
MOUNT = set(SCHEMA["properties"]["mounts"]["items"]["properties"])

GOOD_SERVICE = {"name": "db", "image": "farmhand-test/db:1"}
GOOD_ARTIFACT = {"path": "/out/a.txt", "name": "a.txt"}
GOOD_MOUNT = {"source": "/srv/data", "target": "/data"}


@dataclass(frozen=True)
class Breaker:
    key: str  # the top-level key it touches (two breakers of one payload never share one)
    path: str  # what the worker's message must contain
    apply: Callable[[dict[str, Any]], None]
    schema_level: bool = True  # False: a cross-field rule, reported only when the schema is satisfied

    def __repr__(self) -> str:  # readable falsifying examples
        return f"Breaker({self.key!r}, {self.path!r})"


# -- values of the wrong kind ------------------------------------------------------------

small_text = st.text(max_size=12)
ints = st.integers(min_value=-(10**12), max_value=10**12)
fractional = st.builds(lambda i, f: i + f, st.integers(-(10**6), 10**6), st.sampled_from([0.5, 0.25, 0.125, -0.5]))
scalars_not_str = st.one_of(ints, fractional, st.booleans(), st.none())
containers = st.one_of(st.lists(ints, max_size=3), st.dictionaries(small_text, ints, max_size=2))

not_string = st.one_of(scalars_not_str, containers)
not_integer = st.one_of(small_text, fractional, st.booleans(), st.none(), containers)
not_number = st.one_of(small_text, st.booleans(), st.none(), containers)
not_bool = st.one_of(ints, fractional, small_text, st.none(), containers)
not_object = st.one_of(scalars_not_str, small_text, st.lists(ints, max_size=3))
not_array = st.one_of(scalars_not_str, small_text, st.dictionaries(small_text, ints, max_size=2))
non_positive = st.integers(max_value=0)


def starts_badly(*firsts: str) -> st.SearchStrategy[str]:
    """Strings whose first character already breaks a ^[...] pattern (or the empty string)."""
    return st.one_of(st.just(""), st.builds(lambda f, rest: f + rest, st.sampled_from(firsts), small_text))


not_abs_path = st.one_of(st.just(""), st.builds(lambda f, r: f + r, st.sampled_from(["a", ".", "~", " ", "\\"]), small_text))
bad_size = st.one_of(
    st.integers(max_value=0),
    fractional,
    st.booleans(),
    st.none(),
    containers,
    st.just("12x"),
    st.just("12mb"),
    starts_badly("-", "m", " ", "x"),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6), st.sampled_from(["kb", "t", "Gi", " m", "e3"])),
)
bad_argv = st.one_of(
    st.just(""),
    st.just([]),
    ints,
    st.booleans(),
    st.none(),
    st.dictionaries(small_text, small_text, max_size=2),
    st.builds(lambda a, x, b: a + [x] + b, st.lists(small_text, max_size=2), scalars_not_str, st.lists(small_text, max_size=2)),
)


def not_in(allowed: set[str] | list[str]) -> st.SearchStrategy[str]:
    return st.text(max_size=15).filter(lambda s: s not in allowed)


def setter(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        doc[key] = value

    return apply


def deleter(key: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        doc.pop(key, None)

    return apply


def set_breaker(key: str, values: st.SearchStrategy[Any], path: str | None = None) -> st.SearchStrategy[Breaker]:
    return values.map(lambda v: Breaker(key, path or f"task.{key}", setter(key, v)))


def nested(key: str, make: st.SearchStrategy[tuple[Any, str]]) -> st.SearchStrategy[Breaker]:
    """``make`` draws (value for ``key``, the path it breaks)."""
    return make.map(lambda vp: Breaker(key, vp[1], setter(key, vp[0])))


# -- nested breakers ---------------------------------------------------------------------


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def _without(base: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != key}


resources_breakers = st.one_of(
    not_object.map(lambda v: (v, "task.resources")),
    not_in(RESOURCES).map(lambda k: ({k: 1}, f"task.resources.{k}: unknown field")),
    st.builds(lambda f, v: ({f: v}, f"task.resources.{f}"), st.sampled_from(["memory", "shm_size"]), bad_size),
    st.one_of(not_number, st.floats(max_value=0, allow_nan=False), st.floats(min_value=1024, exclude_min=True, allow_nan=False), non_positive).map(
        lambda v: ({"cpus": v}, "task.resources.cpus")
    ),
    st.one_of(not_integer, non_positive).map(lambda v: ({"pids": v}, "task.resources.pids")),
    not_object.map(lambda v: ({"ulimits": v}, "task.resources.ulimits")),
    not_in(ULIMIT_NAMES).map(lambda n: ({"ulimits": {n: 10}}, "task.resources.ulimits")),
    st.builds(
        lambda n, v: ({"ulimits": {n: v}}, f"task.resources.ulimits.{n}"),
        st.sampled_from(ULIMIT_NAMES),
        st.one_of(
            st.integers(max_value=-2),
            small_text,
            fractional,
            st.none(),
            st.just({"soft": 1}),
            st.just({"hard": 1}),
            st.just({"soft": -2, "hard": 5}),
            st.just({"soft": 1, "hard": 2, "max": 3}),
            st.builds(lambda s: {"soft": s, "hard": 1}, not_integer),
        ),
    ),
)

readiness_breakers = st.one_of(
    not_object.map(lambda v: (v, "task.services[0].readiness")),
    st.just(({}, "task.services[0].readiness.command: required field is missing")),
    bad_argv.map(lambda v: ({"command": v}, "task.services[0].readiness.command")),
    st.builds(
        lambda f, v: ({"command": "true", f: v}, f"task.services[0].readiness.{f}"),
        st.sampled_from(["timeout", "interval"]),
        st.one_of(not_number, st.floats(max_value=0, allow_nan=False), non_positive),
    ),
    not_in(READINESS).map(lambda k: ({"command": "true", k: 1}, f"task.services[0].readiness.{k}: unknown field")),
)


def _service_list(entry: dict[str, Any], before: int) -> list[dict[str, Any]]:
    others = [{"name": f"ok{i}", "image": "farmhand-test/x"} for i in range(before)]
    return [*others, entry]


service_entry_breakers = st.one_of(
    not_object.map(lambda v: (v, "")),
    st.sampled_from(["name", "image"]).map(lambda f: (_without(GOOD_SERVICE, f), f".{f}: required field is missing")),
    st.one_of(not_string, starts_badly("-", "A", "Z", "_", " ")).map(lambda v: (_with(GOOD_SERVICE, name=v), ".name")),
    st.one_of(not_string, starts_badly("-", " ", ".", ":")).map(lambda v: (_with(GOOD_SERVICE, image=v), ".image")),
    not_in(["always", "if-not-present", "never"]).map(lambda v: (_with(GOOD_SERVICE, pull=v), ".pull")),
    st.builds(lambda f, v: (_with(GOOD_SERVICE, **{f: v}), f".{f}"), st.sampled_from(["command", "entrypoint"]), bad_argv),
    not_object.map(lambda v: (_with(GOOD_SERVICE, env=v), ".env")),
    starts_badly("1", "-", " ").map(lambda k: (_with(GOOD_SERVICE, env={k: "v"}), ".env")),
    not_in(SERVICE).map(lambda k: (_with(GOOD_SERVICE, **{k: 1}), f".{k}: unknown field")),
)

services_breakers = st.one_of(
    not_array.map(lambda v: (v, "task.services")),
    st.builds(
        lambda eb, before: (_service_list(eb[0], before), f"task.services[{before}]{eb[1]}"),
        service_entry_breakers,
        st.integers(0, 2),
    ),
    readiness_breakers.map(lambda vp: ([_with(GOOD_SERVICE, readiness=vp[0])], vp[1])),
)

artifact_entry_breakers = st.one_of(
    not_object.map(lambda v: (v, "")),
    st.sampled_from(["path", "name"]).map(lambda f: (_without(GOOD_ARTIFACT, f), f".{f}: required field is missing")),
    st.one_of(not_string, not_abs_path).map(lambda v: (_with(GOOD_ARTIFACT, path=v), ".path")),
    st.one_of(
        not_string,
        st.just(".."),
        st.just("."),
        st.just(""),
        starts_badly(".", "-", "_", "/"),
        st.builds(lambda a, b: a + "/" + b, st.sampled_from(["a", "out", "x1"]), small_text),
        st.builds(lambda a: a + "/..", st.sampled_from(["a", "out"])),
    ).map(lambda v: (_with(GOOD_ARTIFACT, name=v), ".name")),
    not_in(["file", "directory"]).map(lambda v: (_with(GOOD_ARTIFACT, type=v), ".type")),
    not_bool.map(lambda v: (_with(GOOD_ARTIFACT, optional=v), ".optional")),
    not_in(ARTIFACT).map(lambda k: (_with(GOOD_ARTIFACT, **{k: 1}), f".{k}: unknown field")),
)

mount_entry_breakers = st.one_of(
    not_object.map(lambda v: (v, "")),
    st.sampled_from(["source", "target"]).map(lambda f: (_without(GOOD_MOUNT, f), f".{f}: required field is missing")),
    st.one_of(not_string, not_abs_path).map(lambda v: (_with(GOOD_MOUNT, source=v), ".source")),
    st.one_of(not_string, not_abs_path).map(lambda v: (_with(GOOD_MOUNT, target=v), ".target")),
    not_bool.map(lambda v: (_with(GOOD_MOUNT, read_only=v), ".read_only")),
    not_in(MOUNT).map(lambda k: (_with(GOOD_MOUNT, **{k: 1}), f".{k}: unknown field")),
)


def list_field(key: str, good: dict[str, Any], entries: st.SearchStrategy[tuple[Any, str]]) -> st.SearchStrategy[Breaker]:
    def build(eb: tuple[Any, str], before: int) -> tuple[Any, str]:
        others = [_with(good, name=f"ok{i}") if "name" in good else good for i in range(before)]
        return [*others, eb[0]], f"task.{key}[{before}]{eb[1]}"

    return nested(key, st.one_of(not_array.map(lambda v: (v, f"task.{key}")), st.builds(build, entries, st.integers(0, 2))))


# -- all schema-level breakers -------------------------------------------------------------

schema_breakers: st.SearchStrategy[Breaker] = st.one_of(
    # required fields
    st.sampled_from(["image", "max_run_time"]).map(lambda k: Breaker(k, f"task.{k}: required field is missing", deleter(k))),
    # unknown top-level keys (drawn from st.text, never a schema property)
    not_in(TOP).map(lambda k: Breaker(k, f"task.{k}: unknown field", setter(k, "x"))),
    set_breaker("image", st.one_of(not_string, starts_badly("-", ".", "/", " ", ":", "@"), st.just("a" * 513))),
    set_breaker("max_run_time", st.one_of(not_integer, non_positive)),
    set_breaker("idle_timeout", st.one_of(not_integer, non_positive)),
    set_breaker("pull", st.one_of(not_in(["always", "if-not-present", "never"]), not_string)),
    set_breaker("network", st.one_of(not_in(["bridge", "none"]), not_string)),
    set_breaker("command", bad_argv),
    set_breaker("entrypoint", bad_argv),
    set_breaker("env", not_object),
    nested("env", starts_badly("1", "-", " ", "$").map(lambda k: ({k: "v"}, "task.env"))),
    nested("env", st.builds(lambda k, v: ({k: v}, f"task.env.{k}"), st.sampled_from(["A", "PATH", "_x"]), not_string)),
    set_breaker("secret_env", not_array),
    nested("secret_env", starts_badly("1", "-", " ").map(lambda n: ([n], "task.secret_env[0]"))),
    set_breaker("secret_env", st.just(["A", "A"])),
    set_breaker("workdir", st.one_of(not_string, not_abs_path)),
    set_breaker("user", st.one_of(not_string, starts_badly(":", "-", ".", " "))),
    nested("resources", resources_breakers),
    nested("services", services_breakers),
    set_breaker("caches", not_object),
    nested("caches", starts_badly("-", "_", ".", " ").map(lambda k: ({k: "/cache"}, "task.caches"))),
    nested("caches", st.builds(lambda v: ({"pip": v}, "task.caches.pip"), st.one_of(not_string, not_abs_path))),
    list_field("artifacts", GOOD_ARTIFACT, artifact_entry_breakers),
    set_breaker("retry_on_exit_codes", not_array),
    nested(
        "retry_on_exit_codes",
        st.one_of(st.integers(max_value=0), st.integers(min_value=256), not_integer).map(lambda c: ([c], "task.retry_on_exit_codes[0]")),
    ),
    set_breaker("retry_on_exit_codes", st.integers(1, 255).map(lambda c: [c, c])),
    set_breaker("upload", st.one_of(not_string, starts_badly("/", "1", "A", " ", ":"))),
    set_breaker("labels", not_object),
    nested("labels", st.builds(lambda v: ({"team": v}, "task.labels.team"), not_string)),
    set_breaker("privileged", not_bool),
    set_breaker("cap_add", not_array),
    nested("cap_add", starts_badly("a", "1", "-", " ").map(lambda c: ([c], "task.cap_add[0]"))),
    list_field("mounts", GOOD_MOUNT, mount_entry_breakers),
    set_breaker("devices", not_array),
    nested("devices", st.one_of(not_string, starts_badly("/tmp/", "dev/", "/de", "x")).map(lambda d: ([d], "task.devices[0]"))),
    set_breaker("version", st.one_of(ints.filter(lambda n: n != 1), small_text, st.none(), containers)),
    set_breaker("task_id", st.one_of(not_string, starts_badly("-", ".", "_", "/", " "), st.just("a" * 129), st.just("a/b"))),
)

# -- cross-field rules: only reported once the schema is satisfied, so used alone ------------------

semantic_breakers: st.SearchStrategy[Breaker] = st.one_of(
    st.sampled_from(["TOKEN", "KEY", "_X"]).map(
        lambda n: Breaker("secret_env", "task.secret_env[0]", lambda d: d.update(env={"OTHER": "1"}, secret_env=[n]), False)
    ),
    st.integers(0, 2).map(
        lambda gap: Breaker(
            "artifacts",
            f"task.artifacts[{gap + 1}].name",
            setter("artifacts", [GOOD_ARTIFACT, *[{"path": f"/o{i}", "name": f"o{i}"} for i in range(gap)], {"path": "/b", "name": "a.txt"}]),
            False,
        )
    ),
    st.just(Breaker("services", "task.services[1].name", setter("services", [GOOD_SERVICE, _with(GOOD_SERVICE, image="farmhand-test/y")]), False)),
    st.just(Breaker("services", "task.services", lambda d: d.update(network="none", services=[GOOD_SERVICE]), False)),
    st.just(Breaker("caches", "task.caches.b", setter("caches", {"a": "/cache", "b": "/cache"}), False)),
    st.builds(
        lambda k, ws: Breaker(k, f"task.{k}: is empty once split", setter(k, ws), False),
        st.sampled_from(["command", "entrypoint"]),
        st.text(alphabet=" \t\n", min_size=1, max_size=5),
    ),
    st.builds(
        lambda k, q, rest: Breaker(k, f"task.{k}: cannot be split", setter(k, f"echo {q}{rest}"), False),
        st.sampled_from(["command", "entrypoint"]),
        st.sampled_from(["'", '"']),
        st.text(alphabet="abc xyz$", max_size=10),
    ),
)

non_mappings = st.one_of(
    st.lists(st.one_of(ints, small_text), max_size=4),
    st.integers(),
    st.text(max_size=30),
    st.none(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.just([VALID]),
)


@st.composite
def malformed(draw: st.DrawFn) -> tuple[Any, list[str]]:
    kind = draw(st.sampled_from(["schema", "schema", "schema", "semantic", "non-mapping"]))
    if kind == "non-mapping":
        return draw(non_mappings), ["task:"]
    breakers = (
        [draw(semantic_breakers)]
        if kind == "semantic"
        else draw(st.lists(schema_breakers, min_size=1, max_size=4, unique_by=lambda b: b.key))
    )
    doc = copy.deepcopy(VALID)
    for b in breakers:
        b.apply(doc)
    return doc, [b.path for b in breakers]


# -- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> WorkerConfig:
    base = tmp_path_factory.mktemp("malformed")
    path = base / "config.yml"
    path.write_text(yaml.safe_dump({"images": {"allowed": ["farmhand-test/*"]}}))
    work = base / "work"
    work.mkdir()
    return load_config(path, environ={"WORKING_DIR": str(work)})


def test_valid_base_task_is_valid(config: WorkerConfig) -> None:
    # the starting point must be valid, or "invalid by construction" would prove nothing
    parse_task(copy.deepcopy(VALID))
    parse_task({**VALID, "services": [GOOD_SERVICE], "artifacts": [GOOD_ARTIFACT], "mounts": [GOOD_MOUNT]})
    assert config.working_dir.is_dir() and list(config.working_dir.iterdir()) == []


@settings(max_examples=200, deadline=None)
@given(malformed())
def test_malformed_payload_is_an_invalid_task_and_touches_nothing(config: WorkerConfig, case: tuple[Any, list[str]]) -> None:
    payload, paths = case
    before = copy.deepcopy(payload)
    client = mock.create_autospec(docker.DockerClient, instance=True)

    result = Engine(config, client).run(payload)

    assert result.state == "exception", result.message
    assert result.reason == "invalid-task", result.message
    for path in paths:
        assert path in (result.message or ""), (path, result.message)
    assert client.mock_calls == []  # no container, network, volume or image was ever asked for
    assert list(config.working_dir.iterdir()) == []  # no workspace was created
    assert not config.tasks_dir.exists()
    assert result.workspace is None
    assert result.stages["prepare"]["outcome"] == "error"
    assert "cleanup" not in result.stages and "run" not in result.stages
    assert payload == before  # the payload itself is left as it was
    doc = result.to_dict()
    assert doc["state"] == "exception" and doc["reason"] == "invalid-task"
