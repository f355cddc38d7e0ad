"""The dispatcher against real brokers: RabbitMQ and Redis (Debian's servers), and the embedded SQLite default.

Workers are real `farmhand worker` processes; crashes are real SIGKILLs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import pytest
import redis as redis_lib
import yaml

from dispatch_support import MostRunning, RabbitMQ, Redis, LocalPKI, ResultCounter, tcp_client_ports, WorkerProcess, counted_task, discard_left_tasks, runs_of, serving, settled, sleep_task, wait_until
from farmhand.client import Client
from farmhand.config import load_config
from farmhand.sandbox import ROLE_LABEL, TASK_LABEL
from support import BUSYBOX


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    yield from serving(Redis(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    yield from serving(RabbitMQ(tmp_path_factory.mktemp("rabbitmq")))


@pytest.fixture(scope="session")
def rabbitmq_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """RabbitMQ listening on TLS alone and requiring a client certificate of the test CA."""
    yield from serving(RabbitMQ(tmp_path_factory.mktemp("rabbitmq-tls"), tls=LocalPKI(tmp_path_factory.mktemp("pki"))))


class Farm:
    """Workers and a client sharing one broker."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.workers: list[WorkerProcess] = []

    def worker(self, name: str = "w1", concurrency: int = 2, queues: str = "default", config: dict[str, Any] | None = None) -> WorkerProcess:
        w = WorkerProcess(self.root, {**self.env, "CONCURRENCY": str(concurrency), "QUEUES": queues}, config, name)
        self.workers.append(w)
        return w.start()

    def client(self, worker: WorkerProcess | None = None) -> Client:
        """A client configured as an operator's would be: same broker, and (embedded) the same working dir."""
        w = worker or self.workers[0]
        cfg_path = self.root / f"client-{w.root.name}.yml"
        cfg_path.write_text(yaml.safe_dump({"working_dir": str(w.working_dir)}))
        return Client(load_config(cfg_path, environ=self.env))

    def stop(self) -> None:
        """Stop the workers; SIGTERM leaves task containers behind by design, so a failed test's are removed here."""
        for w in self.workers:
            w.stop()
        discard_left_tasks(docker.from_env())


@pytest.fixture
def farm_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Farm]]:
    farms: list[Farm] = []

    def make(env: dict[str, str]) -> Farm:
        farm = Farm(tmp_path, env)
        farms.append(farm)
        return farm

    yield make
    for farm in farms:
        farm.stop()


@pytest.fixture(params=["embedded", "redis", "rabbitmq"])
def farm(request: pytest.FixtureRequest, farm_factory: Callable[[dict[str, str]], Farm]) -> Farm:
    if request.param == "embedded":
        return farm_factory({})
    if request.param == "redis":
        return farm_factory({"BROKER_URL": request.getfixturevalue("redis_server").url})
    return farm_factory({"BROKER_URL": request.getfixturevalue("rabbitmq").url})


@pytest.fixture
def redis_farm(redis_server: Redis, farm_factory: Callable[[dict[str, str]], Farm]) -> Farm:
    return farm_factory({"BROKER_URL": redis_server.url})


def hello(**extra: Any) -> dict[str, Any]:
    return {
        "image": BUSYBOX,
        "pull": "never",
        "command": ["sh", "-c", "echo hello; echo 42 > /answer.txt"],
        "max_run_time": 60,
        "artifacts": [{"path": "/answer.txt", "name": "answer.txt"}],
        **extra,
    }


def test_submit_wait_and_result(farm: Farm) -> None:
    farm.worker()
    client = farm.client()
    handle = client.submit(hello())
    doc = handle.result(timeout=60)
    assert doc["state"] == "succeeded", doc
    assert doc["task_id"] == handle.task_id
    assert doc["artifacts"][0]["sha256"] and doc["artifacts"][0]["location"].startswith("file://")
    assert handle.state == "succeeded"
    failing = client.submit(hello(command=["sh", "-c", "exit 3"])).result(timeout=60)
    assert (failing["state"], failing["reason"], failing["exit_code"]) == ("failed", "nonzero-exit", 3)


def test_invalid_task_is_refused_at_submit_naming_the_field(farm_factory: Callable[[dict[str, str]], Farm], tmp_path: Path) -> None:
    farm = farm_factory({})
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "w")}))
    client = Client(load_config(cfg, environ={}))
    from farmhand.errors import InvalidDocument

    with pytest.raises(InvalidDocument, match=r"task\.max_run_time"):
        client.submit({"image": BUSYBOX, "command": ["true"]})
    assert farm.workers == []


