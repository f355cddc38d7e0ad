"""Secrets are masked in the task's output as the task printed it, and the log stays timestamped.

Docker's logs endpoint (with timestamps) sends ``STAMP payload`` frames: one
per line, and a line longer than 16 KiB in 16 KiB pieces, all but the last
without a newline. Masking must see the payloads joined (across lines,
frames and reads), never the stamped text, or a multi-line secret (a PEM key,
a JSON credential) and a secret cut by Docker's split leak. These tests drive
LogPump with a scripted OutputStream at every cut point and compare the log
with a reference: the whole payload stream masked at once, each line then
stamped with the stamp of the frame its first byte came from.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farmhand.docker_logs import OutputStream
from farmhand.logpump import LogPump
from farmhand.masking import MASK, StreamMasker

STAMP_WIDTH = 31  # "2026-11-23T10:00:00.000000001Z "
DOCKER_SPLIT = 16 * 1024

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACD7rX2kJ1vA7cF0sB8dQk1pN3mQ9xZyWvUu2sT4aLhKcQAAAJgAAAAAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
JSON_CREDENTIAL = '{\n  "type": "service_account",\n  "private_key_id": "5f1c0ffee0ddba11",\n  "client_secret": "qX9-zz81-PLUGH"\n}'


def stamp(n: int) -> bytes:
    return f"2026-11-23T10:{n // 60_000_000_000 % 60:02d}:{n // 1_000_000_000 % 60:02d}.{n % 1_000_000_000:09d}Z ".encode()


def docker_frames(writes: Iterable[bytes], split: int = DOCKER_SPLIT) -> list[bytes]:
    """What Docker's log holds for these writes: one frame per line, a long line in ``split``-byte pieces."""
    frames: list[bytes] = []
    for data in writes:
        for line in data.splitlines(keepends=True):
            for i in range(0, len(line), split):
                frames.append(stamp(len(frames) + 1) + line[i : i + split])
    return frames


def reference(frames: Sequence[bytes], secrets: Iterable[str | bytes]) -> bytes:
    """The whole payload stream masked at once (longest secret first), each line stamped from its first byte's frame."""
    payload = bytearray()
    owner: list[int] = []
    for i, f in enumerate(frames):
        payload += f[STAMP_WIDTH:]
        owner += [i] * (len(f) - STAMP_WIDTH)
    values = sorted({s.encode() if isinstance(s, str) else s for s in secrets} - {b""}, key=len, reverse=True)
    out: list[tuple[int, int]] = []  # (byte, frame it came from)
    pos = 0
    if values:
        for m in re.finditer(b"|".join(re.escape(v) for v in values), payload):
            out += [(payload[i], owner[i]) for i in range(pos, m.start())]
            out += [(c, owner[m.start()]) for c in MASK]
            pos = m.end()
    out += [(payload[i], owner[i]) for i in range(pos, len(payload))]
    text, bol = bytearray(), True
    for byte, source in out:
        if bol:
            text += frames[source][:STAMP_WIDTH]
        text.append(byte)
        bol = byte == 10
    return bytes(text)


def mux(payload: bytes) -> bytes:
    return struct.pack(">BxxxI", 1, len(payload)) + payload


class Scripted(OutputStream):
    """An OutputStream whose Docker holds ``frames`` (a finished container), read in pieces ending at ``cuts``."""

    def __init__(self, frames: Sequence[bytes], cuts: Iterable[int] = ()) -> None:
        super().__init__(client=type("C", (), {"api": None})(), container_id="c0ffee")
        self.frames, self.cuts = list(frames), sorted(set(cuts))

    def _open(self, **params):
        data = b"".join(mux(f) for f in (self.frames[-1:] if params.get("tail") == 1 else self.frames))
        bounds = [c for c in self.cuts if 0 < c < len(data)] if params.get("tail") != 1 else []
        pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)])]
        it = iter(p for p in pieces if p)
        return lambda n: next(it, b"")

    def _close_response(self) -> None:
        pass

    def _running(self) -> bool:
        return False


def pump(tmp_path: Path, frames: Sequence[bytes], secrets: Iterable[str | bytes], cuts: Iterable[int] = (), name: str = "task.log") -> bytes:
    path = tmp_path / name
    path.unlink(missing_ok=True)
    summary = LogPump(Scripted(frames, cuts), path, 1 << 40, StreamMasker(secrets)).start().wait(timeout=30)
    data = path.read_bytes()
    assert summary.complete and summary.size == len(data)
    return data


