"""The worker as a container (worker/container/Containerfile, built by scripts/build-worker-image.sh), run as an
operator would: on this host's dockerd through its mounted socket, configured by env vars alone, WORKING_DIR
mounted at the same path, the SSH key where the seed mounts it (/usr/src/.ssh/id_rsa), as its unprivileged user
with the socket's group.

Around it, real servers on loopback (the container shares the host's network to reach them): RabbitMQ as the
broker, Redis as the result store (each result stored is also published there, so a second one would be seen),
and OpenSSH's sshd as an SFTP warehouse with key-only auth and its host key checked.

- A task runs and its artifact lands in the warehouse: as the image's user, and as root (`--user 0`, a WORKING_DIR
  Docker made and a key root's own: the seeds' way).
- The worker container is killed (docker kill) while a task runs; a new one re-adopts the task, whose result
  arrives once, with the artifact made after the kill, from a single run.
- Without the socket's group, or with a WORKING_DIR left to root, the worker stops at start (exit 4) saying
  what the container lacks; `farmhand firewall` in it says where the rules are applied.

Run by `make images-test` (which builds the image first).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import docker
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from dispatch_support import RabbitMQ, Redis, ResultCounter, discard_left_tasks, journal_row, serving, settled  # noqa: E402
from farmhand import keys  # noqa: E402
from farmhand.client import Client  # noqa: E402
from farmhand.config import load_config  # noqa: E402
from farmhand.network_pool import POOL_LABEL  # noqa: E402
from farmhand.sandbox import ROLE_LABEL, TASK_LABEL, cache_volume_name  # noqa: E402
from sshd import Sshd  # noqa: E402
from support import BUSYBOX, wait_until  # noqa: E402

IMAGE = os.environ.get("FARMHAND_WORKER_IMAGE", "farmhand-worker:latest")
#: The image's unprivileged user (worker/container/Containerfile).
WORKER_UID = 10001
#: The engine's socket on this host (DOCKER_HOST, as the docker CLI and SDK read it); always
#: /var/run/docker.sock inside the container.
DOCKER_SOCKET = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
#: Marks this test's worker containers (each is removed by name when its test ends).
TEST_LABEL = "farmhand.test=worker-container"


def docker_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    res = docker_cli("image", "inspect", IMAGE)
    assert res.returncode == 0, f"{IMAGE} is missing: run `make worker-image` ({res.stderr.strip()})"
    return IMAGE


@pytest.fixture(scope="module")
def docker_client() -> docker.DockerClient:
    c = docker.from_env(timeout=120)
    c.images.get(BUSYBOX)  # built by `make test-images`
    return c


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    yield from serving(RabbitMQ(tmp_path_factory.mktemp("rabbitmq")))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    yield from serving(Redis(tmp_path_factory.mktemp("redis")))


@dataclass
class Warehouse:
    """The SFTP warehouse and the SSH material the worker container gets: the seed's key, and known_hosts."""

    sshd: Sshd
    root: Path
    key: Path
    known_hosts: Path

    @property
    def url(self) -> str:
        return f"sftp://root@127.0.0.1:{self.sshd.port}{self.root}/"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    base = tmp_path_factory.mktemp("warehouse")
    key = base / "id_rsa"
    keys.generate(key, "rsa")  # Zimfarm's id_rsa
    os.chown(key, WORKER_UID, WORKER_UID)  # the worker's own, 0600: readable by nobody else
    server = Sshd(base / "sshd")
    server.authorize(key.with_name("id_rsa.pub").read_text())
    known_hosts = base / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    root = base / "files"
    root.mkdir()
    server.start()
    try:
        yield Warehouse(server, root, key, known_hosts)
    finally:
        server.stop()


