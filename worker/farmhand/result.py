"""The one document every task ends in, whatever happened."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from farmhand import __version__, durable

RESULT_SCHEMA = "farmhand-result-v1"
STATES = ("succeeded", "failed", "exception")


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FileRecord:
    """One file of a directory artifact, relative to the artifact's root."""

    path: str
    size: int
    sha256: str


@dataclass
class ArtifactRecord:
    """What became of one declared artifact; ``location`` is set once it is delivered."""

    name: str
    path: str
    type: str
    optional: bool
    present: bool
    size: int | None = None
    sha256: str | None = None
    location: str | None = None
    problem: str | None = None
    files: list[FileRecord] | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def shipped(self) -> bool:
        """Whether there is anything of it to upload (an empty directory has nothing)."""
        return self.present and (self.type == "file" or bool(self.files))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "optional": self.optional,
            "present": self.present,
            "size": self.size,
            "sha256": self.sha256,
            "location": self.location,
        }
        if self.problem:
            doc["problem"] = self.problem
        if self.files is not None:
            doc["files"] = [asdict(f) for f in self.files]
        if self.skipped:
            doc["skipped"] = list(self.skipped)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "ArtifactRecord":
        files = doc.get("files")
        return cls(
            **{k: doc.get(k) for k in ("name", "path", "type", "optional", "present", "size", "sha256", "location", "problem")},
            files=[FileRecord(**f) for f in files] if files is not None else None,
            skipped=list(doc.get("skipped") or []),
        )


@dataclass
class LogRecord:
    """The task's log as captured; the ``compressed_*`` fields describe the file that travelled, when compressed."""

    size: int
    sha256: str
    truncated: bool
    dropped_bytes: int
    location: str | None = None
    compression: str | None = None
    compressed_size: int | None = None
    compressed_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "location": self.location,
            "size": self.size,
            "sha256": self.sha256,
            "truncated": self.truncated,
            "dropped_bytes": self.dropped_bytes,
        }
        if self.compression is not None:
            doc.update(compression=self.compression, compressed_size=self.compressed_size, compressed_sha256=self.compressed_sha256)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "LogRecord":
        return cls(**{f.name: doc.get(f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass
class Result:
    """Accumulates what each stage learns; ``to_dict`` is the published document."""

    task_id: str
    state: str = "exception"
    reason: str | None = "internal-error"
    message: str | None = None
    exit_code: int | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    image: dict[str, Any] | None = None
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    log: LogRecord | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    workspace: str | None = None
    warnings: list[str] = field(default_factory=list)

    def conclude(self, state: str, reason: str | None, message: str | None = None) -> None:
        assert state in STATES, state
        self.state, self.reason, self.message = state, reason, message

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage; its record says ok/error even when the stage raises."""
        start = time.time()
        record: dict[str, Any] = {"started_at": utc_iso(start)}
        self.stages[name] = record
        outcome = "ok"
        try:
            yield record
        except BaseException:
            outcome = "error"
            raise
        finally:
            end = time.time()
            record.update(finished_at=utc_iso(end), duration=round(end - start, 3))
            record.setdefault("outcome", outcome)

    def to_dict(self) -> dict[str, Any]:
        finished = self.finished_at or time.time()
        return {
            "schema": RESULT_SCHEMA,
            "task_id": self.task_id,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "exit_code": self.exit_code,
            "started_at": utc_iso(self.started_at),
            "finished_at": utc_iso(finished),
            "duration": round(finished - self.started_at, 3),
            "stages": self.stages,
            "image": self.image,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "log": self.log.to_dict() if self.log is not None else None,
            "usage": self.usage,
            "labels": self.labels,
            "worker": {"hostname": socket.gethostname(), "version": __version__},
            "workspace": self.workspace,
            "warnings": self.warnings,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Result":
        """A result back from its document (a checkpoint, or result.json); derived fields are recomputed."""
        log = doc.get("log")
        return cls(
            task_id=doc["task_id"],
            state=doc["state"],
            reason=doc.get("reason"),
            message=doc.get("message"),
            exit_code=doc.get("exit_code"),
            started_at=_epoch(doc["started_at"]),
            finished_at=_epoch(doc["finished_at"]) if doc.get("finished_at") is not None else None,
            stages=dict(doc.get("stages") or {}),
            image=doc.get("image"),
            artifacts=[ArtifactRecord.from_dict(a) for a in doc.get("artifacts") or []],
            log=LogRecord.from_dict(log) if log is not None else None,
            usage=dict(doc.get("usage") or {}),
            labels=dict(doc.get("labels") or {}),
            workspace=doc.get("workspace"),
            warnings=list(doc.get("warnings") or []),
        )


def never_ran(task_id: str) -> dict[str, Any]:
    """The result of a task cancelled before it started, as the worker reports it and a client reads a revocation."""
    result = Result(task_id=task_id)
    result.conclude("exception", "cancelled", "the task was cancelled before it started; it never ran")
    result.finished_at = result.started_at
    return result.to_dict()


def _epoch(value: float | str) -> float:
    """Epoch seconds from a document's time: ISO 8601 as ``to_dict`` writes it, or seconds (older checkpoints)."""
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value)


def write_json_atomic(path: Path, document: Any, indent: int | None = 2) -> None:
    """Write-then-rename, so a crash never leaves half a result behind.

    ``indent=None`` for files only farmhand reads (checkpoints): the json
    module's C encoder serves only unindented output.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=indent, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        durable.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
