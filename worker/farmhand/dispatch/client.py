"""Submit tasks to farmhand workers and follow them, from Python.

    from farmhand.client import Client    # or farmhand.dispatch.client
    client = Client()                      # the config's broker (embedded SQLite by default)
    handle = client.submit({"image": "busybox", "command": ["echo", "hi"]}, queue="small")
    handle.state                           # 'received', 'preparing', 'running', 'uploading', 'succeeded'...
    handle.result(timeout=60)              # the result document
    handle.cancel()

Tasks are checked against the contract here, before they reach a queue; the
worker checks them again, with its own policy.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from farmhand.config import WorkerConfig, load_config
from farmhand.dispatch import cancel_marks, settings
from farmhand.dispatch.app import make_app, shown_arguments
from farmhand.dispatch.journal import Journal
from farmhand.errors import ConfigError
from farmhand.result import never_ran
from farmhand.task import parse_task

#: Celery's states as farmhand names them; the result document's own state once finished.
STATE_NAMES = {
    "PENDING": "pending",  # unknown to the result store: queued, or never submitted
    "RECEIVED": "received",
    "PREPARING": "preparing",
    "RUNNING": "running",
    "UPLOADING": "uploading",
    "SUCCESS": "succeeded",
    "REVOKED": "cancelled",
}


class TaskHandle:
    """One submitted task: its state now, its result when it has one, and a way to cancel it."""

    def __init__(self, client: "Client", task_id: str) -> None:
        self.client = client
        self.task_id = task_id
        self._async = AsyncResult(task_id, app=client.app)

    @property
    def state(self) -> str:
        raw = self._async.state
        if raw == "FAILURE":
            return str(self._document_of(self._async.result).get("state", "failed"))
        return STATE_NAMES.get(raw, raw.lower())

    def done(self) -> bool:
        return self._async.ready()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The result document; waits up to ``timeout`` seconds (TimeoutError after)."""
        try:
            value = self._async.get(timeout=timeout, propagate=False, interval=0.05)
        except CeleryTimeout as exc:
            raise TimeoutError(f"task {self.task_id} has no result after {timeout}s (state: {self.state})") from exc
        if self._async.state == "REVOKED":
            return never_ran(self.task_id)
        return self._document_of(value)

    def cancel(self) -> str:
        return self.client.cancel(self.task_id)

    @staticmethod
    def _document_of(value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if isinstance(value, BaseException) and value.args and isinstance(value.args[0], dict):
            return value.args[0]  # TaskFailed(document), as the worker stored it
        return {"state": "exception", "reason": "internal-error", "message": f"unexpected result: {value!r}"}


class Client:
    """A connection to the broker and result store the config names."""

    def __init__(self, config: WorkerConfig | None = None, app: Celery | None = None) -> None:
        self.config = config or load_config()
        self.app = app or make_app(self.config)

    def submit(self, task: Any, queue: str = "default", task_id: str | None = None) -> TaskHandle:
        parsed = parse_task(task, task_id=task_id)  # InvalidDocument names each bad field
        # The task-sent event (Flower, `celery events`) shows argsrepr: secrets masked, never the document.
        shown = shown_arguments([task])
        self.app.send_task(settings.TASK_NAME, args=[task], task_id=parsed.task_id, queue=queue, argsrepr=shown, kwargsrepr="{}")
        return TaskHandle(self, parsed.task_id)

    def get(self, task_id: str) -> TaskHandle:
        if self.app.conf.result_backend.startswith("rpc://"):
            raise ConfigError(
                "broker.result_backend: rpc:// only answers the client that submitted a task; "
                "set RESULT_BACKEND to a store (redis://, db+...) to follow tasks from elsewhere"
            )
        return TaskHandle(self, task_id)

    def cancel(self, task_id: str) -> str:
        """Cancel wherever the task is: running (SIGTERM, SIGKILL after the grace) or still queued (never runs)."""
        if settings.is_embedded(self.config):
            # The embedded broker cannot broadcast; the worker on this machine reads its journal's requests.
            Journal(self.config.journal_path).request("cancel", task_id)
            return "requested"
        # First the mark a worker that is not up yet reads, then the broadcast to those that are.
        cancel_marks.mark(self.app, task_id)
        self.app.control.revoke(task_id)
        replies = self.app.control.broadcast("farmhand_cancel", arguments={"task_id": task_id}, reply=True, timeout=1.0)
        return "cancelling" if any(r.get("ok") == "cancelling" for reply in replies for r in reply.values()) else "revoked"

    def drain(self, node: str | None = None, grace: float | None = None) -> list[str]:
        """Ask worker nodes (all, or one by name) to drain; returns the nodes that answered."""
        if settings.is_embedded(self.config):
            Journal(self.config.journal_path).request("drain", None if grace is None else str(grace))
            return [settings.node_name(self.config)]
        replies = self.app.control.broadcast(
            "farmhand_drain", arguments={"grace": grace}, destination=[node] if node else None, reply=True, timeout=2.0
        )
        return [name for reply in replies for name in reply]


def submit(task: Any, queue: str = "default", config: WorkerConfig | None = None) -> TaskHandle:
    return Client(config).submit(task, queue=queue)


__all__ = ["Client", "TaskHandle", "submit"]
