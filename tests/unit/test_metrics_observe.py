"""The pure parts of metrics, live logs and the observe server: no Docker, real files, flocks and HTTP on loopback."""

from __future__ import annotations

import fcntl
import http.client
import json
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from farmhand import metrics
from farmhand.config import load_config
from farmhand.errors import ConfigError
from farmhand.live_log import LiveLog, LogUnavailable, SinceFilter, driver_pid, since_stamp, stage_of, workspace_of
from farmhand.observe_http import ObserveServer, parse_address, token_matches

TOKEN = "a-token-of-sixteen-chars"


def test_recording_before_enable_costs_no_prometheus_import() -> None:
    code = (
        "import sys, farmhand.metrics as m, farmhand.events, farmhand.delivery;"
        "m.record_gc_removal('image', 10); m.set_accepting(False, 'disk'); m.stage_finished('run', 'ok', 1.0);"
        "m.task_finished('succeeded', None); m.uploaded(5, 1.0); m.image_pulled(1.0, True);"
        "assert m.accepting() == (False, 'disk'); assert 'prometheus_client' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Any]:
    metrics.disable()
    state = {"draining": False}
    view = metrics.NodeView(slots=lambda: 4, busy=lambda: 3, running=lambda: 2, draining=lambda: state["draining"])
    reg = metrics.enable(tmp_path, lambda: (2, 300), view, docker_root=str(tmp_path))
    reg.state = state  # type: ignore[attr-defined]
    yield reg
    metrics.disable()
    metrics.set_accepting(True, "")


def sample(reg: Any, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels or None)


def test_recorded_values_and_scraped_gauges(registry: Any, tmp_path: Path) -> None:
    metrics.record_gc_removal("image", 1000)
    metrics.record_gc_removal("image", 500)
    metrics.record_gc_removal("volume", 7)
    metrics.task_finished("succeeded", None, finished_at=1234.5)
    metrics.task_finished("failed", "nonzero-exit")
    metrics.stage_finished("run", "ok", 2.0)
    metrics.stage_finished("run", "ok", 0.05)
    metrics.image_pulled(3.0, ok=True)
    metrics.uploaded(1000, 2.0)
    assert sample(registry, "farmhand_gc_removed_total", kind="image") == 2
    assert sample(registry, "farmhand_gc_removed_bytes_total", kind="image") == 1500
    assert sample(registry, "farmhand_gc_removed_bytes_total", kind="volume") == 7
    assert sample(registry, "farmhand_tasks_finished_total", state="succeeded", reason="none") == 1
    assert sample(registry, "farmhand_tasks_finished_total", state="failed", reason="nonzero-exit") == 1
    assert sample(registry, "farmhand_last_success_timestamp_seconds") == 1234.5
    assert sample(registry, "farmhand_stage_duration_seconds_count", stage="run", outcome="ok") == 2
    assert sample(registry, "farmhand_stage_duration_seconds_bucket", stage="run", outcome="ok", le="0.1") == 1
    assert sample(registry, "farmhand_image_pull_duration_seconds_count", outcome="ok") == 1
    assert sample(registry, "farmhand_uploaded_bytes_total") == 1000
    assert sample(registry, "farmhand_upload_rate_bytes_per_second") == 500
    assert (sample(registry, "farmhand_slots"), sample(registry, "farmhand_slots_busy"), sample(registry, "farmhand_tasks_running")) == (4, 3, 2)
    assert (sample(registry, "farmhand_pending_uploads"), sample(registry, "farmhand_pending_upload_bytes")) == (2, 300)
    free = sample(registry, "farmhand_disk_free_bytes", volume="working_dir", path=str(tmp_path))
    assert free is not None and 0 < free <= (sample(registry, "farmhand_disk_size_bytes", volume="docker", path=str(tmp_path)) or 0)
    assert (sample(registry, "farmhand_disk_free_inodes", volume="working_dir", path=str(tmp_path)) or 0) > 0
    assert sample(registry, "farmhand_build_info", version=metrics.__version__, python=sys.version.split()[0]) == 1


def test_the_node_takes_tasks_unless_short_of_disk_or_draining(registry: Any) -> None:
    assert sample(registry, "farmhand_accepting_tasks") == 1
    metrics.set_accepting(False, "WORKING_DIR has 1 MiB free, under gc.min_free")
    assert sample(registry, "farmhand_accepting_tasks") == 0
    assert metrics.accepting() == (False, "WORKING_DIR has 1 MiB free, under gc.min_free")
    metrics.set_accepting(True, "")
    assert sample(registry, "farmhand_accepting_tasks") == 1
    registry.state["draining"] = True
    assert sample(registry, "farmhand_accepting_tasks") == 0


# -- --since -----------------------------------------------------------------------------------

def test_since_reads_durations_and_times_as_the_logs_stamps() -> None:
    now = datetime(2026, 11, 29, 15, 0, 0, 250000, tzinfo=timezone.utc)
    assert since_stamp("90s", now) == b"2026-11-29T14:58:30.250000000Z"
    assert since_stamp("2h", now) == b"2026-11-29T13:00:00.250000000Z"
    assert since_stamp("2026-11-29T15:00:00Z") == b"2026-11-29T15:00:00.000000000Z"
    assert since_stamp("2026-11-29T16:00:00+01:00") == b"2026-11-29T15:00:00.000000000Z"
    assert since_stamp("2026-11-29T15:00:00") == b"2026-11-29T15:00:00.000000000Z"
    with pytest.raises(ValueError, match="--since: 'yesterday' is neither"):
        since_stamp("yesterday")


def test_the_since_filter_keeps_whole_lines_from_the_time_on_across_chunks() -> None:
    log = (
        b"2026-11-29T14:59:59.999999999Z old\n"
        b"[farmhand] a note after an old line\n"
        b"2026-11-29T15:00:00.000000000Z new one\n"
        b"[farmhand] a note after a new line\n"
        b"2026-11-29T15:00:01.000000000Z new two"
    )
    for cut in range(len(log)):
        f = SinceFilter(b"2026-11-29T15:00:00.000000000Z")
        out = f.feed(log[:cut]) + f.feed(log[cut:]) + f.flush()
        assert out == log[log.index(b"2026-11-29T15:00:00"):], cut


# -- following a log -----------------------------------------------------------------------------

class FakeDriver:
    """A process's side of a task, as the engine keeps it: the task's flock held, its log appended, its checkpoint."""

    def __init__(self, tasks_dir: Path, task_id: str = "t1") -> None:
        self.workspace = tasks_dir / task_id
        self.workspace.mkdir(parents=True)
        self.lock = open(self.workspace / ".lock", "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.stage("run")
        self.log = open(self.workspace / "task.log", "ab", buffering=0)

    def stage(self, name: str) -> None:
        (self.workspace / "checkpoint.json").write_text(json.dumps({"stage": name}))

    def release(self) -> None:
        self.lock.close()


def test_a_follower_reads_while_the_task_runs_and_stops_when_the_run_stage_ends(tmp_path: Path) -> None:
    driver = FakeDriver(tmp_path)
    assert driver_pid(driver.workspace) is not None and stage_of(driver.workspace) == "run"
    driver.log.write(b"one\n")
    reader = LiveLog(driver.workspace, poll=0.01)
    chunks = reader.chunks()
    assert next(chunks) == b"one\n"
    got: list[bytes] = []
    done = threading.Event()

    def follow() -> None:
        got.extend(chunks)
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    driver.log.write(b"two\n")
    assert not done.wait(0.3)  # still following: the run stage goes on
    driver.log.write(b"three\n")
    driver.stage("collect")
    assert done.wait(10)
    assert b"".join(got) == b"two\nthree\n" and reader.offset == len(b"one\ntwo\nthree\n")
    # Resumed from an offset, after the end: the rest, and no waiting.
    assert b"".join(LiveLog(driver.workspace, offset=4).chunks()) == b"two\nthree\n"


def test_a_follower_stops_when_nobody_drives_the_task_and_reopens_a_replaced_log(tmp_path: Path) -> None:
    driver = FakeDriver(tmp_path)
    driver.log.write(b"line 1\n")
    reader = LiveLog(driver.workspace, poll=0.01)
    chunks = reader.chunks()
    assert next(chunks) == b"line 1\n"
    # A restarted worker writes the log again from the container's first line: the same bytes, then more.
    (driver.workspace / "task.log").unlink()
    with open(driver.workspace / "task.log", "wb") as fh:
        fh.write(b"line 1\nline 2\n")
    assert next(chunks) == b"line 2\n"
    driver.release()  # the worker stopped: the log cannot grow
    assert list(chunks) == []


def test_why_a_log_is_not_here(tmp_path: Path) -> None:
    with pytest.raises(LogUnavailable) as bad:
        workspace_of(tmp_path, "../etc")
    assert bad.value.status == 400
    with pytest.raises(LogUnavailable) as unknown:
        workspace_of(tmp_path, "nope")
    assert unknown.value.status == 404 and "no task nope" in unknown.value.message
    ws = tmp_path / "done"
    ws.mkdir()
    (ws / "result.json").write_text(json.dumps({"log": {"location": "file:///srv/w/done/task.log.zst"}}))
    with pytest.raises(LogUnavailable) as gone:
        LiveLog(ws).check()
    assert gone.value.status == 410 and "file:///srv/w/done/task.log.zst" in gone.value.message


# -- the server -----------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path: Path, registry: Any) -> Iterator[ObserveServer]:
    srv = ObserveServer(("127.0.0.1", 0), registry, tmp_path, lambda: {"tasks": [{"task_id": "t1"}]}, TOKEN).start(poll_interval=0.05)
    yield srv
    srv.stop()


def request(srv: ObserveServer, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


def test_the_server_needs_the_token_for_tasks_and_logs_never_for_metrics(server: ObserveServer, tmp_path: Path) -> None:
    metrics.task_finished("succeeded", None)
    reply = request(server, "/metrics")
    assert reply.status == 200 and b'farmhand_tasks_finished_total{reason="none",state="succeeded"} 1.0' in reply.read()
    for path in ("/tasks", "/tasks/t1/log"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-sixteen"}, {"Authorization": f"Basic {TOKEN}"}):
            reply = request(server, path, headers)
            assert reply.status == 401 and reply.getheader("WWW-Authenticate", "").startswith("Bearer"), (path, headers)
    reply = request(server, "/tasks", {"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200 and json.load(reply) == {"tasks": [{"task_id": "t1"}]}
    server.token = None  # no token configured: the endpoints are off
    assert request(server, "/tasks", {"Authorization": f"Bearer {TOKEN}"}).status == 404


def test_the_server_follows_a_log_and_resumes_it_with_range(server: ObserveServer, tmp_path: Path) -> None:
    driver = FakeDriver(tmp_path)
    driver.log.write(b"0123456789\n")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    reply = request(server, "/tasks/t1/log", auth)
    assert reply.status == 200 and reply.read1(100) == b"0123456789\n"
    reply.close()
    resumed = request(server, "/tasks/t1/log", {**auth, "Range": "bytes=5-"})
    assert resumed.status == 206 and resumed.getheader("Content-Range") == "bytes 5-*/*"
    assert resumed.read1(100) == b"56789\n"
    driver.log.write(b"more\n")
    driver.stage("upload")
    assert resumed.read() == b"more\n"  # the chunked body ends with the run stage
    assert request(server, "/tasks/t1/log", {**auth, "Range": "lines=1-"}).status == 416
    assert request(server, "/tasks/t1/log?follow=0", {**auth, "Range": "bytes=999-"}).status == 416
    assert request(server, "/tasks/nope/log", auth).status == 404


def test_address_and_token_checks() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9464", ":9464", "localhost:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)
    assert token_matches(f"Bearer {TOKEN}", TOKEN) and token_matches(f"bearer {TOKEN}", TOKEN)
    assert not token_matches(None, TOKEN) and not token_matches(f"Bearer {TOKEN}x", TOKEN) and not token_matches(TOKEN, TOKEN)


def test_config_names_a_bad_address_or_token(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    for worker, field in (({"metrics_address": "9464"}, "config.worker.metrics_address"), ({"api_token": "short"}, "config.worker.api_token")):
        path.write_text(yaml.safe_dump({"worker": worker}))
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(path, environ={})
    path.write_text(yaml.safe_dump({"worker": {"metrics_address": "", "api_token": TOKEN}}))
    node = load_config(path, environ={"FARMHAND_METRICS_ADDRESS": "127.0.0.1:9999"}).node
    assert (node.metrics_address, node.api_token) == ("127.0.0.1:9999", TOKEN)
    assert load_config(path, environ={}).node.metrics_address is None


def test_a_follower_that_hangs_up_frees_its_thread_while_the_task_is_silent(server: ObserveServer, tmp_path: Path) -> None:
    driver = FakeDriver(tmp_path)  # holds the task's lock, and so its log open, for the whole test
    driver.log.write(b"one line, then silence\n")

    def handlers() -> int:
        return sum("process_request_thread" in t.name for t in threading.enumerate())

    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.request("GET", "/tasks/t1/log", headers={"Authorization": f"Bearer {TOKEN}"})
    reply = conn.getresponse()
    assert reply.read1(100) == b"one line, then silence\n" and handlers() == 1
    conn.close()
    reply.close()
    gone = threading.Event()
    for _ in range(200):  # the handler notices the hang-up at its next poll, not at the task's next line
        if handlers() == 0:
            break
        gone.wait(0.05)
    assert handlers() == 0 and driver_pid(driver.workspace) is not None


def test_farmhand_logs_prints_a_kept_log_from_a_time_on(tmp_path: Path) -> None:
    ws = tmp_path / "work" / "tasks" / "kept"
    ws.mkdir(parents=True)
    (ws / "task.log").write_bytes(b"2026-11-29T14:00:00.000000000Z early\n2026-11-29T16:00:00.000000000Z late ***\n")
    (ws / "result.json").write_text("{}")
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work")}))
    cli = [sys.executable, "-m", "farmhand", "--config", str(cfg), "logs"]
    assert subprocess.run([*cli, "kept"], capture_output=True, check=True).stdout == (ws / "task.log").read_bytes()
    since = subprocess.run([*cli, "--since", "2026-11-29T15:00:00Z", "kept"], capture_output=True, check=True)
    assert since.stdout == b"2026-11-29T16:00:00.000000000Z late ***\n"
    bad = subprocess.run([*cli, "--since", "soon", "kept"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--since: 'soon' is neither" in bad.stderr
    unknown = subprocess.run([*cli, "ghost"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "no task ghost on this host" in unknown.stderr
