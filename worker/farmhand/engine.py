"""Run one task through prepare → run → collect → cleanup → upload and return its result.

This is the whole core, and it knows no dispatcher: it takes a task document
and gives back a ``Result``. Every path out of ``Engine.run`` — success, task
failure, policy denial, Docker trouble, a bug — ends in a result document
written to the task's workspace, with the task's containers removed.

Cleanup runs before upload: helper services and the stopped container should
not outlive the run while bytes travel, and upload only needs the local
workspace.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import docker
from docker.errors import DockerException

from farmhand import artifacts as artifact_stage
from farmhand import pending, policy, sandbox
from farmhand.compress import compress_file
from farmhand.config import WorkerConfig
from farmhand.container_run import RunOutcome, adopt_container, container_options, hardening, resource_options, run_container
from farmhand.errors import Cancelled, ConfigError, PolicyDenied, TaskProblem, UploadFailed
from farmhand.events import NullReporter, Reporter
from farmhand.images import ensure_image
from farmhand.masking import mask_text
from farmhand.network_pool import NetworkPool
from farmhand.result import Result, write_json_atomic
from farmhand.task import Task, parse_task
from farmhand.uploaders import UploadItem, uploader_for

log = logging.getLogger("farmhand.engine")

LOG_NAME = "task.log"
CHECKPOINT_NAME = "checkpoint.json"


def connect_docker(config: WorkerConfig) -> docker.DockerClient:
    """A Docker client for the configured engine, checked to answer."""
    try:
        if config.docker_base_url:
            client = docker.DockerClient(base_url=config.docker_base_url, timeout=int(config.docker_timeout))
        else:
            client = docker.from_env(timeout=int(config.docker_timeout))
        if client.api.base_url.startswith("http+docker://"):
            # A Unix socket has no proxy and no netrc: without this, requests scans the
            # environment and looks for ~/.netrc on each of a task's dozen API calls.
            client.api.trust_env = False
        client.ping()
    except DockerException as exc:
        where = config.docker_base_url or "DOCKER_HOST or /var/run/docker.sock"
        raise ConfigError(f"docker: cannot reach the Docker engine at {where}: {exc}") from exc
    return client


class Engine:
    """Runs one task; make one per task (cancellation is per engine)."""

    def __init__(
        self,
        config: WorkerConfig,
        client: docker.DockerClient,
        reporter: Reporter | None = None,
        networks: NetworkPool | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.reporter: Reporter = reporter or NullReporter()
        # A worker shares one pool between its engines; alone, an engine creates and removes its network.
        self.networks = networks or NetworkPool(client, owner="farmhand")
        self._network: str | None = None
        self._cancel = threading.Event()
        self._cancel_reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the task in progress to stop: the container is stopped, the partial log kept.

        Safe to call from a signal handler or another thread. Checked between
        stages and continuously while the container runs. ``reason`` is what
        the result reports: ``cancelled`` for a person's or dispatcher's
        request, ``worker-shutdown`` when a draining worker runs out of grace.
        """
        self._cancel_reason = reason
        self._cancel.set()

    def _cancel_message(self, when: str) -> str:
        if self._cancel_reason == "worker-shutdown":
            return f"the worker shut down {when} (its drain grace ran out); the partial log is kept"
        return f"the task was cancelled {when}; its partial log is kept"

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(self._cancel_message("before it finished"), reason=self._cancel_reason)

    # -- helpers -----------------------------------------------------------------
    def _say(self, task_id: str, stage: str, message: str, **fields: Any) -> None:
        self._notify("progress", task_id, stage, message, **fields)

    @contextmanager
    def _stage(self, result: Result, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage in the result and tell the reporter when it starts and ends."""
        self._notify("stage_started", result.task_id, name)
        try:
            with result.stage(name) as rec:
                yield rec
        finally:
            rec = result.stages[name]
            self._notify("stage_finished", result.task_id, name, rec["outcome"], rec["duration"])

    def _notify(self, method: str, *args: Any, **fields: Any) -> None:
        try:
            getattr(self.reporter, method)(*args, **fields)
        except Exception:  # noqa: BLE001 - a broken display must not break a task
            log.exception("reporter failed")

    # -- the task ----------------------------------------------------------------
    def run(self, document: Any, *, task_id: str | None = None) -> Result:
        given_id = document.get("task_id") if isinstance(document, dict) else None
        result = Result(task_id=task_id or (given_id if isinstance(given_id, str) else None) or uuid.uuid4().hex)
        task: Task | None = None
        workspace: Path | None = None
        target: str | None = None
        owns_docker_objects = False
        try:
            with self._stage(result, "prepare") as rec:
                task = parse_task(document, task_id=task_id)
                result.task_id = task.task_id
                result.labels = dict(task.labels)
                policy.check(self.config, task)
                target = task.upload or self.config.upload_default
                try:
                    uploader_for(target, self.config)
                except UploadFailed as exc:
                    raise PolicyDenied([f"task.upload: {exc.message}"]) from None
                workspace = self._workspace(task)
                result.workspace = str(workspace)
                write_json_atomic(workspace / "task.json", task.redacted())
                rec["upload_target"] = target
                owns_docker_objects = True
                options = self._prepare_docker(task, result, workspace, target)
            self._check_cancelled()
            self._checkpoint(workspace, result, "run", target)
            with self._stage(result, "run"):
                outcome = self._run(task, options, workspace)
                self._record_run(task, outcome, result)
            self._checkpoint(workspace, result, "collect", target)
            with self._stage(result, "collect"):
                self._collect(task, outcome.container_id, workspace, result)
        except Exception as exc:  # noqa: BLE001 - every path must end in a result
            self._conclude_problem(result, exc)
        return self._finish(task, workspace, target, result, cleanup=owns_docker_objects)

    def resume(self, document: Any, *, task_id: str) -> dict[str, Any]:
        """Carry on a task an earlier worker process accepted, then lost (killed, restarted, upgraded).

        Picks up from what the workspace and Docker say happened: a finished
        task's result is returned as it was; a task past its run is collected,
        cleaned up and uploaded; a running (or exited) container is re-adopted;
        a task whose container never started is prepared and run afresh. The
        workspace's checkpoint.json tells which. Returns the result document.
        """
        workspace = self.config.tasks_dir / task_id
        done = workspace / "result.json"
        if done.exists():
            return json.loads(done.read_text(encoding="utf-8"))
        mark = workspace / CHECKPOINT_NAME
        saved = json.loads(mark.read_text(encoding="utf-8")) if mark.exists() else {"phase": "prepare"}
        self._network = saved.get("network")
        phase = saved["phase"]
        if phase == "prepare":  # it died in prepare: nothing ran, so start over
            self._discard_docker_objects(task_id)
            return self.run(document, task_id=task_id).to_dict()
        result = Result(**saved["result"])
        target = saved["target"]
        task: Task | None = None
        try:
            task = parse_task(document, task_id=task_id)
            if phase in ("run", "collect"):
                container = sandbox.find_task_container(self.client, task_id)
                if container is None and phase == "run":  # it died before creating the container
                    self._discard_docker_objects(task_id)
                    shutil.rmtree(workspace)
                    return self.run(document, task_id=task_id).to_dict()
                if container is None:
                    raise TaskProblem("the task's container was removed before its artifacts were collected", reason="internal-error")
                if phase == "run":
                    with self._stage(result, "run"):
                        outcome = adopt_container(
                            self.client, self.config, task, container, workspace / LOG_NAME,
                            lambda m: self._say(task_id, "run", m), cancel=self._cancel,
                        )
                        self._record_run(task, outcome, result)
                    self._checkpoint(workspace, result, "collect", target)
                with self._stage(result, "collect"):
                    shutil.rmtree(workspace / "artifacts", ignore_errors=True)
                    self._collect(task, container.id, workspace, result)
        except Exception as exc:  # noqa: BLE001 - every path must end in a result
            self._conclude_problem(result, exc)
        result.warnings.append(f"worker: this task was resumed after the worker restarted (in its {phase} stage)")
        return self._finish(task, workspace, target, result, cleanup=True).to_dict()

    def _discard_docker_objects(self, task_id: str) -> None:
        """Before a task starts over: what its earlier attempt made goes, its network back to the pool."""
        sandbox.cleanup(self.client, task_id)
        if self._network is not None:
            self.networks.release(self._network)
            self._network = None

    def _conclude_problem(self, result: Result, exc: Exception) -> None:
        """What ended a task early, as its result says it: the task's problem, Docker's, or a bug of ours."""
        if isinstance(exc, TaskProblem):
            result.conclude(exc.state, exc.reason, exc.message)
        elif isinstance(exc, DockerException):
            result.conclude("exception", "docker-error", f"Docker engine error: {_docker_text(exc)}")
        else:
            log.error("internal error in task %s:\n%s", result.task_id, traceback.format_exc())
            result.conclude("exception", "internal-error", f"internal error: {type(exc).__name__}: {exc}")

    def _checkpoint(self, workspace: Path, result: Result, phase: str, target: str | None) -> None:
        """Save how far the task got, so a worker killed now can resume it (see ``resume``)."""
        write_json_atomic(
            workspace / CHECKPOINT_NAME,
            {"phase": phase, "target": target, "network": self._network, "result": dataclasses.asdict(result)},
        )

    def _finish(self, task: Task | None, workspace: Path | None, target: str | None, result: Result, *, cleanup: bool) -> Result:
        """Cleanup, upload, and the result on disk: the end every path goes through."""
        if cleanup and task is not None:
            with self._stage(result, "cleanup") as rec:
                problems = sandbox.cleanup(self.client, task.task_id)
                if self._network is not None:
                    problems += self.networks.release(self._network)
                    self._network = None
                if problems:
                    rec["outcome"] = "error"
                    result.warnings.extend(f"cleanup: {p}" for p in problems)
        if workspace is not None and task is not None and target is not None:
            self._checkpoint(workspace, result, "upload", target)
            self._upload(task, target, workspace, result)
        if task is not None and result.message:
            result.message = mask_text(result.message, task.secret_values)
        if workspace is not None:
            result.finished_at = time.time()
            try:
                write_json_atomic(workspace / "result.json", result.to_dict())
                (workspace / CHECKPOINT_NAME).unlink(missing_ok=True)
            except OSError as exc:  # the caller still gets the result; say why it is not on disk
                result.warnings.append(f"result.json could not be written to {workspace}: {exc.strerror or exc}")
        return result

    def _workspace(self, task: Task) -> Path:
        ws = self.config.tasks_dir / task.task_id
        if (ws / "result.json").exists():
            raise TaskProblem(f"task_id {task.task_id!r} already ran on this worker (see {ws}/result.json)", reason="duplicate-task-id")
        (ws / "artifacts").mkdir(parents=True, exist_ok=True)
        return ws

    def _prepare_docker(self, task: Task, result: Result, workspace: Path, target: str) -> dict[str, Any]:
        tid = task.task_id

        def pull(image: str, pull_policy: str) -> str:
            def report(status: str, fields: dict[str, int]) -> None:
                self._say(tid, "prepare", f"pulling {image}: {status}", **fields)

            return ensure_image(self.client, self.config, image, pull_policy, report)

        result.image = {"name": task.image, "id": pull(task.image, task.pull)}
        for svc in task.services:
            pull(svc.image, svc.pull)
        if task.network == "bridge":
            self._network = self.networks.acquire()
            # Saved at once, so a worker killed in prepare gives the network back when it starts over.
            self._checkpoint(workspace, result, "prepare", target)
        network = self._network
        volumes = sandbox.ensure_caches(self.client, task.caches)
        # Services get the same hardening as the task and the host's default limits.
        service_options = {**hardening(self.config), **resource_options(self.config.default_resources)}
        for svc in task.services:
            assert network is not None  # checked by the task contract
            sandbox.start_service(self.client, tid, svc, network, service_options, lambda m: self._say(tid, "prepare", m))
        resources = policy.effective_resources(self.config, task)
        return container_options(self.config, task, resources, network, volumes)

    def _run(self, task: Task, options: dict[str, Any], workspace: Path) -> RunOutcome:
        labels = {**{f"farmhand.label.{k}": v for k, v in task.labels.items()}, **sandbox.task_labels(task.task_id, "task")}
        return run_container(
            self.client,
            self.config,
            task,
            options,
            labels,
            workspace / LOG_NAME,
            lambda m: self._say(task.task_id, "run", m),
            cancel=self._cancel,
        )

    def _record_run(self, task: Task, outcome: RunOutcome, result: Result) -> None:
        result.exit_code = outcome.exit_code
        result.usage = outcome.usage
        code = outcome.exit_code
        result.log = {
            "location": None,
            "size": outcome.log.size,
            "sha256": outcome.log.sha256,
            "truncated": outcome.log.truncated,
            "dropped_bytes": outcome.log.dropped_bytes,
        }
        if outcome.stopped_for == "cancelled":
            result.conclude("exception", self._cancel_reason, self._cancel_message("while it ran"))
        elif outcome.stopped_for == "max-run-time":
            result.conclude("failed", "max-run-time", f"stopped after max_run_time of {task.max_run_time}s")
        elif outcome.stopped_for == "idle-timeout":
            result.conclude("failed", "idle-timeout", f"stopped after {task.idle_timeout}s without output (idle_timeout)")
        elif outcome.oom_killed and code != 0:
            result.conclude("failed", "oom-killed", "the container ran out of memory and was killed (memory limit reached)")
        elif code == 0:
            result.conclude("succeeded", None)
            if outcome.oom_killed:
                result.warnings.append("run: a process of the task was killed for lack of memory, but the command exited 0")
        elif code in task.retry_on_exit_codes:
            result.conclude("exception", "intermittent", f"exit code {code} is listed in retry_on_exit_codes")
        else:
            result.conclude("failed", "nonzero-exit", f"the command exited with code {code}")
        if not outcome.log.complete:
            result.warnings.append("log: the output stream did not end cleanly; the log may be incomplete")

    def _collect(self, task: Task, container_id: str, workspace: Path, result: Result) -> None:
        if not task.artifacts:
            return
        container = self.client.containers.get(container_id)
        collected = artifact_stage.collect(container, task.artifacts, workspace / "artifacts", self.config.artifacts_max_bytes)
        failed = [i for i in collected if not i.present and not i.spec.optional]
        for item in collected:
            for skipped in item.skipped:
                result.warnings.append(f"artifact {item.spec.name!r}: {skipped}")
            if item.problem and item.spec.optional and item.problem_reason != "artifact-missing":
                result.warnings.append(item.problem)
        result.artifacts = [self._artifact_record(i) for i in collected]
        problems = [i.problem or f"artifact {i.spec.name!r} is missing" for i in failed]
        if failed and result.state == "succeeded":
            severity = ["artifact-too-large", "artifact-invalid", "artifact-missing"]
            reason = min((i.problem_reason or "artifact-missing" for i in failed), key=severity.index)
            result.conclude("failed", reason, "; ".join(problems))
        elif failed:
            result.warnings.extend(problems)

    @staticmethod
    def _artifact_record(item: artifact_stage.Collected) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "name": item.spec.name,
            "path": item.spec.path,
            "type": item.spec.type,
            "optional": item.spec.optional,
            "present": item.present,
            "size": item.size if item.present else None,
            "sha256": item.sha256,
            "location": None,
        }
        if item.problem:
            rec["problem"] = item.problem
        if item.present and item.spec.type == "directory":
            rec["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in item.files]
        if item.skipped:
            rec["skipped"] = item.skipped
        return rec

    def _upload(self, task: Task, target: str, workspace: Path, result: Result) -> None:
        """Ship the log (compressed) and artifacts; on failure hand them to pending/ so they are never lost.

        Works from the result alone (its log and artifact records), so a
        resumed task uploads exactly what the earlier process collected.
        Progress (bytes, total, rate) goes to the reporter and into the upload
        stage's record as ``progress``, for whoever watches the stage.
        """
        items: list[UploadItem] = []
        log_path = workspace / LOG_NAME
        local_copies = [log_path, workspace / "artifacts"]
        log_name = LOG_NAME
        shipped = [a for a in result.artifacts if a["present"] and (a["type"] == "file" or a.get("files"))]
        if result.log is None and not shipped:
            return  # nothing ran and nothing was collected: no upload stage
        with self._stage(result, "upload") as rec:
            uploader = uploader_for(target, self.config)
            if result.log is not None:
                log_item = self._compressed_log(log_path, result)
                log_name = log_item.remote_name
                local_copies.append(log_item.local_path)
                items.append(log_item)
            for art in shipped:
                local = workspace / "artifacts" / art["name"]
                if art["type"] == "file":
                    items.append(UploadItem(local, art["name"], art["size"], art["sha256"]))
                else:
                    items.extend(UploadItem(local / f["path"], f"{art['name']}/{f['path']}", f["size"], f["sha256"]) for f in art["files"])

            def report(message: str, **fields: Any) -> None:
                if "bytes_total" in fields:
                    rec["progress"] = {k: fields[k] for k in ("bytes_done", "bytes_total", "rate") if k in fields}
                self._say(task.task_id, "upload", message, **fields)

            try:
                uploader.upload(task.task_id, items, report)
            except Exception as exc:  # noqa: BLE001 - never lose the files, whatever failed
                rec["outcome"] = "error"
                text = exc.message if isinstance(exc, TaskProblem) else f"upload failed: {type(exc).__name__}: {exc}"
                try:
                    entry = pending.hand_off(self.config, task.task_id, target, items, error=text, workspace=workspace, local_copies=local_copies)
                    kept = f"the files are kept in {workspace} and in {entry.path}, and will be uploaded again in the background (farmhand pending list)"
                except OSError as keep_exc:
                    kept = f"the files are kept in {workspace} (they could not be queued in {self.config.pending_dir}: {keep_exc})"
                result.conclude("exception", "upload-failed", f"{text}; {kept}")
                return
            if result.log is not None:
                result.log["location"] = uploader.location(task.task_id, log_name)
            for art in result.artifacts:
                if art["present"]:
                    suffix = "/" if art["type"] == "directory" else ""
                    art["location"] = uploader.location(task.task_id, art["name"]) + suffix
            if not self.config.keep_local:
                for path in local_copies:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def _compressed_log(self, log_path: Path, result: Result) -> UploadItem:
        """The log as it will travel: compressed per ``logs.compression``, or as is when that is off or fails."""
        assert result.log is not None
        method = self.config.log_compression
        plain = UploadItem(log_path, LOG_NAME, result.log["size"], result.log["sha256"])
        if method == "none":
            return plain
        try:
            packed = compress_file(log_path, method)
        except OSError as exc:  # a full local disk must not cost the log: send it uncompressed
            result.warnings.append(f"log: could not be compressed ({exc.strerror or exc}); uploaded uncompressed")
            return plain
        result.log.update(compression=method, compressed_size=packed.size, compressed_sha256=packed.sha256)
        return UploadItem(packed.path, packed.path.name, packed.size, packed.sha256)


def _docker_text(exc: DockerException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text)
