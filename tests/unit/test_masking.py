"""Secret masking of byte streams (StreamMasker) and whole strings (mask_text)."""

from __future__ import annotations

import re
from typing import Iterable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from farmhand.masking import MASK, StreamMasker, mask_text


def run(secrets: Iterable[str | bytes], chunks: Iterable[bytes]) -> bytes:
    m = StreamMasker(secrets)
    out = [m.feed(c) for c in chunks]
    out.append(m.flush())
    return b"".join(out)


def reference(secrets: Iterable[bytes], data: bytes) -> bytes:
    """What masking the whole stream at once gives: longest secret first at each position."""
    values = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not values:
        return data
    return re.sub(b"|".join(re.escape(v) for v in values), b"***", data)


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def test_mask_constant() -> None:
    assert MASK == b"***"


def test_secret_within_one_chunk() -> None:
    assert run(["hunter2"], [b"password=hunter2 ok\n"]) == b"password=*** ok\n"


def test_str_and_bytes_secrets_are_equivalent() -> None:
    data = [b"a s3cr\xc3\xa9t b"]
    assert run(["s3cr\u00e9t"], data) == run([b"s3cr\xc3\xa9t"], data) == b"a *** b"


@pytest.mark.parametrize("prefix", [b"", b"x", b"log line: "])
@pytest.mark.parametrize("suffix", [b"", b"!", b" tail\n"])
def test_secret_split_at_every_position(prefix: bytes, suffix: bytes) -> None:
    secret = b"TOPSECRET42"
    data = prefix + secret + suffix
    expected = prefix + b"***" + suffix
    for cut in range(len(data) + 1):
        assert run([secret], [data[:cut], data[cut:]]) == expected, cut
    # and split into three pieces at every pair of positions
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            assert run([secret], [data[:a], data[a:b], data[b:]]) == expected, (a, b)


def test_secret_fed_one_byte_at_a_time() -> None:
    data = b"begin hunter2 middle hunter2hunter2 end"
    out = run(["hunter2"], [bytes([c]) for c in data])
    assert out == b"begin *** middle ****** end"


def test_repeated_secrets() -> None:
    data = b"tok tok,tok" * 3
    assert run(["tok"], [data]) == b"*** ***,***" * 3
    assert run(["tok"], chunked(data, range(0, len(data), 2))) == b"*** ***,***" * 3


def test_overlapping_secrets_longest_wins() -> None:
    # "abc" is inside "xabcx": the longer one is masked whole, with one mask
    assert run(["abc", "xabcx"], [b"1xabcx2abc3"]) == b"1***2***3"
    assert run(["xabcx", "abc"], [b"1xab", b"cx2ab", b"c3"]) == b"1***2***3"


def test_secret_prefix_of_another() -> None:
    assert run(["pass", "password"], [b"password pass"]) == b"*** ***"
    assert run(["pass", "password"], [b"passw", b"ord pas", b"s"]) == b"*** ***"
    # the longer one is not complete: the shorter is still masked
    assert run(["pass", "password"], [b"passwo", b"rk"]) == b"***work"


def test_self_overlapping_secret_matches_whole_stream_semantics() -> None:
    for chunks in ([b"aaaaa"], [b"a"] * 5, [b"aa", b"aaa"]):
        assert run(["aa"], chunks) == b"******a"


def test_no_secrets_is_passthrough() -> None:
    m = StreamMasker([])
    assert not m.active
    chunk = b"anything \x00\xff at all"
    out = m.feed(chunk)
    assert out is chunk  # same object: nothing copied, nothing held
    assert m.flush() == b""


def test_empty_secrets_are_ignored() -> None:
    m = StreamMasker(["", b""])
    assert not m.active
    assert m.feed(b"abc") == b"abc"


def test_no_match_passes_bytes_unchanged() -> None:
    data = bytes(range(256)) * 4
    assert run(["\u2603 not there"], chunked(data, range(0, len(data), 37))) == data


def test_flush_releases_the_held_tail() -> None:
    m = StreamMasker(["secret"])  # holds up to 5 bytes
    first = m.feed(b"hello world")
    assert first == b"hello "  # "world" might be the start of a secret
    assert m.flush() == b"world"
    assert m.flush() == b""  # nothing held twice


