"""What a task's run came to, and the verdict its result reports.

The run stage only observes (exit code, OOM flag, which clock stopped it);
deciding what that means for the task lives here, so every case can be
tested without a container.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from farmhand.errors import cancel_message
from farmhand.logpump import LogSummary
from farmhand.result import LogRecord, Result
from farmhand.task import Task


#: The exit code dockerd gives a container whose exit it saw happen but could not record before it went away.
LOST_EXIT_CODE = 255
ENGINE_LOST_STATUS = (
    "the Docker engine went away while the task ran and now reports exit code 255, which is also what it reports for "
    "a container whose real exit status it lost: whether the command succeeded is unknown (its log is kept)"
)


@dataclass
class RunOutcome:
    container_id: str
    exit_code: int | None
    oom_killed: bool
    stopped_for: str | None  # "max-run-time" | "idle-timeout" | "cancelled" | None
    log: LogSummary
    usage: dict[str, Any] = field(default_factory=dict)
    #: Times the Docker engine went away and came back while the container was watched (``engine_outage``).
    engine_outages: int = 0


def record_run(result: Result, task: Task, outcome: RunOutcome, cancel_reason: str = "cancelled") -> None:
    """Put the run's exit code, usage, log and verdict into ``result``.

    ``cancel_reason`` is the reason a cancelled run reports: ``cancelled``, or
    ``worker-shutdown`` when a draining worker ran out of grace.
    """
    code = outcome.exit_code
    result.exit_code = code
    result.usage = outcome.usage
    result.log = LogRecord(
        size=outcome.log.size,
        sha256=outcome.log.sha256,
        truncated=outcome.log.truncated,
        dropped_bytes=outcome.log.dropped_bytes,
    )
    if outcome.stopped_for == "cancelled":
        result.conclude("exception", cancel_reason, cancel_message(cancel_reason, "while it ran"))
    elif outcome.stopped_for == "max-run-time":
        result.conclude("failed", "max-run-time", f"stopped after max_run_time of {task.max_run_time}s")
    elif outcome.stopped_for == "idle-timeout":
        result.conclude("failed", "idle-timeout", f"stopped after {task.idle_timeout}s without output (idle_timeout)")
    elif outcome.engine_outages and code == LOST_EXIT_CODE and not outcome.oom_killed:
        result.conclude("exception", "docker-error", ENGINE_LOST_STATUS)
    elif outcome.oom_killed and code != 0:
        result.conclude("failed", "oom-killed", "the container ran out of memory and was killed (memory limit reached)")
    elif code == 0:
        result.conclude("succeeded", None)
        if outcome.oom_killed:
            result.warnings.append("run: a process of the task was killed for lack of memory, but the command exited 0")
    elif code in task.retry_on_exit_codes:
        result.conclude("exception", "intermittent", f"exit code {code} is listed in retry_on_exit_codes")
    else:
        result.conclude("failed", "nonzero-exit", f"the command exited with code {code}")
    result.warnings.extend(f"log: {w}" for w in outcome.log.warnings)
    if not outcome.log.complete:
        result.warnings.append("log: the output stream did not end cleanly; the log may be incomplete")
