"""The file:// uploader makes each upload durable before it reports success.

A rename is only on disk once the directory that holds the new name is
synced, and a new directory only once its parent is: without those fsyncs a
power cut after the worker deleted its local copies can lose an artifact the
result says was uploaded. Power loss cannot be simulated here, so the tests
record which paths are fsynced, and in which order against the rename and
the report.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from farmhand.uploaders import UploadItem
from farmhand.uploaders import file as file_uploader
from farmhand.uploaders.file import FileUploader


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Events in order: ("fsync", path of the fd), ("replace", destination), ("mkdir", path), ("report", message)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        real_replace(src, dst)
        events.append(("replace", os.fspath(dst)))

    monkeypatch.setattr(file_uploader.os, "fsync", fsync)
    monkeypatch.setattr(file_uploader.os, "replace", replace)
    return events


def _item(tmp_path: Path, data: bytes, remote: str) -> UploadItem:
    src = tmp_path / "local" / remote.replace("/", "_")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return UploadItem(src, remote, len(data), hashlib.sha256(data).hexdigest())


def _fsynced_after(events: list[tuple[str, str]], index: int) -> set[str]:
    return {path for kind, path in events[index + 1 :] if kind == "fsync"}


def test_the_directory_is_synced_after_the_rename_and_before_the_report(tmp_path: Path, journal: list[tuple[str, str]]) -> None:
    warehouse = tmp_path / "warehouse"
    (warehouse / "t").mkdir(parents=True)
    up = FileUploader(warehouse.as_uri())
    up.upload("t", [_item(tmp_path, b"payload", "a.txt")], lambda m: journal.append(("report", m)))
    dest = warehouse / "t" / "a.txt"
    assert dest.read_bytes() == b"payload"
    kinds = [k for k, _ in journal]
    rename, report = kinds.index("replace"), kinds.index("report")
    assert journal[rename] == ("replace", str(dest))
    before = [p for k, p in journal[:rename] if k == "fsync"]
    assert before and before[-1].endswith("/.a.txt.part"), "the copy is synced before it is renamed"
    between = [p for k, p in journal[rename:report] if k == "fsync"]
    assert str(dest.parent) in between, f"the directory holding the new name is synced before success is reported: {journal}"


def test_new_directories_are_synced_into_their_parents(tmp_path: Path, journal: list[tuple[str, str]]) -> None:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    up = FileUploader(warehouse.as_uri())
    up.upload("task-9", [_item(tmp_path, b"deep", "report/sub/when.txt")], lambda m: journal.append(("report", m)))
    dest = warehouse / "task-9" / "report" / "sub" / "when.txt"
    assert dest.read_bytes() == b"deep"
    report = [k for k, _ in journal].index("report")
    synced = {p for k, p in journal[:report] if k == "fsync"}
    # Each created directory's entry lives in its parent: the existing root, then each new level.
    for parent in (warehouse, warehouse / "task-9", warehouse / "task-9" / "report", warehouse / "task-9" / "report" / "sub"):
        assert str(parent) in synced, f"{parent} not synced: {journal}"


def test_an_identical_file_already_there_is_still_made_durable(tmp_path: Path, journal: list[tuple[str, str]]) -> None:
    """A predecessor may have renamed it into place and died before syncing the directory."""
    warehouse = tmp_path / "warehouse"
    item = _item(tmp_path, b"same", "a.txt")
    dest = warehouse / "t" / "a.txt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"same")
    FileUploader(warehouse.as_uri()).upload("t", [item], lambda m: journal.append(("report", m)))
    assert "replace" not in [k for k, _ in journal], "an identical file is not copied again"
    report = [k for k, _ in journal].index("report")
    synced = [p for k, p in journal[:report] if k == "fsync"]
    assert str(dest) in synced and str(dest.parent) in synced


def test_a_filesystem_that_cannot_sync_directories_does_not_fail_the_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(22, "Invalid argument")  # what some filesystems answer for a directory
        real_fsync(fd)

    monkeypatch.setattr(file_uploader.os, "fsync", fsync)
    warehouse = tmp_path / "warehouse"
    locations = FileUploader(warehouse.as_uri()).upload("t", [_item(tmp_path, b"x", "a.txt")], lambda m: None)
    assert (warehouse / "t" / "a.txt").read_bytes() == b"x"
    assert locations == {"a.txt": (warehouse / "t" / "a.txt").as_uri()}


def test_a_failing_directory_sync_fails_the_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(file_uploader.os, "fsync", fsync)
    warehouse = tmp_path / "warehouse"
    from farmhand.errors import UploadFailed

    with pytest.raises(UploadFailed, match="Input/output error"):
        FileUploader(warehouse.as_uri()).upload("t", [_item(tmp_path, b"x", "a.txt")], lambda m: None)
