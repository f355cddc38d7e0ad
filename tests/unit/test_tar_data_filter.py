"""Artifacts are judged by the stdlib's ``data`` tar filter, which Python 3.11.4 brought and Debian 12's python3
(3.11.2: the appliance's and the worker container image's) lacks; there ``artifacts.data_filter_refusal`` refuses
the same members. It is checked here against the stdlib's own filter, member by member."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from farmhand import artifacts

needs_stdlib_filter = pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="the stdlib's filter to compare with came in Python 3.11.4")


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


MEMBERS = [
    member("out/file.txt"),
    member("out"),
    member("out/dir", tarfile.DIRTYPE),
    member("/out/abs.txt"),
    member("out/../../escape.txt"),
    member("../escape.txt"),
    member("out/./a/../b.txt"),
    member("out/dev", tarfile.CHRTYPE),
    member("out/fifo", tarfile.FIFOTYPE),
    member("out/blk", tarfile.BLKTYPE),
    member("out/link", tarfile.SYMTYPE, "/etc/shadow"),
    member("out/link", tarfile.SYMTYPE, "../../etc/shadow"),
    member("out/link", tarfile.SYMTYPE, "sibling.txt"),
    member("out/link", tarfile.SYMTYPE, "../out/sibling.txt"),
    member("out/hard", tarfile.LNKTYPE, "out/file.txt"),
    member("out/hard", tarfile.LNKTYPE, "/etc/passwd"),
    member("out/hard", tarfile.LNKTYPE, "../etc/passwd"),
    member("out/cont", tarfile.CONTTYPE),
]


@needs_stdlib_filter
@pytest.mark.parametrize("info", MEMBERS, ids=lambda m: f"{m.name}-{m.type!r}-{m.linkname}")
def test_the_fallback_refuses_what_the_stdlib_filter_refuses(info: tarfile.TarInfo, tmp_path: Path) -> None:
    dest = tmp_path / "collect"
    dest.mkdir()
    try:
        tarfile.data_filter(info, str(dest))
        stdlib = None
    except tarfile.FilterError as exc:
        stdlib = str(exc)
    assert artifacts.data_filter_refusal(info, str(dest)) == stdlib


def test_without_the_stdlib_filter_an_escaping_member_is_skipped_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.setattr(artifacts, "FilterError", ValueError)  # as on Python 3.11.2, which has no tarfile.FilterError
    with pytest.raises(ValueError, match="outside the destination"):
        artifacts._data_filter(member("../escape.txt"), str(tmp_path))
    artifacts._data_filter(member("out/file.txt"), str(tmp_path))  # accepted: no exception


def test_a_tar_stream_is_collected_the_same_without_the_stdlib_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream's ``..`` member is skipped and the file kept, whichever filter judged them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("out/file.txt", b"kept\n"), ("out/../../escape.txt", b"never\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    verdicts = []
    for with_stdlib in (True, False):
        if not with_stdlib:
            monkeypatch.delattr(tarfile, "data_filter", raising=False)
        buf.seek(0)
        with tarfile.open(fileobj=buf, mode="r|") as tar:
            row = []
            for info in tar:
                try:
                    artifacts._data_filter(info, str(tmp_path / "collect"))
                    row.append((info.name, "ok"))
                except artifacts.FilterError:
                    row.append((info.name, "refused"))
        verdicts.append(row)
    assert verdicts[0] == verdicts[1] == [("out/file.txt", "ok"), ("out/../../escape.txt", "refused")]
