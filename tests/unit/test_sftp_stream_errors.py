"""How refused writes are explained (permission, full disk, the server's own words); reading back; progress counts."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from farmhand.config import load_config
from farmhand.uploaders.sftp import Progress, SftpUploader
from farmhand.uploaders.sftp_stream import FXP_CLOSE, FXP_DATA, FXP_HANDLE, FXP_OPEN, FXP_READ, FXP_STATUS, SftpStream, StatusError


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


# -- reading a file back -------------------------------------------------------------------


class _ServerChannel:
    """An SFTP server's side of a channel holding one file: answers open, read and close, maybe out of order."""

    def __init__(self, data: bytes, *, max_read: int, shuffle: bool = False, refuse_at: int | None = None) -> None:
        self.data, self.max_read, self.shuffle, self.refuse_at = data, max_read, shuffle, refuse_at
        self.closed = False
        self.waiting: list[bytes] = []
        self.out = bytearray()
        self.reads: list[tuple[int, int]] = []
        self.rng = random.Random(5)

    def sendall(self, packet: bytes | memoryview) -> None:
        packet = bytes(packet)
        kind, rid = struct.unpack_from(">BI", packet, 4)
        if kind == FXP_OPEN:
            self._reply(FXP_HANDLE, rid, struct.pack(">I", 1) + b"h")
        elif kind == FXP_CLOSE:
            self._reply(FXP_STATUS, rid, struct.pack(">I", 0) + struct.pack(">I", 0) + struct.pack(">I", 0))
        elif kind == FXP_READ:
            offset, size = struct.unpack_from(">QI", packet, 9 + 5)
            self.reads.append((offset, size))
            if self.refuse_at is not None and offset >= self.refuse_at:
                self._reply(FXP_STATUS, rid, struct.pack(">I", 4) + struct.pack(">I", 6) + b"denied" + struct.pack(">I", 0))
            elif offset >= len(self.data):
                self._reply(FXP_STATUS, rid, struct.pack(">I", 1) + struct.pack(">I", 0) + struct.pack(">I", 0))
            else:
                chunk = self.data[offset : offset + min(size, self.max_read)]
                self._reply(FXP_DATA, rid, struct.pack(">I", len(chunk)) + chunk)

    def _reply(self, kind: int, rid: int, body: bytes) -> None:
        message = struct.pack(">IBI", 5 + len(body), kind, rid) + body
        if self.shuffle:
            self.waiting.insert(self.rng.randint(0, len(self.waiting)), message)
        else:
            self.waiting.append(message)

    def recv(self, n: int) -> bytes:
        if not self.out:
            assert self.waiting, "the client waits for a reply it never asked for"
            self.out += self.waiting.pop(0)
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def close(self) -> None:
        self.closed = True


def _stream(channel: _ServerChannel, *, read_size: int, in_flight: int) -> SftpStream:
    stream = SftpStream.__new__(SftpStream)
    stream.channel, stream._buf, stream._next_id = channel, bytearray(), 1  # type: ignore[assignment]
    stream.read_size, stream.request_size, stream.in_flight = read_size, read_size, in_flight
    return stream


@pytest.mark.parametrize("shuffle", [False, True])
def test_read_back_is_in_order_and_asks_again_after_short_answers(shuffle: bool) -> None:
    data = os.urandom(1_000_003)
    server = _ServerChannel(data, max_read=70_000, shuffle=shuffle)  # answers less than is asked
    chunks: list[bytes] = []
    got = _stream(server, read_size=100_000, in_flight=8).read_file("/f", len(data), lambda b: chunks.append(b) or True)
    assert got == len(data) and b"".join(chunks) == data
    assert max(size for _, size in server.reads) == 100_000 and len(server.reads) > 11


def test_read_back_of_a_shorter_file_stops_at_its_end() -> None:
    data = os.urandom(300_000)
    chunks: list[bytes] = []
    got = _stream(_ServerChannel(data, max_read=64_000), read_size=64_000, in_flight=4).read_file("/f", 1 << 20, lambda b: chunks.append(b) or True)
    assert got == len(data) and b"".join(chunks) == data


def test_read_back_stops_asking_when_told_and_the_stream_stays_usable() -> None:
    data = os.urandom(2_000_000)
    server = _ServerChannel(data, max_read=50_000)
    stream = _stream(server, read_size=50_000, in_flight=4)
    seen: list[int] = []
    got = stream.read_file("/f", len(data), lambda b: seen.append(len(b)) or len(seen) < 3)
    assert got == 150_000 and len(server.reads) < 10, "nothing much is asked for after consume said stop"
    assert not server.waiting and not server.closed, "replies in flight were drained; the channel can carry on"
    assert stream.read_file("/f", 10, lambda b: True) == 10


def test_a_refused_read_is_raised() -> None:
    server = _ServerChannel(os.urandom(500_000), max_read=100_000, refuse_at=200_000)
    with pytest.raises(StatusError, match="denied"):
        _stream(server, read_size=100_000, in_flight=4).read_file("/f", 500_000, lambda b: True)


# -- progress ------------------------------------------------------------------------------


def test_progress_counts_resumed_and_resent_bytes_once() -> None:
    reports: list[dict[str, Any]] = []
    p = Progress({"a": 1000, "b": 500}, lambda m, **f: reports.append(f), interval=0)
    p.start("b", 500)  # skipped: already in place
    p.start("a", 0)
    p.add(400, name="a")  # acknowledged, then the connection drops
    p.start("a", 450)  # the next try resumes: 450 bytes were on the server (more than were acknowledged)
    p.add(550, name="a")
    assert (p.done, p.sent) == (1500, 950)
    p.reach("a", 300)  # a later try reads back what is there: the count does not go back while it checks
    assert p.done == 1500
    p.start("a", 0)  # ... and finds the copy damaged, so it starts over: nothing counted twice
    assert p.done == 500
    p.add(1000, name="a")
    p.add(10, name="a")  # whatever a confused caller says, a file is never more than its size
    assert p.done == p.total == 1500
    assert all(f["bytes_done"] <= f["bytes_total"] == 1500 for f in reports)
