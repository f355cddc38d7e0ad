"""sftp:// uploads against a real OpenSSH sshd on 127.0.0.1 (key-only auth): trust, verification, resume, never lose."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from farmhand import keys, pending
from farmhand.cli import main as farmhand_main
from farmhand.config import WorkerConfig, load_config
from farmhand.errors import UploadFailed
from farmhand.uploaders import UploadItem
from farmhand.uploaders.sftp import SftpUploader
from sshd import Sshd
from support import Recorder, busybox_task, random_file, read_decompressed, wait_until


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One client key of each supported type, made by `farmhand keys generate`."""
    root = tmp_path_factory.mktemp("client-keys")
    return {kind: _generated(root / f"id_{kind}", kind) for kind in ("ed25519", "rsa", "ecdsa")}


def _generated(path: Path, kind: str) -> Path:
    keys.generate(path, kind)
    return path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, ssh_keys: dict[str, Path]) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    for key in ssh_keys.values():
        server.authorize(key.with_name(key.name + ".pub").read_text())
    server.start()
    yield server
    server.stop()


def _known_hosts(tmp_path: Path, *servers: Sshd) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("".join(s.known_hosts_line() for s in servers))
    return path


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    d = tmp_path / "warehouse"
    d.mkdir()
    return d


@pytest.fixture
def sftp_config(tmp_path: Path, workdir: Path, sshd: Sshd, ssh_keys: dict[str, Path], warehouse: Path) -> Callable[..., WorkerConfig]:
    """A worker config whose default warehouse is the test sshd; ``sftp`` overrides go in the sftp section."""

    def _make(server: Sshd | None = None, key: str = "ed25519", root: Path | None = None, **sftp: Any) -> WorkerConfig:
        server = server or sshd
        doc: dict[str, Any] = {
            "working_dir": str(workdir),
            "images": {"allowed": ["farmhand-test/*"]},
            "limits": {"kill_grace": 1},
            "upload": {"default": f"sftp://root@127.0.0.1:{server.port}{root or warehouse}/"},
            "sftp": {
                "private_key": str(ssh_keys[key]),
                "known_hosts": str(_known_hosts(tmp_path, server)),
                "attempts": 3,
                "backoff": 0.05,
                "backoff_max": 0.5,
                "connect_timeout": 10,
                **sftp,
            },
        }
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump(doc))
        return load_config(path, environ={})

    return _make


def _item(tmp_path: Path, name: str, data: bytes) -> UploadItem:
    src = tmp_path / "src" / name.replace("/", "_")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return UploadItem(src, name, len(data), hashlib.sha256(data).hexdigest())


def _big_file(path: Path, size: int) -> UploadItem:
    return UploadItem(path, path.name, size, random_file(path, size))


