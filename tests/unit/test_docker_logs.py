"""Demultiplexing Docker's framed stream, whatever the read boundaries."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from farmhand.docker_logs import demux, raw


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


def test_frames_of_both_streams_are_joined_in_order():
    data = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"out 2\n")
    assert b"".join(demux(reader(data, []))) == b"out 1\nerr 1\nout 2\n"


def test_a_frame_cut_anywhere_waits_for_its_rest():
    data = frame(1, b"hello world\n") + frame(2, b"x" * 300)
    for cut in range(1, len(data)):
        assert b"".join(demux(reader(data, [cut]))) == b"hello world\n" + b"x" * 300


def test_a_truncated_stream_drops_only_the_incomplete_frame():
    data = frame(1, b"complete\n") + frame(1, b"never finished")[:-3]
    assert b"".join(demux(reader(data, [5]))) == b"complete\n"


def test_raw_stream_passes_bytes_through():
    assert b"".join(raw(reader(b"tty output\r\n", [3, 7]))) == b"tty output\r\n"


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=64)), max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=20),
)
def test_any_chunking_yields_the_payloads_in_order(payloads, cuts):
    data = b"".join(frame(s, p) for s, p in payloads)
    assert b"".join(demux(reader(data, cuts))) == b"".join(p for _, p in payloads)
