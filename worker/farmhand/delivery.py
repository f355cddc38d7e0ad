"""The upload stage's decisions: what travels, under which names, and where it waits when the warehouse fails.

Works from the result alone (its log and artifact records), so a resumed task
uploads exactly what an earlier process collected. Nothing is ever lost: a
failed upload hands every file to ``pending/`` before the task reports, and
local copies go only once the warehouse has confirmed them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from farmhand import metrics, pending
from farmhand.compress import compress_file, compressed_name
from farmhand.config import WorkerConfig
from farmhand.errors import TaskProblem
from farmhand.result import LogRecord, Result
from farmhand.task import LOG_NAME
from farmhand.uploaders import UploadItem, Uploader

ARTIFACTS_DIR = "artifacts"


def has_anything(result: Result) -> bool:
    """Whether there is an upload stage at all: nothing ran and nothing was collected means none."""
    return result.log is not None or any(a.shipped for a in result.artifacts)


def local_copies(workspace: Path, config: WorkerConfig) -> list[Path]:
    """The workspace files an upload ships, which go once the warehouse has them (unless ``upload.keep_local``)."""
    copies = [workspace / LOG_NAME, workspace / ARTIFACTS_DIR]
    if config.log_compression != "none":
        copies.append(workspace / compressed_name(LOG_NAME, config.log_compression))
    return copies


def drop_local_copies(workspace: Path, config: WorkerConfig) -> None:
    """Delete what the warehouse confirmed; safe to repeat (a resumed task may do it again)."""
    if not config.keep_local:
        pending.remove_paths(local_copies(workspace, config))


def _log_item(config: WorkerConfig, workspace: Path, log: LogRecord, warnings: list[str]) -> UploadItem:
    """The log as it will travel: compressed per ``logs.compression``, or as is when that is off or fails."""
    log_path = workspace / LOG_NAME
    plain = UploadItem(log_path, LOG_NAME, log.size, log.sha256)
    method = config.log_compression
    if method == "none":
        return plain
    try:
        packed = compress_file(log_path, method)
    except OSError as exc:  # a full local disk must not cost the log: send it uncompressed
        warnings.append(f"log: could not be compressed ({exc.strerror or exc}); uploaded uncompressed")
        return plain
    log.compression, log.compressed_size, log.compressed_sha256 = method, packed.size, packed.sha256
    return UploadItem(packed.path, packed.path.name, packed.size, packed.sha256)


def upload_items(config: WorkerConfig, workspace: Path, result: Result) -> list[UploadItem]:
    """Every file that travels, each with the size and sha256 the warehouse must confirm."""
    items: list[UploadItem] = []
    if result.log is not None:
        items.append(_log_item(config, workspace, result.log, result.warnings))
    root = workspace / ARTIFACTS_DIR
    for art in (a for a in result.artifacts if a.shipped):
        if art.type == "file":
            assert art.size is not None and art.sha256 is not None
            items.append(UploadItem(root / art.name, art.name, art.size, art.sha256))
        else:
            items.extend(UploadItem(root / art.name / f.path, f"{art.name}/{f.path}", f.size, f.sha256) for f in art.files or [])
    return items


def ship(
    config: WorkerConfig,
    uploader: Uploader,
    target: str,
    workspace: Path,
    result: Result,
    report: Callable[..., None],
) -> bool:
    """Upload the log and artifacts and record their locations; True when the warehouse has them all.

    On failure the files are handed to ``pending/`` (retried in the
    background) and the result says ``upload-failed`` and where they wait.
    """
    task_id = result.task_id
    items = upload_items(config, workspace, result)
    began = time.monotonic()
    try:
        uploader.upload(task_id, items, report)
    except Exception as exc:  # noqa: BLE001 - never lose the files, whatever failed
        text = exc.message if isinstance(exc, TaskProblem) else f"upload failed: {type(exc).__name__}: {exc}"
        try:
            entry = pending.hand_off(
                config, task_id, target, items, error=text, workspace=workspace, local_copies=local_copies(workspace, config)
            )
            kept = f"the files are kept in {workspace} and in {entry.path}, and will be uploaded again in the background (farmhand pending list)"
        except OSError as keep_exc:
            kept = f"the files are kept in {workspace} (they could not be queued in {config.pending_dir}: {keep_exc})"
        result.conclude("exception", "upload-failed", f"{text}; {kept}")
        return False
    metrics.uploaded(sum(item.size for item in items), time.monotonic() - began)
    if result.log is not None:
        log_name = LOG_NAME if result.log.compression is None else compressed_name(LOG_NAME, result.log.compression)
        result.log.location = uploader.location(task_id, log_name)
    for art in (a for a in result.artifacts if a.present):
        art.location = uploader.location(task_id, art.name) + ("/" if art.type == "directory" else "")
    return True


def progress_recorder(record: dict[str, Any], say: Callable[..., None]) -> Callable[..., None]:
    """An uploader's report that also keeps the latest progress (bytes, total, rate) in the stage's record."""

    def report(message: str, **fields: Any) -> None:
        if "bytes_total" in fields:
            record["progress"] = {k: fields[k] for k in ("bytes_done", "bytes_total", "rate") if k in fields}
        say(message, **fields)

    return report
