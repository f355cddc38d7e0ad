"""The task contract: parse_task / read_task_file / Task.redacted."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from farmhand.errors import InvalidDocument
from farmhand.task import ArtifactSpec, Mount, Readiness, Service, parse_task, read_task_file
from farmhand.validation import load_schema

MINIMAL: dict[str, Any] = {"image": "farmhand-test/busybox:latest", "max_run_time": 10}


def full_task() -> dict[str, Any]:
    """A valid task that uses every field the schema defines, once."""
    return {
        "version": 1,
        "task_id": "job-42.a_b",
        "image": "registry.example.org:5000/team/tool:1.2@sha256:abc",
        "pull": "always",
        "command": "sh -c 'echo \"hello world\"; exit 0' extra",
        "entrypoint": ["/bin/entry", "--flag"],
        "env": {"PLAIN": "visible", "TOKEN": "s3cr3t-value", "EMPTY": ""},
        "secret_env": ["TOKEN"],
        "workdir": "/work dir",
        "user": "1000:1000",
        "max_run_time": 3600,
        "idle_timeout": 120,
        "resources": {
            "cpus": 1.5,
            "memory": "512m",
            "pids": 128,
            "shm_size": 1048576,
            "ulimits": {"nofile": 1024, "stack": {"soft": 8192, "hard": -1}},
        },
        "network": "bridge",
        "services": [
            {
                "name": "db",
                "image": "farmhand-test/postgres:16",
                "pull": "never",
                "command": "postgres -c fsync=off",
                "entrypoint": ["docker-entrypoint.sh"],
                "env": {"POSTGRES_PASSWORD": "pw"},
                "readiness": {"command": "pg_isready -h localhost", "timeout": 30, "interval": 0.25},
            }
        ],
        "caches": {"pip-cache": "/root/.cache/pip"},
        "artifacts": [
            {"path": "/out/report", "name": "report", "type": "directory", "optional": True},
        ],
        "retry_on_exit_codes": [75, 111],
        "upload": "file:///srv/warehouse/",
        "labels": {"team": "qa"},
        "privileged": False,
        "cap_add": ["SYS_PTRACE"],
        "mounts": [{"source": "/srv/data", "target": "/data", "read_only": False}],
        "devices": ["/dev/fuse"],
        "loopback_devices": {"video": True, "audio": False},
    }


def test_full_task_uses_every_schema_field() -> None:
    schema = load_schema("task-v1.json")
    assert set(full_task()) == set(schema["properties"])
    assert set(full_task()["resources"]) == set(schema["properties"]["resources"]["properties"])
    svc_props = schema["properties"]["services"]["items"]["properties"]
    assert set(full_task()["services"][0]) == set(svc_props)
    assert set(full_task()["services"][0]["readiness"]) == set(svc_props["readiness"]["properties"])
    assert set(full_task()["artifacts"][0]) == set(schema["properties"]["artifacts"]["items"]["properties"])
    assert set(full_task()["mounts"][0]) == set(schema["properties"]["mounts"]["items"]["properties"])


def test_full_task_parses_to_typed_values() -> None:
    doc = full_task()
    original = copy.deepcopy(doc)
    t = parse_task(doc)
    assert doc == original, "parse_task must not modify its input"
    assert t.task_id == "job-42.a_b"
    assert t.image == "registry.example.org:5000/team/tool:1.2@sha256:abc"
    assert t.pull == "always"
    assert t.command == ["sh", "-c", 'echo "hello world"; exit 0', "extra"]
    assert t.entrypoint == ["/bin/entry", "--flag"]
    assert t.env == {"PLAIN": "visible", "TOKEN": "s3cr3t-value", "EMPTY": ""}
    assert t.secret_env == ("TOKEN",)
    assert t.secret_values == ["s3cr3t-value"]
    assert t.workdir == "/work dir"
    assert t.user == "1000:1000"
    assert t.max_run_time == 3600 and isinstance(t.max_run_time, int)
    assert t.idle_timeout == 120
    r = t.resources
    assert r.cpus == 1.5
    assert r.memory == 512 * 1024 * 1024 == 536870912
    assert r.pids == 128
    assert r.shm_size == 1048576
    assert r.ulimits == {"nofile": (1024, 1024), "stack": (8192, -1)}
    assert t.resources_requested == frozenset({"cpus", "memory", "pids", "shm_size", "ulimits"})
    assert t.network == "bridge"
    assert t.services == (
        Service(
            name="db",
            image="farmhand-test/postgres:16",
            pull="never",
            command=["postgres", "-c", "fsync=off"],
            entrypoint=["docker-entrypoint.sh"],
            env={"POSTGRES_PASSWORD": "pw"},
            readiness=Readiness(command=["pg_isready", "-h", "localhost"], timeout=30.0, interval=0.25),
        ),
    )
    assert t.caches == {"pip-cache": "/root/.cache/pip"}
    assert t.artifacts == (ArtifactSpec(path="/out/report", name="report", type="directory", optional=True),)
    assert t.retry_on_exit_codes == frozenset({75, 111})
    assert t.upload == "file:///srv/warehouse/"
    assert t.labels == {"team": "qa"}
    assert t.privileged is False
    assert t.cap_add == ("SYS_PTRACE",)
    assert t.mounts == (Mount(source="/srv/data", target="/data", read_only=False),)
    assert t.devices == ("/dev/fuse",)
    assert t.loopback_devices == ("video",)


def test_defaults_of_a_minimal_task() -> None:
    doc = {
        **MINIMAL,
        "artifacts": [{"path": "/out/a.txt", "name": "a.txt"}],
        "mounts": [{"source": "/srv/x", "target": "/x"}],
        "services": [{"name": "cache", "image": "farmhand-test/redis", "readiness": {"command": ["true"]}}],
    }
    t = parse_task(doc)
    assert t.pull == "if-not-present"
    assert t.network == "bridge"
    assert t.command is None and t.entrypoint is None
    assert t.env == {} and t.secret_env == () and t.secret_values == []
    assert t.workdir is None and t.user is None and t.idle_timeout is None and t.upload is None
    assert t.privileged is False
    assert t.artifacts == (ArtifactSpec(path="/out/a.txt", name="a.txt", type="file", optional=False),)
    assert t.mounts == (Mount("/srv/x", "/x", read_only=True),)
    svc = t.services[0]
    assert svc.pull == "if-not-present"  # the task's pull policy, itself defaulted
    assert svc.readiness == Readiness(command=["true"], timeout=60.0, interval=0.5)
    assert t.resources_requested == frozenset()
    assert (t.resources.cpus, t.resources.memory, t.resources.pids, t.resources.shm_size) == (None,) * 4
    assert uuid.UUID(hex=t.task_id).hex == t.task_id and uuid.UUID(hex=t.task_id).version == 4  # a generated uuid4, as 32 hex digits
    assert parse_task(MINIMAL).task_id != t.task_id


def test_service_pull_inherits_task_pull() -> None:
    t = parse_task({**MINIMAL, "pull": "never", "services": [{"name": "db", "image": "farmhand-test/db"}]})
    assert t.services[0].pull == "never"


def test_explicit_task_id_argument_wins() -> None:
    assert parse_task({**MINIMAL, "task_id": "from-doc"}, task_id="from-arg").task_id == "from-arg"
    assert parse_task({**MINIMAL, "task_id": "from-doc"}).task_id == "from-doc"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512m", 536870912),
        ("2g", 2 * 1024**3),
        ("64k", 65536),
        ("1024", 1024),
        ("100b", 100),
        ("3M", 3 * 1024**2),
        (4096, 4096),
    ],
)
def test_size_strings_are_parsed_to_bytes(value: Any, expected: int) -> None:
    t = parse_task({**MINIMAL, "resources": {"memory": value, "shm_size": value}})
    assert t.resources.memory == expected
    assert t.resources.shm_size == expected


def test_ulimit_int_means_soft_equals_hard() -> None:
    t = parse_task({**MINIMAL, "resources": {"ulimits": {"nproc": 77, "core": -1}}})
    assert t.resources.ulimits == {"nproc": (77, 77), "core": (-1, -1)}


# -- rejections -------------------------------------------------------------------

Mutator = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Mutator:
    def apply(doc: dict[str, Any]) -> None:
        doc[key] = value

    return apply


def _del(key: str) -> Mutator:
    def apply(doc: dict[str, Any]) -> None:
        del doc[key]

    return apply


REJECTIONS: list[tuple[str, Mutator, str]] = [
    ("missing image", _del("image"), "task.image: required field is missing"),
    ("missing max_run_time", _del("max_run_time"), "task.max_run_time: required field is missing"),
    ("unknown top-level field", _set("foo", 1), "task.foo: unknown field"),
    ("unknown resources field", _set("resources", {"memroy": "1g"}), "task.resources.memroy: unknown field"),
    ("unknown artifact field", _set("artifacts", [{"path": "/a", "name": "a", "mode": 1}]), "task.artifacts[0].mode: unknown field"),
    ("unknown service field", _set("services", [{"name": "db", "image": "x", "ports": [1]}]), "task.services[0].ports: unknown field"),
    ("unknown readiness field", _set("services", [{"name": "db", "image": "x", "readiness": {"command": "true", "retries": 3}}]), "task.services[0].readiness.retries: unknown field"),
    ("unknown mount field", _set("mounts", [{"source": "/a", "target": "/b", "rw": True}]), "task.mounts[0].rw: unknown field"),
    ("image not a string", _set("image", 42), "task.image"),
    ("image bad reference", _set("image", "-bad image"), "task.image"),
    ("max_run_time a string", _set("max_run_time", "10"), "task.max_run_time"),
    ("max_run_time a bool", _set("max_run_time", True), "task.max_run_time"),
    ("max_run_time fractional", _set("max_run_time", 1.5), "task.max_run_time"),
    ("max_run_time zero", _set("max_run_time", 0), "task.max_run_time"),
    ("max_run_time negative", _set("max_run_time", -5), "task.max_run_time"),
    ("idle_timeout zero", _set("idle_timeout", 0), "task.idle_timeout"),
    ("env not a mapping", _set("env", ["A=1"]), "task.env"),
    ("env value not a string", _set("env", {"A": 1}), "task.env.A"),
    ("env bad name", _set("env", {"1A": "x"}), "task.env"),
    ("command an int", _set("command", 7), "task.command"),
    ("command empty list", _set("command", []), "task.command"),
    ("command list of non-strings", _set("command", ["ls", 1]), "task.command"),
    ("command blank string", _set("command", "   "), "task.command: is empty once split"),
    ("command unbalanced quote", _set("command", "echo 'oops"), "task.command: cannot be split"),
    ("entrypoint unbalanced quote", _set("entrypoint", 'sh -c "x'), "task.entrypoint: cannot be split"),
    ("bad pull enum", _set("pull", "sometimes"), "task.pull"),
    ("bad network enum", _set("network", "host"), "task.network"),
    ("bad service pull enum", _set("services", [{"name": "db", "image": "x", "pull": "maybe"}]), "task.services[0].pull"),
    ("resources not a mapping", _set("resources", "big"), "task.resources"),
    ("negative memory", _set("resources", {"memory": -1}), "task.resources.memory"),
    ("zero memory int", _set("resources", {"memory": 0}), "task.resources.memory"),
    ("negative memory string", _set("resources", {"memory": "-5m"}), "task.resources.memory"),
    ("bad memory unit", _set("resources", {"memory": "12x"}), "task.resources.memory"),
    ("memory with two units", _set("resources", {"memory": "12mb"}), "task.resources.memory"),
    ("negative shm_size", _set("resources", {"shm_size": -64}), "task.resources.shm_size"),
    ("bad shm_size", _set("resources", {"shm_size": "lots"}), "task.resources.shm_size"),
    ("cpus zero", _set("resources", {"cpus": 0}), "task.resources.cpus"),
    ("cpus string", _set("resources", {"cpus": "2"}), "task.resources.cpus"),
    ("pids zero", _set("resources", {"pids": 0}), "task.resources.pids"),
    ("unknown ulimit", _set("resources", {"ulimits": {"files": 10}}), "task.resources.ulimits"),
    ("ulimit below -1", _set("resources", {"ulimits": {"nofile": -2}}), "task.resources.ulimits.nofile"),
    ("ulimit missing hard", _set("resources", {"ulimits": {"nofile": {"soft": 1}}}), "task.resources.ulimits.nofile"),
    ("relative artifact path", _set("artifacts", [{"path": "out/a", "name": "a"}]), "task.artifacts[0].path"),
    ("artifact missing name", _set("artifacts", [{"path": "/a"}]), "task.artifacts[0].name: required field is missing"),
    ("artifact name with slash", _set("artifacts", [{"path": "/a", "name": "x/y"}]), "task.artifacts[0].name"),
    ("artifact name dotdot", _set("artifacts", [{"path": "/a", "name": ".."}]), "task.artifacts[0].name"),
    ("artifact name leading dot", _set("artifacts", [{"path": "/a", "name": ".hidden"}]), "task.artifacts[0].name"),
    ("artifact bad type", _set("artifacts", [{"path": "/a", "name": "a", "type": "link"}]), "task.artifacts[0].type"),
    ("artifact optional not bool", _set("artifacts", [{"path": "/a", "name": "a", "optional": "yes"}]), "task.artifacts[0].optional"),
    ("secret not in env", lambda d: d.update(env={"A": "1"}, secret_env=["B"]), "task.secret_env[0]"),
    ("secret without env", _set("secret_env", ["TOKEN"]), "task.secret_env[0]"),
    (
        "duplicate artifact names",
        _set("artifacts", [{"path": "/a", "name": "out"}, {"path": "/b", "name": "x"}, {"path": "/c", "name": "out"}]),
        "task.artifacts[2].name: 'out' is already used by task.artifacts[0]",
    ),
    (
        "duplicate service names",
        _set("services", [{"name": "db", "image": "x"}, {"name": "db", "image": "y"}]),
        "task.services[1].name: 'db' is already used by task.services[0]",
    ),
    (
        "services with network none",
        lambda d: d.update(network="none", services=[{"name": "db", "image": "x"}]),
        "task.services: services need network 'bridge'",
    ),
    ("duplicate cache mount paths", _set("caches", {"a": "/cache", "b": "/cache"}), "task.caches.b"),
    ("bad cache name", _set("caches", {"-a": "/cache"}), "task.caches"),
    ("relative cache path", _set("caches", {"a": "cache"}), "task.caches.a"),
    ("service name uppercase", _set("services", [{"name": "DB", "image": "x"}]), "task.services[0].name"),
    ("service missing image", _set("services", [{"name": "db"}]), "task.services[0].image: required field is missing"),
    ("readiness missing command", _set("services", [{"name": "db", "image": "x", "readiness": {}}]), "task.services[0].readiness.command: required field is missing"),
    ("readiness timeout zero", _set("services", [{"name": "db", "image": "x", "readiness": {"command": "true", "timeout": 0}}]), "task.services[0].readiness.timeout"),
    ("retry code out of range", _set("retry_on_exit_codes", [256]), "task.retry_on_exit_codes[0]"),
    ("retry codes duplicated", _set("retry_on_exit_codes", [3, 3]), "task.retry_on_exit_codes"),
    ("upload not a URI", _set("upload", "/srv/warehouse"), "task.upload"),
    ("labels value not string", _set("labels", {"a": 1}), "task.labels.a"),
    ("privileged not bool", _set("privileged", "true"), "task.privileged"),
    ("cap_add lowercase", _set("cap_add", ["sys_admin"]), "task.cap_add[0]"),
    ("mount relative source", _set("mounts", [{"source": "srv", "target": "/x"}]), "task.mounts[0].source"),
    ("device outside /dev", _set("devices", ["/tmp/dev"]), "task.devices[0]"),
    ("bad version", _set("version", 2), "task.version"),
    ("bad task_id", _set("task_id", "../escape"), "task.task_id"),
    ("relative workdir", _set("workdir", "work"), "task.workdir"),
    ("bad user", _set("user", "a b"), "task.user"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in REJECTIONS], ids=[n for n, _, _ in REJECTIONS])
def test_rejections_name_the_field(mutate: Mutator, expected: str) -> None:
    doc = copy.deepcopy(MINIMAL)
    mutate(doc)
    with pytest.raises(InvalidDocument) as info:
        parse_task(doc)
    err = info.value
    assert err.reason == "invalid-task"
    assert err.state == "exception"
    assert any(line.startswith(expected) for line in err.errors), err.errors
    assert expected in err.message


def test_every_error_is_listed_not_just_the_first() -> None:
    doc = {"image": 1, "pull": "x", "bogus": True}
    with pytest.raises(InvalidDocument) as info:
        parse_task(doc)
    errors = info.value.errors
    for field in ("task.image:", "task.pull:", "task.bogus: unknown field", "task.max_run_time: required field is missing"):
        assert any(e.startswith(field) for e in errors), (field, errors)
    assert errors == sorted(errors)


@pytest.mark.parametrize("doc", [[MINIMAL], 42, "image: x", None, 3.5, True])
def test_non_mapping_document_is_rejected(doc: Any) -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_task(doc)
    assert info.value.errors == [f"task: must be a mapping of fields, got {type(doc).__name__}"]


# -- read_task_file -------------------------------------------------------------------


def test_read_task_file_yaml_error_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "task.yml"
    f.write_text("image: farmhand-test/busybox\nmax_run_time: 10\ncommand: [echo, hi\nlabels: {}\n")
    with pytest.raises(InvalidDocument) as info:
        read_task_file(f)
    msg = info.value.message
    assert str(f) in msg
    assert "line 4" in msg
    assert "not valid YAML or JSON" in msg


def test_read_task_file_error_line_tracks_the_input(tmp_path: Path) -> None:
    for blank_lines in (0, 3, 9):
        f = tmp_path / f"t{blank_lines}.yml"
        f.write_text("\n" * blank_lines + "image: x\nmax_run_time: 10\nenv: {A: 1\n")
        with pytest.raises(InvalidDocument) as info:
            read_task_file(f)
        # the error is reported where the stream ends (just past line 3 of content)
        assert f"line {blank_lines + 4}," in info.value.message


def test_read_task_file_json(tmp_path: Path) -> None:
    f = tmp_path / "task.json"
    doc = {**MINIMAL, "command": ["echo", "hi"], "resources": {"memory": "64m"}}
    f.write_text(json.dumps(doc))
    loaded = read_task_file(f)
    assert loaded == doc
    t = parse_task(loaded)
    assert t.command == ["echo", "hi"] and t.resources.memory == 64 * 1024 * 1024


def test_read_task_file_yaml(tmp_path: Path) -> None:
    f = tmp_path / "task.yml"
    f.write_text("image: farmhand-test/busybox:latest\nmax_run_time: 10\ncommand: echo 'a b'\n")
    assert parse_task(read_task_file(f)).command == ["echo", "a b"]


def test_read_task_file_missing(tmp_path: Path) -> None:
    f = tmp_path / "nope.yml"
    with pytest.raises(InvalidDocument) as info:
        read_task_file(f)
    assert str(f) in info.value.message
    assert "cannot be read" in info.value.message


def test_read_task_file_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "bin.yml"
    f.write_bytes(b"image: \xff\xfe\n")
    with pytest.raises(InvalidDocument) as info:
        read_task_file(f)
    assert "not UTF-8" in info.value.message


# -- redaction -------------------------------------------------------------------------


def test_redacted_masks_secrets_and_keeps_the_rest() -> None:
    doc = {**MINIMAL, "env": {"PLAIN": "visible", "TOKEN": "t0k3n", "KEY": "k3y"}, "secret_env": ["TOKEN", "KEY"]}
    t = parse_task(doc, task_id="given-id")
    red = t.redacted()
    assert red["env"] == {"PLAIN": "visible", "TOKEN": "***", "KEY": "***"}
    assert red["task_id"] == "given-id"
    assert red["image"] == MINIMAL["image"]
    text = json.dumps(red)
    assert "t0k3n" not in text and "k3y" not in text
    # the task itself and the caller's document keep the real values
    assert t.env["TOKEN"] == "t0k3n"
    assert doc["env"]["TOKEN"] == "t0k3n"


def test_redacted_without_secrets_is_the_document() -> None:
    doc = {**MINIMAL, "env": {"A": "1"}, "task_id": "x1"}
    assert parse_task(doc).redacted() == doc


# -- regressions: each of these was a bug once ----------------------------------------


def test_size_with_trailing_newline_is_rejected_as_invalid() -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_task({**MINIMAL, "resources": {"memory": "512m\n"}})
    assert "task.resources.memory" in info.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("task_id", "job\n"),
        ("artifacts", [{"path": "/a", "name": "out\n"}]),
        ("services", [{"name": "db\n", "image": "x"}]),
        ("image", "busybox\n"),
    ],
)
def test_trailing_newline_in_names_is_rejected(key: str, value: Any) -> None:
    with pytest.raises(InvalidDocument):
        parse_task({**MINIMAL, key: value})


@pytest.mark.parametrize("where", ["command", "entrypoint", "readiness"])
def test_service_command_with_unbalanced_quote_is_invalid(where: str) -> None:
    svc: dict[str, Any] = {"name": "db", "image": "x"}
    if where == "readiness":
        svc["readiness"] = {"command": "pg_isready 'oops"}
    else:
        svc[where] = "run 'oops"
    with pytest.raises(InvalidDocument) as info:
        parse_task({**MINIMAL, "services": [svc]})
    assert "task.services[0]" in info.value.message


def test_blank_service_command_is_invalid() -> None:
    with pytest.raises(InvalidDocument):
        parse_task({**MINIMAL, "services": [{"name": "db", "image": "x", "readiness": {"command": "   "}}]})


def test_mixed_type_unknown_keys_are_reported() -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_task({**MINIMAL, 1: "x", "zz": 2})
    assert "task.zz: unknown field" in info.value.message


@pytest.mark.parametrize("value", ["0", "0m"])
def test_zero_size_string_is_rejected(value: str) -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_task({**MINIMAL, "resources": {"memory": value}})
    assert "task.resources.memory" in info.value.message


def test_ulimit_soft_above_hard_is_refused():
    with pytest.raises(InvalidDocument) as exc:
        parse_task({"image": "busybox", "max_run_time": 5, "resources": {"ulimits": {"nofile": {"soft": 10, "hard": 5}}}})
    assert "task.resources.ulimits.nofile: soft limit 10 is above the hard limit 5" in exc.value.message


def test_a_task_id_given_by_the_driver_obeys_the_contract():
    doc = {"image": "busybox", "max_run_time": 5, "task_id": "from-file"}
    assert parse_task(doc, task_id="from-driver").task_id == "from-driver"
    with pytest.raises(InvalidDocument) as exc:
        parse_task(doc, task_id="../../etc")
    assert "task.task_id" in exc.value.message


# -- farmhand's own names, task ids, defaults ---------------------------------------------------


@pytest.mark.parametrize("name", ["task.log", "task.log.zst", "task.log.xz", "task.log.sha256"])
def test_an_artifact_named_like_the_log_is_refused(name: str) -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_task({**MINIMAL, "artifacts": [{"path": "/out/x", "name": name}]})
    assert info.value.errors == [f"task.artifacts[0].name: {name!r} is reserved for the task's log"]


def test_an_artifact_named_like_another_ones_checksum_is_refused() -> None:
    doc = {**MINIMAL, "artifacts": [{"path": "/out/a", "name": "a.zim"}, {"path": "/out/b", "name": "a.zim.sha256"}]}
    with pytest.raises(InvalidDocument) as info:
        parse_task(doc)
    assert info.value.errors == ["task.artifacts[1].name: 'a.zim.sha256' is reserved for the checksum of task.artifacts[0]"]
    parse_task({**MINIMAL, "artifacts": [{"path": "/out/b", "name": "sums.sha256"}]})  # alone it is an ordinary name


@pytest.mark.parametrize("value", ["../../x", "a/b", "", ".hidden", "x" * 129, "ok\n", None, 42])
def test_what_is_no_task_id(value: Any) -> None:
    from farmhand.task import task_id_problem

    assert task_id_problem(value) is not None
    assert task_id_problem("abc-1.2_3") is None


def test_defaults_are_the_contracts_own() -> None:
    """No default is written twice: the Task gets what task-v1.json documents."""
    schema = load_schema("task-v1.json")["properties"]
    doc = {**MINIMAL, "services": [{"name": "db", "image": "x", "readiness": {"command": ["true"]}}], "artifacts": [{"path": "/o", "name": "o"}], "mounts": [{"source": "/s", "target": "/t"}]}
    t = parse_task(doc)
    readiness = schema["services"]["items"]["properties"]["readiness"]["properties"]
    assert (t.pull, t.network, t.privileged) == (schema["pull"]["default"], schema["network"]["default"], schema["privileged"]["default"])
    assert (t.services[0].readiness.timeout, t.services[0].readiness.interval) == (readiness["timeout"]["default"], readiness["interval"]["default"])
    art = schema["artifacts"]["items"]["properties"]
    assert (t.artifacts[0].type, t.artifacts[0].optional) == (art["type"]["default"], art["optional"]["default"])
    assert t.mounts[0].read_only == schema["mounts"]["items"]["properties"]["read_only"]["default"]
