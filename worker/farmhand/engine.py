"""Run one task through its stages and return its result; carry on a task an earlier process left.

This is the whole core, and it knows no dispatcher: it takes a task document
and gives back a ``Result``. Every path out of ``Engine.run`` — success, task
failure, policy denial, Docker trouble, a bug — ends in a result document
written to the task's workspace, with the task's containers removed.

The engine keeps only the order of the stages (``STAGES``); what each one
decides lives beside its data: the run's verdict in ``run_outcome``, the
artifacts' in ``artifacts``, delivery or ``pending/`` in ``delivery``. A
checkpoint naming the next stage is written before each stage, so a worker
killed at any point carries the task on from there (``resume`` is ``run``
from the checkpoint's stage). Cleanup runs before upload: helper services and
the stopped container should not outlive the run while bytes travel.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import DockerException

from farmhand import artifacts as artifact_stage
from farmhand import delivery, pending, policy, sandbox
from farmhand.prepare import prepare_docker
from farmhand.checkpoint import CHECKPOINT_NAME, LOCK_NAME, Attempt, load_checkpoint
from farmhand.config import WorkerConfig
from farmhand.container_run import adopt_container, run_container
from farmhand.devices import DevicePool, journaled
from farmhand.docker_client import DOCKER_ERRORS, error_text
from farmhand.engine_outage import gone
from farmhand.errors import Cancelled, PolicyDenied, TaskProblem, UploadFailed, cancel_message
from farmhand.events import NullReporter, Reporter, StageEvents
from farmhand.locks import Held, hold
from farmhand.masking import mask_text
from farmhand.network_pool import NetworkPool
from farmhand.result import Result, write_json_atomic
from farmhand.run_outcome import record_run
from farmhand.task import Task, parse_task
from farmhand.uploaders import uploader_for

log = logging.getLogger("farmhand.engine")

#: Every stage in order. A problem in one of the first three ends the task early; the last three always run.
STAGES = ("prepare", "run", "collect", "cleanup", "upload", "finish")
TASK_STAGES = STAGES[:3]


class Engine:
    """Runs one task; make one per task (cancellation is per engine)."""

    def __init__(
        self,
        config: WorkerConfig,
        client: docker.DockerClient,
        reporter: Reporter | None = None,
        networks: NetworkPool | None = None,
        cache_scope: str = sandbox.LOCAL_SCOPE,
        devices: DevicePool | None = None,
    ) -> None:
        self.config = config
        # The host's loopback devices: a worker discovers them once, at its start; alone, found when a task asks.
        self._devices = devices
        # Whose cache volumes the task reaches: its queue's (farmhand worker), or run-task's "local".
        self.cache_scope = cache_scope
        self.client = client
        self.events = StageEvents(reporter or NullReporter())
        # A worker shares one pool between its engines; alone, an engine creates and removes its network.
        self.networks = networks or NetworkPool(client, owner="farmhand")
        self._cancel = threading.Event()
        self._cancel_reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the task in progress to stop: the container is stopped, the partial log kept.

        Safe to call from a signal handler or another thread. Checked before
        the run and continuously while the container runs. ``reason`` is what
        the result reports: ``cancelled`` for a person's or dispatcher's
        request, ``worker-shutdown`` when a draining worker runs out of grace.
        """
        self._cancel_reason = reason
        self._cancel.set()

    # -- the task ----------------------------------------------------------------
    def run(self, document: Any, *, task_id: str | None = None) -> Result:
        given_id = document.get("task_id") if isinstance(document, dict) else None
        result = Result(task_id=task_id or (given_id if isinstance(given_id, str) else None) or uuid.uuid4().hex)
        return self._drive(Attempt(result, document=document, requested_id=task_id), "prepare")

    def resume(self, document: Any, *, task_id: str) -> Result:
        """Carry on a task an earlier worker process accepted, then lost (killed, restarted, upgraded).

        A finished task's result is returned as it was. Otherwise the
        checkpoint names the stage to go on from; a task whose container never
        started (it died in prepare, or between prepare and the container's
        creation) starts over, since nothing of it ran.
        """
        workspace = self.config.tasks_dir / task_id
        done = workspace / "result.json"
        if done.exists():
            return Result.from_dict(json.loads(done.read_text(encoding="utf-8")))
        try:
            lock = hold(workspace / LOCK_NAME, f"task_id {task_id!r}")
        except Held as exc:
            raise TaskProblem(f"{exc}: another process carries it on", reason="duplicate-task-id") from None
        saved = load_checkpoint(workspace)
        stage = saved["stage"]
        if stage in ("run", "collect"):
            container = sandbox.find_task_container(self.client, task_id)
            if container is None and stage == "run":
                stage = "prepare"  # it died before creating the container
            saved["container_id"] = container.id if container is not None else None
        if stage == "prepare":
            self._discard_docker_objects(task_id, saved.get("network"))
            pending.remove_paths(p for p in workspace.iterdir() if p.name != LOCK_NAME)
            return self._drive(Attempt(Result(task_id), document=document, requested_id=task_id, lock=lock), "prepare")
        attempt = Attempt.from_checkpoint(workspace, saved, document)
        attempt.lock = lock
        if journaled(workspace):  # its loopback devices: kept while its container may use them, never handed to another task
            if stage in ("upload", "finish"):
                self.device_pool().release(workspace)
            else:
                attempt.devices, problems = self.device_pool().readopt(workspace)
                attempt.result.warnings.extend(f"devices: {p}" for p in problems)
        attempt.result.warnings.append(f"worker: this task was resumed after the worker restarted (in its {stage} stage)")
        return self._drive(attempt, stage)

    def _drive(self, attempt: Attempt, first: str) -> Result:
        """The stages from ``first`` on; whatever ends the task early, the closing stages still run."""
        start = STAGES.index(first)
        try:
            return self._stages(attempt, start)
        finally:
            if attempt.lock is not None:
                attempt.lock.close()

    def _stages(self, attempt: Attempt, start: int) -> Result:
        try:
            if attempt.task is None and start > 0:
                attempt.task = parse_task(attempt.document, task_id=attempt.requested_id)
            for name in TASK_STAGES[start:]:
                self._enter(attempt, name)
        except Exception as exc:  # noqa: BLE001 - every path must end in a result
            _conclude_problem(attempt.result, exc)
        for name in STAGES[max(start, len(TASK_STAGES)) :]:
            self._enter(attempt, name)
        return attempt.result

    def _enter(self, attempt: Attempt, name: str) -> None:
        """One stage, after a checkpoint naming it: a worker killed inside it does it again, whatever it destroys."""
        if name == "run" and self._cancel.is_set():
            raise Cancelled(cancel_message(self._cancel_reason, "before it finished"), reason=self._cancel_reason)
        if name != "prepare" and attempt.workspace is not None:
            attempt.checkpoint(name)
        getattr(self, f"_{name}")(attempt)

    # -- the stages, in order --------------------------------------------------------
    def _prepare(self, attempt: Attempt) -> None:
        result = attempt.result
        with self.events.stage(result, "prepare") as rec:
            task = attempt.task = parse_task(attempt.document, task_id=attempt.requested_id)
            result.task_id = task.task_id
            result.labels = {k: mask_text(v, task.secret_values) for k, v in task.labels.items()}
            policy.check(self.config, task)
            attempt.target = task.upload or self.config.upload_default
            try:
                attempt.uploader = uploader_for(attempt.target, self.config)
            except UploadFailed as exc:
                raise PolicyDenied([f"task.upload: {exc.message}"]) from None
            workspace = attempt.workspace = self._workspace(attempt, task)
            result.workspace = str(workspace)
            write_json_atomic(workspace / "task.json", task.redacted())
            rec["upload_target"] = attempt.target
            attempt.owns_docker_objects = True
            # Bounded as a whole (limits.max_prepare_time), and a cancel or a drain reaches it: both stop a pull
            # at its next progress report and a service's readiness wait at once.
            ceiling = threading.Timer(self.config.max_prepare_time, self.cancel, args=("prepare-timeout",))
            ceiling.daemon = True
            ceiling.start()
            try:
                attempt.options = prepare_docker(
                    self.client,
                    self.config,
                    self.networks,
                    attempt,
                    self.events,
                    self._cancel,
                    cache_scope=self.cache_scope,
                    devices=self.device_pool() if task.loopback_devices else None,
                )
            except Cancelled:
                raise Cancelled(cancel_message(self._cancel_reason, "while it prepared"), reason=self._cancel_reason) from None
            finally:
                ceiling.cancel()

    def _run(self, attempt: Attempt) -> None:
        task, result, workspace = attempt.task, attempt.result, attempt.workspace
        assert task is not None and workspace is not None
        log_path = workspace / delivery.LOG_NAME
        with self.events.stage(result, "run"):
            def report(message: str) -> None:
                self.events.say(task.task_id, "run", message)

            if attempt.container_id is not None:  # resumed: the container an earlier process started
                container = self.client.containers.get(attempt.container_id)
                outcome = adopt_container(self.client, self.config, task, container, log_path, report, cancel=self._cancel)
            else:
                assert attempt.options is not None
                labels = {**{f"farmhand.label.{k}": v for k, v in task.labels.items()}, **sandbox.task_labels(task.task_id, "task")}
                outcome = run_container(self.client, self.config, task, attempt.options, labels, log_path, report, cancel=self._cancel)
            attempt.container_id = outcome.container_id
            record_run(result, task, outcome, self._cancel_reason)

    def _collect(self, attempt: Attempt) -> None:
        task, workspace = attempt.task, attempt.workspace
        assert task is not None and workspace is not None
        with self.events.stage(attempt.result, "collect"):
            if not task.artifacts:
                return
            if attempt.container_id is None:
                raise TaskProblem("the task's container was removed before its artifacts were collected", reason="internal-error")
            root = workspace / delivery.ARTIFACTS_DIR
            shutil.rmtree(root, ignore_errors=True)  # what a killed predecessor half-collected
            container = self.client.containers.get(attempt.container_id)
            collected = artifact_stage.collect(container, task.artifacts, root, self.config.artifacts_max_bytes, self.config.artifacts_max_files)
            artifact_stage.record_collection(attempt.result, collected)

    def _cleanup(self, attempt: Attempt) -> None:
        if not attempt.owns_docker_objects or attempt.task is None:
            return
        with self.events.stage(attempt.result, "cleanup") as rec:
            problems = self._discard_docker_objects(attempt.task.task_id, attempt.network, self._made_here(attempt))
            attempt.network = None
            problems += self._release_devices(attempt)
            if problems:
                rec["outcome"] = "error"
                attempt.result.warnings.extend(f"cleanup: {p}" for p in problems)

    def _upload(self, attempt: Attempt) -> None:
        result, workspace, target = attempt.result, attempt.workspace, attempt.target
        if workspace is None or attempt.task is None or target is None:
            return
        if not delivery.has_anything(result):
            return
        with self.events.stage(result, "upload") as rec:
            uploader = attempt.uploader or uploader_for(target, self.config)
            report = delivery.progress_recorder(rec, lambda m, **f: self.events.say(result.task_id, "upload", m, **f))
            attempt.delivered = delivery.ship(self.config, uploader, target, workspace, result, report)
            if not attempt.delivered:
                rec["outcome"] = "error"

    def _finish(self, attempt: Attempt) -> None:
        """Local copies go once delivered (a crash here repeats it: the checkpoint says so), then the result goes to disk."""
        result, workspace = attempt.result, attempt.workspace
        if attempt.task is not None and result.message:
            result.message = mask_text(result.message, attempt.task.secret_values)
        if workspace is None:
            return
        if attempt.delivered:
            delivery.drop_local_copies(workspace, self.config)
        result.finished_at = time.time()
        try:
            write_json_atomic(workspace / "result.json", result.to_dict())
            (workspace / CHECKPOINT_NAME).unlink(missing_ok=True)
        except OSError as exc:  # the caller still gets the result; say why it is not on disk
            result.warnings.append(f"result.json could not be written to {workspace}: {exc.strerror or exc}")

    # -- helpers -----------------------------------------------------------------
    def _workspace(self, attempt: Attempt, task: Task) -> Path:
        """The task's own directory, held by this process alone while it drives the task."""
        ws = self.config.tasks_dir / task.task_id
        if attempt.lock is None:
            try:
                attempt.lock = hold(ws / LOCK_NAME, f"task_id {task.task_id!r}")
            except Held as exc:
                raise TaskProblem(f"{exc}: it is running on this worker now", reason="duplicate-task-id") from None
        if (ws / "result.json").exists():
            raise TaskProblem(f"task_id {task.task_id!r} already ran on this worker (see {ws}/result.json)", reason="duplicate-task-id")
        (ws / delivery.ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
        return ws

    def device_pool(self) -> DevicePool:
        if self._devices is None:
            self._devices = DevicePool.discover(self.config.loopback_video_label, self.config.device_lock_dir)
        return self._devices

    def _release_devices(self, attempt: Attempt) -> list[str]:
        """The task's loopback devices go back once none of its containers is left to use them."""
        if attempt.workspace is None or attempt.task is None or not journaled(attempt.workspace):
            return []
        try:
            left = self.client.api.containers(all=True, quiet=True, filters={"label": f"{sandbox.TASK_LABEL}={attempt.task.task_id}"})
        except DOCKER_ERRORS as exc:
            left, reason = [None], f"its containers cannot be listed: {error_text(exc)}"
        else:
            reason = "a container of the task could not be removed"
        if left:
            return [f"loopback devices {', '.join(journaled(attempt.workspace))} stay held ({reason}); remove the container, then {attempt.workspace / 'devices.json'}"]
        self.device_pool().release(attempt.workspace)
        attempt.devices = []
        return []

    @staticmethod
    def _made_here(attempt: Attempt) -> list[str] | None:
        """The task's containers when this process made every one and knows them: the task's own, no service
        (``options`` exist only where this process prepared the task; a container whose creation failed,
        or left no id, is never known). None: they are found by label."""
        if attempt.options is None or attempt.container_id is None or attempt.task is None or attempt.task.services:
            return None
        return [attempt.container_id]

    def _discard_docker_objects(self, task_id: str, network: str | None, known: list[str] | None = None) -> list[str]:
        """The task's containers go and its network goes back to the pool; returns what could not be removed."""
        problems = sandbox.cleanup(self.client, task_id, known)
        if network is not None:
            problems += self.networks.release(network)
        return problems


def _conclude_problem(result: Result, exc: Exception) -> None:
    """What ended a task early, as its result says it: the task's problem, Docker's, or a bug of ours."""
    if isinstance(exc, TaskProblem):
        result.conclude(exc.state, exc.reason, exc.message)
    elif isinstance(exc, DockerException):
        result.conclude("exception", "docker-error", f"Docker engine error: {error_text(exc)}")
    elif gone(exc) or isinstance(exc, requests.exceptions.Timeout):
        # Not a bug of ours, nor the task's: the engine went away, or left a call unanswered past docker.timeout.
        result.conclude("exception", "docker-error", f"the Docker engine did not answer: {type(exc).__name__}: {exc}")
    else:
        log.error("internal error in task %s:\n%s", result.task_id, traceback.format_exc())
        result.conclude("exception", "internal-error", f"internal error: {type(exc).__name__}: {exc}")