def _server_check(folder: Path) -> list[str]:
    """Run `sha256sum -c` on every sidecar in the warehouse folder, as the warehouse's side would."""
    sidecars = sorted(folder.rglob("*.sha256"))
    assert sidecars, f"no sidecars under {folder}"
    for sidecar in sidecars:
        out = subprocess.run(["sha256sum", "-c", sidecar.name], cwd=sidecar.parent, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    return [str(s.relative_to(folder)) for s in sidecars]


def _leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*.part")]


# -- the engine end to end -----------------------------------------------------------------


def test_task_files_and_directories_land_verified(run_task, sftp_config, warehouse, workdir, sshd):
    rec = Recorder()
    result = run_task(
        busybox_task(
            "echo sftp-log-line; mkdir -p /out/tree/sub; printf 'answer 42' > /out/a.txt; printf one > /out/tree/1.txt;"
            "head -c 3000000 /dev/urandom > /out/tree/sub/big.bin",
            task_id="sftp-ok-1",
            artifacts=[{"path": "/out/a.txt", "name": "a.txt"}, {"path": "/out/tree", "name": "tree", "type": "directory"}],
        ),
        sftp_config(),
        reporter=rec,
    )
    assert (result.state, result.reason) == ("succeeded", None), result.message
    folder = warehouse / "sftp-ok-1"
    assert sorted(_server_check(folder)) == ["a.txt.sha256", "task.log.zst.sha256", "tree/1.txt.sha256", "tree/sub/big.bin.sha256"]
    assert _leftovers(folder) == []
    a, tree = result.artifacts
    assert a.location == f"sftp://root@127.0.0.1:{sshd.port}{folder}/a.txt"
    assert (folder / "a.txt").read_bytes() == b"answer 42"
    assert tree.location.endswith(f"{folder}/tree/")
    for f in tree.files:
        assert hashlib.sha256((folder / "tree" / f.path).read_bytes()).hexdigest() == f.sha256
    log = read_decompressed(folder / "task.log.zst")
    assert b"sftp-log-line" in log and hashlib.sha256(log).hexdigest() == result.log.sha256
    assert result.log.location.endswith("/sftp-ok-1/task.log.zst") and result.log.compression == "zstd"
    progress = result.stages["upload"]["progress"]
    assert progress["bytes_done"] == progress["bytes_total"] > 3_000_000 and progress["rate"] > 0
    assert any(e[0] == "progress" and e[1] == "upload" and "uploaded" in e[2] for e in rec.events)
    ws = workdir / "tasks" / "sftp-ok-1"
    assert not (ws / "artifacts").exists() and not (ws / "task.log").exists() and not (ws / "task.log.zst").exists()


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "ecdsa"])
def test_each_client_key_type_authenticates(kind, sftp_config, warehouse, tmp_path):
    up = SftpUploader(sftp_config(key=kind).upload_default, sftp_config(key=kind))
    item = _item(tmp_path, "k.txt", f"signed with {kind}\n".encode())
    locations = up.upload(f"key-{kind}", [item], lambda m, **f: None)
    assert (warehouse / f"key-{kind}" / "k.txt").read_text() == f"signed with {kind}\n"
    assert locations["k.txt"].endswith(f"/key-{kind}/k.txt")
    _server_check(warehouse / f"key-{kind}")


def test_identical_file_is_skipped_and_a_changed_one_replaced(sftp_config, warehouse, tmp_path):
    cfg = sftp_config()
    up = SftpUploader(cfg.upload_default, cfg)
    item = _item(tmp_path, "same.txt", b"same bytes\n")
    up.upload("skip-1", [item], lambda m, **f: None)
    dest = warehouse / "skip-1" / "same.txt"
    old = time.time() - 3600
    os.utime(dest, (old, old))
    said: list[str] = []
    up.upload("skip-1", [item], lambda m, **f: said.append(m))
    assert dest.stat().st_mtime == old, "an identical file is not sent again"
    assert any("already in the warehouse" in m for m in said)
    changed = _item(tmp_path, "same.txt", b"other bytes\n")
    up.upload("skip-1", [changed], lambda m, **f: None)
    assert dest.read_bytes() == b"other bytes\n"
    _server_check(warehouse / "skip-1")


def _part(folder: Path, item: UploadItem) -> Path:
    """The partial copy farmhand resumes: ``.NAME.<sha256 prefix>.part`` beside where NAME lands."""
    return folder / f".{item.remote_name}.{item.sha256[:16]}.part"


def _sidecar(folder: Path, item: UploadItem) -> Path:
    return folder / f"{item.remote_name}.sha256"


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _upload_watched(cfg: WorkerConfig, task_id: str, item: UploadItem) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    SftpUploader(cfg.upload_default, cfg).upload(task_id, [item], lambda m, **f: events.append((m, f)))
    _assert_progress_sane(events, item.size)
    return events


def _assert_progress_sane(events: list[tuple[str, dict[str, Any]]], total: int) -> None:
    """Every progress report counts each byte once: never more done than there is, and all of it at the end."""
    counts = [(m, f["bytes_done"], f["bytes_total"]) for m, f in events if "bytes_done" in f]
    assert counts, "no progress was reported"
    over = [c for c in counts if c[1] > c[2] or c[2] != total]
    assert over == [], f"progress counted more bytes than the upload has: {over[:5]}"
    assert counts[-1][1] == total, f"the last report says {counts[-1][1]} of {total} bytes: {counts[-1][0]}"


