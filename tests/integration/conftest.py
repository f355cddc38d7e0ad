"""Fixtures that talk to the real Docker engine and start real helpers on loopback.

`make test` (scripts/setup-host.sh, scripts/build-test-images.sh) has already
installed Docker and built the local images; nothing is pulled from a hub.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import pytest
import yaml

from farmhand.config import WorkerConfig, load_config
from farmhand.engine import Engine
from farmhand.network_pool import POOL_LABEL
from farmhand.result import Result
from farmhand.sandbox import TASK_LABEL
from support import BUSYBOX, Recorder, free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    c = docker.from_env(timeout=120)
    try:
        c.ping()
        c.images.get(BUSYBOX)
    except docker.errors.DockerException as exc:  # the suite is meaningless without them
        pytest.exit(f"integration tests need dockerd and {BUSYBOX} (run `make test`): {exc}", returncode=3)
    return c


def _owned(client: docker.DockerClient) -> tuple[list[str], list[str], set[str]]:
    # The low-level listings: one request each, where the model API inspects every object it lists
    # (and fails when one goes in between).
    containers = [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters={"label": TASK_LABEL})]
    networks = [n["Name"] for n in client.api.networks(filters={"label": POOL_LABEL})]
    volumes = {v["Name"] for v in client.api.volumes().get("Volumes") or []}
    return containers, networks, volumes


@pytest.fixture(autouse=True)
def nothing_left_behind(client: docker.DockerClient) -> Iterator[None]:
    """After every test: no container, network or volume of any task remains (caches aside)."""
    _, _, volumes_before = _owned(client)
    yield
    containers, networks, volumes_after = _owned(client)
    new_volumes = {v for v in volumes_after - volumes_before if not v.startswith("farmhand-cache-")}
    assert containers == [], f"task containers left behind: {containers}"
    assert networks == [], f"task networks left behind: {networks}"
    assert new_volumes == set(), f"volumes left behind: {new_volumes}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def make_config(tmp_path: Path, workdir: Path) -> Callable[..., WorkerConfig]:
    def _make(**overrides: Any) -> WorkerConfig:
        doc: dict[str, Any] = {
            "working_dir": str(workdir),
            "images": {"allowed": ["farmhand-test/*", "127.0.0.1:*"], "pull_attempts": 2, "pull_backoff": 0.1},
            "limits": {"kill_grace": 1, "max_run_time": 3600},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump(doc))
        return load_config(path, environ={})

    return _make


@pytest.fixture
def config(make_config: Callable[..., WorkerConfig]) -> WorkerConfig:
    return make_config()


@pytest.fixture
def run_task(client: docker.DockerClient, config: WorkerConfig) -> Callable[..., Result]:
    def _run(doc: dict[str, Any], cfg: WorkerConfig | None = None, reporter: Recorder | None = None) -> Result:
        return Engine(cfg or config, client, reporter).run(doc)

    return _run


class Registry:
    def __init__(self, host: str, username: str, password: str, image: str) -> None:
        self.host, self.username, self.password, self.image = host, username, password, image


@pytest.fixture(scope="session")
def registry(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's docker-registry on loopback with htpasswd auth, holding a copy of the busybox image."""
    root = tmp_path_factory.mktemp("registry")
    user, password = "farmer", "s3cret-pass"
    htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True).stdout
    (root / "htpasswd").write_text(htpasswd)
    port = free_port()
    host = f"127.0.0.1:{port}"
    (root / "config.yml").write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "auth": {"htpasswd": {"realm": "farmhand-test", "path": str(root / "htpasswd")}},
            }
        )
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    proc = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=open(root / "log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        image = f"{host}/farmhand/busybox:1"
        client.images.get(BUSYBOX).tag(f"{host}/farmhand/busybox", "1")
        for event in client.api.push(f"{host}/farmhand/busybox", "1", stream=True, decode=True, auth_config={"username": user, "password": password}):
            assert "error" not in event, event
        client.images.remove(image)
        yield Registry(host, user, password, image)
    finally:
        proc.terminate()
        proc.wait(10)
        try:
            client.images.remove(f"{host}/farmhand/busybox:1", force=True)
        except docker.errors.DockerException:
            pass
