"""rotated_head_check: whether a re-adopted container's log still starts where the task's output did."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import NotFound

from farmhand.docker_logs import rotated_head_check

FIRST = b"2026-11-23T10:00:00.000000001Z"
LATER = b"2026-11-23T10:00:05.000000001Z"


class Api:
    def __init__(self, log_config: dict[str, Any] | None, log_path: str = "") -> None:
        self.info = {"HostConfig": {"LogConfig": log_config or {}}, "LogPath": log_path}
        self.inspected = 0

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.inspected += 1
        if self.info is None:
            raise NotFound("gone")
        return self.info


def json_file(tmp_path: Path, max_size: str | None = "1k", max_file: str | None = "2", rotated: int = 0) -> Api:
    path = tmp_path / "c0ffee-json.log"
    path.write_bytes(b"{}\n")
    for i in range(1, rotated + 1):
        Path(f"{path}.{i}").write_bytes(b"{}\n")
    config = {k: v for k, v in {"max-size": max_size, "max-file": max_file}.items() if v is not None}
    return Api({"Type": "json-file", "Config": config}, str(path))


def test_the_earlier_worker_s_log_decides_exactly(tmp_path: Path) -> None:
    earlier = tmp_path / "task.log"
    earlier.write_bytes(FIRST + b" first line\n" + LATER + b" more\n")
    api = json_file(tmp_path, rotated=1)  # the files alone would say "may have"
    check = rotated_head_check(api, "c0ffee", earlier)
    earlier.unlink()  # the check has read it already: adopt_container removes it next
    assert check(FIRST) is None
    assert check(LATER) is not None and check(LATER).startswith("Docker rotated the head")
    assert check(None) is not None  # the earlier worker saw output, Docker has none now
    assert api.inspected == 0


def test_a_log_that_already_lacked_its_head_still_does(tmp_path: Path) -> None:
    earlier = tmp_path / "task.log"
    earlier.write_bytes(b"[farmhand] Docker rotated the head of this task's log away ...\n" + LATER + b" x\n")
    check = rotated_head_check(json_file(tmp_path), "c0ffee", earlier)
    assert "earlier worker" in check(LATER)


@pytest.mark.parametrize("content", [None, b"", b"not a stamp\n", b"[farmhand] Docker may have rotated ...\n"])
def test_without_an_earlier_first_stamp_docker_s_files_decide(tmp_path: Path, content: bytes | None) -> None:
    earlier = tmp_path / "task.log"
    if content is not None:
        earlier.write_bytes(content)
    assert rotated_head_check(json_file(tmp_path, rotated=0), "c0ffee", earlier)(FIRST) is None
    may = rotated_head_check(json_file(tmp_path, rotated=1), "c0ffee", earlier)(FIRST)
    assert may is not None and may.startswith("Docker may have rotated") and "max-file 2" in may


def test_four_files_are_only_suspect_once_the_fourth_exists(tmp_path: Path) -> None:
    assert rotated_head_check(json_file(tmp_path, max_file="4", rotated=2), "c0ffee", None)(FIRST) is None
    assert rotated_head_check(json_file(tmp_path, max_file="4", rotated=3), "c0ffee", None)(FIRST) is not None


def test_a_compressed_oldest_file_counts(tmp_path: Path) -> None:
    api = json_file(tmp_path, rotated=0)
    Path(api.info["LogPath"] + ".1.gz").write_bytes(b"")
    assert rotated_head_check(api, "c0ffee", None)(FIRST) is not None


@pytest.mark.parametrize("max_size", [None, "-1"])
def test_a_log_that_never_rotates_is_whole(tmp_path: Path, max_size: str | None) -> None:
    assert rotated_head_check(json_file(tmp_path, max_size=max_size, rotated=1), "c0ffee", None)(FIRST) is None


def test_what_cannot_be_told_is_conservatively_incomplete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # max-file 1: Docker cuts the one file in place, no trace in the names
    assert "cut in place" in rotated_head_check(json_file(tmp_path, max_file="1"), "c0ffee", None)(FIRST)
    # another driver (local rotates by default)
    assert "local log driver" in rotated_head_check(Api({"Type": "local", "Config": {}}), "c0ffee", None)(FIRST)
    # Docker's data root unreadable (a worker in the docker group, not root)
    api = json_file(tmp_path)
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith(api.info["LogPath"]):
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert "Permission denied" in rotated_head_check(api, "c0ffee", None)(FIRST)


def test_an_engine_that_does_not_answer_cannot_be_told(tmp_path: Path) -> None:
    api = json_file(tmp_path, rotated=0)

    def inspect_container(container_id: str) -> dict[str, Any]:
        raise docker.errors.APIError("500 Server Error")

    api.inspect_container = inspect_container  # type: ignore[method-assign]
    assert "could not be checked" in rotated_head_check(api, "c0ffee", None)(FIRST)


def test_a_container_gone_meanwhile_cannot_be_told(tmp_path: Path) -> None:
    api = json_file(tmp_path, rotated=0)
    api.info = None
    assert "gone" in rotated_head_check(api, "c0ffee", None)(FIRST)


# -- LogPump: what a missing head does to the log and its summary ---------------------------

import hashlib  # noqa: E402

from farmhand.logpump import LogPump  # noqa: E402
from farmhand.masking import StreamMasker  # noqa: E402


def test_a_missing_head_is_said_first_in_the_log_and_in_the_summary(tmp_path: Path) -> None:
    seen: list[bytes | None] = []

    def check(first: bytes | None) -> str | None:
        seen.append(first)
        return "Docker rotated the head of this task's log away"

    frames = [LATER + b" hello\n", LATER + b" world\n"]
    path = tmp_path / "task.log"
    summary = LogPump([frames[:1], frames[1:]], path, 1 << 20, StreamMasker(["world"]), head_check=check).start().wait(10)
    data = path.read_bytes()
    assert seen == [LATER]
    assert data == b"[farmhand] Docker rotated the head of this task's log away\n" + LATER + b" hello\n" + LATER + b" ***\n"
    assert summary.complete is False and summary.warnings == ["Docker rotated the head of this task's log away"]
    assert summary.size == len(data) and summary.sha256 == hashlib.sha256(data).hexdigest()


def test_a_whole_head_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    summary = LogPump([[FIRST + b" a\n"]], path, 1 << 20, StreamMasker([]), head_check=lambda first: None).start().wait(10)
    assert path.read_bytes() == FIRST + b" a\n"
    assert summary.complete is True and summary.warnings == []
    # and no output at all: the check hears None
    seen: list[bytes | None] = []
    LogPump([], tmp_path / "empty.log", 1 << 20, StreamMasker([]), head_check=lambda f: seen.append(f)).start().wait(10)
    assert seen == [None] and (tmp_path / "empty.log").read_bytes() == b""
