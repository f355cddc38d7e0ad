"""The one document every task ends in, whatever happened."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from farmhand import __version__

RESULT_SCHEMA = "farmhand-result-v1"
STATES = ("succeeded", "failed", "exception")


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    log: dict[str, Any] | None = None
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
            "artifacts": self.artifacts,
            "log": self.log,
            "usage": self.usage,
            "labels": self.labels,
            "worker": {"hostname": socket.gethostname(), "version": __version__},
            "workspace": self.workspace,
            "warnings": self.warnings,
        }


def write_json_atomic(path: Path, document: Any) -> None:
    """Write-then-rename, so a crash never leaves half a result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
