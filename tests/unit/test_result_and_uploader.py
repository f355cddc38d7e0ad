"""The result document, atomic JSON writes, and the file:// uploader."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from farmhand.config import load_config

from farmhand import __version__
from farmhand.errors import UploadFailed
from farmhand.result import RESULT_SCHEMA, Result, utc_iso, write_json_atomic
from farmhand.uploaders import UploadItem, supported_schemes, uploader_for
from farmhand.uploaders.file import FileUploader

DOCUMENTED_KEYS = {
    "schema",
    "task_id",
    "state",
    "reason",
    "message",
    "exit_code",
    "started_at",
    "finished_at",
    "duration",
    "stages",
    "image",
    "artifacts",
    "log",
    "usage",
    "labels",
    "worker",
    "workspace",
    "warnings",
}


def _parse_iso(text: str) -> float:
    assert text.endswith("Z")
    return datetime.fromisoformat(text[:-1] + "+00:00").timestamp()


# -- Result ---------------------------------------------------------------------------------


def test_stage_records_duration_and_ok() -> None:
    r = Result(task_id="t1")
    with r.stage("prepare") as rec:
        rec["note"] = "kept"
        time.sleep(0.05)
    s = r.stages["prepare"]
    assert s["outcome"] == "ok"
    assert s["note"] == "kept"
    assert 0.05 <= s["duration"] < 5
    start, end = _parse_iso(s["started_at"]), _parse_iso(s["finished_at"])
    assert 0.04 <= end - start < 5


def test_stage_records_error_and_reraises() -> None:
    r = Result(task_id="t1")
    with pytest.raises(ValueError, match="boom"):
        with r.stage("run"):
            raise ValueError("boom")
    s = r.stages["run"]
    assert s["outcome"] == "error"
    assert "duration" in s and s["duration"] >= 0
    assert "finished_at" in s


def test_stage_records_error_on_base_exception() -> None:
    r = Result(task_id="t1")
    with pytest.raises(KeyboardInterrupt):
        with r.stage("run"):
            raise KeyboardInterrupt
    assert r.stages["run"]["outcome"] == "error"


def test_stage_outcome_set_inside_is_kept() -> None:
    r = Result(task_id="t1")
    with r.stage("cleanup") as rec:
        rec["outcome"] = "error"
    assert r.stages["cleanup"]["outcome"] == "error"


def test_stages_keep_their_order() -> None:
    r = Result(task_id="t1")
    for name in ("prepare", "run", "collect", "cleanup", "upload"):
        with r.stage(name):
            pass
    assert list(r.to_dict()["stages"]) == ["prepare", "run", "collect", "cleanup", "upload"]


def test_default_result_is_an_internal_error() -> None:
    d = Result(task_id="t1").to_dict()
    assert (d["state"], d["reason"]) == ("exception", "internal-error")


def test_to_dict_has_all_documented_keys() -> None:
    r = Result(task_id="abc", started_at=1_700_000_000.0)
    r.conclude("failed", "nonzero-exit", "the command exited with code 3")
    r.exit_code = 3
    r.finished_at = 1_700_000_002.5
    r.labels = {"team": "qa"}
    r.warnings.append("w")
    d = r.to_dict()
    assert set(d) == DOCUMENTED_KEYS
    assert d["schema"] == RESULT_SCHEMA == "farmhand-result-v1"
    assert d["task_id"] == "abc"
    assert (d["state"], d["reason"], d["message"], d["exit_code"]) == ("failed", "nonzero-exit", "the command exited with code 3", 3)
    assert d["started_at"] == "2023-11-14T22:13:20.000Z"
    assert d["finished_at"] == "2023-11-14T22:13:22.500Z"
    assert d["duration"] == 2.5
    assert d["worker"]["version"] == __version__ and d["worker"]["hostname"]
    assert d["labels"] == {"team": "qa"} and d["warnings"] == ["w"]
    json.dumps(d)  # the document is plain JSON


def test_to_dict_of_unfinished_result_uses_now() -> None:
    r = Result(task_id="x", started_at=time.time() - 10)
    d = r.to_dict()
    assert 9.5 <= d["duration"] < 60


def test_conclude_rejects_unknown_state() -> None:
    r = Result(task_id="x")
    with pytest.raises(AssertionError):
        r.conclude("weird", None)


def test_utc_iso() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(1.2345) == "1970-01-01T00:00:01.234Z"


# -- write_json_atomic ----------------------------------------------------------------------


def test_write_json_atomic_writes_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "result.json"
    write_json_atomic(target, {"a": 1, "b": ["x"]})
    assert json.loads(target.read_text()) == {"a": 1, "b": ["x"]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]
    write_json_atomic(target, {"a": 2})  # replace
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_write_json_atomic_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json_atomic(target, {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


# -- FileUploader ---------------------------------------------------------------------------


def make_item(tmp_path: Path, name: str, data: bytes, remote: str | None = None) -> UploadItem:
    src = tmp_path / "src" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return UploadItem(src, name if remote is None else remote, len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return tmp_path / "warehouse"


def test_upload_places_files_under_root_task_name(tmp_path: Path, warehouse: Path) -> None:
    up = FileUploader(warehouse.as_uri() + "/")
    items = [
        make_item(tmp_path, "task.log", b"log line\n"),
        make_item(tmp_path, "a.txt", b"42\n"),
        make_item(tmp_path, "when.txt", b"today\n", remote="report/sub/when.txt"),
        make_item(tmp_path, "empty", b""),
    ]
    said: list[str] = []
    locations = up.upload("task-1", items, said.append)
    for item in items:
        dest = warehouse / "task-1" / item.remote_name
        assert dest.read_bytes() == item.local_path.read_bytes()
        assert locations[item.remote_name] == dest.as_uri()
        assert up.location("task-1", item.remote_name) == dest.as_uri()
    assert len(said) == len(items) and "a.txt" in said[1]
    leftovers = [p for p in warehouse.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []


def test_location_of_a_directory_keeps_the_slash(warehouse: Path) -> None:
    up = FileUploader(warehouse.as_uri() + "/")
    assert up.location("t", "report/") == (warehouse / "t" / "report").as_uri() + "/"


def test_upload_verifies_sha256(tmp_path: Path, warehouse: Path) -> None:
    up = FileUploader(warehouse.as_uri())
    good = make_item(tmp_path, "a.txt", b"content")
    bad = UploadItem(good.local_path, "a.txt", good.size, hashlib.sha256(b"other").hexdigest())
    with pytest.raises(UploadFailed, match="sha256"):
        up.upload("t", [bad], lambda m: None)
    task_dir = warehouse / "t"
    assert not (task_dir / "a.txt").exists()
    assert list(task_dir.iterdir()) == []  # no partial copy left behind


def test_upload_verifies_size(tmp_path: Path, warehouse: Path) -> None:
    up = FileUploader(warehouse.as_uri())
    good = make_item(tmp_path, "a.txt", b"content")
    wrong = UploadItem(good.local_path, "a.txt", good.size + 1, good.sha256)
    with pytest.raises(UploadFailed):
        up.upload("t", [wrong], lambda m: None)
    assert not (warehouse / "t" / "a.txt").exists()


def test_identical_existing_file_is_skipped(tmp_path: Path, warehouse: Path) -> None:
    up = FileUploader(warehouse.as_uri())
    item = make_item(tmp_path, "a.txt", b"same bytes")
    up.upload("t", [item], lambda m: None)
    dest = warehouse / "t" / "a.txt"
    old = time.time() - 3600
    os.utime(dest, (old, old))
    ino = dest.stat().st_ino
    up.upload("t", [item], lambda m: None)
    assert dest.stat().st_mtime == old  # not rewritten
    assert dest.stat().st_ino == ino
    assert dest.read_bytes() == b"same bytes"


@pytest.mark.parametrize("existing", [b"different!", b"short", b"a much longer different content"])
def test_different_existing_file_is_replaced(tmp_path: Path, warehouse: Path, existing: bytes) -> None:
    up = FileUploader(warehouse.as_uri())
    dest = warehouse / "t" / "a.txt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(existing)
    old = time.time() - 3600
    os.utime(dest, (old, old))
    item = make_item(tmp_path, "a.txt", b"new bytes!")  # same size as the first case
    up.upload("t", [item], lambda m: None)
    assert dest.read_bytes() == b"new bytes!"
    assert dest.stat().st_mtime != old


@pytest.mark.parametrize("remote", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "", ".", "sub/.."])
def test_refuses_names_that_are_not_plain_relative(tmp_path: Path, warehouse: Path, remote: str) -> None:
    up = FileUploader(warehouse.as_uri())
    item = make_item(tmp_path, "a.txt", b"x", remote=remote)
    with pytest.raises(UploadFailed, match="not a plain relative name"):
        up.upload("t", [item], lambda m: None)
    assert not (tmp_path / "escape.txt").exists()
    assert not warehouse.exists() or not any(p.is_file() for p in warehouse.rglob("*"))
    with pytest.raises(UploadFailed):
        up.location("t", remote)


def test_unwritable_target_raises_upload_failed(tmp_path: Path) -> None:
    root = tmp_path / "not-a-dir"
    root.write_text("I am a file")
    up = FileUploader(root.as_uri())
    item = make_item(tmp_path, "a.txt", b"x")
    with pytest.raises(UploadFailed) as info:
        up.upload("t", [item], lambda m: None)
    assert info.value.reason == "upload-failed"
    assert "cannot write" in info.value.message
    assert root.read_text() == "I am a file"


def test_file_target_must_be_local() -> None:
    with pytest.raises(UploadFailed, match="local"):
        FileUploader("file://otherhost/srv/warehouse/")
    assert FileUploader("file://localhost/srv/w/").root == Path("/srv/w")


def test_percent_encoded_root(tmp_path: Path) -> None:
    up = FileUploader(f"file://{tmp_path}/my%20ware/")
    assert up.root == tmp_path / "my ware"


def test_uploader_for_file_scheme(warehouse: Path) -> None:
    up = uploader_for(warehouse.as_uri() + "/", load_config(environ={"WORKING_DIR": str(warehouse)}))
    assert isinstance(up, FileUploader)
    assert up.root == warehouse
    assert "file" in supported_schemes()


@pytest.mark.parametrize("target", ["ftp://x/", "s3://bucket/key", "nothing-here"])
def test_uploader_for_unknown_scheme(target: str) -> None:
    with pytest.raises(UploadFailed) as info:
        uploader_for(target, load_config(environ={}))
    from urllib.parse import urlsplit

    scheme = urlsplit(target).scheme
    assert f"no uploader for scheme {scheme!r}" in info.value.message
    assert target in info.value.message
    assert info.value.reason == "upload-failed"
