"""One file over several SFTP channels, without a server: range splitting, what a resume keeps, writers that fail."""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import threading
from pathlib import Path

import pytest

from farmhand.uploaders.hashpipe import BackgroundHash
from farmhand.uploaders.sftp_ranges import ChannelFailed, ParallelWriter, ResumePlan, send, split
from farmhand.uploaders.sftp_stream import FXP_CLOSE, FXP_HANDLE, FXP_OPEN, FXP_STATUS, FXP_WRITE, SftpStream, SourceChanged, StatusError

# -- range splitting -----------------------------------------------------------------------


@pytest.mark.parametrize("offset, length, size", [(0, 0, 7), (0, 10, 3), (5, 12, 4), (1000, 65536, 32768), (3, 1, 100)])
def test_split_covers_the_range_exactly_in_pieces_no_larger_than_asked(offset: int, length: int, size: int) -> None:
    pieces = list(split(offset, length, size))
    assert sum(n for _, n in pieces) == length
    assert all(0 < n <= size for _, n in pieces)
    pos = offset
    for o, n in pieces:
        assert o == pos
        pos += n


def test_split_refuses_a_block_size_of_nothing() -> None:
    with pytest.raises(ValueError, match="block size"):
        list(split(0, 10, 0))


# -- what a resume keeps ---------------------------------------------------------------------


def _compare(local: bytes, remote: bytes, chunk: int) -> ResumePlan:
    """Compare as the uploader does: remote read back in ``chunk``-sized answers, from byte 0, as far as it goes."""
    plan = ResumePlan(len(local))
    for offset, n in split(0, len(remote), chunk):
        plan.note(local[offset : offset + n], remote[offset : offset + n])
    return plan


def test_a_plan_keeps_identical_chunks_and_sends_the_rest_once() -> None:
    rng = random.Random(1)
    local = rng.randbytes(10_000)
    remote = bytearray(local[:7_000])
    remote[1_000:2_000] = bytes(1_000)  # a hole, as an interrupted channel leaves
    remote[4_500] ^= 0xFF  # one byte wrong inside the chunk 4000-4999
    plan = _compare(local, bytes(remote), 1_000)
    assert plan.kept == 5_000 and plan.tail == 7_000
    assert [(o, n) for o, n, _ in plan.resend] == [(1_000, 1_000), (4_000, 1_000)]
    assert plan.ranges() == [(1_000, 1_000), (4_000, 1_000), (7_000, 3_000)]
    assert plan.to_send == 5_000 == plan.size - plan.kept


def test_adjacent_stretches_to_send_again_merge_and_join_the_tail() -> None:
    local = os.urandom(4_000)
    plan = _compare(local, bytes(3_000), 500)  # all wrong: one stretch, then the tail right after it
    assert [(o, n) for o, n, _ in plan.resend] == [(0, 3_000)]
    assert plan.ranges() == [(0, 4_000)] and plan.kept == 0 and plan.to_send == 4_000
    assert plan.resend[0][2].digest() == hashlib.sha256(local[:3_000]).digest()


def test_a_whole_identical_copy_leaves_nothing_to_send() -> None:
    local = os.urandom(3_000)
    plan = _compare(local, local, 1_024)
    assert (plan.kept, plan.to_send, plan.ranges(), plan.resend) == (3_000, 0, [], [])


def test_a_plan_refuses_stretches_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="compared 3 local bytes with 2"):
        ResumePlan(10).note(b"abc", b"ab")


# -- writing over several channels ----------------------------------------------------------


class _WriteServer:
    """An SFTP server's side of one channel: open, write (into a shared file image), close; maybe refusing or breaking."""

    def __init__(self, image: bytearray, lock: threading.Lock, *, refuse_at: int | None = None, break_after: int | None = None, start: threading.Barrier | None = None) -> None:
        self.image, self.lock = image, lock
        # Each channel's first write waits for every channel's: a writer that leaves one channel idle
        # fails here, however the threads happen to be scheduled.
        self.start = start
        self.refuse_at, self.break_after = refuse_at, break_after
        self.closed = False
        self.writes: list[tuple[int, int]] = []
        self.handles_open = 0
        self.out = bytearray()

    def _status(self, rid: int, code: int, text: bytes = b"") -> None:
        body = struct.pack(">II", rid, code) + struct.pack(">I", len(text)) + text + struct.pack(">I", 0)
        self.out += struct.pack(">IB", 1 + len(body), FXP_STATUS) + body

    def sendall(self, packet: bytes | memoryview) -> None:
        packet = bytes(packet)
        kind, rid = struct.unpack_from(">BI", packet, 4)
        if kind == FXP_OPEN:
            self.handles_open += 1
            body = struct.pack(">I", rid) + struct.pack(">I", 2) + b"h1"
            self.out += struct.pack(">IB", 1 + len(body), FXP_HANDLE) + body
        elif kind == FXP_CLOSE:
            self.handles_open -= 1
            self._status(rid, 0)
        elif kind == FXP_WRITE:
            (hlen,) = struct.unpack_from(">I", packet, 9)
            offset, n = struct.unpack_from(">QI", packet, 13 + hlen)
            data = packet[25 + hlen : 25 + hlen + n]
            assert len(data) == n, "a write request carries the bytes it announces"
            if self.start is not None:
                start, self.start = self.start, None
                try:
                    start.wait(timeout=20)
                except threading.BrokenBarrierError:
                    raise AssertionError("a channel was never given a block to write") from None
            if self.break_after is not None and len(self.writes) >= self.break_after:
                raise EOFError("the SFTP channel was closed by the server")
            if self.refuse_at is not None and offset >= self.refuse_at:
                self._status(rid, 4, b"No space left")
                return
            self.writes.append((offset, n))
            with self.lock:
                if len(self.image) < offset + n:
                    self.image.extend(bytes(offset + n - len(self.image)))
                self.image[offset : offset + n] = data
            self._status(rid, 0)

    def recv(self, n: int) -> bytes:
        assert self.out, "the client waits for a reply it never asked for"
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def close(self) -> None:
        self.closed = True


