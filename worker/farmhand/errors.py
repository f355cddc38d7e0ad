"""Failures that end a task, each carrying the state and reason the result reports.

A task problem is an outcome, not a crash: the engine turns every one of these
into a result document, so the dispatcher always hears back.
"""

from __future__ import annotations


class TaskProblem(Exception):
    """Ends the task with ``state``/``reason``; ``message`` says why, for people."""

    state = "exception"
    reason = "internal-error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidDocument(TaskProblem):
    """A task or config document broke its schema; ``errors`` name each bad field."""

    reason = "invalid-task"

    def __init__(self, what: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{what} is invalid:\n" + "\n".join(f"  - {e}" for e in errors))


class PolicyDenied(TaskProblem):
    """The task asks for more than this host's policy allows."""

    reason = "policy-denied"

    def __init__(self, violations: list[str]) -> None:
        self.errors = violations
        super().__init__("denied by this worker's policy:\n" + "\n".join(f"  - {v}" for v in violations))


class ImageUnavailable(TaskProblem):
    reason = "image-unavailable"


class StartFailed(TaskProblem):
    """Docker refused the task's container as configured (command, user, workdir...)."""

    state = "failed"
    reason = "start-failed"


class Cancelled(TaskProblem):
    """The driver asked the task to stop (a signal, a dispatcher's cancel)."""

    reason = "cancelled"


def cancel_message(reason: str, when: str) -> str:
    """What a stopped task's result says: a request to cancel, or a draining worker whose grace ran out."""
    if reason == "worker-shutdown":
        return f"the worker shut down {when} (its drain grace ran out); the partial log is kept"
    if reason == "prepare-timeout":
        return f"the task was stopped {when}: its prepare stage outlasted this worker's limits.max_prepare_time"
    return f"the task was cancelled {when}; its partial log is kept"


class ServiceUnready(TaskProblem):
    reason = "service-unready"


class UploadFailed(TaskProblem):
    reason = "upload-failed"


class ConfigError(Exception):
    """The worker's own configuration is unusable; the worker must not start."""
