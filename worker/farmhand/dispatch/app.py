"""farmhand as a Celery app: the one task (``farmhand.run_task``), its request class, control commands, and the worker.

Any Celery client can dispatch work: ``app.send_task("farmhand.run_task",
args=[task_document], queue="default")``; the Celery task id is the farmhand
task id. The engine underneath knows nothing of Celery.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state as worker_state
from celery.worker.control import control_command
from celery.worker.request import Request

from farmhand.config import WorkerConfig
from farmhand.dispatch import settings
from farmhand.dispatch.node import Node, TaskFailed, current, reply_context

log = logging.getLogger("farmhand.dispatch")


class JournalingRequest(Request):
    """Journals a task when a slot starts it, and only then acknowledges its message."""

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        node = current()
        if self.revoked():  # cancelled while it waited for a slot: reported as such, never run
            super().on_accepted(pid, time_accepted)
            return
        try:
            document = self.args[0] if self.args else None
            node.accept(self.id, document, reply_context(self))
        except Exception:  # noqa: BLE001 - not journaled: give it back to the broker, never run it unjournaled
            log.exception("task %s could not be journaled; it goes back to its queue", self.id)
            self.reject(requeue=True)
            return
        super().on_accepted(pid, time_accepted)

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        current().cancelled_before_start(self.id, reply_context(self))
        super()._announce_revoked(reason, terminated, signum, expired)


class NodeStep(bootsteps.StartStopStep):
    """Hands the node the consumer each time it (re)connects, for the prefetch window."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        current().attach_consumer(c)

    def stop(self, c: Any) -> None:
        current().detach_consumer()


@control_command(args=[("task_id", str)], signature="<task_id>")
def farmhand_cancel(state: Any, task_id: str, **kwargs: Any) -> dict[str, str]:
    """Cancel a task: SIGTERM to its container, SIGKILL after the grace; a queued one is discarded unrun."""
    return {"ok": current().cancel(task_id)}


@control_command(args=[("grace", float)], signature="[grace]")
def farmhand_drain(state: Any, grace: float | None = None, **kwargs: Any) -> dict[str, str]:
    """Stop taking tasks, wait up to ``grace`` seconds, cancel what remains (worker-shutdown), stop."""
    current().drain(grace)
    return {"ok": "draining"}


def make_app(config: WorkerConfig) -> Celery:
    app = Celery("farmhand", set_as_current=False)
    app.conf.update(settings.celery_settings(config))
    app.conf.result_backend_always_retry = True

    @app.task(
        name=settings.TASK_NAME,
        bind=True,
        Request=JournalingRequest,
        ignore_result=True,  # the node stores every state and the result itself, journal first
        acks_late=False,
        throws=(TaskFailed,),
        typing=False,
    )
    def run_task(self: Any, task: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        node = current()
        task_id = self.request.id
        if not node.claim(task_id):
            if task_id not in worker_state.revoked:
                node.duplicate(task_id)
            return None
        result = node.execute(task_id, task, reply_context(self.request))
        if result["state"] != "succeeded":
            raise TaskFailed(result)
        return result

    app.steps["consumer"].add(NodeStep)
    return app


def run_worker(config: WorkerConfig, node: Node, loglevel: str = "INFO") -> int:
    """Serve the configured queues until drained (exit 0) or detached by SIGTERM (exit 0, tasks left running)."""
    app = node.app
    base = app.Worker

    class FarmhandWorker(base):  # type: ignore[misc, valid-type]
        def install_platform_tweaks(self, worker: Any) -> None:
            super().install_platform_tweaks(worker)
            signal.signal(signal.SIGTERM, lambda *_: node.detach())
            signal.signal(signal.SIGINT, lambda *_: node.detach())
            signal.signal(signal.SIGQUIT, lambda *_: node.drain())

    worker = FarmhandWorker(
        hostname=node.name,
        pool_cls="threads",
        concurrency=node.slots,
        queues=list(config.node.queues),
        loglevel=loglevel,
        state_db=str(config.working_dir / "worker-state"),
        without_gossip=True,
        without_mingle=True,
        quiet=True,
    )
    worker.start()
    return int(worker.exitcode or 0)
