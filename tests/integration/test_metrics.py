"""A real Prometheus (Debian's) scrapes a real `farmhand worker`; the values are read back through its query API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import docker
import pytest
import yaml

from dispatch_support import WorkerProcess, discard_left_tasks, sleep_task
from farmhand import __version__
from farmhand.client import Client
from farmhand.config import load_config
from farmhand.result import _epoch
from support import BUSYBOX, free_port, wait_for_port, wait_until


class Prometheus:
    """``prometheus`` with its own config and data dir on a free loopback port, scraping ``target`` every second."""

    def __init__(self, root: Path, target: str) -> None:
        self.root, self.port = root, free_port()
        (root / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": "farmhand", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Prometheus":
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=open(self.root / "prometheus.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 60)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as reply:
            doc = json.load(reply)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The expression's one value now, None while Prometheus has none."""
        found = self.query(expr)
        assert len(found) <= 1, found
        return float(found[0]["value"][1]) if found else None

    def wait_for(self, expr: str, expected: float, timeout: float = 30) -> None:
        wait_until(lambda: self.value(expr) == expected, timeout, f"{expr} == {expected} in Prometheus (now {self.value(expr)})")


@pytest.fixture
def watched(tmp_path: Path, registry: Any) -> Iterator[tuple[WorkerProcess, Prometheus, Client]]:
    port = free_port()
    host = registry.host
    worker = WorkerProcess(
        tmp_path,
        {"CONCURRENCY": "2"},
        {
            "worker": {"metrics_address": f"127.0.0.1:{port}"},
            "images": {"allowed": ["farmhand-test/*", "127.0.0.1:*"]},
            "registries": {host: {"username": registry.username, "password": registry.password}},
        },
    ).start()
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}").start()
    cfg = tmp_path / "client.yml"
    cfg.write_text(yaml.safe_dump({"working_dir": str(worker.working_dir)}))
    try:
        yield worker, prometheus, Client(load_config(cfg, environ={}))
    finally:
        prometheus.stop()
        worker.stop()
        discard_left_tasks(docker.from_env())


def _sent_bytes(doc: dict[str, Any]) -> int:
    log = doc["log"]
    return (log.get("compressed_size") or log["size"]) + sum(a["size"] for a in doc["artifacts"] if a.get("present"))


def test_prometheus_scrapes_what_the_worker_did(watched: tuple[WorkerProcess, Prometheus, Client], registry: Any) -> None:
    worker, prom, client = watched
    prom.wait_for('up{job="farmhand"}', 1)
    prom.wait_for("farmhand_slots", 2)
    prom.wait_for(f'farmhand_build_info{{version="{__version__}"}}', 1)
    prom.wait_for("farmhand_accepting_tasks", 1)
    prom.wait_for("farmhand_pending_uploads", 0)
    assert (prom.value('farmhand_disk_free_bytes{volume="working_dir"}') or 0) > 0
    assert (prom.value('farmhand_disk_free_inodes{volume="working_dir"}') or 0) > 0
    assert (prom.value('farmhand_disk_free_bytes{volume="docker"}') or 0) > 0

    # A task that waits for the test: the node is seen busy while it runs.
    blocked = client.submit(sleep_task(0, before="while [ ! -e /tmp/go ]; do sleep 0.1; done; "))
    prom.wait_for("farmhand_tasks_running", 1)
    prom.wait_for("farmhand_slots_busy", 1)
    container = wait_until(lambda: next(iter(docker.from_env().containers.list(filters={"label": f"farmhand.task-id={blocked.task_id}"})), None), 30, "the task's container")
    container.exec_run(["touch", "/tmp/go"])
    started = time.time()
    pulled = client.submit({"image": registry.image, "pull": "always", "command": ["sh", "-c", "echo pulled; echo 42 > /a"], "max_run_time": 60, "network": "none",
                            "artifacts": [{"path": "/a", "name": "a"}]})
    failing = client.submit({"image": BUSYBOX, "pull": "never", "command": ["sh", "-c", "echo no; exit 3"], "max_run_time": 60, "network": "none"})
    docs = [h.result(timeout=60) for h in (blocked, pulled, failing)]
    assert [d["state"] for d in docs] == ["succeeded", "succeeded", "failed"], docs

    prom.wait_for('farmhand_tasks_finished_total{state="succeeded",reason="none"}', 2)
    prom.wait_for('farmhand_tasks_finished_total{state="failed",reason="nonzero-exit"}', 1)
    prom.wait_for("farmhand_tasks_running", 0)
    prom.wait_for("farmhand_slots_busy", 0)
    prom.wait_for('sum(farmhand_stage_duration_seconds_count{stage="run"})', 3)
    prom.wait_for('farmhand_stage_duration_seconds_count{stage="prepare",outcome="ok"}', 3)
    prom.wait_for('farmhand_image_pull_duration_seconds_count{outcome="ok"}', 1)
    # Every byte the warehouse confirmed, logs (compressed as sent) and artifacts.
    prom.wait_for("farmhand_uploaded_bytes_total", sum(_sent_bytes(d) for d in docs))
    assert (prom.value("farmhand_upload_rate_bytes_per_second") or 0) > 0
    last = prom.value("farmhand_last_success_timestamp_seconds")
    assert last is not None and max(_epoch(d["finished_at"]) for d in docs[:2]) - 1 <= last <= time.time()
    assert last >= started - 60
    # The run stage of the blocked task lasted at least until it was let go: it is in a bucket above 0.
    assert prom.value('sum(farmhand_stage_duration_seconds_sum{stage="run"})') > 0