# -- what is already on the server is checked, never trusted -----------------------------------


@pytest.mark.parametrize("damage", ["wrong-bytes", "hole"])
def test_a_damaged_partial_part_is_not_resumed_blindly(damage, sftp_config, warehouse, tmp_path):
    """A .part file farmhand did not write in this upload is read back before it is continued."""
    cfg = sftp_config(progress_interval=0, request_size="64k")  # compared in 64 KiB reads: 512 KiB is a whole number of them
    item = _big_file(tmp_path / "p.bin", 3 << 20)
    data = item.local_path.read_bytes()
    folder = warehouse / f"part-{damage}"
    folder.mkdir()
    with open(_part(folder, item), "wb") as fh:
        if damage == "wrong-bytes":
            fh.write(os.urandom(1 << 20))
        else:  # the right first 512 KiB, then a hole (zeros) up to 2 MiB: only a full read-back sees it
            fh.write(data[: 512 << 10])
            fh.truncate(2 << 20)
    events = _upload_watched(cfg, f"part-{damage}", item)
    assert (folder / "p.bin").read_bytes() == data
    # Only what read back identical is kept: nothing of the wrong bytes, the first 512 KiB before the hole.
    kept = 0 if damage == "wrong-bytes" else 512 << 10
    assert [f["resumed_from"] for _, f in events if "resumed_from" in f] == ([kept] if kept else [])
    assert events[-1][1]["bytes_sent"] == item.size - kept, "everything not read back identical is sent again"
    assert _leftovers(folder) == []
    _server_check(folder)


def test_a_full_size_damaged_part_is_not_renamed_into_place(sftp_config, warehouse, tmp_path):
    cfg = sftp_config(progress_interval=0)
    item = _big_file(tmp_path / "f.bin", 3 << 20)
    data = item.local_path.read_bytes()
    folder = warehouse / "part-full"
    folder.mkdir()
    _part(folder, item).write_bytes(_flipped(data, 2_000_000))  # the right size, one bit wrong
    _upload_watched(cfg, "part-full", item)
    assert (folder / "f.bin").read_bytes() == data
    assert _leftovers(folder) == []
    _server_check(folder)


def test_an_intact_part_is_resumed_after_reading_it_back(sftp_config, warehouse, tmp_path):
    cfg = sftp_config(progress_interval=0)
    item = _big_file(tmp_path / "r.bin", 3 << 20)
    data = item.local_path.read_bytes()
    folder = warehouse / "part-ok"
    folder.mkdir()
    _part(folder, item).write_bytes(data[: 1_234_567])
    events = _upload_watched(cfg, "part-ok", item)
    assert [f["resumed_from"] for _, f in events if "resumed_from" in f] == [1_234_567]
    assert (folder / "r.bin").read_bytes() == data
    _server_check(folder)


@pytest.mark.parametrize("verify", ["stream", "remote"])
def test_a_file_in_place_with_a_sidecar_but_wrong_content_is_sent_again(verify, sftp_config, warehouse, tmp_path):
    cfg = sftp_config(verify=verify, progress_interval=0)
    item = _big_file(tmp_path / "w.bin", 2 << 20)
    data = item.local_path.read_bytes()
    folder = warehouse / f"inplace-bad-{verify}"
    folder.mkdir()
    (folder / "w.bin").write_bytes(_flipped(data, 1_000_000))  # the right size, one bit wrong
    _sidecar(folder, item).write_text(f"{item.sha256}  w.bin\n")
    events = _upload_watched(cfg, f"inplace-bad-{verify}", item)
    assert (folder / "w.bin").read_bytes() == data
    assert not any("already in the warehouse" in m for m, _ in events)
    assert _leftovers(folder) == []
    _server_check(folder)