def _stream(channel: _WriteServer, request_size: int, in_flight: int = 3) -> SftpStream:
    stream = SftpStream.__new__(SftpStream)
    stream.channel, stream._buf, stream._next_id = channel, bytearray(), 1  # type: ignore[assignment]
    stream.read_size = stream.request_size = request_size
    stream.in_flight = in_flight
    return stream


def _servers(count: int, image: bytearray, **bad: int) -> list[_WriteServer]:
    lock, start = threading.Lock(), threading.Barrier(count)
    return [_WriteServer(image, lock, start=start, **(bad if i == 1 else {})) for i in range(count)]


def _upload(servers: list[_WriteServer], local: bytes, plan: ResumePlan, block: int) -> tuple[str, list[int]]:
    acked: list[int] = []
    lock = threading.Lock()

    def on_acked(n: int) -> None:
        with lock:
            acked.append(n)

    hasher = BackgroundHash()
    writer = ParallelWriter([_stream(s, block) for s in servers], "/f.part", truncate=False, on_acked=on_acked)
    src = io.BytesIO(local)
    src.seek(plan.tail)
    try:
        send(writer, src, plan, hasher, block)
    except BaseException:
        writer.abort()
        raise
    finally:
        digest = hasher.finish()
    writer.finish()
    return digest, acked


def test_blocks_spread_over_every_channel_and_land_exactly_once() -> None:
    local = os.urandom(3_000_001)  # enough blocks that no channel thread, however scheduled, gets none
    image = bytearray()
    servers = _servers(3, image)
    digest, acked = _upload(servers, local, ResumePlan(len(local)), 4_096)
    assert bytes(image) == local
    assert digest == hashlib.sha256(local).hexdigest()
    assert sum(acked) == len(local)
    writes = sorted(w for s in servers for w in s.writes)
    assert writes == list(split(0, len(local), 4_096)), "each block written once, at its offset"
    assert all(s.writes for s in servers), "every channel took a share"
    assert all(s.handles_open == 0 for s in servers), "every handle was closed"


def test_a_resume_sends_only_what_did_not_read_back_identical() -> None:
    local = os.urandom(200_000)
    image = bytearray(local[:150_000])
    image[40_000:60_000] = bytes(20_000)  # a hole left by an interrupted channel
    plan = _compare(local, bytes(image), 10_000)
    assert plan.kept == 130_000
    servers = _servers(2, image)
    _, acked = _upload(servers, local, plan, 8_192)
    assert bytes(image) == local
    assert sum(acked) == plan.to_send == 70_000, "the kept bytes are not sent again"
    sent = sorted(w for s in servers for w in s.writes)
    assert all(40_000 <= o < 60_000 or o >= 150_000 for o, _ in sent)


def test_a_stretch_that_changed_since_it_was_compared_is_refused() -> None:
    local = bytearray(os.urandom(50_000))
    plan = _compare(bytes(local), bytes(30_000), 10_000)
    local[5] ^= 1  # the file changes after the comparison
    with pytest.raises(SourceChanged, match="differ from what was compared"):
        _upload(_servers(2, bytearray()), bytes(local), plan, 4_096)


def test_a_refusal_on_one_channel_stops_them_all_and_is_raised() -> None:
    local = os.urandom(400_000)
    image = bytearray()
    servers = _servers(3, image, refuse_at=0)  # its first write, which the start barrier guarantees it
    with pytest.raises(StatusError, match="No space left"):
        _upload(servers, local, ResumePlan(len(local)), 4_096)
    assert all(s.handles_open == 0 for s in servers), "the other channels closed their handles"
    assert len(image) < len(local), "nothing more was sent once a channel was refused"


def test_a_broken_channel_is_named_and_the_others_stop() -> None:
    local = os.urandom(400_000)
    servers = _servers(3, bytearray(), break_after=0)  # at its first write, which the start barrier guarantees it
    with pytest.raises(ChannelFailed, match=r"channel 2 of 3 writing /f.part failed: the SFTP channel was closed by the server"):
        _upload(servers, local, ResumePlan(len(local)), 4_096)
    assert servers[1].closed, "the broken channel's session is closed: its replies can no longer be paired up"
    assert servers[0].handles_open == servers[2].handles_open == 0


@pytest.mark.parametrize("host, user", [("-oProxyCommand=touch /tmp/pwned", "u"), ("warehouse", "-oProxyCommand=x")])
def test_a_target_whose_host_or_user_reads_as_an_ssh_option_is_refused(host: str, user: str) -> None:
    from farmhand.uploaders.sftp_connect import Endpoint, SftpError
    from farmhand.uploaders.sftp_openssh import OpensshLink

    with pytest.raises(SftpError, match="starting with '-'"):
        OpensshLink("/usr/bin/ssh", Endpoint(user=user, host=host, port=22), transport=None, private_key=Path("/k"), timeout=5)  # type: ignore[arg-type]
