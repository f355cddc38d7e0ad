"""Demultiplexing Docker's framed stream, whatever the read boundaries."""

from __future__ import annotations

import struct

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from farmhand.docker_client import since_param
from farmhand.docker_logs import OutputStream, demux


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def reader(data: bytes, cuts: list[int]):
    """A read() that returns ``data`` in pieces ending at ``cuts``, then b''."""
    pieces, last = [], 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        pieces.append(data[last:cut])
        last = cut
    it = iter(p for p in pieces if p)
    return lambda n: next(it, b"")


def joined(batches) -> bytes:
    return b"".join(b"".join(frames) for frames in batches)


def test_frames_of_both_streams_are_joined_in_order():
    data = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"out 2\n")
    assert joined(demux(reader(data, []))) == b"out 1\nerr 1\nout 2\n"


def test_a_frame_cut_anywhere_waits_for_its_rest():
    data = frame(1, b"hello world\n") + frame(2, b"x" * 300)
    for cut in range(1, len(data)):
        assert joined(demux(reader(data, [cut]))) == b"hello world\n" + b"x" * 300


def test_a_truncated_stream_drops_only_the_incomplete_frame():
    data = frame(1, b"complete\n") + frame(1, b"never finished")[:-3]
    assert joined(demux(reader(data, [5]))) == b"complete\n"


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=64)), max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=20),
)
def test_any_chunking_yields_the_payloads_in_order(payloads, cuts):
    data = b"".join(frame(s, p) for s, p in payloads)
    assert joined(demux(reader(data, cuts))) == b"".join(p for _, p in payloads)


def line(ns: int, text: str) -> bytes:
    return f"2026-11-23T10:00:00.{ns:09d}Z {text}\n".encode()


class ScriptedStream(OutputStream):
    """OutputStream whose Docker answers follow a script: follow streams, then the tail=1 answer."""

    def __init__(self, follow_streams: list[list[bytes]], full_log: list[bytes], running_after: list[bool], per_frame: bool = False) -> None:
        super().__init__(client=type("C", (), {"api": None})(), container_id="c0ffee")
        self.follow_streams = follow_streams
        self.full_log = full_log
        self.running_after = running_after
        self.requests: list[dict] = []
        self.per_frame = per_frame  # one read per frame, so each frame is a batch of its own

    def _open(self, **params):
        self.requests.append(params)
        if params.get("tail") == 1:
            lines = self.full_log[-1:]
        elif params.get("follow"):
            lines = self.follow_streams.pop(0)
        else:  # a catch-up read: everything from `since` on, as Docker filters it
            since = params.get("since")
            lines = [l for l in self.full_log if since is None or since_param(l[:30]) >= since]
        framed = [frame(1, l) for l in lines]
        cuts = [sum(len(f) for f in framed[: i + 1]) for i in range(len(framed))] if self.per_frame else []
        return reader(b"".join(framed), cuts)

    def _close_response(self) -> None:
        pass

    def _running(self) -> bool:
        return self.running_after.pop(0)


LOG = [line(1, "one"), line(2, "two"), line(3, "three-a"), line(3, "three-b"), line(3, "three-c"), line(4, "four")]


def test_a_complete_stream_needs_no_second_read():
    s = ScriptedStream([LOG], LOG, running_after=[False])
    assert b"".join(s) == b"".join(LOG)
    assert s.resumes == 0 and [r for r in s.requests if "since" in r] == []


@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("cut", range(0, len(LOG)))
def test_a_stream_that_ends_early_is_completed_without_duplicates(cut, per_frame):
    s = ScriptedStream([LOG[:cut]], LOG, running_after=[False], per_frame=per_frame)
    assert b"".join(s) == b"".join(LOG)
    assert s.resumes == 1


@pytest.mark.parametrize("cut", range(1, len(LOG)))
def test_a_stream_cut_while_the_task_runs_is_followed_again(cut):
    s = ScriptedStream([LOG[:cut], [l for l in LOG if since_param(l[:30]) >= since_param(LOG[cut - 1][:30])]], LOG, running_after=[True, False])
    assert b"".join(s) == b"".join(LOG)
    assert s.resumes == 1


def test_since_param_keeps_nanoseconds():
    assert since_param(b"2026-11-23T10:00:00.000000003Z") == "1795428000.000000003"


# -- Dechunker: HTTP/1.1 chunked bodies, read from the connection's buffer -----------------

from http.client import IncompleteRead  # noqa: E402

from farmhand.docker_logs import Dechunker  # noqa: E402


class Conn:
    """A buffered connection: read1 returns the next piece; reading past the pieces is an error (it would block)."""

    def __init__(self, pieces: list[bytes], eof: bool = False) -> None:
        self.pieces = [p for p in pieces if p]
        self.eof = eof

    def read1(self, n: int) -> bytes:
        if not self.pieces:
            assert self.eof, "read past the end of the body: this read would block"
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > n:
            piece, rest = piece[:n], piece[n:]
            self.pieces.insert(0, rest)
        return piece


def chunked(parts: list[bytes], extension: bool = False, trailer: bool = False) -> bytes:
    ext = b";name=value" if extension else b""
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts if p)
    return body + b"0\r\n" + (b"X-Trailer: 1\r\n" if trailer else b"") + b"\r\n"


def read_all(read) -> bytes:
    out = []
    while data := read(1 << 20):
        out.append(data)
    assert read(1 << 20) == b""  # stays ended
    return b"".join(out)


def test_dechunker_joins_many_chunks_in_one_read():
    body = chunked([b"frame %d\n" % i for i in range(100)])
    d = Dechunker(Conn([body]))
    assert d.read(1 << 20) == b"".join(b"frame %d\n" % i for i in range(100))
    assert d.read(1 << 20) == b""


@pytest.mark.parametrize("extension", [False, True])
@pytest.mark.parametrize("trailer", [False, True])
def test_dechunker_at_every_cut(extension, trailer):
    parts = [b"a", b"bc\r\n", b"x" * 300, b"\r\n0\r\n"]
    body = chunked(parts, extension, trailer)
    for cut in range(1, len(body)):
        for second in (cut, min(cut + 1, len(body)), min(cut + 7, len(body))):
            pieces = [body[:cut], body[cut:second], body[second:]]
            assert read_all(Dechunker(Conn(pieces)).read) == b"".join(parts), (cut, second)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=20), st.lists(st.integers(1, 2000), max_size=15))
def test_dechunker_any_body_any_reads(parts, cuts):
    body = chunked(parts)
    bounds = sorted({c for c in cuts if c < len(body)})
    pieces = [body[a:b] for a, b in zip([0, *bounds], [*bounds, len(body)])]
    assert read_all(Dechunker(Conn(pieces)).read) == b"".join(parts)


def test_dechunker_does_not_read_past_the_last_chunk():
    # a kept-alive connection: nothing follows the terminating chunk, and no read may wait for it
    d = Dechunker(Conn([chunked([b"one", b"two"])]))
    assert read_all(d.read) == b"onetwo"


@pytest.mark.parametrize("cut", [0, 3, 5, 9])
def test_dechunker_connection_closed_early_is_an_incomplete_read(cut):
    body = chunked([b"hello", b"world"])[: 10 + cut]
    d = Dechunker(Conn([body], eof=True))
    with pytest.raises(IncompleteRead):
        read_all(d.read)


def test_dechunker_rejects_a_bad_size_line():
    with pytest.raises(IncompleteRead):
        Dechunker(Conn([b"zz\r\nabc\r\n"])).read(100)
