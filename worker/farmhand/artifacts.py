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
import shutil
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
    #: The result reason a problem means for a required artifact.
    problem_reason: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def fail(self, reason: str, message: str) -> "Collected":
        self.problem_reason, self.problem, self.present = reason, message, False
        return self

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


class TooLarge(Exception):
    """The task's artifacts together exceed the worker's ``limits.artifacts_max_bytes``."""


@dataclass
class Budget:
    """Bytes the task's artifacts may still take on the worker's disk; None means no limit."""

    remaining: int | None = None
    limit: int | None = None

    def take(self, size: int) -> None:
        if self.remaining is None:
            return
        if size > self.remaining:
            raise TooLarge(f"the task's artifacts exceed this worker's limit of {self.limit} bytes (limits.artifacts_max_bytes)")
        self.remaining -= size


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


def _extract(tar: tarfile.TarFile, spec: ArtifactSpec, root: Path, item: Collected, budget: Budget) -> None:
    """Write the members of one artifact's archive under ``root``.

    Sizes come from the tar headers, so a member over budget is refused before
    a byte of it reaches the disk.
    """
    for member in tar:
        parts = PurePosixPath(member.name).parts
        rel = PurePosixPath(*parts[1:]) if len(parts) > 1 else PurePosixPath("")
        try:
            # Rejects absolute names, "..", and anything that would land outside root.
            tarfile.data_filter(member, str(root.parent))
        except tarfile.FilterError as exc:
            item.skipped.append(f"{member.name}: {exc}")
            continue
        if member.isfile():
            budget.take(member.size)
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


def collect_one(container: Any, spec: ArtifactSpec, dest_dir: Path, budget: Budget | None = None) -> Collected:
    item = Collected(spec=spec)
    try:
        chunks, stat = container.get_archive(spec.path)
    except NotFound:
        return item.fail("artifact-missing", f"artifact {spec.name!r}: {spec.path} does not exist in the container")
    mode = int(stat.get("mode", 0))
    if mode & GO_MODE_SYMLINK:
        return item.fail(
            "artifact-invalid",
            f"artifact {spec.name!r}: {spec.path} is a symbolic link (to {stat.get('linkTarget')!r}); "
            "farmhand does not follow links out of an artifact",
        )
    is_dir = bool(mode & GO_MODE_DIR)
    if is_dir != (spec.type == "directory"):
        actual = "a directory" if is_dir else "not a directory"
        return item.fail("artifact-invalid", f"artifact {spec.name!r}: {spec.path} is {actual}, but the task declares type {spec.type!r}")
    if not is_dir and mode & GO_MODE_TYPE:
        return item.fail("artifact-invalid", f"artifact {spec.name!r}: {spec.path} is not a regular file")

    root = dest_dir / spec.name
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 20), mode="r|") as tar:
            _extract(tar, spec, root, item, budget or Budget())
    except TooLarge as exc:
        if root.is_dir():
            shutil.rmtree(root, ignore_errors=True)
        else:
            root.unlink(missing_ok=True)
        item.files.clear()
        return item.fail("artifact-too-large", f"artifact {spec.name!r}: {exc}")
    if spec.type == "directory":
        root.mkdir(parents=True, exist_ok=True)
    elif not item.files:
        return item.fail("artifact-invalid", f"artifact {spec.name!r}: {spec.path} came out of the container empty-handed")
    item.local_path = root
    item.present = True
    return item


def collect(container: Any, specs: Iterable[ArtifactSpec], dest_dir: Path, max_bytes: int | None = None) -> list[Collected]:
    """Collect every artifact; together they may take at most ``max_bytes`` of the worker's disk."""
    budget = Budget(max_bytes, max_bytes)
    return [collect_one(container, spec, dest_dir, budget) for spec in specs]
