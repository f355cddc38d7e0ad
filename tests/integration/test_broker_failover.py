"""The dispatcher across a broker's loss and over TLS: a 3-node RabbitMQ cluster with quorum queues, Redis
Sentinel, and Redis on TLS with client certificates. Every broker is Debian's server, started here on
loopback (tests/integration/broker_cluster.py), once per module.

A failover test submits 200 tasks to 2 workers, kills the broker node that holds the queue (SIGKILL)
once some results are in, and requires 200 results, each stored once, each task run once, and both
workers alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from broker_cluster import RabbitCluster, RedisNode, ResultTally, SentinelSet
from dispatch_support import LocalPKI, Redis, WorkerProcess, counted_task, discard_left_tasks, runs_of, serving, settled, wait_until
from farmhand.client import Client
from farmhand.config import load_config
from support import BUSYBOX

TASKS = 200
KILL_AFTER = 40  # results in before the broker node dies: mid-run, with most tasks still queued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPKI:
    return LocalPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    yield from serving(RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster")))


@pytest.fixture(scope="module")
def result_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    yield from serving(Redis(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    yield from serving(SentinelSet(tmp_path_factory.mktemp("sentinel")))


@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory: pytest.TempPathFactory, pki: LocalPKI) -> Iterator[RedisNode]:
    yield from serving(RedisNode(tmp_path_factory.mktemp("redis-tls"), tls=pki))


class Workers:
    """`farmhand worker` processes sharing one environment (the broker settings, as in production)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.all: list[WorkerProcess] = []

    def start(self, name: str, concurrency: int = 2) -> WorkerProcess:
        worker = WorkerProcess(self.root, {**self.env, "CONCURRENCY": str(concurrency)}, name=name)
        self.all.append(worker)
        return worker.start()

    def client(self) -> Client:
        path = self.root / "client.yml"
        path.write_text(yaml.safe_dump({"working_dir": str(self.root / "client")}))
        return Client(load_config(path, environ=self.env))

    def check(self, worker: WorkerProcess) -> str:
        """`farmhand check`'s broker line, with this worker's config and environment."""
        out = subprocess.run([sys.executable, "-m", "farmhand", "--config", str(worker.config_path), "check"], env=worker.env, capture_output=True, text=True, timeout=120)
        return next((line for line in out.stdout.splitlines() if " broker: " in line), out.stdout + out.stderr)

    def assert_alive(self) -> None:
        for worker in self.all:
            assert worker.proc is not None and worker.proc.poll() is None, f"worker {worker.node_name} exited:\n{worker.log()[-3000:]}"
            assert "Unrecoverable error" not in worker.log()

    def stop(self) -> None:
        for worker in self.all:
            worker.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    made: list[Workers] = []

    def make(env: dict[str, str]) -> Workers:
        made.append(Workers(tmp_path, env))
        return made[-1]

    yield make
    for group in made:
        group.stop()
    import docker

    discard_left_tasks(docker.from_env())


def run_through_a_kill(fh: Client, queue: str, tally: ResultTally, kill: Any) -> tuple[list[str], int]:
    """Submit TASKS counted tasks to ``queue``, ``kill()`` once KILL_AFTER results are in, wait for every
    result. Returns the task ids and how many results were in when the kill came."""
    handles = [fh.submit(counted_task(queue), queue=queue) for _ in range(TASKS)]
    ids = [h.task_id for h in handles]
    wait_until(lambda: sum(tally.of(ids).values()) - tally.of(ids)[0] >= KILL_AFTER, 300, f"{KILL_AFTER} results")
    before = TASKS - tally.of(ids)[0]
    kill()
    wait_until(lambda: tally.of(ids)[0] == 0, 300, "every task's result after the kill")
    return ids, before


def settled_after_a_loss(fh: Client, broker: Any, queue: str, group: list[WorkerProcess]) -> bool:
    """``settled``, asked again when the ask itself fails: Celery's broadcast does not retry, and the first one
    after a node died may go out on a pooled connection to that node (kombu drops it then)."""
    try:
        return settled(fh.app, broker, queue, group)
    except OSError:
        return False


def wait_settled(fh: Client, broker: Any, queue: str, group: list[WorkerProcess]) -> None:
    """Wait for ``settled``; if it never comes, say which half is missing."""
    try:
        wait_until(lambda: settled_after_a_loss(fh, broker, queue, group), 60, "the broker and the workers to be done")
    except AssertionError as exc:
        try:
            active = fh.app.control.inspect(destination=[w.node_name for w in group], timeout=2).active()
        except OSError as error:
            active = repr(error)
        detail = broker.alive()[0]._ctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers").stdout if hasattr(broker, "alive") else ""
        raise AssertionError(f"{exc}: the broker holds {broker.messages(queue)} messages of {queue} {detail}; workers' active tasks: {active}") from None


