"""Following a running task's log: a real HTTP client on the worker's /tasks/ID/log, `farmhand logs -f`, `farmhand ps`.

The task prints a line (with a secret) and another, then waits until the test lets it go
(a file it polls for, created with `docker exec`), so the first line is read
while the task certainly still runs, and the rest only after.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import docker
import pytest

from dispatch_support import WorkerProcess, discard_left_tasks
from farmhand.client import Client
from farmhand.config import load_config
from farmhand.sandbox import TASK_LABEL
from support import BUSYBOX, free_port, read_log, wait_until

TOKEN = "t0ken-for-the-live-log-test"
SECRET = "hunter2-live-secret"


def gated_task() -> dict[str, Any]:
    return {
        "image": BUSYBOX,
        "pull": "never",
        # The masker holds back the last (longest secret - 1) bytes until more output comes (a secret may be
        # cut across writes): the second line, longer than the secret, releases the whole first one.
        "command": ["sh", "-c", 'echo "first $PASS"; echo "waiting for /tmp/go, then three lines"; while [ ! -e /tmp/go ]; do sleep 0.1; done; for i in 1 2 3; do echo "after $i $PASS"; done'],
        "env": {"PASS": SECRET},
        "secret_env": ["PASS"],
        "max_run_time": 120,
        "network": "none",
    }


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[WorkerProcess, int, Client]]:
    port = free_port()
    worker = WorkerProcess(
        tmp_path, {"CONCURRENCY": "1"}, {"worker": {"metrics_address": f"127.0.0.1:{port}", "api_token": TOKEN}, "logs": {"compression": "none"}}
    ).start()
    cfg = tmp_path / "client.yml"
    cfg.write_text(f"working_dir: {worker.working_dir}\n")
    try:
        yield worker, port, Client(load_config(cfg, environ={}))
    finally:
        worker.stop()
        discard_left_tasks(docker.from_env())


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def release(task_id: str) -> None:
    container = docker.from_env().containers.list(filters={"label": f"{TASK_LABEL}={task_id}"})[0]
    container.exec_run(["touch", "/tmp/go"])


def read_until(reply: http.client.HTTPResponse | Any, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        data = reply.read1(65536)
        assert data, f"the stream ended before {marker!r}: {got!r}"
        got += data
    return got


def test_a_client_follows_a_running_tasks_log_resumes_with_range_and_needs_the_token(node: tuple[WorkerProcess, int, Client]) -> None:
    worker, port, client = node
    handle = client.submit(gated_task())
    for headers in ({}, auth("not-the-token-at-all"), {"Authorization": f"Basic {TOKEN}"}):
        reply = get(port, f"/tasks/{handle.task_id}/log", headers)
        assert reply.status == 401, reply.read()
        reply.read()
    assert get(port, "/tasks").status == 401
    assert get(port, "/metrics").status == 200  # open on loopback

    def listed() -> list[dict[str, Any]]:
        reply = get(port, "/tasks", auth())
        assert reply.status == 200
        return [t for t in json.load(reply)["tasks"] if t["task_id"] == handle.task_id and t["stage"] == "run" and t["status"] == "running" and t["pids"]]

    row = wait_until(listed, 60, "the task to be listed running")[0]
    assert row["image"] == BUSYBOX and row["pids"] >= 1 and row["memory"] > 0 and row["age"] >= 0

    # Follow while it runs: the first line arrives, the reply goes on.
    reply = get(port, f"/tasks/{handle.task_id}/log", auth())
    assert reply.status == 200 and reply.getheader("Transfer-Encoding") == "chunked"
    head = read_until(reply, b"first ***\n")
    assert SECRET.encode() not in head
    reply.close()  # a follower that goes away; it resumes where it was

    resumed = get(port, f"/tasks/{handle.task_id}/log", {**auth(), "Range": f"bytes={len(head)}-"})
    assert resumed.status == 206 and resumed.getheader("Content-Range", "").startswith(f"bytes {len(head)}-")
    release(handle.task_id)
    rest = resumed.read()  # to the end of the chunked body: the task's log is final
    doc = handle.result(timeout=60)
    assert doc["state"] == "succeeded", doc
    stored = read_log(doc["log"]["location"])
    assert head + rest == stored
    assert b"after 3 ***\n" in rest and SECRET.encode() not in rest

    # Finished and delivered: the log is no longer here, and the reply says where it went.
    gone = get(port, f"/tasks/{handle.task_id}/log", auth())
    assert gone.status == 410 and doc["log"]["location"].encode() in gone.read()
    assert get(port, "/tasks/not..a..task/log", auth()).status in (400, 404)


def test_farmhand_logs_follows_and_ps_lists_the_running_task(node: tuple[WorkerProcess, int, Client]) -> None:
    worker, _, client = node
    handle = client.submit(gated_task())
    cli = [sys.executable, "-m", "farmhand", "--config", str(worker.config_path)]

    def running() -> list[dict[str, Any]]:
        out = subprocess.run([*cli, "ps", "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
        return [t for t in json.loads(out)["tasks"] if t["task_id"] == handle.task_id and t["stage"] == "run" and t["status"] == "running" and t["pids"]]

    row = wait_until(running, 60, "`farmhand ps` to list the task running")[0]
    assert row["image"] == BUSYBOX and row["memory"] > 0 and row["pids"] >= 1 and row["status"] == "running"
    table = subprocess.run([*cli, "ps"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert handle.task_id in table and row["container"] in table and "STAGE" in table

    follower = subprocess.Popen([*cli, "logs", "-f", handle.task_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.endswith(b" first ***\n"), first
        assert follower.poll() is None  # still following: the task waits
        release(handle.task_id)
        rest = follower.stdout.read()
        assert follower.wait(60) == 0, follower.stderr.read() if follower.stderr else ""
    finally:
        follower.kill()
        follower.wait()
    doc = handle.result(timeout=60)
    assert first + rest == read_log(doc["log"]["location"])
    assert SECRET.encode() not in first + rest
    # --since after every line: nothing (the log is gone from the host once delivered, so asked of a kept one).
    assert subprocess.run([*cli, "logs", handle.task_id], capture_output=True, timeout=60).returncode == 3  # delivered, dropped here
