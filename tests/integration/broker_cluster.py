"""Replicated and encrypted brokers for the failover tests, all Debian's servers on loopback.

- ``RabbitCluster``: three ``rabbitmq-server`` nodes, each with its own node
  name, ports and data directory, one Erlang cookie, joined with
  ``rabbitmqctl join_cluster``; a node is killed with SIGKILL to its whole
  process group (the Erlang VM and its port programs, as a host crash would).
- ``SentinelSet``: a Redis primary, a replica and three ``redis-sentinel``
  processes watching them, so a killed primary is failed over by quorum.
- ``RedisNode`` with ``tls=``: Redis 7's ``tls-port`` alone, client
  certificates of the test CA required.
- ``ResultTally``: every final result the Redis result store publishes,
  counted per task, so a result stored twice shows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis as redis_lib
from dispatch_support import LocalPKI, RabbitMQ, Redis
from support import free_port, wait_for_port, wait_until


class ClusterNode(RabbitMQ):
    """One node of a cluster: the cluster's Erlang cookie (HOME) rather than one of its own."""

    def __init__(self, workdir: Path, cookie_home: Path) -> None:
        super().__init__(workdir)
        self.cookie_home = cookie_home

    def _env(self) -> dict[str, str]:
        return {**super()._env(), "HOME": str(self.cookie_home)}

    def ctl(self, *args: str) -> str:
        out = self._ctl(*args)
        assert out.returncode == 0, f"rabbitmqctl {' '.join(args)} on {self.name}: {out.stdout}{out.stderr}"
        return out.stdout

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None


class RabbitCluster:
    """Three nodes started at once, then the second and third joined to the first."""

    def __init__(self, root: Path, size: int = 3) -> None:
        root.mkdir(parents=True, exist_ok=True)
        cookie = root / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)
        self.nodes = [ClusterNode(root / f"node{i}", root) for i in range(size)]

    @property
    def url(self) -> str:
        """The failover list an operator gives: every node, ``;``-separated."""
        return ";".join(n.url for n in self.nodes)

    def start(self) -> "RabbitCluster":
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.start(), self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
            wait_for_port(node.port, timeout=60)
        wait_until(lambda: self.running_nodes() == {n.name for n in self.nodes}, 60, "every node to run in the cluster")
        return self

    def alive(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.proc is not None]

    def running_nodes(self) -> set[str]:
        status = json.loads(self.alive()[0].ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def leader_of(self, queue: str) -> ClusterNode | None:
        """The node holding ``queue``'s quorum leader (None before the queue is declared)."""
        rows = json.loads(self.alive()[0].ctl("list_queues", "name", "leader", "--formatter", "json"))
        leader = next((r.get("leader") for r in rows if r.get("name") == queue), None)
        return next((n for n in self.nodes if n.name == leader), None)

    def messages(self, queue: str) -> int:
        return self.alive()[0].messages(queue)

    def stop(self) -> None:
        for node in self.alive():
            node.stop()


class RedisNode:
    """redis-server from a config file of its own: a replica of ``replica_of``'s port, or TLS-only with ``tls``."""

    def __init__(self, workdir: Path, replica_of: int | None = None, tls: LocalPKI | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.replica_of = replica_of
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _conf(self) -> str:
        lines = ["bind 127.0.0.1", f"dir {self.workdir}", 'save ""', "appendonly no"]
        if self.tls is None:
            lines.append(f"port {self.port}")
        else:
            pki = self.tls
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {pki.server_cert}", f"tls-key-file {pki.server_key}",
                      f"tls-ca-cert-file {pki.ca}", "tls-auth-clients yes"]
        if self.replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {self.replica_of}")
        return "\n".join(lines) + "\n"

    def start(self) -> "RedisNode":
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        conf.write_text(self._conf())
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=20)
        return self

    def client(self) -> redis_lib.Redis:
        if self.tls is None:
            return redis_lib.Redis(host="127.0.0.1", port=self.port)
        pki = self.tls
        return redis_lib.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(pki.ca), ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key))

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as r:
            return dict(r.info(section))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


class SentinelSet:
    """A primary, its replica, and three sentinels (quorum two) that fail the primary over within seconds."""

    MASTER = "farmhand-primary"

    def __init__(self, root: Path, sentinels: int = 3) -> None:
        self.root = root
        self.primary = RedisNode(root / "primary")
        self.replica = RedisNode(root / "replica", replica_of=self.primary.port)
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}/0" for p in self.sentinel_ports)

    def _sentinel_conf(self, port: int) -> str:
        m = self.MASTER
        return (
            f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
            f"sentinel monitor {m} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {m} 1000\nsentinel failover-timeout {m} 10000\nsentinel parallel-syncs {m} 1\n"
        )

    def start(self) -> "SentinelSet":
        self.primary.start()
        self.replica.start()
        wait_until(lambda: self.replica.info("replication").get("master_link_status") == "up", 30, "the replica to sync")
        for port in self.sentinel_ports:
            conf = self.root / f"sentinel-{port}.conf"  # rewritten by the sentinel as it learns
            conf.write_text(self._sentinel_conf(port))
            self.sentinels.append(subprocess.Popen(["redis-sentinel", str(conf)], stdout=open(self.root / f"sentinel-{port}.log", "ab"), stderr=subprocess.STDOUT))
        for port in self.sentinel_ports:
            wait_for_port(port, timeout=20)
        wait_until(self._sentinels_ready, 30, "every sentinel to know the replica and the other sentinels")
        return self

    def _ask(self, port: int, *command: str) -> Any:
        with redis_lib.Redis(host="127.0.0.1", port=port) as r:
            return r.execute_command(*command)

    def _sentinels_ready(self) -> bool:
        others = len(self.sentinel_ports) - 1
        return all(
            len(self._ask(p, "SENTINEL", "REPLICAS", self.MASTER)) == 1 and len(self._ask(p, "SENTINEL", "SENTINELS", self.MASTER)) == others
            for p in self.sentinel_ports
        )

    def master_port(self) -> int:
        """The primary's port as the sentinels answer it now."""
        host, port = self._ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER)
        return int(port)

    def messages(self, queue: str) -> int:
        """Messages of ``queue`` the current primary holds (waiting or unacknowledged)."""
        view = Redis(self.root)  # not started: the counting of dispatch_support.Redis, at the primary's port
        view.port = self.master_port()
        return view.messages(queue)

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
            proc.wait(20)
        self.sentinels = []
        for node in (self.primary, self.replica):
            node.stop()


class ResultTally:
    """Final results (SUCCESS, FAILURE) the Redis result store publishes, counted per task id, on one
    connection. Subscribed on a replica it still counts what the primary published (Redis replicates
    PUBLISH), and goes on counting once that replica is promoted."""

    def __init__(self, client: redis_lib.Redis) -> None:
        self.counts: Counter[str] = Counter()
        self._client = client  # held: redis-py closes its pool's connections, the pubsub one too, when the client goes
        self._pubsub = client.pubsub()
        self._pubsub.psubscribe("celery-task-meta-*")
        while (msg := self._pubsub.get_message(timeout=5)) is not None and msg["type"] != "psubscribe":
            pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "pmessage" and json.loads(msg["data"]).get("status") in ("SUCCESS", "FAILURE"):
                self.counts[msg["channel"].decode().removeprefix("celery-task-meta-")] += 1

    def of(self, task_ids: list[str]) -> Counter[int]:
        """How many tasks got each number of results (``{1: 200}``: every task exactly one)."""
        return Counter(self.counts.get(t, 0) for t in task_ids)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()