@pytest.mark.parametrize("verify", ["stream", "remote"])
def test_a_file_in_place_with_the_right_content_is_skipped(verify, sftp_config, warehouse, tmp_path):
    cfg = sftp_config(verify=verify, progress_interval=0)
    item = _big_file(tmp_path / "s.bin", 2 << 20)
    folder = warehouse / f"inplace-ok-{verify}"
    folder.mkdir()
    dest = folder / "s.bin"
    dest.write_bytes(item.local_path.read_bytes())
    _sidecar(folder, item).write_text(f"{item.sha256}  s.bin\n")
    old = time.time() - 3600
    os.utime(dest, (old, old))
    events = _upload_watched(cfg, f"inplace-ok-{verify}", item)
    assert dest.stat().st_mtime == old, "an identical file is not written again"
    assert any("already in the warehouse" in m for m, _ in events)
    last = events[-1][1]
    assert last["rate"] == 0 and last.get("bytes_sent", 0) == 0, f"bytes were sent for a file already there: {events[-1]}"


def test_remote_verification_runs_sha256sum_on_the_server(sftp_config, warehouse, tmp_path):
    cfg = sftp_config(verify="remote")
    item = _item(tmp_path, "v.bin", os.urandom(300_000))
    SftpUploader(cfg.upload_default, cfg).upload("verify-1", [item], lambda m, **f: None)
    assert hashlib.sha256((warehouse / "verify-1" / "v.bin").read_bytes()).hexdigest() == item.sha256


# -- trust -----------------------------------------------------------------------------------


def test_unknown_host_key_is_refused_and_never_added(sftp_config, warehouse, tmp_path, sshd):
    cfg = sftp_config()
    cfg.sftp.known_hosts.write_text("# nothing known\n")
    with pytest.raises(UploadFailed) as info:
        SftpUploader(cfg.upload_default, cfg).upload("trust-1", [_item(tmp_path, "x", b"x")], lambda m, **f: None)
    assert "unknown" in info.value.message and f"[127.0.0.1]:{sshd.port}" in info.value.message
    assert "SHA256:" in info.value.message
    assert cfg.sftp.known_hosts.read_text() == "# nothing known\n"
    assert not (warehouse / "trust-1").exists()


def test_changed_host_key_is_refused(sftp_config, warehouse, tmp_path, sshd):
    cfg = sftp_config()
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    impostor = " ".join(other.with_name(other.name + ".pub").read_text().split()[:2])
    cfg.sftp.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {impostor}\n")
    with pytest.raises(UploadFailed, match="CHANGED"):
        SftpUploader(cfg.upload_default, cfg).upload("trust-2", [_item(tmp_path, "x", b"x")], lambda m, **f: None)
    assert not (warehouse / "trust-2").exists()


def test_wrong_client_key_is_refused_with_a_clear_error_and_not_retried(sftp_config, tmp_path):
    stranger = tmp_path / "stranger"
    keys.generate(stranger, "ed25519")
    cfg = sftp_config(private_key=str(stranger), attempts=5, backoff=2.0)
    started = time.monotonic()
    with pytest.raises(UploadFailed) as info:
        SftpUploader(cfg.upload_default, cfg).upload("auth-1", [_item(tmp_path, "x", b"x")], lambda m, **f: None)
    assert "authentication failed" in info.value.message and str(stranger) in info.value.message
    assert keys.fingerprint(keys.load_private_key(stranger)) in info.value.message
    assert time.monotonic() - started < 2.0, "a refused key is not worth a retry with backoff"


def test_path_traversal_is_refused_before_anything_is_written(sftp_config, warehouse, tmp_path):
    cfg = sftp_config()
    up = SftpUploader(cfg.upload_default, cfg)
    for name in ["../escape.txt", "a/../../escape.txt", "/tmp/escape.txt", "bad\nname", "tab\tname", "ok/./x"]:
        with pytest.raises(UploadFailed, match="not a plain relative name"):
            up.upload("trav-1", [_item(tmp_path, "good.txt", b"fine"), _item(tmp_path, name, b"evil")], lambda m, **f: None)
    assert not (warehouse / "trav-1").exists()
    assert not (warehouse.parent / "escape.txt").exists() and not Path("/tmp/escape.txt").exists()


# -- interruptions and failures ----------------------------------------------------------------


