"""Real brokers and real worker processes for the dispatcher's tests.

RabbitMQ and Redis are Debian's servers, started here on free loopback ports
with their own data directories; each can be stopped and started again to
test a broker restart. Workers are `farmhand worker` processes, killed with
SIGKILL where a test needs a crash.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import redis as redis_lib
import yaml
from farmhand import sandbox
from farmhand.network_pool import POOL_LABEL
from farmhand.sandbox import TASK_LABEL, cache_volume_name
from support import BUSYBOX, free_port, wait_for_port, wait_until  # noqa: F401 - wait_until is also imported from here


class Redis:
    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"  # the password goes in a file, not on redis-server's command line
        conf.write_text(f"requirepass {self.password}\n" if self.password else "")
        self.proc = subprocess.Popen(
            ["redis-server", str(conf), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=open(self.workdir / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=20)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None

    def messages(self, queue: str) -> int:
        """Messages of ``queue`` the broker still holds: waiting (kombu keeps a list per priority step) or
        delivered and not acknowledged (kombu's ``unacked`` hash, given back after the visibility timeout)."""
        with redis_lib.Redis(host="127.0.0.1", port=self.port, password=self.password) as r:
            lists = [k for k in r.scan_iter(match=f"{queue}*", _type="list") if k.decode() == queue or k.decode().startswith(f"{queue}\x06\x16")]
            waiting = sum(r.llen(k) for k in lists)
            unacked = sum(json.loads(v)[2] == queue for v in r.hvals("unacked"))  # [message, exchange, routing key]
        return waiting + unacked


class LocalPKI:
    """A test CA, a server certificate for 127.0.0.1, and client certificates, made with openssl."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = self._ca("farmhand test CA")
        self.server_cert, self.server_key = self.issue("server", san="IP:127.0.0.1,DNS:localhost")
        self.client_cert, self.client_key = self.issue("client")

    def _run(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.root, check=True, capture_output=True, timeout=60)

    def _ca(self, name: str) -> tuple[Path, Path]:
        key, cert = self.root / f"{name.replace(' ', '-')}.key", self.root / f"{name.replace(' ', '-')}.pem"
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert))
        return cert, key

    def issue(self, name: str, san: str | None = None, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
        """A certificate for ``name`` signed by ``ca`` (the test CA by default): (cert, key)."""
        ca_cert, ca_key = ca or (self.ca, self.ca_key)
        key, csr, cert = (self.root / f"{name}{ext}" for ext in (".key", ".csr", ".pem"))
        self._run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        ext = self.root / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        self._run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
        return cert, key

    def rogue(self, name: str) -> tuple[Path, Path, Path]:
        """A CA of its own and a client certificate it signed: (ca, cert, key), none of it trusted by the broker."""
        ca = self._ca(f"rogue {name}")
        cert, key = self.issue(f"rogue-{name}-client", ca=ca)
        return ca[0], cert, key


class RabbitMQ:
    """One node with a short consumer_timeout (checked every second), so a late acknowledgement would show."""

    CONSUMER_TIMEOUT_MS = 3000

    def __init__(self, workdir: Path, tls: "LocalPKI | None" = None) -> None:
        self.workdir = workdir
        self.tls = tls
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"farmhand-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'amqps' if self.tls else 'amqp'}://guest:guest@127.0.0.1:{self.port}//"

    def _listeners(self) -> str:
        if self.tls is None:
            return f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
        # TLS only, and a client certificate the test CA signed is required (as cyberCommons runs it).
        pki = self.tls
        return (
            f"listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {pki.ca}\nssl_options.certfile = {pki.server_cert}\nssl_options.keyfile = {pki.server_key}\n"
            "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n"
        )

    def _env(self) -> dict[str, str]:
        w = self.workdir
        return {
            **os.environ,
            "HOME": str(w),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
        }

    def start(self) -> "RabbitMQ":
        w = self.workdir
        for d in ("mnesia", "log"):
            (w / d).mkdir(parents=True, exist_ok=True)
        (w / "rabbitmq.conf").write_text(self._listeners() + f"consumer_timeout = {self.CONSUMER_TIMEOUT_MS}\nloopback_users.guest = true\n")
        (w / "advanced.config").write_text("[{rabbit, [{channel_tick_interval, 1000}]}].\n")
        (w / "enabled_plugins").write_text("[].\n")
        self.proc = subprocess.Popen(
            ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=self._env(), stdout=open(w / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, timeout=90)
        return self

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.name, *args], env=self._env(), capture_output=True, text=True, timeout=60)

    def _queue_counts(self, column: str) -> dict[str, int]:
        out = self._ctl("list_queues", "--quiet", "--no-table-headers", "name", column)
        assert out.returncode == 0, out.stdout + out.stderr
        return {name: int(n) for name, n in (line.rsplit(None, 1) for line in out.stdout.splitlines() if line.strip())}

    def messages(self, queue: str) -> int:
        """Messages of ``queue`` the broker still holds, ready or delivered and not acknowledged."""
        return self._queue_counts("messages").get(queue, 0)

    def close_connections(self, peer_ports: set[int], reason: str) -> int:
        """Close the client connections coming from ``peer_ports`` (as a network cut would); how many were."""
        out = self._ctl("list_connections", "--quiet", "--no-table-headers", "pid", "peer_port")
        assert out.returncode == 0, out.stdout + out.stderr
        closed = 0
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit() and int(fields[1]) in peer_ports:
                done = self._ctl("close_connection", fields[0], reason)
                assert done.returncode == 0, done.stdout + done.stderr
                closed += 1
        return closed

    def queue_type(self, queue: str) -> str | None:
        out = self._ctl("list_queues", "--quiet", "--no-table-headers", "name", "type")
        assert out.returncode == 0, out.stdout + out.stderr
        return dict(line.rsplit(None, 1) for line in out.stdout.splitlines() if line.strip()).get(queue)

    def unacknowledged(self, queue: str) -> int:
        """Messages of ``queue`` delivered to a consumer and not acknowledged yet."""
        return self._queue_counts("messages_unacknowledged").get(queue, 0)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._ctl("shutdown")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


class WorkerProcess:
    """`farmhand worker` with its own working dir; the broker comes from BROKER_URL as in production."""

    def __init__(self, root: Path, env: dict[str, str], config: dict[str, Any] | None = None, name: str = "w1", args: tuple[str, ...] = ()) -> None:
        self.root = root / name
        self.args = args  # after `worker`: --log-format json...
        self.root.mkdir(parents=True, exist_ok=True)
        self.working_dir = self.root / "work"
        self.node_name = f"{name}@farmhand-test"
        doc: dict[str, Any] = {
            "working_dir": str(self.working_dir),
            "images": {"allowed": ["farmhand-test/*"]},
            # The run counter is one volume for every queue (caches are per queue otherwise): runs_of reads it.
            "allow": {"caches": ["runcount"]},
            "limits": {"kill_grace": 1},
            # Port 0: any free port, so workers started side by side never collide on the default one.
            "worker": {"node_name": self.node_name, "drain_grace": 30, "metrics_address": "127.0.0.1:0"},
        }
        for key, value in (config or {}).items():
            doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
        self.config_path = self.root / "config.yml"
        self.config_path.write_text(yaml.safe_dump(doc))
        self.env = {**os.environ, **env}
        self.log_path = self.root / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "farmhand", "--config", str(self.config_path), "worker", *self.args],
            env=self.env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: " ready." in self.log()[offset:] or self.proc.poll() is not None, 60, "the worker to be ready")
        assert self.proc.poll() is None, f"the worker exited:\n{self.log()[offset:]}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _journal(self, task_id: str) -> tuple[Any, ...] | None:
        return journal_row(self.working_dir, task_id)

    def journal_stage(self, task_id: str) -> str | None:
        row = self._journal(task_id)
        return row[0] if row else None

    def journal_revoked(self, task_id: str) -> bool:
        """The worker keeps ``task_id``'s cancellation in its journal."""
        path = self.working_dir / "journal.sqlite"
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                return db.execute("SELECT 1 FROM revoked WHERE task_id = ?", (task_id,)).fetchone() is not None
        except sqlite3.Error:  # not created yet
            return False

    def journal_reported(self, task_id: str) -> bool:
        """The worker has reported the task's result (and so will not report it again)."""
        row = self._journal(task_id)
        return bool(row and row[1] is not None)


def journal_row(working_dir: Path, task_id: str) -> tuple[Any, ...] | None:
    """(stage, reported_at) of a task in the journal of the worker whose WORKING_DIR this is, read-only."""
    path = working_dir / "journal.sqlite"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT stage, reported_at FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    except sqlite3.Error:
        return None


class ResultCounter:
    """Counts final results stored for a task in Redis (the backend publishes each store on the task's key)."""

    def __init__(self, url: str, task_id: str) -> None:
        self.pubsub = redis_lib.Redis.from_url(url).pubsub()
        self.pubsub.subscribe(f"celery-task-meta-{task_id}")
        self.finals = 0

    def count(self) -> int:
        while (msg := self.pubsub.get_message(timeout=0.2)) is not None:
            if msg.get("type") == "message" and json.loads(msg["data"]).get("status") in ("SUCCESS", "FAILURE"):
                self.finals += 1
        return self.finals


def tcp_client_ports(pid: int, server_port: int) -> set[int]:
    """The local ports of ``pid``'s TCP connections to 127.0.0.1:``server_port`` (from /proc), so a test can
    drop the worker's connections alone, never its own."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if inode in inodes and state == "01" and int(remote.split(":")[1], 16) == server_port:  # 01: established
            ports.add(int(local.split(":")[1], 16))
    return ports


def sleep_task(seconds: float, *, before: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "image": BUSYBOX,
        "pull": "never",
        "command": ["sh", "-c", f"{before}echo started; sleep {seconds}; echo finished"],
        "max_run_time": 600,
        "network": "none",
        **extra,
    }


def counted_task(counter: str, seconds: float = 0, **extra: Any) -> dict[str, Any]:
    """A task that appends a line to a cache volume each time it actually runs, so runs can be counted."""
    return sleep_task(seconds, before=f"echo run >> /count/{counter}; ", caches={"runcount": "/count"}, **extra)


def runs_of(client: Any, counter: str) -> int:
    out = client.containers.run(
        BUSYBOX, ["sh", "-c", f"cat /count/{counter} 2>/dev/null || true"], volumes={cache_volume_name("runcount", None): {"bind": "/count", "mode": "ro"}}, network_mode="none", remove=True
    )
    return out.decode().count("run")


class MostRunning:
    """The most task containers of ``ids`` seen running at once, over every poll of a test."""

    def __init__(self, client: Any, ids: set[str]) -> None:
        self.client, self.ids, self.most = client, ids, 0

    def now(self) -> int:
        running = sum(c["Labels"].get(TASK_LABEL) in self.ids for c in self.client.api.containers(filters={"label": TASK_LABEL, "status": "running"}))
        self.most = max(self.most, running)
        return running


def discard_left_tasks(docker_client: Any, task_ids: set[str] | None = None) -> None:
    """Remove the task containers stopped workers left (SIGTERM leaves them by design), those of
    ``task_ids`` only when given, and the task networks they were on. Idle networks are not touched:
    removing those is the worker's job, which the suite checks."""
    left_networks: set[str] = set()
    for c in docker_client.containers.list(all=True, filters={"label": TASK_LABEL}):
        task_id = c.labels[TASK_LABEL]
        if task_ids is None or task_id in task_ids:
            left_networks.update(c.attrs["NetworkSettings"]["Networks"])
            sandbox.cleanup(docker_client, task_id)
    for net in docker_client.api.networks(filters={"label": POOL_LABEL}):
        if net["Name"] in left_networks:
            docker_client.api.remove_network(net["Name"])


def settled(app: Any, broker: "Redis | RabbitMQ", queue: str, workers: list[WorkerProcess]) -> bool:
    """Nothing more can happen to the tasks of ``queue``: the broker holds none of its messages (so no
    delivery timeout can hand one out again) and no worker is executing one. In that order: Celery makes
    a delivery active before it acknowledges it, so a run in progress shows in one of the two."""
    if broker.messages(queue):
        return False
    replies = app.control.inspect(destination=[w.node_name for w in workers], timeout=2).active()
    return replies is not None and set(replies) == {w.node_name for w in workers} and not any(replies.values())


def serving(server: Any) -> Iterator[Any]:
    """A fixture's body for a server started for its scope and stopped after it, however the tests end."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
