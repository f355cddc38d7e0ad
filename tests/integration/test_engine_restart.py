"""The Docker engine goes away under a running task, or stops answering: the task's run carries on.

A dockerd of the suite's own (``small_dockerd``, with live-restore as the
appliance sets it) is killed with SIGKILL while a task runs, as a crash or
an operator clearing a deadlocked engine ends it, and started again; or it
is stopped with SIGSTOP: an engine that keeps its connections open and
answers nothing. The host's engine is never touched.

The task's shell is named by a marker (``sh -c SCRIPT MARKER``) so the test
finds it among the host's processes: it ends it with SIGUSR1 (the script
traps it) at the moment the test chooses, dockerd down or not.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import docker
import pytest
import yaml

from farmhand import engine_outage
from farmhand.config import WorkerConfig, load_config
from farmhand.dispatch.client import Client
from farmhand.engine import Engine
from farmhand.result import Result
from farmhand.sandbox import TASK_LABEL
from dispatch_support import WorkerProcess
from small_dockerd import SmallDockerd
from support import BUSYBOX, Recorder, read_log, wait_until

#: Prints, then waits for SIGUSR1, then prints again and exits 3.
SCRIPT = "trap 'echo after; exit 3' USR1; echo before; while :; do sleep 0.1; done"


@pytest.fixture(scope="module")
def engine_host(client: docker.DockerClient) -> Iterator[SmallDockerd]:
    dd = SmallDockerd(size_mib=160, extra_args=("--live-restore",))
    try:
        yield dd.start(client)
    finally:
        dd.stop()


def marked_task() -> tuple[str, dict[str, Any]]:
    """A marker and the task whose shell it names: SCRIPT, without a network."""
    marker = f"fh-outage-{uuid.uuid4().hex[:8]}"
    return marker, {"image": BUSYBOX, "pull": "never", "command": ["sh", "-c", SCRIPT, marker], "network": "none", "max_run_time": 120}


def wait_printed_before(dd: SmallDockerd, task_id: str) -> None:
    def printed() -> bool:
        assert dd.client is not None
        found = dd.client.api.containers(quiet=True, filters={"label": f"{TASK_LABEL}={task_id}"})
        return bool(found) and b"before" in dd.client.api.logs(found[0]["Id"])

    wait_until(printed, 60, "the task to print its first line")


def end_command(marker: str) -> None:
    """SIGUSR1 to the task's shell, then wait until it has exited."""
    subprocess.run(["pkill", "-USR1", "-f", marker], check=True)
    wait_until(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0, 60, "the task's command to exit")


class RunningTask:
    """One task on the small engine, run by an Engine in a thread, its shell findable by ``marker``."""

    def __init__(self, config: WorkerConfig, dd: SmallDockerd, client_timeout: int = 60) -> None:
        self.task_id = uuid.uuid4().hex
        self.marker, doc = marked_task()
        self.rec, self._out = Recorder(), []
        engine = Engine(config, docker.DockerClient(base_url=dd.base_url, timeout=client_timeout), self.rec)
        self._thread = threading.Thread(target=lambda: self._out.append(engine.run(doc, task_id=self.task_id)), daemon=True)
        self._thread.start()
        wait_printed_before(dd, self.task_id)

    def end_command(self) -> None:
        end_command(self.marker)

    def said(self, text: str) -> bool:
        return any(e[0] == "progress" and text in e[2] for e in self.rec.events)

    def result(self) -> Result:
        self._thread.join(120)
        assert not self._thread.is_alive(), "the task never finished"
        return self._out[0]


def log_lines(result: Result) -> list[str]:
    assert result.log is not None
    return [line.split(" ", 1)[1] for line in read_log(result.log.location).decode().splitlines()]


def test_a_task_whose_command_ends_while_dockerd_is_down_gets_its_real_exit_code_and_whole_log(engine_host: SmallDockerd, make_config: Any) -> None:
    task = RunningTask(make_config(), engine_host)
    engine_host.restart_after_kill(between=task.end_command)  # the command exits, and prints, while no dockerd runs
    result = task.result()
    # containerd kept the exit status for the restarted engine: the command's own 3, not a lost 255.
    assert (result.state, result.reason, result.exit_code) == ("failed", "nonzero-exit", 3), result.message
    # What the command printed while no dockerd read its pipe, just before it exited, dockerd itself may never
    # log (live-restore's own limit); what it did log is all there, once.
    assert log_lines(result) in (["before"], ["before", "after"])
    assert task.said("the Docker engine went away") and task.said("the Docker engine answers again")