def test_sshd_killed_mid_upload_resumes_and_completes_byte_identical(sftp_config, warehouse, tmp_path, ssh_keys):
    server = Sshd(tmp_path / "sshd-own")
    server.authorize(ssh_keys["ed25519"].with_name("id_ed25519.pub").read_text())
    server.start()
    try:
        cfg = sftp_config(server=server, attempts=10, backoff=0.2, backoff_max=1.0, progress_interval=0, streams=1)
        item = _big_file(tmp_path / "big.bin", 96 << 20)
        events: list[tuple[str, dict[str, Any]]] = []
        killed = threading.Event()

        def report(message: str, **fields: Any) -> None:
            events.append((message, fields))
            if not killed.is_set() and fields.get("bytes_done", 0) >= 24 << 20:
                killed.set()
                server.kill()
                threading.Timer(1.0, server.start).start()

        SftpUploader(cfg.upload_default, cfg).upload("resume-1", [item], report)
        assert killed.is_set()
        _assert_progress_sane(events, item.size)  # the resumed bytes count once
        done = [f["bytes_done"] for _, f in events if "bytes_done" in f]
        assert done == sorted(done), "checking the bytes already there does not set the count back"
        dest = warehouse / "resume-1" / "big.bin"
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == item.sha256
        resumed = [f["resumed_from"] for _, f in events if "resumed_from" in f]
        assert resumed and resumed[0] >= 20 << 20, f"the second try did not resume from the remote size: {resumed}"
        assert any("interrupted" in m for m, _ in events)
        assert _leftovers(warehouse / "resume-1") == []
        _server_check(warehouse / "resume-1")
    finally:
        server.stop()


def test_persistent_failure_keeps_files_pending_then_pending_retry_delivers(run_task, sftp_config, warehouse, tmp_path, workdir, ssh_keys, capsys):
    server = Sshd(tmp_path / "sshd-down")  # configured, not started: the warehouse is down
    server.authorize(ssh_keys["ed25519"].with_name("id_ed25519.pub").read_text())
    cfg = sftp_config(server=server, attempts=2)
    result = run_task(
        busybox_task("echo kept-log; echo kept-data > /out.txt", task_id="pend-1", artifacts=[{"path": "/out.txt", "name": "out.txt"}]),
        cfg,
    )
    assert (result.state, result.reason) == ("exception", "upload-failed")
    assert "cannot connect" in result.message and "pending" in result.message
    entry = pending.find(cfg, "pend-1")
    names = {i.remote_name: i for i in entry.items()}
    assert set(names) == {"task.log.zst", "out.txt"}
    for item in names.values():
        assert hashlib.sha256(item.local_path.read_bytes()).hexdigest() == item.sha256
    ws = workdir / "tasks" / "pend-1"
    assert (ws / "artifacts" / "out.txt").read_text() == "kept-data\n" and "kept-log" in (ws / "task.log").read_text()
    config_path = tmp_path / "config.yml"

    assert farmhand_main(["--config", str(config_path), "pending", "list"]) == 0
    assert "pend-1" in capsys.readouterr().out
    assert farmhand_main(["--config", str(config_path), "pending", "retry"]) == 3  # still down
    assert pending.find(cfg, "pend-1").job["tries"] == 2

    server.start()
    try:
        assert farmhand_main(["--config", str(config_path), "pending", "retry"]) == 0
    finally:
        server.stop()
    assert "pend-1: delivered" in capsys.readouterr().out
    folder = warehouse / "pend-1"
    assert (folder / "out.txt").read_text() == "kept-data\n"
    assert b"kept-log" in read_decompressed(folder / "task.log.zst")
    _server_check(folder)
    assert pending.entries(cfg) == []
    assert not (ws / "artifacts").exists() and not (ws / "task.log").exists()
    assert json.loads((ws / "delivered.json").read_text())["locations"]["out.txt"].endswith("/pend-1/out.txt")


