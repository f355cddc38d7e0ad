"""Hostile task documents: each one is refused as invalid, quickly, in a few bounded lines naming the field.

The corpus is generated here: nesting thousands of levels deep (JSON, YAML
flow, YAML block, Python dicts), alias bombs, huge arrays where the schema
says uniqueItems, NaN and infinities in every numeric field, tiny CPU shares,
non-string and duplicate keys, control characters in paths, oversized values
and invalid secret values. Every case goes through the validate path: the
document as a Python value through ``parse_task``, and the same document as a
file through ``read_task_file`` (the function the CLI uses) then ``parse_task``.

What is asserted for each refusal: ``InvalidDocument`` and no other
exception; every line starts with ``task`` (a field) or, for a problem of the
file as a whole, with the file's name; the message stays short; no secret
value is in it; and the work stays small (Python's peak allocation is
bounded). There is no timing assertion; a hang guard (SIGALRM, far above what
any of these needs) only turns an endless loop into a failure instead of a
stuck suite.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from farmhand.config import load_config
from farmhand.errors import ConfigError, InvalidDocument
from farmhand.task import parse_task, read_task_file

MINIMAL: dict[str, Any] = {"image": "farmhand-test/busybox:latest", "max_run_time": 10}
SECRET = "s3cr3t-T0KEN-value"

#: Bounds every refusal must keep: the message (all its lines) and Python's peak allocation while refusing.
MAX_MESSAGE = 4096
MAX_PEAK_BYTES = 64 * 1024 * 1024
#: Not a timing assertion: only what turns a hang (the bug) into a failure rather than a stuck run.
HANG_GUARD_S = 30


class Hung(Exception):
    pass


@contextlib.contextmanager
def hang_guard(seconds: float = HANG_GUARD_S) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hung(f"still working after {seconds}s: the work is not bounded")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(run: Callable[[], Any], *, names: tuple[str, ...] = (), file: Path | None = None, secrets: tuple[str, ...] = ()) -> InvalidDocument:
    """Run ``run`` and check that it refuses the document the way an operator can act on."""
    tracemalloc.start()
    try:
        with hang_guard():
            try:
                outcome = run()
            except InvalidDocument as exc:
                err = exc
            else:
                pytest.fail(f"accepted: {outcome!r}"[:500])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, f"refusing took {peak} bytes"
    assert err.errors, "a refusal lists its problems"
    message = err.message
    assert len(message) < MAX_MESSAGE, f"{len(message)} characters: {message[:300]!r}..."
    assert "Traceback" not in message
    prefixes = ("task.", "task:") + ((str(file),) if file is not None else ())
    for line in err.errors:
        assert line.startswith(prefixes), line
        assert "\n" not in line, line
    for name in names:
        assert any(line.startswith(name) for line in err.errors), (name, err.errors)
    for secret in secrets:
        assert secret not in message
    return err


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def via_file(path: Path) -> Any:
    """What `farmhand validate FILE` does before the policy: read it, then check it."""
    return parse_task(read_task_file(path))


def yaml_head() -> str:
    return "image: farmhand-test/busybox:latest\nmax_run_time: 10\n"


# -- nesting -------------------------------------------------------------------------------


def nested_dict(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_list(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [500, 5000, 100_000])
@pytest.mark.parametrize("make", [nested_dict, nested_list], ids=["dicts", "lists"])
def test_deeply_nested_python_document_is_refused(make: Callable[[int], Any], depth: int) -> None:
    doc = {**MINIMAL, "labels": make(depth)}
    refused(lambda: parse_task(doc), names=("task.labels",))


@pytest.mark.parametrize("depth", [500, 5000, 200_000])
@pytest.mark.parametrize("brackets", ["[]", "{}"])
def test_deeply_nested_json_file_is_refused(tmp_path: Path, depth: int, brackets: str) -> None:
    inner = "[" * depth + "1" + "]" * depth if brackets == "[]" else '{"a": ' * depth + "1" + "}" * depth
    text = '{"image": "farmhand-test/busybox", "max_run_time": 10, "labels": ' + inner + "}"
    path = write(tmp_path, "deep.json", text)
    refused(lambda: via_file(path), file=path)


@pytest.mark.parametrize("depth", [500, 5000, 200_000])
def test_deeply_nested_yaml_flow_is_refused(tmp_path: Path, depth: int) -> None:
    path = write(tmp_path, "deep.yml", yaml_head() + "labels: " + "[" * depth + "x" + "]" * depth + "\n")
    refused(lambda: via_file(path), file=path)


@pytest.mark.parametrize("depth", [500, 5000, 100_000])
def test_deeply_nested_yaml_block_sequences_are_refused(tmp_path: Path, depth: int) -> None:
    # "- - - x": each dash opens a block sequence inside the one before, all on one line.
    path = write(tmp_path, "deep.yml", yaml_head() + "labels:\n  " + "- " * depth + "x\n")
    refused(lambda: via_file(path), file=path)


@pytest.mark.parametrize("depth", [300, 1000])
def test_deeply_nested_yaml_block_mappings_are_refused(tmp_path: Path, depth: int) -> None:
    lines = "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "b\n"
    path = write(tmp_path, "deep.yml", yaml_head() + "labels:\n" + "\n".join(" " + line for line in lines.splitlines()) + "\n")
    refused(lambda: via_file(path), file=path)


def test_reasonable_nesting_still_loads(tmp_path: Path) -> None:
    doc = {**MINIMAL, "services": [{"name": "db", "image": "farmhand-test/db", "readiness": {"command": ["true"], "timeout": 5}}], "resources": {"ulimits": {"nofile": {"soft": 1, "hard": 2}}}}
    for name, text in (("t.json", json.dumps(doc)), ("t.yml", yaml.safe_dump(doc))):
        path = write(tmp_path, name, text)
        assert via_file(path).services[0].readiness.timeout == 5.0


# -- expansion -------------------------------------------------------------------------------


def billion_laughs(field: str) -> str:
    lines = ['lol0: &l0 "lol"']
    for i in range(1, 10):
        lines.append(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    body = "\n".join("  " + line for line in lines)
    return yaml_head() + f"{field}:\n{body}\n"


@pytest.mark.parametrize("field", ["labels", "command", "env", "services", "x_unknown", "resources"])
def test_alias_bomb_is_refused_naming_the_line(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, "bomb.yml", billion_laughs(field))
    err = refused(lambda: via_file(path), file=path)
    assert "line 4," in err.message, err.message  # where the first anchor is
    assert "alias" in err.message.lower() or "anchor" in err.message.lower()


def test_small_nested_alias_task_under_command_is_refused(tmp_path: Path) -> None:
    # ~400 bytes that expand to 10**8 strings once aliases are followed.
    text = yaml_head() + "command: &c8 [&c7 [&c6 [&c5 [&c4 [&c3 [&c2 [&c1 [&c0 x, *c0, *c0, *c0, *c0, *c0, *c0, *c0, *c0, *c0]"
    for i in range(1, 9):
        text += ", " + ", ".join([f"*c{i}"] * 9) + "]"
    text += "\n"
    assert len(text.encode()) < 800
    path = write(tmp_path, "small-bomb.yml", text)
    refused(lambda: via_file(path), file=path)


@pytest.mark.parametrize("yaml_text", ["image: &img farmhand-test/busybox\nmax_run_time: 10\n", yaml_head() + "labels: &l {a: b}\nenv: {}\n"])
def test_an_anchor_alone_is_refused(tmp_path: Path, yaml_text: str) -> None:
    path = write(tmp_path, "anchor.yml", yaml_text)
    err = refused(lambda: via_file(path), file=path)
    assert "anchor" in err.message.lower()


def test_yaml_merge_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "merge.yml", yaml_head() + "labels: {<<: {a: b}}\n")
    refused(lambda: via_file(path), names=("task.labels",), file=path)


UNIQUE_ARRAYS = ["secret_env", "retry_on_exit_codes", "cap_add", "devices"]


@pytest.mark.parametrize("field", UNIQUE_ARRAYS)
@pytest.mark.parametrize("item", [{}, [], "A"], ids=["objects", "lists", "strings"])
def test_huge_array_where_the_schema_says_unique_items_is_refused(field: str, item: Any) -> None:
    doc = {**MINIMAL, field: [item] * 30_000 if item == "A" else [type(item)() for _ in range(30_000)]}
    refused(lambda: parse_task(doc), names=(f"task.{field}",))


@pytest.mark.parametrize("field", UNIQUE_ARRAYS)
def test_huge_array_of_distinct_objects_in_a_file_is_refused(tmp_path: Path, field: str) -> None:
    doc = {**MINIMAL, field: [{"k": i} for i in range(20_000)]}
    path = write(tmp_path, "huge.json", json.dumps(doc))
    refused(lambda: via_file(path), names=(f"task.{field}",), file=path)


@pytest.mark.parametrize("field", ["command", "artifacts", "mounts", "services"])
def test_huge_arrays_elsewhere_are_refused_in_one_line(field: str) -> None:
    doc = {**MINIMAL, field: [7] * 50_000}
    err = refused(lambda: parse_task(doc), names=(f"task.{field}",))
    assert len(err.errors) <= 3, err.errors


def test_oversized_document_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "big.yml", yaml_head() + "labels:\n" + "".join(f"  k{i}: {'v' * 100}\n" for i in range(40_000)))
    assert path.stat().st_size > 4 * 1024 * 1024
    refused(lambda: via_file(path), file=path)


# -- numbers -------------------------------------------------------------------------------

NUMERIC_FIELDS: list[tuple[str, Callable[[Any], dict[str, Any]]]] = [
    ("task.max_run_time", lambda v: {"max_run_time": v}),
    ("task.idle_timeout", lambda v: {"idle_timeout": v}),
    ("task.version", lambda v: {"version": v}),
    ("task.resources.cpus", lambda v: {"resources": {"cpus": v}}),
    ("task.resources.pids", lambda v: {"resources": {"pids": v}}),
    ("task.resources.memory", lambda v: {"resources": {"memory": v}}),
    ("task.resources.shm_size", lambda v: {"resources": {"shm_size": v}}),
    ("task.resources.ulimits.nofile", lambda v: {"resources": {"ulimits": {"nofile": v}}}),
    ("task.resources.ulimits.stack", lambda v: {"resources": {"ulimits": {"stack": {"soft": v, "hard": -1}}}}),
    ("task.retry_on_exit_codes[0]", lambda v: {"retry_on_exit_codes": [v]}),
    ("task.services[0].readiness.timeout", lambda v: {"services": [{"name": "db", "image": "x", "readiness": {"command": "true", "timeout": v}}]}),
    ("task.services[0].readiness.interval", lambda v: {"services": [{"name": "db", "image": "x", "readiness": {"command": "true", "interval": v}}]}),
    ("task.labels.a", lambda v: {"labels": {"a": v}}),
    ("task.x_unknown", lambda v: {"x_unknown": v}),
]
NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("name", "make"), NUMERIC_FIELDS, ids=[n for n, _ in NUMERIC_FIELDS])
def test_non_finite_number_is_refused_naming_the_field(name: str, make: Callable[[Any], dict[str, Any]], value: float) -> None:
    err = refused(lambda: parse_task({**MINIMAL, **make(value)}), names=(name,))
    assert any(line.startswith(name) and ("finite" in line or "not" in line) for line in err.errors)


@pytest.mark.parametrize(("spelling", "json_spelling"), [(".nan", "NaN"), (".inf", "Infinity"), ("-.inf", "-Infinity"), (".NaN", "NaN")])
@pytest.mark.parametrize(("name", "make"), NUMERIC_FIELDS, ids=[n for n, _ in NUMERIC_FIELDS])
def test_non_finite_spellings_in_files_are_refused(tmp_path: Path, name: str, make: Callable[[Any], dict[str, Any]], spelling: str, json_spelling: str) -> None:
    marker = "__VALUE__"
    doc = {**MINIMAL, **make(marker)}
    y = write(tmp_path, "t.yml", yaml.safe_dump(doc).replace(f"'{marker}'", spelling).replace(marker, spelling))
    refused(lambda: via_file(y), names=(name,), file=y)
    j = write(tmp_path, "t.json", json.dumps(doc).replace(f'"{marker}"', json_spelling))
    refused(lambda: via_file(j), names=(name,), file=j)


@pytest.mark.parametrize("text", ["1e999", "-1e999"])
def test_json_numbers_that_overflow_to_infinity_are_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "t.json", '{"image": "farmhand-test/x", "max_run_time": 10, "resources": {"cpus": ' + text + "}}")
    refused(lambda: via_file(path), names=("task.resources.cpus",), file=path)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_integer_with_thousands_of_digits_is_refused_naming_the_field(tmp_path: Path, fmt: str) -> None:
    digits = "9" * 6000
    text = (
        '{"image": "farmhand-test/x", "max_run_time": ' + digits + "}"
        if fmt == "json"
        else "image: farmhand-test/x\nmax_run_time: " + digits + "\n"
    )
    path = write(tmp_path, f"t.{fmt}", text)
    err = refused(lambda: via_file(path), names=("task.max_run_time",), file=path)
    assert digits not in err.message


@pytest.mark.parametrize("cpus", [0.0000000001, 0.001, 0.009, 1e-300, 5e-324])
def test_cpu_share_below_what_docker_accepts_is_refused(cpus: float) -> None:
    refused(lambda: parse_task({**MINIMAL, "resources": {"cpus": cpus}}), names=("task.resources.cpus",))


def test_smallest_cpu_share_docker_accepts_is_valid() -> None:
    assert parse_task({**MINIMAL, "resources": {"cpus": 0.01}}).resources.cpus == 0.01


@pytest.mark.parametrize(("field", "value"), [("timeout", 10**9), ("interval", 10**9), ("interval", 1e-9), ("timeout", 1e300)])
def test_readiness_timing_is_bounded(field: str, value: float) -> None:
    svc = {"name": "db", "image": "x", "readiness": {"command": "true", field: value}}
    refused(lambda: parse_task({**MINIMAL, "services": [svc]}), names=(f"task.services[0].readiness.{field}",))


@pytest.mark.parametrize(("field", "value"), [("max_run_time", 10**30), ("idle_timeout", 10**30), ("pids", 2**70), ("memory", 2**70)])
def test_integers_far_beyond_any_host_are_refused(field: str, value: int) -> None:
    doc = {**MINIMAL, **({"resources": {field: value}} if field in ("pids", "memory") else {field: value})}
    refused(lambda: parse_task(doc), names=(f"task.{'resources.' if field in ('pids', 'memory') else ''}{field}",))


def test_json_integral_floats_are_integers(tmp_path: Path) -> None:
    text = '{"image": "farmhand-test/x", "max_run_time": 5e0, "idle_timeout": 3.0, "version": 1.0, "resources": {"pids": 6.4e1, "memory": 1048576.0, "ulimits": {"nofile": 1.024e3, "stack": {"soft": 8.0, "hard": -1.0}}}, "retry_on_exit_codes": [7.0]}'
    task = via_file(write(tmp_path, "t.json", text))
    assert task.max_run_time == 5 and type(task.max_run_time) is int
    assert task.idle_timeout == 3 and type(task.idle_timeout) is int
    assert task.resources.pids == 64 and type(task.resources.pids) is int
    assert task.resources.memory == 1048576 and type(task.resources.memory) is int
    assert task.resources.ulimits == {"nofile": (1024, 1024), "stack": (8, -1)}
    assert all(type(v) is int for pair in task.resources.ulimits.values() for v in pair)
    assert task.retry_on_exit_codes == frozenset({7}) and all(type(c) is int for c in task.retry_on_exit_codes)
    assert json.loads(json.dumps(task.redacted()))["max_run_time"] == 5


def test_fractional_floats_are_still_refused_for_integers() -> None:
    refused(lambda: parse_task({**MINIMAL, "max_run_time": 5.5}), names=("task.max_run_time",))


# -- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["2024-01-01", "!!binary aGVsbG8=", "1", "3.5", "yes", "null", "~", "[a, b]", "{a: b}", "2001-12-14t21:59:43.10-05:00"],
)
def test_non_string_yaml_key_under_labels_is_refused(tmp_path: Path, key: str) -> None:
    text = yaml_head() + ("labels:\n  ? " + key + "\n  : value\n")
    path = write(tmp_path, "keys.yml", text)
    refused(lambda: via_file(path), names=("task.labels",), file=path)


@pytest.mark.parametrize(
    "key",
    [datetime.date(2024, 1, 1), b"binary", 1, 2.5, None, True, ("a", "b"), datetime.datetime(2024, 1, 1, 12, 0)],
    ids=["date", "bytes", "int", "float", "none", "bool", "tuple", "datetime"],
)
def test_non_string_key_in_a_python_document_is_refused(key: Any) -> None:
    refused(lambda: parse_task({**MINIMAL, "labels": {key: "x"}}), names=("task.labels",))


@pytest.mark.parametrize(
    "value",
    [datetime.date(2024, 1, 1), b"bytes", {1, 2}, object()],
    ids=["date", "bytes", "set", "object"],
)
def test_non_json_values_are_refused(value: Any) -> None:
    refused(lambda: parse_task({**MINIMAL, "labels": {"a": value}}), names=("task.labels.a",))


@pytest.mark.parametrize("value", ["2024-01-01", "!!binary aGVsbG8=", "!!set {a, b}", "!!python/tuple [1, 2]", "!custom x", "!!timestamp 2001-12-14"])
def test_non_json_yaml_values_are_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "v.yml", yaml_head() + f"labels:\n  a: {value}\n")
    refused(lambda: via_file(path), names=("task.labels.a",), file=path)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (yaml_head() + "privileged: false\nprivileged: true\n", "task.privileged"),
        (yaml_head() + "resources:\n  cpus: 1\n  cpus: 64\n", "task.resources.cpus"),
        (yaml_head() + "labels: {a: x, 'a': y}\n", "task.labels.a"),
        (yaml_head() + 'env: {A: "1", "A": "2"}\n', "task.env.A"),
        ('{"image": "farmhand-test/x", "max_run_time": 10, "privileged": false, "privileged": true}', "task.privileged"),
        ('{"image": "farmhand-test/x", "max_run_time": 10, "services": [{"name": "db", "image": "x", "name": "db2"}]}', "task.services[0].name"),
        ('{"image": "farmhand-test/x", "image": "farmhand-test/y", "max_run_time": 10}', "task.image"),
    ],
    ids=["yaml-top", "yaml-nested", "yaml-quoted", "yaml-env", "json-top", "json-in-list", "json-image"],
)
def test_duplicate_keys_are_refused_naming_them(tmp_path: Path, text: str, name: str) -> None:
    path = write(tmp_path, "dup.json" if text.startswith("{") else "dup.yml", text)
    refused(lambda: via_file(path), names=(name,), file=path)


def test_json_indented_with_tabs_is_json(tmp_path: Path) -> None:
    doc = {**MINIMAL, "command": ["echo", "hi"], "labels": {"team": "qa"}, "resources": {"cpus": 0.5}}
    path = write(tmp_path, "tabs.json", json.dumps(doc, indent="\t"))
    task = via_file(path)
    assert task.command == ["echo", "hi"] and task.labels == {"team": "qa"} and task.resources.cpus == 0.5


def test_json_means_json_where_yaml_would_differ(tmp_path: Path) -> None:
    # "\/" is a JSON escape (YAML has none), 5e0 is a JSON number (a YAML 1.1 string).
    path = write(tmp_path, "t.json", '{"image": "farmhand-test/x", "max_run_time": 5e0, "workdir": "\\/work"}')
    task = via_file(path)
    assert task.workdir == "/work" and task.max_run_time == 5


def test_plain_yaml_still_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yml", yaml_head() + "command: echo 'a b'\nlabels:\n  team: qa\n  'on': x\n")
    task = via_file(path)
    assert task.command == ["echo", "a b"] and task.labels == {"team": "qa", "on": "x"}


# -- paths and control characters -------------------------------------------------------------

CONTROL = ["\x00", "\x01", "\n", "\r", "\x1b", "\x7f", "\x85"]
PATH_FIELDS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("task.upload", lambda c: {"upload": f"file:///srv/ware{c}house/"}),
    ("task.image", lambda c: {"image": f"farmhand-test/busy{c}box"}),
    ("task.workdir", lambda c: {"workdir": f"/work{c}dir"}),
    ("task.artifacts[0].path", lambda c: {"artifacts": [{"path": f"/out/a{c}b", "name": "a"}]}),
    ("task.mounts[0].target", lambda c: {"mounts": [{"source": "/srv/data", "target": f"/da{c}ta"}]}),
    ("task.mounts[0].source", lambda c: {"mounts": [{"source": f"/srv/da{c}ta", "target": "/data"}]}),
    ("task.caches.pip", lambda c: {"caches": {"pip": f"/root/.ca{c}che"}}),
    ("task.devices[0]", lambda c: {"devices": [f"/dev/fu{c}se"]}),
    ("task.services[0].image", lambda c: {"services": [{"name": "db", "image": f"farmhand-test/d{c}b"}]}),
]


@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
@pytest.mark.parametrize(("name", "make"), PATH_FIELDS, ids=[n for n, _ in PATH_FIELDS])
def test_control_characters_in_paths_and_names_are_refused(name: str, make: Callable[[str], dict[str, Any]], char: str) -> None:
    err = refused(lambda: parse_task({**MINIMAL, **make(char)}), names=(name,))
    assert all(char not in line for line in err.errors)  # quoted with escapes, on one line


def test_nul_in_the_upload_target_of_a_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "nul.json", '{"image": "farmhand-test/x", "max_run_time": 10, "upload": "file:///srv/w\\u0000/../etc/"}')
    refused(lambda: via_file(path), names=("task.upload",), file=path)


# -- echoes --------------------------------------------------------------------------------

BIG = "x" * 1_000_000


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        ("task.image", {"image": "-" + BIG}),
        ("task.upload", {"upload": "/" + BIG}),
        ("task.workdir", {"workdir": "rel" + BIG}),
        ("task.user", {"user": BIG}),
        ("task.task_id", {"task_id": BIG}),
        ("task.labels.a", {"labels": {"a": BIG}}),
        ("task.env.A", {"env": {"A": BIG}}),
        ("task.command", {"command": [BIG, 1]}),
        ("task.command", {"command": "echo '" + BIG}),
        ("task.pull", {"pull": BIG}),
        ("task.cap_add[0]", {"cap_add": [BIG.lower()]}),
        ("task.devices[0]", {"devices": [BIG]}),
        ("task.secret_env[0]", {"secret_env": [BIG]}),
        ("task.labels", {"labels": {BIG: "x"}}),
        ("task", {BIG: "x"}),
        ("task.env", {"env": {"-" + BIG: "x"}}),
        ("task.caches", {"caches": {"-" + BIG: "/c"}}),
        ("task.artifacts[0].name", {"artifacts": [{"path": "/a", "name": "-" + BIG}]}),
    ],
)
def test_oversized_value_is_quoted_by_a_bounded_prefix(name: str, doc: dict[str, Any]) -> None:
    err = refused(lambda: parse_task({**MINIMAL, **doc}), names=(name,))
    assert "x" * 200 not in err.message


def test_twenty_thousand_bad_items_give_a_bounded_message() -> None:
    doc = {**MINIMAL, "cap_add": [f"bad{i}" for i in range(20_000)]}
    refused(lambda: parse_task(doc), names=("task.cap_add",))


def test_many_problems_are_cut_to_a_bounded_list_that_says_how_many_more() -> None:
    doc = {**MINIMAL, "env": {f"V{i}": i for i in range(300)}, "labels": {f"l{i}": [i] for i in range(200)}}
    err = refused(lambda: parse_task(doc), names=("task.env.V",))
    assert len(err.errors) <= 51
    assert "more" in err.errors[-1] and "450" in err.errors[-1], err.errors[-1]


def test_many_problems_in_a_file_are_cut_too(tmp_path: Path) -> None:
    doc = {**MINIMAL, "env": {f"V{i}": [i] for i in range(900)}}
    path = write(tmp_path, "many.json", json.dumps(doc))
    err = refused(lambda: via_file(path), file=path)
    assert len(err.errors) <= 51


# -- secrets in errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [SECRET * 4000, [SECRET], {"v": SECRET}, 12345678901234, SECRET + "\x00", math.nan, [SECRET] * 10_000],
    ids=["too-long", "list", "mapping", "number", "nul", "nan", "huge-list"],
)
def test_an_invalid_secret_value_is_never_printed(value: Any) -> None:
    doc = {**MINIMAL, "env": {"TOKEN": value, "PLAIN": "p"}, "secret_env": ["TOKEN"]}
    err = refused(lambda: parse_task(doc), names=("task.env.TOKEN",), secrets=(SECRET, "12345678901234"))
    assert "(secret, not shown)" in err.message


def test_a_secret_value_repeated_in_a_bad_field_is_masked() -> None:
    doc = {**MINIMAL, "env": {"TOKEN": SECRET}, "secret_env": ["TOKEN"], "image": "-" + SECRET, "labels": {"a": [SECRET]}, "user": SECRET + " x"}
    refused(lambda: parse_task(doc), names=("task.image", "task.user"), secrets=(SECRET,))


def test_a_secret_name_in_a_service_env_hides_that_value_too() -> None:
    doc = {**MINIMAL, "env": {"TOKEN": "short"}, "secret_env": ["TOKEN"], "services": [{"name": "db", "image": "x", "env": {"TOKEN": [SECRET]}}]}
    refused(lambda: parse_task(doc), names=("task.services[0].env.TOKEN",), secrets=(SECRET,))


def test_secret_values_of_a_file_are_never_printed(tmp_path: Path) -> None:
    text = yaml_head() + f"secret_env: [TOKEN]\nenv:\n  TOKEN: {json.dumps(SECRET * 5000)}\n  OTHER: [{SECRET}]\n"
    path = write(tmp_path, "secret.yml", text)
    refused(lambda: via_file(path), names=("task.env.TOKEN", "task.env.OTHER"), file=path, secrets=(SECRET,))


def test_redacted_masks_every_occurrence_of_a_secret_value() -> None:
    doc = {
        **MINIMAL,
        "env": {"TOKEN": SECRET, "PLAIN": "visible"},
        "secret_env": ["TOKEN"],
        "command": ["login", f"--token={SECRET}"],
        "labels": {"note": f"uses {SECRET}"},
        "services": [{"name": "db", "image": "farmhand-test/db", "env": {"DB_TOKEN": SECRET, "TOKEN": SECRET}, "readiness": {"command": f"check {SECRET}"}}],
    }
    task = parse_task(doc, task_id="t1")
    stored = json.dumps(task.redacted())
    assert SECRET not in stored
    red = task.redacted()
    assert red["env"] == {"TOKEN": "***", "PLAIN": "visible"}
    assert red["services"][0]["env"] == {"DB_TOKEN": "***", "TOKEN": "***"}
    assert red["command"] == ["login", "--token=***"]
    assert red["labels"] == {"note": "uses ***"}
    # the task itself keeps the real values: the containers need them
    assert task.services[0].env["DB_TOKEN"] == SECRET and task.command == ["login", f"--token={SECRET}"]
    assert doc["services"][0]["env"]["DB_TOKEN"] == SECRET


# -- the same loader for the worker's config ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "images:\n  allowed: &a [x]\n",
        "images: {allowed: [a]}\nimages: {allowed: [b]}\n",
        "limits:\n  kill_grace: .nan\n",
        "limits:\n  ceilings:\n    cpus: .inf\n",
        "labels: " + "[" * 5000 + "]" * 5000 + "\n",
        "docker: {timeout: " + "9" * 6000 + "}\n",
    ],
    ids=["anchor", "duplicate", "nan", "inf", "deep", "digits"],
)
def test_hostile_config_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "config.yml", text)
    with hang_guard():
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={"WORKING_DIR": str(tmp_path / "work")})
    assert len(str(info.value)) < MAX_MESSAGE
    assert "9" * 100 not in str(info.value)


def test_config_billion_laughs_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yml", billion_laughs("images").replace(yaml_head(), ""))
    with hang_guard():
        with pytest.raises(ConfigError, match="(?i)alias|anchor"):
            load_config(path, environ={"WORKING_DIR": str(tmp_path / "work")})


# -- the command line --------------------------------------------------------------------------


def farmhand(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farmhand", *args], capture_output=True, text=True, timeout=120, env={**os.environ, "FARMHAND_CONFIG": ""})


@pytest.fixture
def cli_config(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return write(tmp_path, "config.yml", yaml.safe_dump({"working_dir": str(work), "images": {"allowed": ["farmhand-test/*"]}}))


#: file name: (text, what the refusal must say)
CLI_CASES: dict[str, tuple[str, str]] = {
    "deep-json.json": ('{"image": "farmhand-test/x", "max_run_time": 10, "labels": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested more than"),
    "deep-yaml.yml": (yaml_head() + "labels:\n  " + "- " * 50_000 + "x\n", "nested more than"),
    "bomb.yml": (billion_laughs("command"), "anchor &l0"),
    "nan.yml": (yaml_head() + "resources: {cpus: .nan}\n", "task.resources.cpus: nan"),
    "inf-timeout.yml": (yaml_head() + "services: [{name: db, image: farmhand-test/db, readiness: {command: 'true', timeout: .inf}}]\n", "task.services[0].readiness.timeout: inf"),
    "nan.json": (
        '{"image": "farmhand-test/x", "max_run_time": 10, "services": [{"name": "db", "image": "farmhand-test/db", "readiness": {"command": "true", "interval": NaN}}]}',
        "task.services[0].readiness.interval: nan",
    ),
    "tiny-cpus.yml": (yaml_head() + "resources: {cpus: 0.0000000001}\n", "task.resources.cpus: 1e-10"),
    "date-key.yml": (yaml_head() + "labels: {2024-01-01: x}\n", "task.labels: key '2024-01-01'"),
    "binary-key.yml": (yaml_head() + "labels: {!!binary aGVsbG8=: x}\n", "task.labels: key"),
    "dup.yml": (yaml_head() + "privileged: false\nprivileged: true\n", "task.privileged: given more than once"),
    "nul.json": ('{"image": "farmhand-test/x", "max_run_time": 10, "upload": "file:///w\\u0000x/"}', "task.upload: 'file:///w\\x00x/' holds a control character"),
    "huge-unique.json": (json.dumps({**MINIMAL, "cap_add": [{"k": i} for i in range(20_000)]}), "task.cap_add: 20000 items"),
    "big-int.json": ('{"image": "farmhand-test/x", "max_run_time": ' + "1" * 5000 + "}", "task.max_run_time: an integer of 5000 digits"),
    "secret.yml": (yaml_head() + f"secret_env: [TOKEN]\nenv: {{TOKEN: [{SECRET}]}}\n", "task.env.TOKEN: invalid type (expected string) (secret, not shown)"),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_validate_refuses_hostile_files_with_exit_2(tmp_path: Path, cli_config: Path, name: str) -> None:
    text, expected = CLI_CASES[name]
    path = write(tmp_path, name, text)
    proc = farmhand("--config", str(cli_config), "validate", str(path))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr) < MAX_MESSAGE + 200
    assert SECRET not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("farmhand: ")
    assert list((tmp_path / "work").iterdir()) == []


def test_cli_validate_accepts_tab_indented_json(tmp_path: Path, cli_config: Path) -> None:
    path = write(tmp_path, "tabs.json", json.dumps({**MINIMAL, "command": ["true"]}, indent="\t"))
    proc = farmhand("--config", str(cli_config), "validate", str(path))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("task_id", ["../../x", "a/b", "", ".hidden", "x" * 200, "a\nb"])
def test_run_task_with_a_bad_task_id_is_a_bad_command_line(tmp_path: Path, cli_config: Path, task_id: str) -> None:
    # an image this worker's policy denies: were the id let through, nothing would run anyway
    path = write(tmp_path, "ok.yml", "image: farmhand-denied/busybox\nmax_run_time: 10\ncommand: 'true'\n")
    proc = farmhand("--config", str(cli_config), "run-task", "--task-id", task_id, str(path))
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "--task-id" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list((tmp_path / "work").iterdir()) == []  # no workspace, nothing journalled


@pytest.mark.parametrize("argv", [["run-task"], ["validate"], ["no-such-command"], ["run-task", "--no-such-flag", "x.yml"], []])
def test_an_invalid_command_line_exits_2(argv: list[str]) -> None:
    proc = farmhand(*argv)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
