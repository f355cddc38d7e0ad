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
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from docker.errors import NotFound

from farmhand.docker_client import stat_path
from farmhand.errors import UploadFailed
from farmhand.result import ArtifactRecord, FileRecord, Result
from farmhand.task import ArtifactSpec
from farmhand.uploaders import check_name

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


class Refused(Exception):
    """An artifact farmhand will not take; ``reason`` is what a required one fails the task with."""

    reason = "artifact-invalid"


class TooLarge(Refused):
    """The task's artifacts together exceed the worker's ``limits.artifacts_max_bytes`` or ``artifacts_max_files``."""

    reason = "artifact-too-large"


class Missing(Refused):
    reason = "artifact-missing"


@dataclass
class Budget:
    """What the task's artifacts may still take on the worker's disk: bytes and files; None means no limit."""

    remaining: int | None = None
    limit: int | None = None
    files_remaining: int | None = None
    files_limit: int | None = None

    def take(self, size: int) -> None:
        if self.files_remaining is not None:
            if self.files_remaining < 1:
                raise TooLarge(f"the task's artifacts hold more than this worker's limit of {self.files_limit} files (limits.artifacts_max_files)")
            self.files_remaining -= 1
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


def _link_member(earlier: tuple[Path, FileEntry], dest: Path, budget: Budget) -> FileEntry:
    """A hard link inside the artifact: the same bytes again, linked here too (copied where links fail)."""
    source, entry = earlier
    try:
        os.link(source, dest)
        budget.take(0)
    except OSError:
        budget.take(entry.size)
        shutil.copyfile(source, dest)
    return FileEntry(path="", size=entry.size, sha256=entry.sha256)


#: What ``tarfile.data_filter`` raises. The filters came with Python 3.11.4: Debian 12's python3 (3.11.2, which
#: the appliance and the worker's container image run) has neither, and ``_data_filter`` refuses the same there.
FilterError: type[Exception] = getattr(tarfile, "FilterError", ValueError)


def _data_filter(member: tarfile.TarInfo, dest: str) -> None:
    """``tarfile.data_filter``'s verdict on ``member`` extracted under ``dest``: raises ``FilterError`` when refused."""
    stdlib = getattr(tarfile, "data_filter", None)
    if stdlib is not None:
        stdlib(member, dest)
        return
    refused = data_filter_refusal(member, dest)
    if refused is not None:
        raise FilterError(refused)


def data_filter_refusal(member: tarfile.TarInfo, dest: str) -> str | None:
    """Why the stdlib's ``data`` filter (Python 3.11.4+) refuses ``member``, in its words; None if it accepts it.

    Only its refusals: what it would change (modes, owners) does not matter here, where only regular files'
    bytes are written. Names keep their meaning as on the stdlib: a leading ``/`` is stripped, not refused.
    """
    dest = os.path.realpath(dest)
    name = member.name.lstrip("/")

    def outside(path: str) -> bool:
        return os.path.commonpath([path, dest]) != dest

    target = os.path.realpath(os.path.join(dest, name))
    if outside(target):
        return f"{member.name!r} would be extracted to {target!r}, which is outside the destination"
    if not (member.isreg() or member.islnk() or member.isdir() or member.issym()):
        return f"{member.name!r} is a special file"
    if member.islnk() or member.issym():
        if os.path.isabs(member.linkname):
            return f"{member.name!r} is a link to an absolute path"
        base = os.path.join(dest, os.path.dirname(name)) if member.issym() else dest
        link_target = os.path.realpath(os.path.join(base, member.linkname))
        if outside(link_target):
            return f"{member.name!r} would link to {link_target!r}, which is outside the destination"
    return None


def _extract(tar: tarfile.TarFile, spec: ArtifactSpec, root: Path, item: Collected, budget: Budget) -> None:
    """Write the members of one artifact's archive under ``root``.

    Sizes come from the tar headers, so a member over budget is refused before
    a byte of it reaches the disk. A name the warehouse would refuse (control
    characters, backslashes) refuses the artifact here, naming the file,
    rather than failing every upload of it later.
    """
    written: dict[str, tuple[Path, FileEntry]] = {}  # archive name -> where it went, for hard links to it
    for member in tar:
        parts = PurePosixPath(member.name).parts
        rel = PurePosixPath(*parts[1:]) if len(parts) > 1 else PurePosixPath("")
        try:
            # Rejects absolute names, "..", and anything that would land outside root.
            _data_filter(member, str(root.parent))
        except FilterError as exc:
            item.skipped.append(f"{member.name}: {exc}")
            continue
        if rel.parts:
            try:
                check_name(str(rel), "file name")
            except UploadFailed as exc:
                raise Refused(f"artifact {spec.name!r}: {exc.message}") from None
        target = root.joinpath(*rel.parts) if rel.parts else root
        if member.isdir():
            if spec.type == "directory":
                target.mkdir(parents=True, exist_ok=True)
            continue
        if member.isfile():
            budget.take(member.size)
        elif member.islnk() and member.linkname in written:
            pass  # charged in _link_member: nothing when it can be linked
        else:
            kind = "symbolic link" if member.issym() else "hard link to a file outside the artifact" if member.islnk() else "special file"
            item.skipped.append(f"{rel}: {kind}, not copied")
            continue
        if spec.type == "file" and item.files:
            continue  # a file artifact is its first regular file
        target.parent.mkdir(parents=True, exist_ok=True)
        entry = _copy_member(tar, member, target) if member.isfile() else _link_member(written[member.linkname], target, budget)
        written[member.name] = (target, entry)
        entry.path = str(rel) if spec.type == "directory" else ""
        item.files.append(entry)


