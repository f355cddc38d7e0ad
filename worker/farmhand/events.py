"""How the engine tells its driver what is happening, without knowing who listens.

The CLI prints these; a dispatcher turns them into state updates. Reporters
must be cheap and must not raise: a broken display never breaks a task.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

from farmhand import metrics
from farmhand.result import Result

log = logging.getLogger("farmhand.engine")


class Reporter(Protocol):
    def stage_started(self, task_id: str, stage: str) -> None: ...

    def stage_finished(self, task_id: str, stage: str, outcome: str, duration: float) -> None: ...

    def progress(self, task_id: str, stage: str, message: str, **fields: Any) -> None: ...


class NullReporter:
    """Listens to nothing; the default when the driver does not care."""

    def stage_started(self, task_id: str, stage: str) -> None:
        pass

    def stage_finished(self, task_id: str, stage: str, outcome: str, duration: float) -> None:
        pass

    def progress(self, task_id: str, stage: str, message: str, **fields: Any) -> None:
        pass


class StageEvents:
    """The engine's side of a reporter: stages timed in the result and announced; a reporter that raises is logged, never fatal."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def say(self, task_id: str, stage: str, message: str, **fields: Any) -> None:
        self._notify("progress", task_id, stage, message, **fields)

    @contextmanager
    def stage(self, result: Result, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage in the result (its record says ok or error, even when it raises) and tell the reporter."""
        self._notify("stage_started", result.task_id, name)
        try:
            with result.stage(name) as rec:
                yield rec
        finally:
            rec = result.stages[name]
            metrics.stage_finished(name, rec["outcome"], rec["duration"])
            self._notify("stage_finished", result.task_id, name, rec["outcome"], rec["duration"])

    def _notify(self, method: str, *args: Any, **fields: Any) -> None:
        try:
            getattr(self.reporter, method)(*args, **fields)
        except Exception:  # noqa: BLE001 - a broken display must not break a task
            log.exception("reporter failed")