def test_flush_masks_a_complete_secret_in_the_tail() -> None:
    m = StreamMasker(["abcdef", "cd"])
    assert m.feed(b"xxcd") == b""  # all of it might be the start of "abcdef"... or not
    assert m.flush() == b"xx***"


def test_partial_secret_at_end_of_stream_is_not_masked() -> None:
    assert run(["secret"], [b"the secr"]) == b"the secr"


def test_hold_is_bounded() -> None:
    m = StreamMasker(["0123456789"])
    out = m.feed(b"z" * 100)
    assert out == b"z" * 91  # at most len(longest secret) - 1 bytes held back
    assert m.flush() == b"z" * 9


def test_output_never_contains_a_secret_across_many_chunkings() -> None:
    secrets = [b"s3cr3t", b"3cr", b"t0k"]
    data = b"..s3cr3t..3cr..t0ks3cr3tt0k.." * 2
    for step in range(1, len(data) + 1):
        out = run(secrets, chunked(data, range(0, len(data), step)))
        assert out == reference(secrets, data), step
        for s in secrets:
            assert s not in out


# -- property: streaming equals masking the whole stream ------------------------------------

ALPHABET = b"abc*\n"
small_bytes = st.binary(min_size=0, max_size=40).map(lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b))


@st.composite
def stream_case(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int]]:
    # small alphabets make overlaps, prefixes and repeats likely
    secret_alphabet = draw(st.sampled_from([b"ab", b"abc", b"abcxyz\x00\xff"]))
    secret = st.lists(st.sampled_from(list(secret_alphabet)), min_size=1, max_size=8).map(bytes)
    secrets = draw(st.lists(secret, min_size=0, max_size=4))
    pieces = draw(st.lists(st.one_of(small_bytes, st.sampled_from(secrets) if secrets else small_bytes), max_size=20))
    data = b"".join(pieces)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=max(len(data), 1)), max_size=25))
    return secrets, data, cuts


@settings(max_examples=400, deadline=None)
@given(stream_case())
def test_streaming_equals_whole_stream_reference(case: tuple[list[bytes], bytes, list[int]]) -> None:
    secrets, data, cuts = case
    chunks = chunked(data, cuts)
    assert b"".join(chunks) == data
    out = run(secrets, chunks)
    assert out == reference(secrets, data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=12).filter(lambda s: b"*" not in s), min_size=1, max_size=3),
    st.lists(st.binary(max_size=30).filter(lambda s: b"*" not in s), max_size=10),
    st.data(),
)
def test_output_never_contains_a_secret(secrets: list[bytes], fillers: list[bytes], data: st.DataObject) -> None:
    # secrets without '*' so that the mask itself cannot form one
    parts: list[bytes] = []
    for filler in fillers:
        parts.append(filler)
        parts.append(data.draw(st.sampled_from(secrets)))
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, max(len(stream), 1)), max_size=15))
    out = run(secrets, chunked(stream, cuts))
    assert out == reference(secrets, stream)
    for s in secrets:
        assert s not in out


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=20))
def test_no_secret_streams_are_identical(data: bytes, cuts: list[int]) -> None:
    chunks = chunked(data, cuts)
    assert run([], chunks) == data
    absent = b"\x00never\x00present\x00"
    assume(absent not in data)
    assert run([absent], chunks) == data


# -- mask_text -------------------------------------------------------------------------


def test_mask_text_masks_all_occurrences() -> None:
    assert mask_text("token=abc123; again abc123", ["abc123"]) == "token=***; again ***"


def test_mask_text_longest_first() -> None:
    assert mask_text("pw=password", ["pass", "password"]) == "pw=***"
    assert mask_text("pw=password pass", ["password", "pass"]) == "pw=*** ***"


def test_mask_text_ignores_empty_and_absent_secrets() -> None:
    assert mask_text("nothing here", ["", "zzz"]) == "nothing here"
    assert mask_text("nothing here", []) == "nothing here"


def test_mask_text_unicode() -> None:
    assert mask_text("clé: s\u00e9cr\u00e8t!", ["s\u00e9cr\u00e8t"]) == "clé: ***!"
