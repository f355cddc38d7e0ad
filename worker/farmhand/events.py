"""How the engine tells its driver what is happening, without knowing who listens.

The CLI prints these; a dispatcher turns them into state updates. Reporters
must be cheap and must not raise: a broken display never breaks a task.
"""

from __future__ import annotations

from typing import Any, Protocol


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