def each_read(frames: Sequence[bytes]) -> list[int]:
    """Read boundaries after every frame: each frame a batch of its own."""
    ends, total = [], 0
    for f in frames:
        total += len(mux(f))
        ends.append(total)
    return ends


# -- the leaks of the issue --------------------------------------------------------------


@pytest.mark.parametrize("secret", [PEM, JSON_CREDENTIAL], ids=["pem", "json"])
@pytest.mark.parametrize("reads", ["one-read", "read-per-frame"])
def test_a_multi_line_secret_is_masked_whole(tmp_path: Path, secret: str, reads: str) -> None:
    frames = docker_frames([b"before\n", b"key=" + secret.encode() + b"\n", b"after\n"])
    log = pump(tmp_path, frames, [secret], each_read(frames) if reads == "read-per-frame" else ())
    assert log == reference(frames, [secret])
    for line in secret.splitlines()[1:-1]:  # lines of the secret that are nothing but secret
        assert line.encode() not in log, line
    assert log.splitlines()[1] == stamp(2) + b"key=***"
    assert log.splitlines()[2] == stamp(len(frames)) + b"after"


def test_a_secret_longer_than_docker_s_line_split_is_masked_and_the_line_stays_whole(tmp_path: Path) -> None:
    secret = ("0123456789abcdef" * 1300)[:20_000]  # > 16 KiB, no newline: Docker cuts it in two frames
    frames = docker_frames([b"token=" + secret.encode() + b" done\n", b"next\n"])
    assert len(frames) == 3 and not frames[0].endswith(b"\n")
    log = pump(tmp_path, frames, [secret])
    assert log == stamp(1) + b"token=*** done\n" + stamp(3) + b"next\n"


def test_a_long_line_is_one_stamped_line_in_the_log(tmp_path: Path) -> None:
    line = b"x" * 40_000 + b"\n"
    frames = docker_frames([line, b"short\n"])
    assert len(frames) == 4
    for secrets in ([], ["not-in-it"]):
        log = pump(tmp_path, frames, secrets)
        assert log == stamp(1) + line + stamp(4) + b"short\n"


def frames_cut(text: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Frames of ``text``: one per line, and also cut at ``cuts`` (where Docker's split would fall)."""
    bounds = sorted(({i + 1 for i, c in enumerate(text) if c == 10} | {c for c in cuts if 0 < c} | {len(text)}))
    pieces = [text[a:b] for a, b in zip([0, *bounds], bounds) if b > a]
    return [stamp(i + 1) + piece for i, piece in enumerate(pieces)]


@pytest.mark.parametrize("secret", [b"TOPSECRET-0123456789", b"multi\nline\nsecret"], ids=["one-line", "multi-line"])
def test_a_secret_cut_by_a_frame_boundary_at_every_position(tmp_path: Path, secret: bytes) -> None:
    text = b"pre " + secret + b" post\n" + b"next " + secret + b"\n"
    for k in range(4, 4 + len(secret) + 1):  # Docker's 16 KiB split, moved over every position of the first secret
        frames = frames_cut(text, [k])
        expected = reference(frames, [secret])
        assert expected.count(MASK) == 2 and secret not in expected
        assert pump(tmp_path, frames, [secret]) == expected, k
        assert pump(tmp_path, frames, [secret], each_read(frames)) == expected, k


def test_every_read_boundary_with_secrets_across_frames(tmp_path: Path) -> None:
    secret = b"abc\ndef"
    frames = [stamp(1) + b"x ab", stamp(2) + b"c\n", stamp(3) + b"def y\n", stamp(4) + b"abc\n", stamp(5) + b"de", stamp(6) + b"f\n"]
    expected = reference(frames, [secret])
    assert expected == stamp(1) + b"x ***" + b" y\n" + stamp(4) + b"***\n"
    total = sum(len(mux(f)) for f in frames)
    for cut in range(1, total):
        assert pump(tmp_path, frames, [secret], [cut]) == expected, cut


def test_no_secret_and_whole_lines_give_docker_s_own_text(tmp_path: Path) -> None:
    frames = docker_frames([b"one\n", b"two\n", b"\n", b"three\n"])
    for secrets in ([], ["absent"], ["one\ntwo\nthree"]):
        assert pump(tmp_path, frames, secrets) == b"".join(frames)


def test_a_secret_that_ends_a_line_does_not_glue_a_stamp_into_the_next(tmp_path: Path) -> None:
    secret = b"pw1\n"
    frames = docker_frames([b"pw1\n", b"ok\n"])
    assert pump(tmp_path, frames, [secret]) == reference(frames, [secret]) == stamp(1) + b"***ok\n"


def test_the_last_bytes_without_newline_are_kept(tmp_path: Path) -> None:
    frames = docker_frames([b"line\n", b"no newline at the end, and a secre"])
    assert pump(tmp_path, frames, ["secret"]) == b"".join(frames)


# -- property: any frames, any reads, any secrets ----------------------------------------

ALPHABET = b"ab\n"


@st.composite
def log_case(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], list[int]]:
    text = st.lists(st.sampled_from(list(ALPHABET)), min_size=1, max_size=8).map(bytes)
    secrets = draw(st.lists(text, max_size=3))
    payloads = draw(st.lists(st.one_of(text, st.sampled_from(secrets) if secrets else text), min_size=1, max_size=12))
    frames = [stamp(i + 1) + p for i, p in enumerate(payloads)]
    total = sum(len(mux(f)) for f in frames)
    cuts = draw(st.lists(st.integers(1, total), max_size=8))
    return secrets, frames, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log_case())
