"""`farmhand run-task` as an operator runs it: a separate process, exit codes, stdout, memory."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from decompressing import open_decompressed
from support import busybox_task, read_log, run_measuring_peak_rss, wait_until


def _write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def _config(tmp_path: Path, workdir: Path, **extra: Any) -> Path:
    doc = {"working_dir": str(workdir), "images": {"allowed": ["farmhand-test/*"]}, "limits": {"kill_grace": 1}, **extra}
    return _write(tmp_path, "config.yml", doc)


def farmhand(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farmhand", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_json_output_is_the_document_alone_and_exit_codes_follow_state(tmp_path, workdir):
    cfg = _config(tmp_path, workdir)
    ok = farmhand("--config", str(cfg), "run-task", "--json", str(_write(tmp_path, "ok.yml", busybox_task("echo hi"))))
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["state"] == "succeeded" and doc["schema"] == "farmhand-result-v1"
    assert "[run] started" in ok.stderr, "stages are shown as they happen, on stderr"

    bad = farmhand("--config", str(cfg), "run-task", "--json", str(_write(tmp_path, "bad.yml", busybox_task("exit 4"))))
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["reason"] == "nonzero-exit"

    denied = farmhand("--config", str(cfg), "run-task", str(_write(tmp_path, "denied.yml", busybox_task("true", privileged=True))))
    assert denied.returncode == 3
    assert "policy-denied" in denied.stdout and "task.privileged" in denied.stdout


def test_invalid_task_file_names_each_field_and_creates_nothing(tmp_path, workdir, client):
    cfg = _config(tmp_path, workdir)
    before = len(client.containers.list(all=True))
    task = _write(tmp_path, "invalid.yml", {"image": 42, "max_run_time": -1, "resources": {"memory": "lots"}, "colour": "red"})
    proc = farmhand("--config", str(cfg), "run-task", str(task))
    assert proc.returncode == 2
    for field in ("task.image", "task.max_run_time", "task.resources.memory", "task.colour: unknown field"):
        assert field in proc.stderr, proc.stderr
    assert len(client.containers.list(all=True)) == before
    assert not (workdir / "tasks").exists()

    broken = _write(tmp_path, "broken.yml", "image: [unclosed\nmax_run_time: 3\n")
    proc = farmhand("--config", str(cfg), "run-task", str(broken))
    assert proc.returncode == 2 and "line 2" in proc.stderr


def test_bad_config_stops_with_a_line_naming_the_setting(tmp_path, workdir):
    cfg = _config(tmp_path, workdir, limits={"max_run_time": "forever"})
    proc = farmhand("--config", str(cfg), "run-task", str(_write(tmp_path, "t.yml", busybox_task("true"))))
    assert proc.returncode == 4
    assert "config.limits.max_run_time" in proc.stderr


def test_validate_checks_contract_and_policy_without_running(tmp_path, workdir):
    cfg = _config(tmp_path, workdir)
    good = farmhand("--config", str(cfg), "validate", str(_write(tmp_path, "g.yml", busybox_task("true"))))
    assert good.returncode == 0, good.stderr
    denied = farmhand("--config", str(cfg), "validate", str(_write(tmp_path, "d.yml", busybox_task("true", image="other/image"))))
    assert denied.returncode == 2 and "task.image" in denied.stderr


def test_200_megabytes_of_output_with_bounded_worker_memory(tmp_path, workdir):
    """The worker streams the log to disk: its peak RSS stays far below the output size."""
    cfg = _config(tmp_path, workdir, logs={"max_bytes": "1g"})
    line = "farmhand log capture line " + "x" * 70  # 97 bytes + newline
    total = 200 * 1000 * 1000
    task = _write(tmp_path, "big.yml", busybox_task(f"yes '{line}' | head -c {total}", max_run_time=600))
    out_path, err_path = tmp_path / "out.json", tmp_path / "err.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        code, peak_kib = run_measuring_peak_rss([sys.executable, "-m", "farmhand", "--config", str(cfg), "run-task", "--json", "-q", str(task)], out, err)
    out, err = out_path.read_text(), err_path.read_text()
    doc = json.loads(out)
    assert doc["state"] == "succeeded", (doc["message"], err)
    log_path = Path(urlsplit(doc["log"]["location"]).path)
    assert doc["log"]["compressed_size"] == log_path.stat().st_size
    h, size = hashlib.sha256(), 0
    with open_decompressed(log_path) as fh:  # the log travels compressed; read back its original bytes
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    assert doc["log"]["size"] == size > total
    assert h.hexdigest() == doc["log"]["sha256"]
    assert doc["log"]["truncated"] is False
    assert code == 0
    assert peak_kib < 150 * 1024, f"worker peak RSS {peak_kib / 1024:.0f} MiB"
    print(f"200 MB log: worker peak RSS {peak_kib / 1024:.1f} MiB")


def test_sigterm_cancels_cleanly_and_keeps_the_partial_log(tmp_path, workdir, client):
    import signal

    cfg = _config(tmp_path, workdir)
    task = _write(tmp_path, "long.yml", busybox_task("echo partial-output; sleep 300", task_id="cancel-1"))
    proc = subprocess.Popen([sys.executable, "-m", "farmhand", "--config", str(cfg), "run-task", "--json", str(task)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def printed() -> bool:  # the output the partial log must keep is out of the task
        return any(b"partial-output" in c.logs() for c in client.containers.list(filters={"label": "farmhand.task-id=cancel-1"}))

    wait_until(printed, 30, "the task's container to print its first line")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    doc = json.loads(out)
    assert (doc["state"], doc["reason"]) == ("exception", "cancelled")
    assert "partial-output" in read_log(doc["log"]["location"]).decode()
