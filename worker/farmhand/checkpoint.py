"""How far a task got, kept on disk so that a worker killed at any point can carry it on.

``Attempt`` is what one process holds of a task while the engine drives it;
``checkpoint`` writes the part a successor needs (the stage to go on from,
the network and container it holds, whether the warehouse has its files, and
the result so far) to ``tasks/ID/checkpoint.json``, atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from farmhand.result import Result, write_json_atomic
from farmhand.task import Task
from farmhand.uploaders import Uploader

CHECKPOINT_NAME = "checkpoint.json"
#: Held (flock) by the process that drives the task, so no second one runs or resumes it at once.
LOCK_NAME = ".lock"


@dataclass
class Attempt:
    """What one process holds of a task; ``checkpoint`` saves what a successor needs to carry it on."""

    result: Result
    document: Any = None
    requested_id: str | None = None
    task: Task | None = None
    workspace: Path | None = None
    target: str | None = None
    network: str | None = None
    container_id: str | None = None
    owns_docker_objects: bool = False
    delivered: bool = False
    uploader: Uploader | None = None  # built once, in prepare; a resumed task builds it when it uploads
    options: dict[str, Any] | None = None  # the container's options, made in prepare for the run stage
    lock: IO[str] | None = None  # held while this process drives the task: a second one is refused
    devices: list[Any] | None = None  # loopback devices held (farmhand.devices; journaled in the workspace's devices.json)

    def checkpoint(self, stage: str) -> None:
        assert self.workspace is not None
        saved = {
            "stage": stage,
            "target": self.target,
            "network": self.network,
            "container_id": self.container_id,
            "delivered": self.delivered,
            "result": self.result.to_dict(),
        }
        write_json_atomic(self.workspace / CHECKPOINT_NAME, saved, indent=None)  # one per stage, read by farmhand alone

    @classmethod
    def from_checkpoint(cls, workspace: Path, saved: dict[str, Any], document: Any) -> "Attempt":
        return cls(
            result=Result.from_dict(saved["result"]),
            document=document,
            requested_id=workspace.name,
            workspace=workspace,
            target=saved["target"],
            network=saved.get("network"),
            container_id=saved.get("container_id"),
            owns_docker_objects=True,
            delivered=bool(saved.get("delivered")),
        )



def load_checkpoint(workspace: Path) -> dict[str, Any]:
    """The saved checkpoint, or one saying ``prepare`` (nothing of the task is known to have happened)."""
    mark = workspace / CHECKPOINT_NAME
    saved: dict[str, Any] = json.loads(mark.read_text(encoding="utf-8")) if mark.exists() else {}
    # Checkpoints of earlier versions call the stage "phase".
    saved["stage"] = saved.get("stage") or saved.get("phase") or "prepare"
    return saved