def test_a_rabbitmq_cluster_loses_the_queue_leaders_node_mid_run(cluster: RabbitCluster, result_store: Redis, workers: Any, client: Any) -> None:
    """Quorum queues on 3 nodes; workers and client given all 3 as a failover list, all on the first."""
    queue = f"cluster-{uuid.uuid4().hex[:8]}"
    group = workers({"BROKER_URL": cluster.url, "RESULT_BACKEND": result_store.url, "BROKER_QUEUE_TYPE": "quorum", "QUEUES": queue})
    first = group.start("a")
    group.start("b")
    fh = group.client()
    leader = wait_until(lambda: cluster.leader_of(queue), 30, "the workers to declare their quorum queue")
    assert cluster.nodes[0].queue_type(queue) == "quorum"
    line = group.check(first)
    assert f"ok   broker: 3 of 3 nodes answer: {cluster.nodes[0].url.replace(':guest@', ':**@')}" in line, line
    assert "quorum queues" in line, line
    tally = ResultTally(result_store_client(result_store))
    try:
        ids, before = run_through_a_kill(fh, queue, tally, leader.kill9)
        wait_settled(fh, cluster, queue, group.all)
        assert tally.of(ids) == {1: TASKS}, f"results per task: {tally.of(ids)}"
    finally:
        tally.close()
    assert before < TASKS, "the node died mid-run"
    assert runs_of(client, queue) == TASKS
    group.assert_alive()
    line = group.check(first)
    assert line.startswith("ok   broker: 2 of 3 nodes answer: ") and f"does not answer: {leader.url.replace(':guest@', ':**@')}" in line, line


def result_store_client(server: Redis) -> Any:
    import redis as redis_lib

    return redis_lib.Redis(host="127.0.0.1", port=server.port)


def test_redis_sentinel_fails_the_primary_over_mid_run(sentinels: SentinelSet, workers: Any, client: Any) -> None:
    """Broker and result store both through the sentinels; the primary is killed, the replica promoted."""
    queue = f"sentinel-{uuid.uuid4().hex[:8]}"
    group = workers({"BROKER_URL": sentinels.url, "BROKER_MASTER_NAME": SentinelSet.MASTER, "QUEUES": queue})
    first = group.start("a")
    group.start("b")
    fh = group.client()
    line = group.check(first)
    assert f"ok   broker: sentinels {sentinels.url} name primary '{SentinelSet.MASTER}' at 127.0.0.1:{sentinels.primary.port}, which answers" in line, line
    old_primary = sentinels.primary.port
    tally = ResultTally(sentinels.replica.client())  # the replica sees the primary's publishes, and is promoted
    try:
        ids, before = run_through_a_kill(fh, queue, tally, sentinels.primary.kill9)
        assert sentinels.master_port() == sentinels.replica.port != old_primary
        wait_settled(fh, sentinels, queue, group.all)
        assert tally.of(ids) == {1: TASKS}, f"results per task: {tally.of(ids)}"
    finally:
        tally.close()
    assert before < TASKS, "the primary died mid-run"
    assert runs_of(client, queue) == TASKS
    group.assert_alive()


def test_a_sentinel_url_without_a_master_name_is_refused_naming_the_field(sentinels: SentinelSet, tmp_path: Path) -> None:
    worker = WorkerProcess(tmp_path, {**os.environ, "BROKER_URL": sentinels.url}, name="nomaster")
    out = subprocess.run([sys.executable, "-m", "farmhand", "--config", str(worker.config_path), "worker"], env=worker.env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "broker.master_name:" in out.stderr and "BROKER_MASTER_NAME" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def tls_env(server: RedisNode, ca: Path, cert: Path, key: Path) -> dict[str, str]:
    return {"BROKER_URL": server.url, "BROKER_TLS_CA": str(ca), "BROKER_TLS_CERT": str(cert), "BROKER_TLS_KEY": str(key)}


def test_redis_over_tls_with_a_client_certificate(redis_tls: RedisNode, pki: LocalPKI, workers: Any) -> None:
    """rediss:// for the broker and (by default) the result store, with CA, certificate and key only."""
    group = workers(tls_env(redis_tls, pki.ca, pki.client_cert, pki.client_key))
    worker = group.start("tls", concurrency=1)
    task = {"image": BUSYBOX, "pull": "never", "command": ["echo", "over tls"], "max_run_time": 60, "network": "none"}
    assert group.client().submit(task).result(timeout=60)["state"] == "succeeded"
    line = group.check(worker)
    assert f"ok   broker: {redis_tls.url} answers; TLS (CA {pki.ca}, client certificate {pki.client_cert}); Redis lists" in line, line


@pytest.mark.parametrize("wrong", ["CA", "client certificate"])
def test_a_wrong_redis_tls_ca_or_certificate_stops_the_worker_at_start(wrong: str, redis_tls: RedisNode, pki: LocalPKI, tmp_path: Path) -> None:
    rogue_ca, rogue_cert, rogue_key = pki.rogue(f"redis-{wrong.replace(' ', '-')}")
    files = (rogue_ca, pki.client_cert, pki.client_key) if wrong == "CA" else (pki.ca, rogue_cert, rogue_key)
    worker = WorkerProcess(tmp_path, {**os.environ, **tls_env(redis_tls, *files)}, name="tls")
    out = subprocess.run([sys.executable, "-m", "farmhand", "--config", str(worker.config_path), "worker"], env=worker.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 4, out.stdout + out.stderr
    assert f"broker.tls: the TLS handshake with {redis_tls.url} failed" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