def _checked_path(container: Any, spec: ArtifactSpec) -> tuple[str, dict[str, Any]]:
    """The declared path without a link anywhere on it, and Docker's stat of it.

    Each component is looked at on its own (Docker resolves a path's links
    before archiving it, a trailing slash included), so a link on the way
    is refused, never followed.
    """
    path = PurePosixPath(spec.path)
    if ".." in path.parts:
        raise Refused(f"artifact {spec.name!r}: {spec.path} has a '..' component")
    stat: dict[str, Any] | None = None
    for depth in range(min(2, len(path.parts)), len(path.parts) + 1):
        prefix = str(PurePosixPath(*path.parts[:depth]))
        stat = stat_path(container, prefix)
        if stat is None:
            raise Missing(f"artifact {spec.name!r}: {spec.path} does not exist in the container")
        if int(stat.get("mode", 0)) & GO_MODE_SYMLINK:
            raise Refused(
                f"artifact {spec.name!r}: {prefix} is a symbolic link (to {stat.get('linkTarget')!r}); "
                "farmhand does not follow links out of an artifact"
            )
    assert stat is not None
    return str(path), stat


def collect_one(container: Any, spec: ArtifactSpec, dest_dir: Path, budget: Budget | None = None) -> Collected:
    item = Collected(spec=spec)
    root = dest_dir / spec.name
    try:
        path, stat = _checked_path(container, spec)
        mode = int(stat.get("mode", 0))
        is_dir = bool(mode & GO_MODE_DIR)
        if is_dir != (spec.type == "directory"):
            actual = "a directory" if is_dir else "not a directory"
            raise Refused(f"artifact {spec.name!r}: {spec.path} is {actual}, but the task declares type {spec.type!r}")
        if not is_dir and mode & GO_MODE_TYPE:
            raise Refused(f"artifact {spec.name!r}: {spec.path} is not a regular file")
        try:
            chunks, _ = container.get_archive(path)
        except NotFound:
            raise Missing(f"artifact {spec.name!r}: {spec.path} does not exist in the container") from None
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 20), mode="r|") as tar:
            _extract(tar, spec, root, item, budget or Budget())
        if spec.type == "file" and not item.files:
            raise Refused(f"artifact {spec.name!r}: {spec.path} came out of the container empty-handed")
    except Refused as exc:
        if root.is_dir():
            shutil.rmtree(root, ignore_errors=True)
        else:
            root.unlink(missing_ok=True)
        item.files.clear()
        message = str(exc)
        if isinstance(exc, TooLarge):
            message = f"artifact {spec.name!r}: {exc}"
        return item.fail(exc.reason, message)
    if spec.type == "directory":
        root.mkdir(parents=True, exist_ok=True)
    item.local_path = root
    item.present = True
    return item


def collect(
    container: Any, specs: Iterable[ArtifactSpec], dest_dir: Path, max_bytes: int | None = None, max_files: int | None = None
) -> list[Collected]:
    """Collect every artifact; together they may take at most ``max_bytes`` of the worker's disk in ``max_files`` files."""
    budget = Budget(max_bytes, max_bytes, max_files, max_files)
    return [collect_one(container, spec, dest_dir, budget) for spec in specs]


#: When several required artifacts fail, the task's reason is the gravest of theirs.
SEVERITY = ("artifact-too-large", "artifact-invalid", "artifact-missing")


def record_of(item: Collected) -> ArtifactRecord:
    """The result's record of one collected artifact (location comes with the upload)."""
    return ArtifactRecord(
        name=item.spec.name,
        path=item.spec.path,
        type=item.spec.type,
        optional=item.spec.optional,
        present=item.present,
        size=item.size if item.present else None,
        sha256=item.sha256,
        problem=item.problem,
        files=[FileRecord(f.path, f.size, f.sha256) for f in item.files] if item.present and item.spec.type == "directory" else None,
        skipped=list(item.skipped),
    )


def record_collection(result: Result, collected: list[Collected]) -> None:
    """Record every artifact in ``result`` and judge the collection.

    A required artifact that failed fails a task that had succeeded, with the
    gravest reason among them; a task already failed keeps its own reason and
    gets the problems as warnings. An optional artifact that is merely absent
    is no news; one that is there but unusable is a warning.
    """
    failed = [i for i in collected if not i.present and not i.spec.optional]
    for item in collected:
        result.warnings.extend(f"artifact {item.spec.name!r}: {skipped}" for skipped in item.skipped)
        if item.problem and item.spec.optional and item.problem_reason != "artifact-missing":
            result.warnings.append(item.problem)
    result.artifacts = [record_of(i) for i in collected]
    problems = [i.problem or f"artifact {i.spec.name!r} is missing" for i in failed]
    if failed and result.state == "succeeded":
        reason = min((i.problem_reason or "artifact-missing" for i in failed), key=SEVERITY.index)
        result.conclude("failed", reason, "; ".join(problems))
    elif failed:
        result.warnings.extend(problems)