class WorkerContainer:
    """`farmhand worker` in the image, on this host's dockerd: `docker run` as the README shows it."""

    def __init__(self, image: str, env: dict[str, str], working_dir: Path, key: Path, warehouse: Warehouse, name: str, as_root: bool) -> None:
        self.image, self.env, self.working_dir, self.key, self.warehouse = image, env, working_dir, key, warehouse
        self.name, self.as_root = name, as_root
        self.node_name = env["NODE_NAME"]

    def argv(self, *, socket_group: bool = True) -> list[str]:
        argv = ["run", "-d", "--name", self.name, "--label", TEST_LABEL, "--network", "host"]
        if self.as_root:
            argv += ["--user", "0"]  # the seeds' way
        elif socket_group:
            argv += ["--group-add", str(os.stat(DOCKER_SOCKET).st_gid)]
        argv += [
            "-v", f"{DOCKER_SOCKET}:/var/run/docker.sock",
            "-v", f"{self.working_dir}:{self.working_dir}",
            "-v", f"{self.key}:/usr/src/.ssh/id_rsa:ro",
            "-v", f"{self.warehouse.known_hosts}:/usr/src/.ssh/known_hosts:ro",
        ]
        for name, value in sorted(self.env.items()):
            argv += ["-e", f"{name}={value}"]
        return [*argv, self.image]

    def start(self) -> "WorkerContainer":
        res = docker_cli(*self.argv())
        assert res.returncode == 0, res.stderr
        wait_until(lambda: " ready." in self.logs() or not self.running(), 90, f"{self.name} to be ready")
        assert self.running(), f"{self.name} exited:\n{self.logs()}"
        return self

    def logs(self) -> str:
        res = docker_cli("logs", self.name)
        return res.stdout + res.stderr

    def running(self) -> bool:
        res = docker_cli("inspect", "-f", "{{.State.Running}}", self.name)
        return res.stdout.strip() == "true"

    def kill(self) -> None:
        res = docker_cli("kill", self.name)
        assert res.returncode == 0, res.stderr
        wait_until(lambda: not self.running(), 30, f"{self.name} to be dead")

    def stop(self) -> None:
        """SIGTERM through tini, as `docker stop` sends it: the worker exits and gives its idle networks back."""
        docker_cli("stop", "-t", "30", self.name, timeout=60)

    def remove(self) -> None:
        docker_cli("rm", "-f", self.name)

    def journal(self, task_id: str) -> tuple[Any, ...] | None:
        """(stage, reported_at) of the task in the worker's journal, read from the host: the same WORKING_DIR."""
        return journal_row(self.working_dir, task_id)


class Node:
    """One node served by worker containers started one after the other on one WORKING_DIR."""

    def __init__(self, image: str, root: Path, rabbitmq: RabbitMQ, redis_server: Redis, warehouse: Warehouse, as_root: bool = False) -> None:
        self.queue = f"wc_{uuid.uuid4().hex[:10]}"  # its own queue: the broker's count of it is this test's
        self.working_dir = root / "work"
        self.as_root = as_root
        if as_root:
            # The seed's way: WORKING_DIR made by Docker as a missing bind source, the key root's own.
            self.key = root / "id_rsa"
            self.key.write_bytes(warehouse.key.read_bytes())
            self.key.chmod(0o600)
        else:
            self.working_dir.mkdir()
            os.chown(self.working_dir, WORKER_UID, WORKER_UID)  # the operator gives it to the image's user
            self.key = warehouse.key
        self.env = {
            "BROKER_URL": rabbitmq.url,
            "RESULT_BACKEND": redis_server.url,
            "WORKING_DIR": str(self.working_dir),
            "QUEUES": self.queue,
            "CONCURRENCY": "1",
            "NODE_NAME": f"{self.queue}@farmhand-test",
            "FARMHAND_IMAGES_ALLOWED": "farmhand-test/*",
            "FARMHAND_UPLOAD_DEFAULT": warehouse.url,
            "FARMHAND_KILL_GRACE": "1",
            "FARMHAND_METRICS_ADDRESS": "127.0.0.1:0",  # never the default port another worker of this host holds
        }
        self.image, self.warehouse = image, warehouse
        self.containers: list[WorkerContainer] = []
        self.task_ids: set[str] = set()
        client_config = root / "client.yml"
        client_config.write_text(yaml.safe_dump({"working_dir": str(root / "client")}))
        self.client = Client(load_config(client_config, environ={"BROKER_URL": rabbitmq.url, "RESULT_BACKEND": redis_server.url}))

    def submit(self, task: dict[str, Any], task_id: str | None = None) -> Any:
        handle = self.client.submit(task, queue=self.queue, task_id=task_id)
        self.task_ids.add(handle.task_id)
        return handle

    def worker(self) -> WorkerContainer:
        container = WorkerContainer(
            self.image, self.env, self.working_dir, self.key, self.warehouse, f"farmhand-wc-{self.queue}-{len(self.containers)}", self.as_root
        )
        self.containers.append(container)
        return container

    def close(self, docker_client: docker.DockerClient) -> None:
        for container in self.containers:
            container.stop()
            container.remove()
        discard_left_tasks(docker_client, self.task_ids)  # a failed test's, which the killed worker left
        try:
            docker_client.volumes.get(cache_volume_name("runcount", self.queue)).remove()
        except docker.errors.NotFound:
            pass