def test_background_retrier_delivers_what_waits(sftp_config, warehouse, tmp_path, ssh_keys):
    server = Sshd(tmp_path / "sshd-later")
    server.authorize(ssh_keys["ed25519"].with_name("id_ed25519.pub").read_text())
    cfg = sftp_config(server=server, attempts=1)
    item = _item(tmp_path, "late.txt", b"arrives later\n")
    pending.hand_off(cfg, "bg-1", cfg.upload_default, [item], error="warehouse down")
    server.start()
    retrier = pending.BackgroundRetrier(cfg, interval=0.2)
    try:
        entry = pending.find(cfg, "bg-1")
        entry.job["next_try_at"] = 0
        entry.save()
        retrier.start()
        wait_until(lambda: not pending.entries(cfg), 30, "the retrier to deliver the pending upload")
    finally:
        retrier.stop()
        server.stop()
    assert retrier.delivered == ["bg-1"]
    assert (warehouse / "bg-1" / "late.txt").read_text() == "arrives later\n"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs as the warehouse: the server's disk fills up."""
    mount = tmp_path / "small-warehouse"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_on_the_server_is_a_clear_error_and_nothing_is_lost(run_task, sftp_config, full_disk, workdir):
    cfg = sftp_config(root=full_disk)
    result = run_task(
        busybox_task("head -c 3000000 /dev/urandom > /big.bin; echo wrote", task_id="full-1", artifacts=[{"path": "/big.bin", "name": "big.bin"}]),
        cfg,
    )
    assert (result.state, result.reason) == ("exception", "upload-failed")
    assert "no space left on the warehouse" in result.message, result.message
    entry = pending.find(cfg, "full-1")
    kept = {i.remote_name: i for i in entry.items()}["big.bin"]
    assert kept.size == 3_000_000 == result.artifacts[0].size
    assert hashlib.sha256(kept.local_path.read_bytes()).hexdigest() == result.artifacts[0].sha256
    assert (workdir / "tasks" / "full-1" / "artifacts" / "big.bin").stat().st_size == 3_000_000
    assert _leftovers(full_disk) == [], "a partial copy on a full disk is removed"


# -- one large file over several channels ----------------------------------------------------

#: Small requests, few in flight: a file of a few MiB is "large" (more than the channels can have in flight).
SPLIT = {"request_size": "32k", "requests_in_flight": 4, "channels": 3}