def test_a_task_runs_on_through_an_engine_restart(engine_host: SmallDockerd, make_config: Any) -> None:
    task = RunningTask(make_config(), engine_host)
    engine_host.restart_after_kill()
    wait_until(lambda: task.said("answers again"), 60, "the worker to watch the container again")
    task.end_command()  # it ends after the engine came back
    result = task.result()
    assert (result.state, result.exit_code) == ("failed", 3), result.message
    assert log_lines(result) == ["before", "after"]


def test_an_engine_that_stops_answering_is_reported_and_the_task_goes_on_once_it_answers(
    engine_host: SmallDockerd, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_outage, "PROBE_EVERY", 0.5)
    task = RunningTask(make_config(docker={"timeout": 5}), engine_host, client_timeout=5)
    engine_host.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: task.said("has not answered an inspect"), 60, "the probe to report the engine unanswering")
    finally:
        engine_host.signal(signal.SIGCONT)
    task.end_command()
    result = task.result()
    assert (result.state, result.exit_code) == ("failed", 3), result.message
    assert log_lines(result) == ["before", "after"]


def test_engine_check_restarts_an_engine_that_stays_stuck_and_leaves_a_healthy_one_alone(
    engine_host: SmallDockerd, make_config: Any, tmp_path: Path
) -> None:
    """`farmhand engine-check --restart` as the appliance's timer runs it; the restart command here ends the SIGSTOP."""
    make_config(docker={"base_url": engine_host.base_url, "timeout": 5})
    assert engine_host.client is not None and engine_host.proc is not None
    engine_host.client.containers.run(BUSYBOX, ["sleep", "600"], detach=True, labels={TASK_LABEL: "held"}, network_disabled=True)
    state, restarted = tmp_path / "state.json", tmp_path / "restarted"

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "farmhand", "--config", str(tmp_path / "config.yml"), "engine-check", "--restart",
             "--state", str(state), "--restart-command", f"sh -c 'touch {restarted}; kill -CONT {engine_host.proc.pid}'"],
            capture_output=True, text=True, timeout=120,
        )

    healthy = check()
    assert (healthy.returncode, healthy.stdout.strip()) == (0, "engine-check: the Docker engine answers (3 probes)"), healthy.stderr
    engine_host.signal(signal.SIGSTOP)
    try:
        first = check()
        assert first.returncode == 3 and "stuck (ping: no answer within 5s" in first.stdout and "1 of 2 checks" in first.stdout, first
        assert "containers: no answer within 5s" in first.stdout and not restarted.exists()
        second = check()
    finally:
        engine_host.signal(signal.SIGCONT)
    assert second.returncode == 0 and "2 checks in a row: restarting docker.service" in second.stdout, second
    assert restarted.exists()
    after = check()
    assert after.returncode == 0 and "answers" in after.stdout


def test_a_worker_lives_through_an_engine_crash_reports_its_running_task_once_and_runs_the_next(
    engine_host: SmallDockerd, tmp_path: Path
) -> None:
    """The whole worker (embedded broker) on the small engine: dockerd is killed and started again mid-task."""
    # Its data root is a small tmpfs: no free-space floor, or the node would take no task.
    config = {"docker": {"base_url": engine_host.base_url}, "gc": {"min_free": 0, "min_free_inodes": 0}}
    worker = WorkerProcess(tmp_path, {"CONCURRENCY": "1"}, config).start()
    try:
        (tmp_path / "client.yml").write_text(yaml.safe_dump({"working_dir": str(worker.working_dir)}))
        client = Client(load_config(tmp_path / "client.yml", environ={}))
        marker, doc = marked_task()
        handle = client.submit(doc)
        wait_printed_before(engine_host, handle.task_id)
        engine_host.restart_after_kill()
        wait_until(lambda: "answers again" in worker.log(), 60, "the worker to watch the container again")
        end_command(marker)
        doc = handle.result(timeout=120)
        assert (doc["state"], doc["reason"], doc["exit_code"]) == ("failed", "nonzero-exit", 3), doc
        assert "went away" in worker.log()
        after = client.submit({"image": BUSYBOX, "pull": "never", "command": ["true"], "network": "none", "max_run_time": 60}).result(timeout=120)
        assert after["state"] == "succeeded", after
        assert worker.proc is not None and worker.proc.poll() is None
        wait_until(lambda: worker.journal_reported(handle.task_id), 30, "the worker's journal to record the result as reported")
    finally:
        worker.stop()