@pytest.fixture
def node(request: pytest.FixtureRequest, image: str, tmp_path: Path, rabbitmq: RabbitMQ, redis_server: Redis, warehouse: Warehouse, docker_client: docker.DockerClient) -> Iterator[Node]:
    n = Node(image, tmp_path, rabbitmq, redis_server, warehouse, as_root=getattr(request, "param", "farmhand") == "root")
    try:
        yield n
    finally:
        n.close(docker_client)


def landed(warehouse: Warehouse, doc: dict[str, Any], name: str) -> bytes:
    """The artifact ``name`` as the warehouse holds it, checked against the result and its sha256 sidecar."""
    (artifact,) = [a for a in doc["artifacts"] if a["name"] == name]
    assert artifact["location"].startswith(warehouse.url), artifact
    path = warehouse.root / doc["task_id"] / name
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert (len(data), digest) == (artifact["size"], artifact["sha256"]), artifact
    assert path.with_name(f"{name}.sha256").read_text().split()[0] == digest
    return data


def runs_of(docker_client: docker.DockerClient, queue: str, counter: str) -> int:
    """How many times a task ran: each run appended a line to the queue's cache volume."""
    out = docker_client.containers.run(
        BUSYBOX, ["sh", "-c", f"cat /count/{counter} 2>/dev/null || true"],
        volumes={cache_volume_name("runcount", queue): {"bind": "/count", "mode": "ro"}}, network_mode="none", remove=True,
    )
    return out.decode().count("run")


@pytest.mark.parametrize("node", ["farmhand", "root"], indirect=True)
def test_a_task_runs_and_its_artifact_reaches_the_sftp_warehouse(node: Node, warehouse: Warehouse) -> None:
    """As the image's user (the operator gave it WORKING_DIR and the key), and as root, the seeds' way."""
    worker = node.worker().start()
    task = {
        "image": BUSYBOX,
        "pull": "never",
        "command": ["sh", "-c", "echo hello from a task; echo 42 > /answer.txt"],
        "max_run_time": 120,
        "network": "bridge",
        "artifacts": [{"path": "/answer.txt", "name": "answer.txt"}],
    }
    doc = node.submit(task).result(timeout=120)
    assert doc["state"] == "succeeded", (doc, worker.logs())
    assert landed(warehouse, doc, "answer.txt") == b"42\n"
    assert doc["log"]["location"].startswith(warehouse.url)
    assert (warehouse.root / doc["task_id"] / "task.log.zst").exists()
    # The worker ran as the user it was given: what it wrote in WORKING_DIR is that user's.
    assert (node.working_dir / "journal.sqlite").stat().st_uid == (0 if node.as_root else WORKER_UID)


