"""The engine's order of stages and its resume, with Docker replaced by a fake boundary.

The fake stands where the engine meets Docker (images, the task's container,
services and caches, artifact collection, cleanup); everything else is real:
the task contract, the policy, the result, checkpoints, compression, the
file:// warehouse and pending/. A worker "killed" at a step is a
``Killed`` (a BaseException, as SIGKILL leaves no chance to clean up) raised
there; a second engine then resumes from what is on disk.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from farmhand import artifacts as real_artifacts
from farmhand import delivery, engine, prepare
from farmhand.artifacts import Collected, FileEntry
from farmhand.config import WorkerConfig, load_config
from farmhand.logpump import LogSummary
from farmhand.run_outcome import RunOutcome
from farmhand.uploaders import UploadItem

LOG = b"line one\nline two\n"
REPORT = b"the artifact\n"


class Killed(BaseException):
    """The worker process dies here."""


class FakeDocker:
    """The Docker side of a task: one container per task id, its log and its files."""

    def __init__(self) -> None:
        self.containers: dict[str, str] = {}  # task id -> container id
        self.calls: list[str] = []
        self.die_at: str | None = None
        self.exit_code = 0
        self.known: list[Any] = []  # what each cleanup was told the task's containers are (None: find them by label)

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if self.die_at == name:
            self.die_at = None
            raise Killed(name)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(prepare, "ensure_image", self.ensure_image)
        monkeypatch.setattr(prepare.image_usage, "local_id", lambda client, ref: None)  # nothing is on the fake host before its pull
        monkeypatch.setattr(engine, "run_container", self.run_container)
        monkeypatch.setattr(engine, "adopt_container", self.adopt_container)
        fake_sandbox = SimpleNamespace(
            task_labels=lambda tid, role: {"farmhand.task-id": tid, "farmhand.role": role},
            ensure_caches=lambda client, caches: {},
            start_service=lambda *a, **k: None,
            find_task_container=self.find_task_container,
            cleanup=self.cleanup,
        )
        monkeypatch.setattr(engine, "sandbox", fake_sandbox)
        monkeypatch.setattr(prepare, "sandbox", fake_sandbox)
        monkeypatch.setattr(engine, "artifact_stage", SimpleNamespace(collect=self.collect, record_collection=real_artifacts.record_collection))

    # -- the boundary --------------------------------------------------------------
    def ensure_image(self, client: Any, config: Any, image: str, pull: str, report: Any) -> str:
        self._step("pull")
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest()

    def _outcome(self, task: Any, log_path: Path) -> RunOutcome:
        log_path.write_bytes(LOG)
        summary = LogSummary(log_path, len(LOG), hashlib.sha256(LOG).hexdigest(), False, 0, True)
        return RunOutcome(self.containers[task.task_id], self.exit_code, False, None, summary, {"samples": 0})

    def run_container(self, client: Any, config: Any, task: Any, options: dict[str, Any], labels: dict[str, str], log_path: Path, report: Any, cancel: Any = None) -> RunOutcome:
        self.containers[task.task_id] = f"c-{task.task_id}"
        self._step("run")
        return self._outcome(task, log_path)

    def adopt_container(self, client: Any, config: Any, task: Any, container: Any, log_path: Path, report: Any, cancel: Any = None) -> RunOutcome:
        self._step("adopt")
        return self._outcome(task, log_path)

    def find_task_container(self, client: Any, task_id: str) -> Any:
        cid = self.containers.get(task_id)
        return SimpleNamespace(id=cid) if cid else None

    def collect(self, container: Any, specs: Any, dest_dir: Path, max_bytes: Any, max_files: Any) -> list[Collected]:
        self._step("collect")
        out = []
        for spec in specs:
            dest_dir.mkdir(parents=True, exist_ok=True)
            (dest_dir / spec.name).write_bytes(REPORT)
            entry = FileEntry("", len(REPORT), hashlib.sha256(REPORT).hexdigest())
            out.append(Collected(spec=spec, local_path=dest_dir / spec.name, present=True, files=[entry]))
        return out

    def cleanup(self, client: Any, task_id: str, known: Any = None) -> list[str]:
        self._step("cleanup")
        self.known.append(known)
        self.containers.pop(task_id, None)
        return []


class FakeClient:
    def __init__(self, docker: FakeDocker) -> None:
        self.containers = SimpleNamespace(get=lambda cid: SimpleNamespace(id=cid))


@pytest.fixture
def config(tmp_path: Path) -> WorkerConfig:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), "images": {"allowed": ["farmhand-test/*"]}}))
    return load_config(path, environ={})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    docker = FakeDocker()
    docker.install(monkeypatch)
    return docker


def task_doc(**over: Any) -> dict[str, Any]:
    doc = {
        "task_id": "t1",
        "image": "farmhand-test/busybox:latest",
        "command": ["true"],
        "max_run_time": 60,
        "network": "none",
        "artifacts": [{"path": "/out/report.txt", "name": "report.txt"}],
    }
    return {**doc, **over}


def new_engine(config: WorkerConfig, fake: FakeDocker) -> engine.Engine:
    return engine.Engine(config, FakeClient(fake))  # type: ignore[arg-type]


def warehouse(config: WorkerConfig) -> Path:
    return config.working_dir / "warehouse" / "t1"


def assert_delivered(config: WorkerConfig, doc: dict[str, Any]) -> None:
    assert (doc["state"], doc["reason"]) == ("succeeded", None), doc["message"]
    assert (warehouse(config) / "report.txt").read_bytes() == REPORT
    assert (warehouse(config) / "task.log.zst").is_file()
    assert doc["artifacts"][0]["location"] == (warehouse(config) / "report.txt").as_uri()
    assert doc["log"]["location"] == (warehouse(config) / "task.log.zst").as_uri()
    ws = config.tasks_dir / "t1"
    assert json.loads((ws / "result.json").read_text())["state"] == "succeeded"
    assert not (ws / "checkpoint.json").exists()
    assert not (ws / "artifacts").exists() and not (ws / "task.log").exists(), "local copies go once delivered"


# -- one run ---------------------------------------------------------------------------


def test_a_run_goes_through_every_stage_in_order(config: WorkerConfig, fake: FakeDocker) -> None:
    result = new_engine(config, fake).run(task_doc())
    assert fake.calls == ["pull", "run", "collect", "cleanup"]
    assert list(result.stages) == ["prepare", "run", "collect", "cleanup", "upload"]
    assert fake.known == [["c-t1"]], "the container this process made is removed without a listing"
    assert_delivered(config, result.to_dict())


def test_an_invalid_task_ends_in_prepare_with_nothing_made(config: WorkerConfig, fake: FakeDocker) -> None:
    result = new_engine(config, fake).run(task_doc(max_run_time="long"))
    assert (result.state, result.reason) == ("exception", "invalid-task")
    assert fake.calls == [] and list(result.stages) == ["prepare"]
    assert not (config.tasks_dir / "t1").exists()


def test_a_failed_run_still_collects_cleans_up_and_uploads(config: WorkerConfig, fake: FakeDocker) -> None:
    fake.exit_code = 3
    doc = new_engine(config, fake).run(task_doc()).to_dict()
    assert (doc["state"], doc["reason"], doc["exit_code"]) == ("failed", "nonzero-exit", 3)
    assert fake.calls == ["pull", "run", "collect", "cleanup"]
    assert (warehouse(config) / "report.txt").read_bytes() == REPORT


def test_a_cancel_before_the_run_starts_no_container(config: WorkerConfig, fake: FakeDocker) -> None:
    eng = new_engine(config, fake)
    eng.cancel("worker-shutdown")
    result = eng.run(task_doc())
    assert (result.state, result.reason) == ("exception", "worker-shutdown")
    assert "run" not in fake.calls and "cleanup" in fake.calls
    assert fake.known == [None]


# -- killed at each step, then resumed -----------------------------------------------------


@pytest.mark.parametrize(
    ("die_at", "resumed_calls"),
    [
        ("run", ["cleanup", "pull", "run", "collect", "cleanup"]),  # no container was made: what there is goes, then start over
        ("collect", ["collect", "cleanup"]),
        ("cleanup", ["cleanup"]),
    ],
)
def test_a_task_killed_at_a_docker_step_is_carried_on_from_there(
    config: WorkerConfig, fake: FakeDocker, monkeypatch: pytest.MonkeyPatch, die_at: str, resumed_calls: list[str]
) -> None:
    fake.die_at = die_at
    if die_at == "run":
        monkeypatch.setattr(engine, "run_container", _dies_before_create(fake))
    with pytest.raises(Killed):
        new_engine(config, fake).run(task_doc())
    fake.calls.clear()
    doc = new_engine(config, fake).resume(task_doc(), task_id="t1").to_dict()
    assert fake.calls == resumed_calls
    if die_at != "run":
        assert fake.known[-1] is None, "a resumed task's containers are found by label"
    assert_delivered(config, doc)


def _dies_before_create(fake: FakeDocker) -> Any:
    original = fake.run_container

    def run_container(*args: Any, **kwargs: Any) -> RunOutcome:
        if fake.die_at == "run":
            fake.die_at = None
            raise Killed("run")
        return original(*args, **kwargs)

    return run_container


def test_a_task_killed_while_its_container_runs_is_re_adopted(config: WorkerConfig, fake: FakeDocker) -> None:
    fake.die_at = "run"  # dies after the container exists
    with pytest.raises(Killed):
        new_engine(config, fake).run(task_doc())
    fake.calls.clear()
    doc = new_engine(config, fake).resume(task_doc(), task_id="t1").to_dict()
    assert fake.calls == ["adopt", "collect", "cleanup"]
    assert any("resumed after the worker restarted (in its run stage)" in w for w in doc["warnings"])
    assert_delivered(config, doc)


class DyingUploader:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def upload(self, task_id: str, items: list[UploadItem], report: Any) -> dict[str, str]:
        self.inner.upload(task_id, items, report)
        raise Killed("after the warehouse has every file")

    def location(self, task_id: str, name: str) -> str:
        return self.inner.location(task_id, name)


def test_a_task_killed_after_its_upload_is_delivered_not_failed(config: WorkerConfig, fake: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.uploader_for
    monkeypatch.setattr(engine, "uploader_for", lambda target, cfg: DyingUploader(real(target, cfg)))
    with pytest.raises(Killed):
        new_engine(config, fake).run(task_doc())
    monkeypatch.setattr(engine, "uploader_for", real)
    fake.calls.clear()
    doc = new_engine(config, fake).resume(task_doc(), task_id="t1").to_dict()
    assert fake.calls == [], "nothing of Docker is touched again"
    assert_delivered(config, doc)


def test_a_task_killed_while_dropping_its_local_copies_finishes_them(config: WorkerConfig, fake: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    real = delivery.drop_local_copies

    def dies(workspace: Path, cfg: WorkerConfig) -> None:
        raise Killed("before the local copies went")

    monkeypatch.setattr(delivery, "drop_local_copies", dies)
    with pytest.raises(Killed):
        new_engine(config, fake).run(task_doc())
    saved = json.loads((config.tasks_dir / "t1" / "checkpoint.json").read_text())
    assert (saved["stage"], saved["delivered"]) == ("finish", True)
    monkeypatch.setattr(delivery, "drop_local_copies", real)
    doc = new_engine(config, fake).resume(task_doc(), task_id="t1").to_dict()
    assert "upload" in doc["stages"], "the upload's record survives the restart"
    assert_delivered(config, doc)


def test_a_finished_task_resumes_into_its_stored_result(config: WorkerConfig, fake: FakeDocker) -> None:
    first = new_engine(config, fake).run(task_doc()).to_dict()
    fake.calls.clear()
    again = new_engine(config, fake).resume(task_doc(), task_id="t1").to_dict()
    assert fake.calls == []
    for key in ("state", "reason", "artifacts", "log", "stages", "started_at", "finished_at"):
        assert again[key] == first[key], key


def test_an_upload_that_fails_is_handed_to_pending_and_kept(config: WorkerConfig, fake: FakeDocker, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the warehouse should be")
    path = tmp_path / "config2.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(config.working_dir), "images": {"allowed": ["farmhand-test/*"]}, "upload": {"default": blocked.as_uri() + "/"}}))
    cfg = load_config(path, environ={})
    doc = new_engine(cfg, fake).run(task_doc()).to_dict()
    assert (doc["state"], doc["reason"]) == ("exception", "upload-failed")
    assert doc["stages"]["upload"]["outcome"] == "error"
    entry = cfg.pending_dir / "t1"
    assert (entry / "files" / "report.txt").read_bytes() == REPORT
    ws = cfg.tasks_dir / "t1"
    assert (ws / "artifacts" / "report.txt").read_bytes() == REPORT, "nothing is lost: the workspace keeps its copies"
    assert doc["artifacts"][0]["location"] is None


def test_a_second_run_of_a_task_id_in_progress_is_refused_and_touches_nothing(config: WorkerConfig, fake: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    first_run = fake.run_container

    def run_container(*args: Any, **kwargs: Any) -> RunOutcome:
        calls = len(fake.calls)
        seen["second"] = new_engine(config, fake).run(task_doc(command=["echo", "again"])).to_dict()
        seen["second_calls"] = fake.calls[calls:]
        return first_run(*args, **kwargs)

    monkeypatch.setattr(engine, "run_container", run_container)
    first = new_engine(config, fake).run(task_doc()).to_dict()
    second = seen["second"]
    assert (second["state"], second["reason"]) == ("exception", "duplicate-task-id")
    assert "running on this worker now" in second["message"]
    assert seen["second_calls"] == [], "the refused run pulled, started and cleaned up nothing"
    assert_delivered(config, first)


def test_a_resume_while_another_process_drives_the_task_is_refused(config: WorkerConfig, fake: FakeDocker) -> None:
    fake.die_at = "collect"
    with pytest.raises(Killed):
        new_engine(config, fake).run(task_doc())
    from farmhand.locks import hold

    with hold(config.tasks_dir / "t1" / ".lock", "test"):
        with pytest.raises(engine.TaskProblem, match="another process"):
            new_engine(config, fake).resume(task_doc(), task_id="t1")
    assert_delivered(config, new_engine(config, fake).resume(task_doc(), task_id="t1").to_dict())


@pytest.mark.parametrize("stopper", ["ceiling", "drain"])
def test_a_pull_without_end_is_stopped_by_the_prepare_ceiling_or_a_drain(
    tmp_path: Path, fake: FakeDocker, monkeypatch: pytest.MonkeyPatch, stopper: str
) -> None:
    path = tmp_path / "ceiling.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), "images": {"allowed": ["farmhand-test/*"]}, "limits": {"max_prepare_time": 0.3 if stopper == "ceiling" else 3600}}))
    cfg = load_config(path, environ={})
    eng = new_engine(cfg, fake)

    def endless_pull(client: Any, config: Any, image: str, pull: str, report: Any) -> str:
        if stopper == "drain":
            threading.Timer(0.3, eng.cancel, args=("worker-shutdown",)).start()
        for _ in range(3000):  # a registry that trickles bytes for ever (bounded here: 60 s)
            report("Downloading", {"bytes_done": 1, "bytes_total": 2})
            time.sleep(0.02)
        raise AssertionError("the pull was never stopped")

    monkeypatch.setattr(prepare, "ensure_image", endless_pull)
    doc = eng.run(task_doc()).to_dict()
    reason = "prepare-timeout" if stopper == "ceiling" else "worker-shutdown"
    assert (doc["state"], doc["reason"]) == ("exception", reason), doc["message"]
    assert "while it prepared" in doc["message"]
    assert "run" not in fake.calls and fake.calls[-1] == "cleanup"