@pytest.fixture(params=["openssh", "paramiko"])
def channel_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The extra channels as `ssh` processes (OpenSSH installed) or as channels of a paramiko connection (not installed)."""
    if request.param == "paramiko":
        monkeypatch.setattr("farmhand.uploaders.sftp.ssh_binary", lambda: None)
    return str(request.param)


def _sessions(server: Sshd) -> list[str]:
    """The client ports of the SFTP sessions sshd started so far, one per session."""
    return [line.split(" port ")[1].split()[0] for line in (server.root / "sshd.log").read_text().splitlines() if "subsystem 'sftp'" in line]


def test_a_large_file_is_written_over_several_channels_byte_exact(channel_kind, sftp_config, warehouse, tmp_path, sshd):
    cfg = sftp_config(progress_interval=0, **SPLIT)
    item = _big_file(tmp_path / "wide.bin", 6 << 20)
    before = len(_sessions(sshd))
    events = _upload_watched(cfg, f"wide-{channel_kind}", item)
    sessions = _sessions(sshd)[before:]
    # The main connection's two sessions, then three writing the file: on three ssh connections, or on one of paramiko's.
    assert len(sessions) >= 5, sessions
    assert len(set(sessions[2:])) == (3 if channel_kind == "openssh" else 1), sessions
    folder = warehouse / f"wide-{channel_kind}"
    assert hashlib.sha256((folder / "wide.bin").read_bytes()).hexdigest() == item.sha256
    assert events[-1][1]["bytes_sent"] == item.size
    assert _leftovers(folder) == []
    _server_check(folder)


def test_an_interrupted_multi_range_part_resumes_exactly(channel_kind, sftp_config, warehouse, tmp_path):
    """Some ranges complete, one a hole, one damaged, the last cut short: exactly the identical ones are kept."""
    cfg = sftp_config(progress_interval=0, **SPLIT)
    item = _big_file(tmp_path / "ranges.bin", 8 << 20)
    data = item.local_path.read_bytes()
    folder = warehouse / f"ranges-{channel_kind}"
    folder.mkdir()
    part = bytearray(data[: (5 << 20) + 12_345])  # the last range cut short, off any block boundary
    part[1 << 20 : 2 << 20] = bytes(1 << 20)  # a range never written: a hole
    part[(3 << 20) + 1_000] ^= 0x40  # one byte wrong inside a range
    _part(folder, item).write_bytes(part)
    chunk = 32 << 10  # what is compared at a time: one read of request_size
    kept = sum(len(part[o : o + chunk]) for o in range(0, len(part), chunk) if part[o : o + chunk] == data[o : o + len(part[o : o + chunk])])
    assert 0 < kept < len(part)
    events = _upload_watched(cfg, f"ranges-{channel_kind}", item)
    assert [f["resumed_from"] for _, f in events if "resumed_from" in f] == [kept]
    assert events[-1][1]["bytes_sent"] == item.size - kept, "the ranges read back identical are not sent again"
    assert (folder / "ranges.bin").read_bytes() == data
    assert _leftovers(folder) == []
    _server_check(folder)


def _newest_session_process(server: Sshd) -> int:
    """The SFTP server process of the session sshd started last (a leaf of its process tree)."""
    from sshd import _children, _descendants

    leaves = [pid for pid in _descendants(server.proc.pid) if not _children(pid)]
    return max(leaves)


def test_a_channel_that_breaks_fails_clearly_and_leaves_a_resumable_part(channel_kind, sftp_config, warehouse, tmp_path, ssh_keys):
    server = Sshd(tmp_path / "sshd-one-channel")
    server.authorize(ssh_keys["ed25519"].with_name("id_ed25519.pub").read_text())
    server.start()
    try:
        cfg = sftp_config(server=server, attempts=1, progress_interval=0, **SPLIT)
        item = _big_file(tmp_path / "cut.bin", 64 << 20)
        killed: list[int] = []

        def report(message: str, **fields: Any) -> None:
            if not killed and fields.get("bytes_done", 0) >= 8 << 20:
                killed.append(_newest_session_process(server))
                os.kill(killed[0], 9)

        with pytest.raises(UploadFailed) as info:
            SftpUploader(cfg.upload_default, cfg).upload(f"cut-{channel_kind}", [item], report)
        assert killed, "the upload ended before a channel could be broken"
        message = info.value.message
        assert "failed after 1 tries" in message and "of 3 writing" in message and ".part" in message, message
        folder = warehouse / f"cut-{channel_kind}"
        part = _part(folder, item)
        assert part.exists() and part.stat().st_size >= 8 << 20, "what was written is left on the server to resume from"
        assert not (folder / "cut.bin").exists()

        events = _upload_watched(sftp_config(server=server, attempts=3, progress_interval=0, **SPLIT), f"cut-{channel_kind}", item)
        resumed = [f["resumed_from"] for _, f in events if "resumed_from" in f]
        assert resumed and resumed[0] >= 8 << 20, f"the ranges acknowledged before the break were kept: {resumed}"
        assert hashlib.sha256((folder / "cut.bin").read_bytes()).hexdigest() == item.sha256
        assert _leftovers(folder) == []
        _server_check(folder)
    finally:
        server.stop()


def test_when_openssh_refuses_the_key_large_files_go_over_paramiko(sftp_config, warehouse, tmp_path, ssh_keys):
    """farmhand accepts a key file its group can read; OpenSSH's ssh does not: the upload still goes through, and says how."""
    key = tmp_path / "group_readable_key"
    key.write_bytes(ssh_keys["ed25519"].read_bytes())
    key.chmod(0o640)
    cfg = sftp_config(progress_interval=0, private_key=str(key), **SPLIT)
    item = _big_file(tmp_path / "fallback.bin", 4 << 20)
    events = _upload_watched(cfg, "fallback", item)
    assert any("could not open an SFTP session" in m and "paramiko" in m for m, _ in events), [m for m, _ in events]
    assert hashlib.sha256((warehouse / "fallback" / "fallback.bin").read_bytes()).hexdigest() == item.sha256