def test_any_frames_and_reads_give_the_reference(tmp_path: Path, case: tuple[list[bytes], list[bytes], list[int]]) -> None:
    secrets, frames, cuts = case
    assert pump(tmp_path, frames, secrets, cuts) == reference(frames, secrets)


# -- FrameMasker alone: batches of any size, memory held back -------------------------------

def feed_all(secrets: Sequence[bytes], batches: Sequence[Sequence[bytes]]) -> tuple[bytes, int]:
    from farmhand.masking import FrameMasker

    masker = FrameMasker(StreamMasker(secrets))
    hold = max((len(s) for s in secrets if s), default=1) - 1
    out, most = [], 0
    for batch in batches:
        out.append(masker.feed(batch))
        most = max(most, masker.held)
        assert masker.held <= hold, (masker.held, hold)
    out.append(masker.flush())
    assert masker.held == 0
    return b"".join(out), most


@st.composite
def docker_shaped(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], list[list[bytes]]]:
    """Whole lines mostly (Docker's usual), sometimes a line in parts; secrets with and without newlines."""
    word = st.lists(st.sampled_from(list(b"ab\n")), min_size=1, max_size=12).map(bytes)
    secrets = draw(st.lists(word, max_size=3))
    lines = draw(st.lists(st.one_of(word, st.sampled_from(secrets) if secrets else word), min_size=1, max_size=30))
    text = b"".join(lines) + b"\n"
    splits = draw(st.lists(st.integers(1, len(text)), max_size=4))  # where Docker would cut a long line
    frames = frames_cut(text, splits)
    bounds = sorted(set(draw(st.lists(st.integers(1, len(frames)), max_size=6))) | {len(frames)})
    batches = [frames[a:b] for a, b in zip([0, *bounds], bounds) if b > a]
    return secrets, frames, batches


@settings(max_examples=500, deadline=None)
@given(docker_shaped())
def test_any_batching_gives_the_reference_and_holds_less_than_a_secret(case) -> None:
    secrets, frames, batches = case
    out, _ = feed_all(secrets, batches)
    assert out == reference(frames, secrets)


def test_the_hold_is_the_longest_secret_less_one_and_spans_frames() -> None:
    secret = b"-----BEGIN KEY-----\nAAAA\n-----END KEY-----"  # 42 bytes: holds at most 41
    frames = docker_frames([b"x" * 100 + b"\n"] + [b"line %d\n" % i for i in range(20)])
    out, most = feed_all([secret], [[f] for f in frames])
    assert most == len(secret) - 1
    assert out == b"".join(frames)


def test_without_secrets_nothing_is_held_and_whole_lines_pass_as_docker_sent_them() -> None:
    frames = docker_frames([b"a\n", b"b\n", b"c" * 20 + b"\n"], split=8)
    out, most = feed_all([], [frames[:2], frames[2:4], frames[4:]])
    assert most == 0
    assert out == stamp(1) + b"a\n" + stamp(2) + b"b\n" + stamp(3) + b"c" * 20 + b"\n"