def test_the_worker_checks_again_and_reports_invalid_tasks(redis_farm: Farm, redis_server: Redis) -> None:
    """A Celery client that skips farmhand's client still gets a result naming the bad field."""
    redis_farm.worker()
    client = redis_farm.client()
    async_result = client.app.send_task("farmhand.run_task", args=[{"image": BUSYBOX, "command": ["true"], "max_run_time": 60, "resources": {"memory": "lots"}}], queue="default")
    doc = client.get(async_result.id).result(timeout=60)
    assert (doc["state"], doc["reason"]) == ("exception", "invalid-task")
    assert "task.resources.memory" in doc["message"]


def test_stage_states_are_visible_to_any_celery_client(redis_farm: Farm) -> None:
    redis_farm.worker()
    client = redis_farm.client()
    handle = client.submit(sleep_task(3))
    seen = set()

    def finished_noting_states() -> bool:
        seen.add(client.app.AsyncResult(handle.task_id).state)
        return handle.done()

    wait_until(finished_noting_states, 60, "the task to finish", interval=0.05)
    assert "RUNNING" in seen, seen
    assert seen <= {"PENDING", "RECEIVED", "PREPARING", "RUNNING", "UPLOADING", "SUCCESS"}, seen
    assert handle.result(timeout=10)["state"] == "succeeded"


def test_queues_are_routed_to_the_workers_that_serve_them(redis_farm: Farm) -> None:
    small = redis_farm.worker("small", queues="small")
    large = redis_farm.worker("large", queues="large,default")
    client = redis_farm.client(small)
    docs = {q: client.submit(hello(), queue=q).result(timeout=60) for q in ("small", "large", "default")}
    assert docs["small"]["workspace"].startswith(str(small.working_dir))
    assert docs["large"]["workspace"].startswith(str(large.working_dir))
    assert docs["default"]["workspace"].startswith(str(large.working_dir))


