"""How refused writes are explained: permission, full disk, the server's own words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from farmhand.config import load_config
from farmhand.uploaders.sftp import SftpUploader
from farmhand.uploaders.sftp_stream import SftpStream, StatusError


class _Stream:
    usable = True

    def __init__(self, free: int | None) -> None:
        self.free = free

    def free_bytes(self, path: str) -> int | None:
        return self.free


class _Ctl:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove(self, path: str) -> None:
        self.removed.append(path)


class _Channels:
    def __init__(self, free: int | None) -> None:
        self.stream: Any = _Stream(free)
        self.ctl: Any = _Ctl()


def _uploader(tmp_path: Path) -> SftpUploader:
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path)}))
    return SftpUploader("sftp://zim@wh:2222/srv/", load_config(path, environ={}))


def test_permission_denied(tmp_path: Path) -> None:
    err = _uploader(tmp_path)._explain(_Channels(None), StatusError("open", 3, "Permission denied"), "/srv/t/.a.part", 10)  # type: ignore[arg-type]
    assert err.message.startswith("permission denied: zim@wh:2222 does not let this account write /srv/t/.a.part")
    assert not err.transient


def test_full_disk_is_named_and_the_partial_copy_removed(tmp_path: Path) -> None:
    ch = _Channels(free=4096)
    err = _uploader(tmp_path)._explain(ch, StatusError("write", 4, "Failure"), "/srv/t/.a.part", 3_000_000)  # type: ignore[arg-type]
    assert "no space left on the warehouse" in err.message and "4096 bytes free" in err.message and "3000000" in err.message
    assert ch.ctl.removed == ["/srv/t/.a.part"]
    assert not err.transient


def test_other_failures_keep_the_servers_words(tmp_path: Path) -> None:
    ch = _Channels(free=10**12)
    err = _uploader(tmp_path)._explain(ch, StatusError("write", 4, "Failure"), "/srv/t/.a.part", 10)  # type: ignore[arg-type]
    assert "refused to write /srv/t/.a.part: Failure (1000000000000 bytes free there)" in err.message
    assert ch.ctl.removed == ["/srv/t/.a.part"], "a refused partial copy is of no use for resuming"
    unknown = _uploader(tmp_path)._explain(_Channels(None), StatusError("write", 4, ""), "/p", 10)  # type: ignore[arg-type]
    assert "does not say why" in unknown.message


def test_extension_parsing() -> None:
    data = b"".join(len(x).to_bytes(4, "big") + x for x in (b"posix-rename@openssh.com", b"1", b"limits@openssh.com", b"1"))
    assert SftpStream._parse_extensions(data) == {"posix-rename@openssh.com": b"1", "limits@openssh.com": b"1"}
