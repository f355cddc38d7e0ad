"""Celery's own tools see a farmhand node: the `celery` command line (inspect, control terminate) and
Flower's HTTP API, against a real RabbitMQ and a real `farmhand worker`, which logs as JSON (--log-format json).

The app is addressed as an operator would: `celery -A farmhand.dispatch.app`, with the host's config
($FARMHAND_CONFIG, BROKER_URL...) as `farmhand worker` reads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import docker
import pytest
import redis as redis_lib

from dispatch_support import RabbitMQ, Redis, WorkerProcess, discard_left_tasks, sleep_task, wait_until
from farmhand.client import Client
from farmhand.config import load_config
from support import free_port, wait_for_port

CELERY = str(Path(sys.executable).parent / "celery")
APP = "farmhand.dispatch.app"
JSON_KEYS = {"time", "level", "task_id", "stage", "event", "message"}


class Brokers:
    """RabbitMQ, and Redis for results, shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.rabbitmq = RabbitMQ(root / "rabbitmq").start()
        self.redis = Redis(root / "redis").start()

    def stop(self) -> None:
        self.rabbitmq.stop()
        self.redis.stop()


class Node:
    """One worker logging JSON, a client, and the environment an operator's shell would have."""

    def __init__(self, root: Path, brokers: Brokers) -> None:
        self.redis = brokers.redis
        env = {"BROKER_URL": brokers.rabbitmq.url, "RESULT_BACKEND": brokers.redis.url, "CONCURRENCY": "2", "QUEUES": "default"}
        self.worker = WorkerProcess(root, env, args=("--log-format", "json")).start()
        self.env = {**os.environ, **env, "FARMHAND_CONFIG": str(self.worker.config_path)}
        self.client = Client(load_config(self.worker.config_path, environ=self.env))

    def celery(self, *args: str) -> Any:
        """One `celery` command, its --json output parsed."""
        out = subprocess.run([CELERY, "-A", APP, *args, "--json"], env=self.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"celery {' '.join(args)}: {out.stdout}{out.stderr}"
        return json.loads(out.stdout.strip().splitlines()[-1])

    def inspect(self, what: str, *args: str) -> Any:
        """The worker's answer to `celery inspect WHAT`."""
        replies = self.celery("inspect", what, *args, "-d", self.worker.node_name, "--timeout", "5")
        assert self.worker.node_name in replies, replies
        return replies[self.worker.node_name]

    def stop(self) -> None:
        """SIGTERM leaves task containers behind by design: a failed test's are removed here."""
        self.worker.stop()
        discard_left_tasks(docker.from_env())


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    b = Brokers(tmp_path_factory.mktemp("celery-tools"))
    yield b
    b.stop()


@pytest.fixture
def node(brokers: Brokers, tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, brokers)
    yield n
    n.stop()


def secret_task(seconds: float) -> tuple[dict[str, Any], str]:
    secret = f"s3cret-{uuid.uuid4().hex}"
    return sleep_task(seconds, env={"TOKEN": secret}, secret_env=["TOKEN"]), secret


class FinalResults:
    """Final results stored for a task: the Redis backend publishes each store on the task's key."""

    def __init__(self, url: str, task_id: str) -> None:
        self.pubsub = redis_lib.Redis.from_url(url).pubsub()
        self.pubsub.subscribe(f"celery-task-meta-{task_id}")
        self.seen: list[str] = []

    def states(self) -> list[str]:
        while (msg := self.pubsub.get_message(timeout=0.2)) is not None:
            if msg.get("type") == "message":
                state = json.loads(msg["data"]).get("status")
                if state in ("SUCCESS", "FAILURE", "REVOKED"):
                    self.seen.append(state)
        return self.seen


def test_celery_inspect_sees_the_task_and_revoke_terminate_cancels_it_like_farmhand_cancel(node: Node) -> None:
    assert node.inspect("ping") == {"ok": "pong"}
    task, secret = secret_task(300)
    task_id = uuid.uuid4().hex
    finals = FinalResults(node.redis.url, task_id)
    handle = node.client.submit(task, task_id=task_id)
    wait_until(lambda: handle.state == "running", 60, "the task to run")
    wait_until(lambda: "started" in node.worker.log(), 30, "the task's first output")  # the partial log has a line

    active = node.inspect("active")
    assert [(t["id"], t["name"]) for t in active] == [(task_id, "farmhand.run_task")]
    assert "***" in json.dumps(active), "the task's arguments are shown, masked"
    shown = [active, node.inspect("reserved"), node.inspect("query_task", task_id)]
    assert node.inspect("query_task", task_id)[task_id][0] == "active"

    # Celery 5's command line says revoke --terminate as `control terminate SIGNAL ID`.
    reply = node.celery("control", "terminate", "TERM", task_id, "-d", node.worker.node_name, "--timeout", "5")
    assert f"terminate: {task_id}" in json.dumps(reply), reply
    doc = handle.result(timeout=60)
    assert (doc["state"], doc["reason"]) == ("exception", "cancelled"), doc
    assert doc["log"]["location"] and doc["log"]["size"] > 0, "the partial log is kept"
    assert task_id in node.inspect("revoked")
    wait_until(lambda: node.worker.journal_reported(task_id), 30, "the result to be reported")
    wait_until(lambda: not node.inspect("active"), 30, "the task to leave the active list")
    assert finals.states() == ["FAILURE"], "one result, the node's own, and no REVOKED beside it"
    for what, text in [("inspect", json.dumps(shown)), ("worker log", node.worker.log())]:
        assert secret not in text, f"the secret shows in {what}"


def flower_get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def flower_task(port: int, task_id: str) -> dict[str, Any] | None:
    try:
        return flower_get(port, f"/api/task/info/{task_id}")
    except urllib.error.HTTPError as exc:  # 404 until Flower has heard of it
        if exc.code == 404:
            return None
        raise


def test_flower_shows_a_finished_task_and_no_secret(node: Node, tmp_path: Path) -> None:
    port = free_port()
    flower = subprocess.Popen(
        [CELERY, "-A", APP, "flower", "--address=127.0.0.1", f"--port={port}", "--persistent=False"],
        env={**node.env, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=open(tmp_path / "flower.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=60)
        # Flower knows only what it hears: a first task, once seen finished, shows it listens to the events.
        warmup = node.client.submit(sleep_task(0))
        wait_until(lambda: (flower_task(port, warmup.task_id) or {}).get("state") == "SUCCESS", 60, "Flower to see a first task")
        task, secret = secret_task(0)
        handle = node.client.submit(task)
        assert handle.result(timeout=60)["state"] == "succeeded"
        info = wait_until(lambda: (t := flower_task(port, handle.task_id)) and t.get("state") == "SUCCESS" and t, 60, "Flower to see the task succeed")
        assert (info["uuid"], info["name"], info["worker"]) == (handle.task_id, "farmhand.run_task", node.worker.node_name)
        assert "***" in info["args"], "the arguments are shown, masked"
        listed = flower_get(port, "/api/tasks")
        assert listed[handle.task_id]["state"] == "SUCCESS"
        for what, text in [("task info", json.dumps(info)), ("task list", json.dumps(listed))]:
            assert secret not in text, f"the secret shows in Flower's {what}"
    finally:
        flower.terminate()
        flower.wait(20)


def test_every_line_the_worker_logs_is_json_and_a_tasks_lines_name_it(node: Node) -> None:
    handle = node.client.submit(sleep_task(0))
    assert handle.result(timeout=60)["state"] == "succeeded"
    wait_until(lambda: node.worker.journal_reported(handle.task_id), 30, "the result to be reported")
    lines = [json.loads(line) for line in node.worker.log().splitlines()]  # a line that is no JSON fails here
    assert all(JSON_KEYS <= set(line) for line in lines), [line for line in lines if not JSON_KEYS <= set(line)][:3]
    mine = [line for line in lines if line["task_id"] == handle.task_id]
    assert {(line["stage"], line["event"]) for line in mine} >= {("prepare", "stage-started"), ("run", "stage-started"), ("run", "stage-finished")}
    celery_lines = [line for line in lines if line["logger"].startswith("celery")]
    assert any(line["message"].endswith(" ready.") for line in celery_lines), "Celery's own lines come out as JSON too"
    assert any(line["task_id"] == handle.task_id and "received" in line["message"] for line in celery_lines)


def test_a_task_the_worker_adopted_after_a_restart_is_active_and_revoke_terminate_cancels_it(node: Node) -> None:
    """A re-adopted task has no Celery request of its own: the node lists it as active and cancels it all the same."""
    handle = node.client.submit(sleep_task(300))
    wait_until(lambda: handle.state == "running", 60, "the task to run")
    node.worker.kill9()
    node.worker.start()
    wait_until(lambda: f"resuming task {handle.task_id}" in node.worker.log(), 30, "the new worker to adopt the task")
    (shown,) = node.inspect("active")
    assert (shown["id"], shown["name"], shown["resumed"]) == (handle.task_id, "farmhand.run_task", True), shown
    # As Flower's terminate button and scripts say it: revoke(terminate=True).
    reply = node.client.app.control.revoke(handle.task_id, terminate=True, destination=[node.worker.node_name], reply=True, timeout=5)
    assert f"terminate: {handle.task_id}" in json.dumps(reply), reply
    doc = handle.result(timeout=60)
    assert (doc["state"], doc["reason"]) == ("exception", "cancelled"), doc
