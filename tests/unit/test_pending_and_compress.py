"""Pending uploads (kept, listed, retried with backoff, delivered, discarded) and log compression."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from farmhand import pending
from farmhand.cli import main
from farmhand.compress import compress_file
from farmhand.config import WorkerConfig, load_config
from farmhand.errors import TaskProblem
from farmhand.uploaders import UploadItem

from decompressing import open_decompressed


@pytest.fixture
def setup(tmp_path: Path) -> tuple[WorkerConfig, Path, Path]:
    warehouse = tmp_path / "warehouse"
    cfg_path = tmp_path / "config.yml"
    cfg_path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), "upload": {"default": warehouse.as_uri() + "/", "pending_retry_interval": 10}}))
    return load_config(cfg_path, environ={}), warehouse, cfg_path


def _items(ws: Path) -> list[UploadItem]:
    out = []
    for name, data in [("task.log.zst", b"log"), ("tree/sub/f.txt", b"file data\n")]:
        path = ws / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append(UploadItem(path, name, len(data), hashlib.sha256(data).hexdigest()))
    return out


def test_hand_off_keeps_the_files_by_link_and_survives_the_workspace(setup: tuple[WorkerConfig, Path, Path], tmp_path: Path) -> None:
    cfg, warehouse, _ = setup
    ws = tmp_path / "ws"
    items = _items(ws)
    entry = pending.hand_off(cfg, "t1", cfg.upload_default, items, error="boom", workspace=ws, local_copies=[ws / "artifacts"])
    assert entry.path == cfg.pending_dir / "t1"
    kept = entry.items()
    assert [i.remote_name for i in kept] == ["task.log.zst", "tree/sub/f.txt"]
    assert os.path.samefile(kept[1].local_path, items[1].local_path), "a hard link, not a second copy"
    job = json.loads((entry.path / "job.json").read_text())
    assert job["last_error"] == "boom" and job["tries"] == 1 and job["next_try_at"] > time.time()
    import shutil

    shutil.rmtree(ws / "artifacts")
    assert kept[1].local_path.read_bytes() == b"file data\n"
    assert [e.task_id for e in pending.entries(cfg)] == ["t1"]
    assert not any(p.name.startswith(".incoming") for p in cfg.pending_dir.iterdir())


def test_deliver_uploads_then_removes_entry_and_local_copies(setup: tuple[WorkerConfig, Path, Path], tmp_path: Path) -> None:
    cfg, warehouse, _ = setup
    ws = tmp_path / "ws"
    entry = pending.hand_off(cfg, "t2", cfg.upload_default, _items(ws), error="x", workspace=ws, local_copies=[ws / "artifacts"])
    locations = pending.deliver(cfg, entry)
    assert (warehouse / "t2" / "tree" / "sub" / "f.txt").read_bytes() == b"file data\n"
    assert locations["tree/sub/f.txt"] == (warehouse / "t2" / "tree" / "sub" / "f.txt").as_uri()
    assert pending.entries(cfg) == [] and not (ws / "artifacts").exists()
    assert json.loads((ws / "delivered.json").read_text())["locations"] == locations
    assert list(cfg.pending_dir.iterdir()) == []


def test_a_failed_try_is_recorded_with_backoff_and_nothing_is_lost(setup: tuple[WorkerConfig, Path, Path], tmp_path: Path) -> None:
    cfg, warehouse, _ = setup
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    warehouse.write_text("a file where the warehouse should be")
    entry = pending.hand_off(cfg, "t3", cfg.upload_default, _items(tmp_path / "ws"), error="first")
    before = time.time()
    with pytest.raises(TaskProblem) as info:
        pending.deliver(cfg, entry)
    assert info.value.reason == "upload-failed"
    job = pending.find(cfg, "t3").job
    assert job["tries"] == 2 and "cannot write" in job["last_error"]
    assert before + 10 <= job["next_try_at"] <= time.time() + 10 * 1.5 + 1
    assert all(i.local_path.exists() for i in pending.find(cfg, "t3").items())
    retrier = pending.BackgroundRetrier(cfg)
    retrier.run_once()  # not due yet: untouched
    assert pending.find(cfg, "t3").job["tries"] == 2


def test_an_entry_in_use_is_not_tried_twice(setup: tuple[WorkerConfig, Path, Path], tmp_path: Path) -> None:
    import fcntl

    cfg, warehouse, _ = setup
    entry = pending.hand_off(cfg, "t4", cfg.upload_default, _items(tmp_path / "ws"), error="x")
    with open(entry.path / "job.json", "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(pending.Busy):
            pending.deliver(cfg, entry)
    assert pending.find(cfg, "t4").job["tries"] == 1, "the refused try is not counted"
    assert not (warehouse / "t4").exists()
    locations = pending.deliver(cfg, entry)  # once the holder lets go, it goes through
    assert locations["tree/sub/f.txt"] == (warehouse / "t4" / "tree" / "sub" / "f.txt").as_uri()
    assert pending.entries(cfg) == []


def test_cli_pending_list_retry_discard(setup: tuple[WorkerConfig, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, warehouse, cfg_path = setup
    ws = tmp_path / "ws"
    pending.hand_off(cfg, "keep", cfg.upload_default, _items(tmp_path / "ws-keep"), error="warehouse unreachable")
    pending.hand_off(cfg, "drop", cfg.upload_default, _items(ws), error="x", workspace=ws, local_copies=[ws / "artifacts"])
    assert main(["--config", str(cfg_path), "pending", "list"]) == 0
    out = capsys.readouterr().out
    assert "keep  2 file(s), 13 bytes" in out and "last error: warehouse unreachable" in out and "drop" in out
    assert main(["--config", str(cfg_path), "pending", "list", "--json"]) == 0
    assert {e["task_id"] for e in json.loads(capsys.readouterr().out)} == {"keep", "drop"}
    assert main(["--config", str(cfg_path), "pending", "discard", "drop"]) == 0
    assert "drop: discarded (2 file(s), 13 bytes never uploaded" in capsys.readouterr().out
    assert not (ws / "artifacts").exists()
    assert main(["--config", str(cfg_path), "pending", "discard", "nosuch"]) == 2
    assert "no pending upload named 'nosuch'" in capsys.readouterr().err
    assert main(["--config", str(cfg_path), "pending", "retry", "keep"]) == 0
    assert "keep: delivered" in capsys.readouterr().out
    assert (warehouse / "keep" / "task.log.zst").read_bytes() == b"log"
    assert main(["--config", str(cfg_path), "pending", "list"]) == 0
    assert "no pending uploads" in capsys.readouterr().out


@pytest.mark.parametrize("method, suffix", [("zstd", ".zst"), ("xz", ".xz")])
def test_compression_round_trip_and_digest(tmp_path: Path, method: str, suffix: str) -> None:
    log = tmp_path / "task.log"
    data = b"".join(f"2024-01-01T00:00:{i % 60:02d} line {i} of output\n".encode() for i in range(50_000)) + os.urandom(5000)
    log.write_bytes(data)
    packed = compress_file(log, method)
    assert packed.path == tmp_path / f"task.log{suffix}"
    assert packed.size == packed.path.stat().st_size < len(data) / 5
    assert packed.sha256 == hashlib.sha256(packed.path.read_bytes()).hexdigest()
    with open_decompressed(packed.path) as fh:
        assert fh.read() == data
    assert log.read_bytes() == data, "the original stays until the upload is confirmed"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_empty_log_compresses(tmp_path: Path) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"")
    packed = compress_file(log, "zstd")
    with open_decompressed(packed.path) as fh:
        assert fh.read() == b""


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsynced, in order: a power cut keeps a renamed name only once its directory is synced."""
    paths: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def test_a_pending_entry_is_on_disk_before_the_workspace_copies_may_go(setup: tuple[WorkerConfig, Path, Path], tmp_path: Path, synced: list[str]) -> None:
    cfg, _, _ = setup
    entry = pending.hand_off(cfg, "t9", cfg.upload_default, _items(tmp_path / "ws"), error="x")
    files = entry.path / "files"
    for path in (files / "task.log.zst", files / "tree" / "sub" / "f.txt", files / "tree" / "sub", files / "tree", files, cfg.pending_dir):
        # Synced under the staging name and then renamed: compare the names below the entry.
        assert any(p.endswith(str(path.relative_to(entry.path))) if path != cfg.pending_dir else p == str(path) for p in synced), path
    assert synced[-1] == str(cfg.pending_dir), "the rename into pending/ is synced last"


def test_a_result_document_and_a_compressed_log_are_renamed_durably(tmp_path: Path, synced: list[str]) -> None:
    from farmhand.result import write_json_atomic

    write_json_atomic(tmp_path / "d" / "result.json", {"state": "succeeded"})
    assert synced[-1] == str(tmp_path / "d")
    (tmp_path / "task.log").write_bytes(b"line\n" * 100)
    compress_file(tmp_path / "task.log", "zstd")
    assert synced[-1] == str(tmp_path)
