"""The collect stage: copy declared artifacts out of the stopped container.

Everything goes through Docker's archive API, which resolves paths inside the
container's own filesystem; the worker never opens a path the task chose.
The tar stream is then read member by member: only regular files and
directories are written, every name is checked by the stdlib's ``data``
extraction filter, and links are never followed or recreated, so nothing the
task does can make the worker read or write a host file.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from docker.errors import NotFound

from farmhand.task import ArtifactSpec

#: Go's os.FileMode bits as Docker reports them in X-Docker-Container-Path-Stat.
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
#: Go's os.ModeType: any of these set means "not a regular file".
GO_MODE_TYPE = GO_MODE_DIR | GO_MODE_SYMLINK | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


@dataclass
class FileEntry:
    path: str  # relative to the artifact root, "" for a file artifact
    size: int
    sha256: str


@dataclass
class Collected:
    spec: ArtifactSpec
    local_path: Path | None = None
    present: bool = False
    problem: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def sha256(self) -> str | None:
        """A file's own digest; for a directory, the digest of its sha256sum-style manifest."""
        if not self.present:
            return None
        if self.spec.type == "file":
            return self.files[0].sha256
        manifest = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(self.files, key=lambda f: f.path))
        return hashlib.sha256(manifest.encode()).hexdigest()


class _ChunkReader(io.RawIOBase):
    """A file object over Docker's chunk iterator, so tarfile can stream without buffering it all."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> FileEntry:
    src = tar.extractfile(member)
    assert src is not None
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
            h.update(block)
            size += len(block)
    return FileEntry(path="", size=size, sha256=h.hexdigest())


def _extract(tar: tarfile.TarFile, spec: ArtifactSpec, root: Path, item: Collected) -> None:
    """Write the members of one artifact's archive under ``root``."""
    for member in tar:
        parts = PurePosixPath(member.name).parts
        rel = PurePosixPath(*parts[1:]) if len(parts) > 1 else PurePosixPath("")
        try:
            # Rejects absolute names, "..", and anything that would land outside root.
            tarfile.data_filter(member, str(root.parent))
        except tarfile.FilterError as exc:
            item.skipped.append(f"{member.name}: {exc}")
            continue
        if spec.type == "file":
            if member.isfile():
                item.files.append(_copy_member(tar, member, root))
            continue
        target = root.joinpath(*rel.parts) if rel.parts else root
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            entry = _copy_member(tar, member, target)
            entry.path = str(rel)
            item.files.append(entry)
        else:
            kind = "symbolic link" if member.issym() else "hard link" if member.islnk() else "special file"
            item.skipped.append(f"{rel}: {kind}, not copied")


def collect_one(container: Any, spec: ArtifactSpec, dest_dir: Path) -> Collected:
    item = Collected(spec=spec)
    try:
        chunks, stat = container.get_archive(spec.path)
    except NotFound:
        item.problem = f"artifact {spec.name!r}: {spec.path} does not exist in the container"
        return item
    mode = int(stat.get("mode", 0))
    if mode & GO_MODE_SYMLINK:
        item.problem = (
            f"artifact {spec.name!r}: {spec.path} is a symbolic link (to {stat.get('linkTarget')!r}); "
            "farmhand does not follow links out of an artifact"
        )
        return item
    is_dir = bool(mode & GO_MODE_DIR)
    if is_dir != (spec.type == "directory"):
        actual = "a directory" if is_dir else "not a directory"
        item.problem = f"artifact {spec.name!r}: {spec.path} is {actual}, but the task declares type {spec.type!r}"
        return item
    if not is_dir and mode & GO_MODE_TYPE:
        item.problem = f"artifact {spec.name!r}: {spec.path} is not a regular file"
        return item

    root = dest_dir / spec.name
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 20), mode="r|") as tar:
        _extract(tar, spec, root, item)
    if spec.type == "directory":
        root.mkdir(parents=True, exist_ok=True)
    elif not item.files:
        item.problem = f"artifact {spec.name!r}: {spec.path} came out of the container empty-handed"
        return item
    item.local_path = root
    item.present = True
    return item


def collect(container: Any, specs: Iterable[ArtifactSpec], dest_dir: Path) -> list[Collected]:
    return [collect_one(container, spec, dest_dir) for spec in specs]