def test_a_killed_worker_container_is_replaced_and_the_new_one_readopts_the_running_task(
    node: Node, warehouse: Warehouse, redis_server: Redis, rabbitmq: RabbitMQ, docker_client: docker.DockerClient
) -> None:
    first = node.worker().start()
    task_id = uuid.uuid4().hex
    results = ResultCounter(redis_server.url, task_id)
    # The task runs until the test lets it finish (a file made in its container), so it is surely running
    # while no worker lives and when the next one adopts it; what it makes after that is its artifact.
    script = "echo run >> /count/readopt; echo started; until [ -e /tmp/go ]; do sleep 0.1; done; echo made-after-the-kill > /made.txt"
    task = {
        "image": BUSYBOX,
        "pull": "never",
        "command": ["sh", "-c", script],
        "max_run_time": 600,
        "network": "bridge",
        "caches": {"runcount": "/count"},
        "artifacts": [{"path": "/made.txt", "name": "made.txt"}],
    }
    handle = node.submit(task, task_id=task_id)
    task_filter = {"label": [f"{TASK_LABEL}={task_id}", f"{ROLE_LABEL}=task"], "status": "running"}
    wait_until(lambda: docker_client.containers.list(filters=task_filter) and first.journal(task_id) == ("run", None), 120, "the task to run")

    first.kill()
    (task_container,) = docker_client.containers.list(filters=task_filter)  # it outlived its worker
    assert handle.state != "succeeded"

    second = node.worker().start()  # recovery runs before the worker says it is ready
    assert task_container.exec_run(["touch", "/tmp/go"]).exit_code == 0
    doc = handle.result(timeout=180)
    assert doc["state"] == "succeeded", (doc, second.logs())
    assert any("resumed after the worker restarted" in w for w in doc["warnings"]), doc["warnings"]
    assert landed(warehouse, doc, "made.txt") == b"made-after-the-kill\n"
    # A second result could only come from a report not yet marked done, a delivery still held, or a run going on.
    wait_until(
        lambda: (second.journal(task_id) or (None, None))[1] is not None
        and settled(node.client.app, rabbitmq, node.queue, [SimpleNamespace(node_name=node.env["NODE_NAME"])]),
        60,
        "the worker to be done with the task",
    )
    assert results.count() == 1
    assert runs_of(docker_client, node.queue, "readopt") == 1
    assert docker_client.containers.list(all=True, filters={"label": f"{TASK_LABEL}={task_id}"}) == []

    # The killed container's idle networks were the node's: the new one took them over, and gives all back at stop.
    second.stop()
    assert docker_client.api.networks(filters={"label": f"{POOL_LABEL}={node.env['NODE_NAME']}"}) == []


def exit_code_once_stopped(worker: WorkerContainer) -> str:
    wait_until(lambda: not worker.running(), 60, f"{worker.name} to stop")
    return docker_cli("inspect", "-f", "{{.State.ExitCode}}", worker.name).stdout.strip()


def test_without_the_sockets_group_the_worker_stops_at_start_saying_what_the_container_lacks(node: Node) -> None:
    worker = node.worker()
    res = docker_cli(*worker.argv(socket_group=False))
    assert res.returncode == 0, res.stderr
    assert exit_code_once_stopped(worker) == "4", worker.logs()
    assert "docker: cannot reach the Docker engine" in worker.logs()
    assert '--group-add "$(stat -c %g /var/run/docker.sock)"' in worker.logs()
    assert "Traceback" not in worker.logs()


def test_a_working_dir_left_to_root_stops_the_worker_at_start_saying_whose_it_must_be(node: Node) -> None:
    """As Docker creates a missing bind source: root's, 0755."""
    os.chown(node.working_dir, 0, 0)
    worker = node.worker()
    res = docker_cli(*worker.argv())
    assert res.returncode == 0, res.stderr
    assert exit_code_once_stopped(worker) == "4", worker.logs()
    assert f"WORKING_DIR {node.working_dir}: cannot take its lock as uid {WORKER_UID}: Permission denied" in worker.logs()
    assert "chown 10001:10001" in worker.logs() and "--user 0" in worker.logs()
    assert "Traceback" not in worker.logs()


def test_the_firewall_from_the_container_says_where_to_apply_it(image: str) -> None:
    """The worker container holds no NET_ADMIN: the rules are the host's (or the image's, run as root in its network)."""
    res = docker_cli("run", "--rm", "--network", "host", image, "farmhand", "firewall", "check")
    assert res.returncode != 0, res.stdout
    assert res.stderr.startswith("farmhand: firewall: iptables is unusable"), res.stderr
    assert "--user 0 --network host --cap-add NET_ADMIN IMAGE farmhand firewall apply" in res.stderr