def test_concurrency_is_honoured_one_task_waits(redis_farm: Farm, client) -> None:
    redis_farm.worker(concurrency=2)
    fh = redis_farm.client()
    handles = [fh.submit(sleep_task(4)) for _ in range(3)]
    watch = MostRunning(client, {h.task_id for h in handles})
    wait_until(lambda: watch.now() >= 2, 60, "two of the three tasks to run")
    states = sorted(h.state for h in handles)
    assert states.count("running") == 2 and states.count("pending") == 1, states

    def all_done() -> bool:
        watch.now()  # counting on while the third task runs
        return all(h.done() for h in handles)

    wait_until(all_done, 90, "the three tasks to finish")
    assert watch.most == 2, f"{watch.most} tasks ran at once on a worker with CONCURRENCY=2"
    docs = [h.result(timeout=60) for h in handles]
    assert all(d["state"] == "succeeded" for d in docs)
    first_end = min(d["finished_at"] for d in docs)
    assert max(d["started_at"] for d in docs) >= first_end[:19]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_cancel_before_start_and_while_running(broker: str, request: pytest.FixtureRequest, farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    env = {"BROKER_URL": request.getfixturevalue("redis_server" if broker == "redis" else "rabbitmq").url, "RESULT_BACKEND": request.getfixturevalue("redis_server").url}
    farm = farm_factory(env)
    worker = farm.worker(concurrency=1)
    fh = farm.client()
    counter = f"cancel-{uuid.uuid4().hex[:8]}"
    running = fh.submit(counted_task(counter, seconds=120))
    queued = fh.submit(counted_task(counter, seconds=0))
    wait_until(lambda: running.state == "running", 60, "the first task to run")
    assert queued.state == "pending"
    fh.cancel(queued.task_id)
    t0 = time.monotonic()
    fh.cancel(running.task_id)
    doc = running.result(timeout=30)
    assert time.monotonic() - t0 < 10
    assert (doc["state"], doc["reason"]) == ("exception", "cancelled"), doc
    assert doc["log"]["location"] and doc["log"]["size"] > 0  # the partial log was uploaded
    never = queued.result(timeout=30)
    assert (never["state"], never["reason"]) == ("exception", "cancelled")
    # The worker journals a task it discards as finished, and one it runs only once its run is over.
    wait_until(lambda: worker.journal_stage(queued.task_id) == "finished", 30, "the worker to take and discard the queued task")
    assert runs_of(client, counter) == 1  # the queued task never ran


def test_embedded_cancel_reaches_the_worker_through_its_journal(farm_factory: Callable[[dict[str, str]], Farm]) -> None:
    farm = farm_factory({})
    farm.worker(concurrency=1)
    fh = farm.client()
    handle = fh.submit(sleep_task(120))
    wait_until(lambda: handle.state == "running", 60, "the task to run")
    fh.cancel(handle.task_id)
    doc = handle.result(timeout=30)
    assert (doc["state"], doc["reason"]) == ("exception", "cancelled")


@pytest.mark.parametrize("stage", ["prepare", "run", "upload"])
def test_kill_9_in_each_stage_gives_exactly_one_result_and_no_orphan(stage: str, redis_farm: Farm, redis_server: Redis, client) -> None:
    queue = f"kill-{stage}-{uuid.uuid4().hex[:8]}"  # its own queue, so the broker's count of it is this task's
    worker = redis_farm.worker(concurrency=1, queues=queue)
    fh = redis_farm.client()
    counter = queue
    task_id = uuid.uuid4().hex
    results = ResultCounter(redis_server.url, task_id)
    if stage == "prepare":
        # A service whose readiness takes a while keeps the task in prepare.
        task = counted_task(counter, seconds=1, network="bridge")
        task["services"] = [{"name": "db", "image": BUSYBOX, "command": ["sh", "-c", "sleep 3; touch /ready; sleep 600"], "readiness": {"command": ["test", "-e", "/ready"], "timeout": 60, "interval": 0.2}}]
    elif stage == "run":
        task = counted_task(counter, seconds=6, network="bridge")  # its pooled network goes back after the resume
        task["command"][-1] += "; echo made-in-run > /made.txt"  # collected from the re-adopted container
        task["artifacts"] = [{"path": "/made.txt", "name": "made.txt"}]
    else:
        task = counted_task(counter, seconds=0)
        task["command"][-1] += "; head -c 400000000 /dev/zero > /big.bin"
        task["artifacts"] = [{"path": "/big.bin", "name": "big.bin"}]
    handle = fh.submit(task, task_id=task_id, queue=queue)

    def reached() -> bool:
        if worker.journal_stage(task_id) != stage:
            return False
        # The run stage starts before its container does: what a kill in run must leave is a running command.
        return stage != "run" or bool(client.containers.list(filters={"label": [f"{TASK_LABEL}={task_id}", f"{ROLE_LABEL}=task"], "status": "running"}))

    wait_until(reached, 90, f"the task to reach {stage}", interval=0.01)
    worker.kill9()
    assert handle.state != "succeeded"
    worker.start()
    doc = handle.result(timeout=120)
    assert doc["state"] == "succeeded", doc
    assert any("resumed after the worker restarted" in w for w in doc["warnings"]) or stage == "prepare", doc["warnings"]
    if stage == "upload":
        assert doc["artifacts"][0]["size"] == 400_000_000 and doc["artifacts"][0]["location"]
    if stage == "run":
        assert doc["artifacts"][0]["size"] == len("made-in-run\n") and doc["artifacts"][0]["location"], doc["artifacts"]
    # A second result could only come from a report not yet marked done, a delivery still held, or a run in progress.
    wait_until(lambda: worker.journal_reported(task_id) and settled(fh.app, redis_server, queue, [worker]), 60, "the worker to be done with the task")
    assert results.count() == 1
    assert runs_of(client, counter) == 1
    assert client.containers.list(all=True, filters={"label": f"farmhand.task-id={task_id}"}) == []


def one_running_one_queued(fh: Client) -> tuple[Any, str, Any, str]:
    """On a node of one slot: a task running (4 s) and one submitted after it, each with its run counter."""
    counters = [f"busy-{uuid.uuid4().hex[:8]}", f"queued-{uuid.uuid4().hex[:8]}"]
    running = fh.submit(counted_task(counters[0], seconds=4))
    wait_until(lambda: running.state == "running", 60, "the first task to run")
    return running, counters[0], fh.submit(counted_task(counters[1])), counters[1]


def test_kill_9_loses_no_task_of_a_full_embedded_node(farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    """A full node takes nothing it cannot start (a taken row is invisible to everyone else, and SQLite keeps no
    delivery timeout to give it back); killed, it loses nothing, and each task runs exactly once."""
    farm = farm_factory({})
    worker = farm.worker(concurrency=1)
    first, busy, second, waiting = one_running_one_queued(farm.client())
    broker = worker.working_dir / "broker.sqlite"

    def rows(visible: int) -> int:
        with sqlite3.connect(f"file:{broker}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM kombu_message WHERE visible = ?", (visible,)).fetchone()[0])

    wait_until(lambda: rows(1) == 1, 30, "the second task to wait in the broker")
    assert rows(0) == 0, "the full node took a message it cannot start"
    assert worker.journal_stage(second.task_id) is None
    worker.kill9()
    worker.start()
    assert first.result(timeout=60)["state"] == "succeeded"
    assert second.result(timeout=60)["state"] == "succeeded"
    assert runs_of(client, busy) == 1 and runs_of(client, waiting) == 1
    with sqlite3.connect(broker) as db:
        assert db.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 0, "acknowledged messages are deleted"


def test_sigterm_leaves_the_task_running_and_the_next_start_adopts_it(redis_farm: Farm, client) -> None:
    worker = redis_farm.worker(concurrency=1)
    fh = redis_farm.client()
    counter = f"term-{uuid.uuid4().hex[:8]}"
    handle = fh.submit(counted_task(counter, seconds=5, network="bridge"))
    wait_until(lambda: client.containers.list(filters={"label": f"{TASK_LABEL}={handle.task_id}"}), 60, "the task's container")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    running = client.containers.list(filters={"label": f"{TASK_LABEL}={handle.task_id}"})
    assert len(running) == 1  # the container outlived the worker
    worker.start()
    doc = handle.result(timeout=60)
    assert doc["state"] == "succeeded", doc
    assert runs_of(client, counter) == 1


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_task_longer_than_the_delivery_timeouts_runs_once(broker: str, request: pytest.FixtureRequest, farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    redis_url = request.getfixturevalue("redis_server").url
    env = {"BROKER_URL": redis_url if broker == "redis" else request.getfixturevalue("rabbitmq").url, "RESULT_BACKEND": redis_url}
    if broker == "redis":
        env["BROKER_VISIBILITY_TIMEOUT"] = "2"
    farm = farm_factory(env)
    queue = counter = f"timeout-{broker}-{uuid.uuid4().hex[:8]}"  # its own queue, so the broker's count of it is this task's
    worker = farm.worker(concurrency=2, queues=queue)
    fh = farm.client()
    doc = fh.submit(counted_task(counter, seconds=9), queue=queue).result(timeout=90)  # 3x RabbitMQ's consumer_timeout
    assert doc["state"] == "succeeded"
    # Redelivery needs a message the broker still holds; a second run would be an active task.
    server = request.getfixturevalue("redis_server" if broker == "redis" else "rabbitmq")
    wait_until(lambda: settled(fh.app, server, queue, [worker]), 60, "the broker and the worker to be done with the task")
    assert runs_of(client, counter) == 1


#: What Celery's consumer logs when its broker connection drops.
BROKER_LOST = "Connection to broker lost"


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_broker_restart_mid_task_the_result_still_arrives(broker: str, request: pytest.FixtureRequest, farm_factory: Callable[[dict[str, str]], Farm], tmp_path: Path) -> None:
    if broker == "redis":
        server: Any = Redis(tmp_path / "redis-own").start()
        env = {"BROKER_URL": server.url}
    else:
        server = RabbitMQ(tmp_path / "rabbit-own").start()
        result_store = Redis(tmp_path / "redis-results").start()
        env = {"BROKER_URL": server.url, "RESULT_BACKEND": result_store.url}
    farm = farm_factory(env)
    try:
        worker = farm.worker(concurrency=1)
        fh = farm.client()
        handle = fh.submit(sleep_task(8))
        wait_until(lambda: handle.state == "running", 60, "the task to run")
        offset = len(worker.log())
        server.stop()
        wait_until(lambda: BROKER_LOST in worker.log()[offset:], 30, "the worker to lose its broker connection")
        server.start()
        doc = Client(fh.config).get(handle.task_id).result(timeout=90)
        assert doc["state"] == "succeeded"
        after = fh.submit(hello()).result(timeout=60)  # and the worker takes new tasks again
        assert after["state"] == "succeeded"
    finally:
        farm.stop()
        server.stop()
        if broker == "rabbitmq":
            result_store.stop()


def test_drain_finishes_running_tasks_then_stops(redis_farm: Farm) -> None:
    worker = redis_farm.worker(concurrency=1, config={"worker": {"drain_grace": 60}})
    fh = redis_farm.client()
    handle = fh.submit(sleep_task(3))
    wait_until(lambda: handle.state == "running", 60, "the task to run")
    assert fh.drain(node="w1@farmhand-test") == ["w1@farmhand-test"]
    later = fh.submit(hello())
    assert worker.wait(60) == 0
    assert handle.result(timeout=10)["state"] == "succeeded"
    assert later.state == "pending"  # a draining worker takes no new task


def test_drain_past_its_grace_cancels_with_worker_shutdown(redis_farm: Farm) -> None:
    worker = redis_farm.worker(concurrency=1, config={"worker": {"drain_grace": 1}})
    fh = redis_farm.client()
    handle = fh.submit(sleep_task(120))
    wait_until(lambda: handle.state == "running", 60, "the task to run")
    worker.signal(signal.SIGQUIT)
    assert worker.wait(60) == 0
    doc = handle.result(timeout=10)
    assert (doc["state"], doc["reason"]) == ("exception", "worker-shutdown")
    assert doc["log"]["location"]


def test_two_nodes_split_200_tasks_none_lost_none_duplicated(rabbitmq: RabbitMQ, redis_server: Redis, farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    farm = farm_factory({"BROKER_URL": rabbitmq.url, "RESULT_BACKEND": redis_server.url})
    a = farm.worker("a", concurrency=2)
    b = farm.worker("b", concurrency=2)
    fh = farm.client(a)
    counter = f"split-{uuid.uuid4().hex[:8]}"
    handles = [fh.submit(counted_task(counter)) for _ in range(200)]
    docs = [h.result(timeout=600) for h in handles]
    assert all(d["state"] == "succeeded" for d in docs)
    assert len({d["task_id"] for d in docs}) == 200
    by_node = {w.root.name: sum(d["workspace"].startswith(str(w.working_dir)) for d in docs) for w in (a, b)}
    assert by_node["a"] > 0 and by_node["b"] > 0 and sum(by_node.values()) == 200, by_node
    assert runs_of(client, counter) == 200


def test_the_broker_password_never_shows_in_logs_or_ps(tmp_path: Path, farm_factory: Callable[[dict[str, str]], Farm]) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    server = Redis(tmp_path / "redis-auth", password=secret).start()
    try:
        farm = farm_factory({"BROKER_URL": server.url, "USERNAME": "default", "PASSWORD": secret})
        # This test farm manages no firewall (tests/integration/test_network_isolation.py does), so that
        # `farmhand check` below, run as root, has no rules to look for.
        worker = farm.worker(config={"firewall": {"enabled": False}})
        assert farm.client().submit(hello()).result(timeout=60)["state"] == "succeeded"
        assert worker.proc is not None
        cmdline = Path(f"/proc/{worker.proc.pid}/cmdline").read_bytes().decode()
        check = subprocess.run(
            [sys.executable, "-m", "farmhand", "--config", str(worker.config_path), "check"], env=worker.env, capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "broker: redis://default:**@127.0.0.1" in check.stdout and "answers; no TLS; Redis lists" in check.stdout
        farm.stop()
        for text in (worker.log(), cmdline, check.stdout, check.stderr):
            assert secret not in text
        assert "Connected to redis://default:**@" in worker.log()
    finally:
        server.stop()


@contextmanager
def celery_events(fh: Client) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event, as Flower and `celery events` receive them, while the block runs."""
    seen: list[dict[str, Any]] = []
    with fh.app.connection_for_read() as conn:
        receiver = fh.app.events.Receiver(conn, handlers={"*": seen.append})
        listener = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=30, wakeup=True), daemon=True)
        listener.start()
        # Consuming, the receiver asks the workers for a heartbeat (wakeup=True): its first event shows it listens.
        wait_until(lambda: seen, 20, "the receiver's first event")
        try:
            yield seen
        finally:
            receiver.should_stop = True


def test_stage_changes_are_sent_as_celery_events(rabbitmq: RabbitMQ, redis_server: Redis, farm_factory: Callable[[dict[str, str]], Farm]) -> None:
    """What Flower and `celery events` see: Celery's own task events plus farmhand's task-stage events."""
    farm = farm_factory({"BROKER_URL": rabbitmq.url, "RESULT_BACKEND": redis_server.url})
    farm.worker()
    fh = farm.client()
    with celery_events(fh) as seen:
        handle = fh.submit(hello())
        assert handle.result(timeout=60)["state"] == "succeeded"
        wait_until(lambda: any(e["type"] == "task-succeeded" and e.get("uuid") == handle.task_id for e in seen), 20, "task-succeeded")
    mine = [e for e in seen if e.get("uuid") == handle.task_id]
    stages = [(e["stage"], e["status"]) for e in mine if e["type"] == "task-stage"]
    assert ("prepare", "started") in stages and ("run", "finished") in stages and ("upload", "finished") in stages, stages
    assert {"task-received", "task-started", "task-succeeded"} <= {e["type"] for e in mine}


def test_a_second_worker_on_the_same_working_dir_is_refused(farm_factory: Callable[[dict[str, str]], Farm]) -> None:
    """Two workers on one WORKING_DIR (and so one embedded broker) would each resume the other's tasks."""
    farm = farm_factory({})
    worker = farm.worker(concurrency=1)
    second = subprocess.run(
        [sys.executable, "-m", "farmhand", "--config", str(worker.config_path), "worker"],
        env=worker.env, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 4, second.stderr
    assert "another farmhand worker serves it" in second.stderr and str(worker.working_dir) in second.stderr
    assert worker.proc is not None and worker.proc.poll() is None, "the first worker goes on"
    assert farm.client().submit(counted_task(f"lock-{uuid.uuid4().hex[:8]}")).result(timeout=60)["state"] == "succeeded"


@pytest.mark.parametrize("broker", ["rabbitmq", "embedded"])
def test_a_task_cancelled_while_queued_never_runs_across_restarts(broker: str, request: pytest.FixtureRequest, farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    """SIGTERM skips Celery's save of its revoked set (and that set expires after 3 h): the journal keeps it."""
    env = {} if broker == "embedded" else {"BROKER_URL": request.getfixturevalue("rabbitmq").url, "RESULT_BACKEND": request.getfixturevalue("redis_server").url}
    farm = farm_factory(env)
    worker = farm.worker(concurrency=1)
    fh = farm.client()
    busy, busy_counter, queued, queued_counter = one_running_one_queued(fh)
    fh.cancel(queued.task_id)
    wait_until(lambda: worker.journal_revoked(queued.task_id), 30, "the worker to keep the cancellation")
    for _ in range(2):  # restarts as systemctl restart does them
        worker.signal(signal.SIGTERM)
        worker.wait(30)
        worker.start()
    assert busy.result(timeout=90)["state"] == "succeeded"
    never = queued.result(timeout=60)
    assert (never["state"], never["reason"]) == ("exception", "cancelled"), never
    wait_until(lambda: worker.journal_stage(queued.task_id) == "finished", 30, "the worker to take and discard the cancelled task")
    assert runs_of(client, queued_counter) == 0, "the cancelled task ran"
    assert runs_of(client, busy_counter) == 1


@pytest.mark.parametrize("broker", ["embedded", "rabbitmq", "redis"])
def test_a_task_cancelled_while_no_worker_runs_never_runs(broker: str, request: pytest.FixtureRequest, farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    """The cancel broadcast reaches nobody while every worker is down: the mark in the result store does.
    On the embedded broker (one machine, no broadcast) the request waits in the worker's journal instead,
    and the worker's read of the marks on every task start must not fail there (it did: a str key on the
    embedded store, which reads bytes keys only, logged a warning for every task)."""
    env = {} if broker == "embedded" else {
        "BROKER_URL": request.getfixturevalue("redis_server" if broker == "redis" else "rabbitmq").url,
        "RESULT_BACKEND": request.getfixturevalue("redis_server").url}
    farm = farm_factory(env)
    worker = farm.worker(concurrency=1)
    fh = farm.client()
    worker.signal(signal.SIGTERM)
    worker.wait(30)
    counter = f"cancel-down-{uuid.uuid4().hex[:8]}"
    queued = fh.submit(counted_task(counter))
    assert fh.cancel(queued.task_id) == ("requested" if broker == "embedded" else "revoked"), "no worker is up to answer"
    worker.start()
    never = queued.result(timeout=60)
    assert (never["state"], never["reason"]) == ("exception", "cancelled"), never
    assert fh.submit(hello()).result(timeout=60)["state"] == "succeeded"
    assert runs_of(client, counter) == 0, "the cancelled task ran"
    assert "cannot read cancellations" not in worker.log()


@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
def test_a_dropped_connection_gives_each_task_one_result(broker: str, request: pytest.FixtureRequest, redis_server: Redis, farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    """The broker drops the worker's connections (rabbitmqctl close_all_connections, Redis CLIENT KILL) while
    one task runs and one waits: the full node holds the waiting one nowhere (so nothing comes back to be run
    or reported twice), reconnects at once, runs it, and the running one reports once."""
    server = request.getfixturevalue("rabbitmq") if broker == "rabbitmq" else redis_server
    queue = f"blip-{broker}-{uuid.uuid4().hex[:8]}"
    farm = farm_factory({"BROKER_URL": server.url, "RESULT_BACKEND": redis_server.url})
    worker = farm.worker(concurrency=1, queues=queue)
    fh = farm.client()
    counters = [f"{queue}-{i}" for i in range(2)]
    running = fh.submit(counted_task(counters[0], seconds=4), queue=queue)
    results = {running.task_id: ResultCounter(redis_server.url, running.task_id)}
    wait_until(lambda: running.state == "running", 60, "the first task to run")
    waiting = fh.submit(counted_task(counters[1]), queue=queue)
    results[waiting.task_id] = ResultCounter(redis_server.url, waiting.task_id)
    wait_until(lambda: server.messages(queue) == 1, 30, "the waiting task to reach its queue")
    offset = len(worker.log())
    assert worker.proc is not None
    ports = tcp_client_ports(worker.proc.pid, server.port)  # the worker's connections, not this test's
    assert ports, "the worker holds connections to its broker"
    if broker == "rabbitmq":
        assert server.unacknowledged(queue) == 0, "a full node holds no message it cannot start"
        assert server.close_connections(ports, "fault injection") == len(ports)
        wait_until(lambda: BROKER_LOST in worker.log()[offset:], 30, "the worker to see its connection close")
    else:  # a killed Redis connection shows only when next used: the checks below use every one of them
        with redis_lib.Redis.from_url(server.url) as r:
            for port in ports:
                r.client_kill(f"127.0.0.1:{port}")
    for handle in (running, waiting):
        assert handle.result(timeout=90)["state"] == "succeeded"
    wait_until(lambda: settled(fh.app, server, queue, [worker]), 60, "the broker and the worker to be done")
    after = fh.submit(hello(), queue=queue).result(timeout=60)  # the reconnected worker is healthy
    assert after["state"] == "succeeded"
    assert {task_id: counter.count() for task_id, counter in results.items()} == {running.task_id: 1, waiting.task_id: 1}
    assert [runs_of(client, c) for c in counters] == [1, 1]
    assert worker.proc is not None and worker.proc.poll() is None


@pytest.mark.parametrize("broker", ["rabbitmq", "rabbitmq-quorum", "redis"])
def test_a_full_node_holds_nothing_and_an_idle_node_takes_what_waits(broker: str, request: pytest.FixtureRequest, farm_factory: Callable[[dict[str, str]], Farm], client) -> None:
    """Tasks many times longer than RabbitMQ's consumer_timeout (3 s here) or Redis's visibility_timeout
    (2 s) on a full node, more waiting: nothing waits unacknowledged behind them, a second node takes the
    waiting ones at once, every task runs and reports once, and both workers live on."""
    redis_url = request.getfixturevalue("redis_server").url
    env = {"BROKER_URL": redis_url if broker == "redis" else request.getfixturevalue("rabbitmq").url, "RESULT_BACKEND": redis_url}
    if broker == "redis":
        env["BROKER_VISIBILITY_TIMEOUT"] = "2"
    if broker == "rabbitmq-quorum":  # quorum queues refuse global QoS: prefetch must still follow the slots
        env["BROKER_QUEUE_TYPE"] = "quorum"
    server = request.getfixturevalue("redis_server" if broker == "redis" else "rabbitmq")
    farm = farm_factory(env)
    queue = f"full-{broker}-{uuid.uuid4().hex[:8]}"
    full = farm.worker("full", concurrency=1, queues=queue)
    fh = farm.client()
    counters = [f"{queue}-{i}" for i in range(3)]
    long_one = fh.submit(counted_task(counters[0], seconds=12), queue=queue)
    wait_until(lambda: long_one.state == "running", 60, "the long task to run")
    waiting = [fh.submit(counted_task(c, seconds=1), queue=queue) for c in counters[1:]]
    wait_until(lambda: server.messages(queue) == 2, 30, "the other tasks to wait in their queue")
    if broker != "redis":
        assert server.unacknowledged(queue) == 0, "the full node holds a message it cannot start"
        assert server.queue_type(queue) == ("quorum" if broker == "rabbitmq-quorum" else "classic")
    idle = farm.worker("idle", concurrency=1, queues=queue)
    for handle in waiting:
        assert handle.result(timeout=60)["state"] == "succeeded"
    assert long_one.state == "running", "the idle node took the waiting tasks while the long one still ran"
    assert long_one.result(timeout=60)["state"] == "succeeded"
    wait_until(lambda: settled(fh.app, server, queue, [full, idle]), 60, "the broker and the workers to be done")
    assert [runs_of(client, c) for c in counters] == [1, 1, 1]
    for worker in (full, idle):
        assert worker.proc is not None and worker.proc.poll() is None, f"a worker exited:\n{worker.log()[-3000:]}"
        assert "Unrecoverable error" not in worker.log()


def test_a_restarted_node_never_runs_more_than_its_slots(redis_farm: Farm, client) -> None:
    """Killed with its slots full and more queued, a node re-adopts what ran: those hold its slots."""
    worker = redis_farm.worker(concurrency=2)
    fh = redis_farm.client()
    first = [fh.submit(sleep_task(8)) for _ in range(2)]
    wait_until(lambda: all(h.state == "running" for h in first), 60, "two tasks to run")
    more = [fh.submit(sleep_task(1)) for _ in range(3)]
    watch = MostRunning(client, {h.task_id for h in first + more})
    worker.kill9()
    worker.start()

    def all_done() -> bool:
        watch.now()
        return all(h.done() for h in first + more)

    wait_until(all_done, 120, "every task to finish")
    assert watch.most <= 2, f"{watch.most} tasks ran at once on a worker with CONCURRENCY=2"
    assert all(h.result(timeout=30)["state"] == "succeeded" for h in first + more)


def test_no_celery_surface_shows_a_secret(rabbitmq: RabbitMQ, redis_server: Redis, farm_factory: Callable[[dict[str, str]], Farm]) -> None:
    """Events (Flower, `celery events`), inspect (active, reserved, query_task) and the result store."""
    secret = f"s3cret-{uuid.uuid4().hex}"
    farm = farm_factory({"BROKER_URL": rabbitmq.url, "RESULT_BACKEND": redis_server.url})
    worker = farm.worker()
    fh = farm.client()
    task = sleep_task(3, env={"TOKEN": secret}, secret_env=["TOKEN"])
    with celery_events(fh) as seen:
        handle = fh.submit(task)
        wait_until(lambda: handle.state == "running", 60, "the task to run")
        inspect = fh.app.control.inspect(destination=[worker.node_name], timeout=5)
        shown = [inspect.active(), inspect.reserved(), inspect.query_task(handle.task_id)]
        assert handle.task_id in json.dumps(shown[0]), "inspect active lists the task"
        assert handle.result(timeout=60)["state"] == "succeeded"
        wait_until(lambda: any(e["type"] == "task-succeeded" and e.get("uuid") == handle.task_id for e in seen), 20, "task-succeeded")
    mine = [e for e in seen if e.get("uuid") == handle.task_id]
    assert {"task-sent", "task-received"} <= {e["type"] for e in mine}
    assert "***" in json.dumps([e for e in mine if e["type"] == "task-received"]), "the task is shown, masked"
    stored = redis_lib.Redis.from_url(redis_server.url).get(f"celery-task-meta-{handle.task_id}")
    for what, text in [("events", json.dumps(mine, default=str)), ("inspect", json.dumps(shown, default=str)), ("result store", str(stored)), ("worker log", worker.log())]:
        assert secret not in text, f"the secret shows in {what}"


def tls_env(server: RabbitMQ, redis: Redis, ca: Path, cert: Path, key: Path) -> dict[str, str]:
    return {"BROKER_URL": server.url, "RESULT_BACKEND": redis.url, "BROKER_TLS_CA": str(ca), "BROKER_TLS_CERT": str(cert), "BROKER_TLS_KEY": str(key)}


def test_rabbitmq_over_tls_with_a_client_certificate(rabbitmq_tls: RabbitMQ, redis_server: Redis, farm_factory: Callable[[dict[str, str]], Farm]) -> None:
    pki = rabbitmq_tls.tls
    assert pki is not None
    farm = farm_factory(tls_env(rabbitmq_tls, redis_server, pki.ca, pki.client_cert, pki.client_key))
    worker = farm.worker()
    assert farm.client().submit(hello()).result(timeout=60)["state"] == "succeeded"
    check = subprocess.run([sys.executable, "-m", "farmhand", "--config", str(worker.config_path), "check"], env=worker.env, capture_output=True, text=True, timeout=60)
    assert f"answers; TLS (CA {pki.ca}, client certificate {pki.client_cert}); classic queues" in check.stdout, check.stdout


@pytest.mark.parametrize("wrong", ["client certificate", "CA"])
def test_a_wrong_tls_certificate_or_ca_stops_the_worker_at_start(
    wrong: str, rabbitmq_tls: RabbitMQ, redis_server: Redis, farm_factory: Callable[[dict[str, str]], Farm], tmp_path: Path
) -> None:
    pki = rabbitmq_tls.tls
    assert pki is not None
    rogue_ca, rogue_cert, rogue_key = pki.rogue(wrong.replace(" ", "-"))
    files = (pki.ca, rogue_cert, rogue_key) if wrong == "client certificate" else (rogue_ca, pki.client_cert, pki.client_key)
    worker = WorkerProcess(tmp_path, {**os.environ, **tls_env(rabbitmq_tls, redis_server, *files)}, name="tls")
    out = subprocess.run([sys.executable, "-m", "farmhand", "--config", str(worker.config_path), "worker"], env=worker.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 4, out.stdout + out.stderr
    assert "broker.tls: the TLS handshake with amqps://guest:**@127.0.0.1" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
