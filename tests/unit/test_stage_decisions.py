"""What the stages decide, without Docker: a run's verdict, the artifacts' judgement, delivery's items and names."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from farmhand import delivery
from farmhand.artifacts import Collected, FileEntry, record_collection
from farmhand.config import WorkerConfig, load_config
from farmhand.logpump import LogSummary
from farmhand.result import ArtifactRecord, FileRecord, LogRecord, Result
from farmhand.run_outcome import RunOutcome, record_run
from farmhand.task import ArtifactSpec, parse_task

TASK = parse_task({"image": "busybox", "command": ["true"], "max_run_time": 60, "idle_timeout": 30, "retry_on_exit_codes": [75]})


def outcome(code: int | None = 0, *, oom: bool = False, stopped: str | None = None, complete: bool = True, outages: int = 0) -> RunOutcome:
    log = LogSummary(Path("/nonexistent"), 5, "ab" * 32, False, 0, complete)
    return RunOutcome("c1", code, oom, stopped, log, {"samples": 1}, engine_outages=outages)


@pytest.mark.parametrize(
    ("run", "state", "reason"),
    [
        (outcome(0), "succeeded", None),
        (outcome(2), "failed", "nonzero-exit"),
        (outcome(75), "exception", "intermittent"),
        (outcome(137, oom=True), "failed", "oom-killed"),
        (outcome(0, oom=True), "succeeded", None),
        (outcome(137, stopped="max-run-time"), "failed", "max-run-time"),
        (outcome(137, stopped="idle-timeout"), "failed", "idle-timeout"),
        (outcome(143, stopped="cancelled"), "exception", "cancelled"),
        (outcome(75, oom=True, stopped="max-run-time"), "failed", "max-run-time"),  # the clock that stopped it comes first
        # The engine went away under the run: its 255 may be the status it lost, not the command's.
        (outcome(255, outages=1), "exception", "docker-error"),
        (outcome(255), "failed", "nonzero-exit"),
        (outcome(0, outages=2), "succeeded", None),
        (outcome(2, outages=1), "failed", "nonzero-exit"),
        (outcome(255, outages=1, stopped="cancelled"), "exception", "cancelled"),
    ],
)
def test_a_run_outcome_becomes_the_result_verdict(run: RunOutcome, state: str, reason: str | None) -> None:
    result = Result(task_id="t")
    record_run(result, TASK, run)
    assert (result.state, result.reason, result.exit_code) == (state, reason, run.exit_code)
    assert result.log == LogRecord(size=5, sha256="ab" * 32, truncated=False, dropped_bytes=0)
    assert result.usage == {"samples": 1}


def test_a_cancel_by_a_draining_worker_says_so() -> None:
    result = Result(task_id="t")
    record_run(result, TASK, outcome(143, stopped="cancelled"), "worker-shutdown")
    assert (result.state, result.reason) == ("exception", "worker-shutdown")
    assert "drain grace" in (result.message or "")


def test_warnings_from_the_run() -> None:
    result = Result(task_id="t")
    record_run(result, TASK, outcome(0, oom=True, complete=False))
    assert any("killed for lack of memory" in w for w in result.warnings)
    assert any("may be incomplete" in w for w in result.warnings)


# -- artifacts -------------------------------------------------------------------------


def collected(name: str, *, optional: bool = False, problem: str | None = None, kind: str = "file") -> Collected:
    item = Collected(spec=ArtifactSpec(path=f"/out/{name}", name=name, type=kind, optional=optional))
    if problem is None:
        item.present = True
        item.files = [FileEntry("" if kind == "file" else "a.txt", 3, "cd" * 32)]
    else:
        item.fail(problem, f"artifact {name!r}: {problem}")
    return item


def test_the_gravest_failure_of_required_artifacts_is_the_reason() -> None:
    result = Result(task_id="t")
    result.conclude("succeeded", None)
    record_collection(result, [collected("a", problem="artifact-missing"), collected("b", problem="artifact-too-large"), collected("c", problem="artifact-invalid")])
    assert (result.state, result.reason) == ("failed", "artifact-too-large")
    assert all(f"artifact {n!r}" in (result.message or "") for n in "abc")


def test_a_failed_task_keeps_its_reason_and_gets_the_artifact_problems_as_warnings() -> None:
    result = Result(task_id="t")
    result.conclude("failed", "nonzero-exit", "exit 2")
    record_collection(result, [collected("a", problem="artifact-missing")])
    assert (result.state, result.reason) == ("failed", "nonzero-exit")
    assert result.warnings == ["artifact 'a': artifact-missing"]


def test_optional_artifacts_absent_are_no_news_but_unusable_ones_are_warnings() -> None:
    result = Result(task_id="t")
    result.conclude("succeeded", None)
    record_collection(result, [collected("gone", optional=True, problem="artifact-missing"), collected("bad", optional=True, problem="artifact-invalid")])
    assert (result.state, result.reason) == ("succeeded", None)
    assert result.warnings == ["artifact 'bad': artifact-invalid"]
    assert [a.present for a in result.artifacts] == [False, False]


def test_artifact_records_are_typed_and_documented_alike() -> None:
    result = Result(task_id="t")
    item = collected("tree", kind="directory")
    item.skipped = ["link: symbolic link, not copied"]
    record_collection(result, [item])
    record = result.artifacts[0]
    assert record.files == [FileRecord("a.txt", 3, "cd" * 32)] and record.size == 3
    doc = result.to_dict()["artifacts"][0]
    assert doc["files"] == [{"path": "a.txt", "size": 3, "sha256": "cd" * 32}]
    assert doc["skipped"] == item.skipped and "problem" not in doc
    assert ArtifactRecord.from_dict(doc) == record
    assert result.warnings == ["artifact 'tree': link: symbolic link, not copied"]


def test_a_result_survives_its_document() -> None:
    result = Result(task_id="t", exit_code=0, log=LogRecord(5, "ab" * 32, False, 0, compression="zstd", compressed_size=3, compressed_sha256="ef" * 32))
    result.artifacts = [ArtifactRecord("a", "/out/a", "file", False, True, 3, "cd" * 32, location="file:///w/t/a")]
    result.conclude("succeeded", None)
    result.finished_at = result.started_at + 2
    again = Result.from_dict(result.to_dict())
    assert again.to_dict() | {"worker": None} == result.to_dict() | {"worker": None}


# -- delivery ----------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> WorkerConfig:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work")}))
    return load_config(path, environ={})


def workspace_with(config: WorkerConfig, files: dict[str, bytes]) -> tuple[Path, Result]:
    ws = config.tasks_dir / "t"
    result = Result(task_id="t")
    log = b"the log\n" * 100
    ws.mkdir(parents=True)
    (ws / "task.log").write_bytes(log)
    result.log = LogRecord(len(log), hashlib.sha256(log).hexdigest(), False, 0)
    for name, data in files.items():
        (ws / "artifacts" / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / "artifacts" / name).write_bytes(data)
    return ws, result


def test_upload_items_name_each_file_and_the_compressed_log(config: WorkerConfig) -> None:
    ws, result = workspace_with(config, {"a.bin": b"aaa", "tree/x.txt": b"x"})
    digest = hashlib.sha256
    result.artifacts = [
        ArtifactRecord("a.bin", "/out/a.bin", "file", False, True, 3, digest(b"aaa").hexdigest()),
        ArtifactRecord("tree", "/out/tree", "directory", False, True, 1, "m", files=[FileRecord("x.txt", 1, digest(b"x").hexdigest())]),
        ArtifactRecord("empty", "/out/empty", "directory", True, True, 0, "m", files=[]),
        ArtifactRecord("gone", "/out/gone", "file", True, False),
    ]
    items = delivery.upload_items(config, ws, result)
    assert [i.remote_name for i in items] == ["task.log.zst", "a.bin", "tree/x.txt"]
    assert result.log is not None and result.log.compression == "zstd"
    assert items[0].size == result.log.compressed_size < result.log.size
    assert all(i.local_path.is_file() for i in items)


class Failing:
    def upload(self, task_id: str, items: Any, report: Any) -> dict[str, str]:
        raise OSError("the warehouse is on fire")

    def location(self, task_id: str, name: str) -> str:
        raise AssertionError("no location for what was not delivered")


def test_a_failed_delivery_waits_in_pending_and_keeps_every_local_copy(config: WorkerConfig) -> None:
    ws, result = workspace_with(config, {"a.bin": b"aaa"})
    result.artifacts = [ArtifactRecord("a.bin", "/out/a.bin", "file", False, True, 3, hashlib.sha256(b"aaa").hexdigest())]
    assert delivery.ship(config, Failing(), "sftp://u@h/x/", ws, result, lambda m, **f: None) is False  # type: ignore[arg-type]
    assert (result.state, result.reason) == ("exception", "upload-failed")
    assert "the warehouse is on fire" in (result.message or "") and "farmhand pending list" in (result.message or "")
    entry = config.pending_dir / "t"
    assert (entry / "files" / "a.bin").read_bytes() == b"aaa"
    assert (entry / "files" / "task.log.zst").is_file()
    delivery.drop_local_copies(ws, config)  # only ever called after a delivery; the pending entry holds its own links
    assert (entry / "files" / "a.bin").read_bytes() == b"aaa"


def test_nothing_to_upload_means_no_upload_stage() -> None:
    result = Result(task_id="t")
    assert not delivery.has_anything(result)
    result.artifacts = [ArtifactRecord("e", "/out/e", "directory", True, True, 0, "m", files=[])]
    assert not delivery.has_anything(result)
    result.log = LogRecord(0, "e3" * 32, False, 0)
    assert delivery.has_anything(result)


def test_why_a_log_is_incomplete_reaches_the_result() -> None:
    run = outcome(0, complete=False)
    run.log.warnings.append("Docker rotated the head of this task's log away while no worker read it")
    result = Result(task_id="t")
    record_run(result, TASK, run)
    assert result.warnings[0] == "log: Docker rotated the head of this task's log away while no worker read it"
    assert any("may be incomplete" in w for w in result.warnings)
