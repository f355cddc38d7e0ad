"""farmhand as a Celery app: the one task (``farmhand.run_task``), its request class, control commands, and the worker.

Any Celery client can dispatch work: ``app.send_task("farmhand.run_task",
args=[task_document], queue="default")``; the Celery task id is the farmhand
task id. The engine underneath knows nothing of Celery.
"""

from __future__ import annotations

import json
import logging
import signal
from typing import Any

from celery import Celery, bootsteps
from celery.exceptions import Ignore
from celery.worker import state as worker_state
from celery.worker.control import Panel, control_command, inspect_command, ok
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy

from farmhand import sd_notify
from farmhand.config import WorkerConfig, load_config
from farmhand.dispatch import settings
from farmhand.dispatch.node import Node, TaskFailed, current, reply_context
from farmhand.validation import mask_secrets, secrets_of

log = logging.getLogger("farmhand.dispatch")


#: How much of a task document Celery's surfaces (events, ``inspect``, Flower) may show.
SHOWN_CHARS = 2000


def shown_arguments(args: Any) -> str:
    """A task's arguments as Celery may show them (task-sent and task-received events, ``inspect``,
    Flower): every secret value masked (all of env when secret_env cannot be read), bounded."""
    try:
        document = args[0] if isinstance(args, (list, tuple)) and args else None
        text = json.dumps([mask_secrets(document, secrets_of(document).values)], default=str)
    except Exception:  # noqa: BLE001 - whatever the document, never the document itself
        return "[<a task document that cannot be shown>]"
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} chars)"


def slot_gate(task: Any, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy behind the node's slots (``Node.admit``): a delivery the node has no
    free slot for goes straight back to its queue, before Celery reserves it, so a full node holds
    nothing another node could start; a second delivery of a task the node holds is dropped."""
    handle = default_strategy(task, app, consumer, **kwargs)
    errors = consumer.connection_errors

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        headers = message.headers or {}
        task_id = headers.get("id") or (body or message.payload or {}).get("id")  # protocol 2, else 1
        verdict = current().admit(str(task_id))
        if verdict == "full":
            return reject(log, errors, True)
        if verdict == "copy":
            log.warning("task %s was delivered again while this node holds it; the copy is dropped", task_id)
            return ack(log, errors)
        try:
            # Whatever the sender put there: events and inspect show these, never the arguments themselves.
            payload = message.decode() if body is None else body
            headers["argsrepr"], headers["kwargsrepr"] = shown_arguments(payload[0] if isinstance(payload, (list, tuple)) else None), "{}"
            return handle(message, body, ack, reject, callbacks, **kw)
        except BaseException:
            current().release(str(task_id))
            raise

    return task_message_handler


class JournalingRequest(Request):
    """Journals a task when a slot starts it, and only then acknowledges its message."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        """What ``inspect active/reserved/query_task`` return: the shown arguments, never the document (``safe`` or not)."""
        return dict(super().info(safe=True))

    def revoked(self) -> bool:
        """Celery's revoked set, and the node's journal, which keeps cancellations for good."""
        if not self._already_revoked and self.id not in worker_state.revoked and current().is_revoked(self.id):
            worker_state.revoked.add(self.id)
        return bool(super().revoked())

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
            node.release(self.id)
            return
        super().on_accepted(pid, time_accepted)

    def terminate(self, pool: Any, signal: Any = None) -> None:
        """``celery control revoke --terminate``: the cancellation ``farmhand cancel`` makes (SIGTERM to the
        container, SIGKILL after the grace, partial log kept, one result), never a signal to the pool."""
        log.info("cancel %s (revoke --terminate): %s", self.id, current().cancel(self.id))

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        node = current()
        node.cancelled_before_start(self.id, reply_context(self))
        super()._announce_revoked(reason, terminated, signum, expired)
        node.release(self.id)


class NodeStep(bootsteps.StartStopStep):
    """Hands the node the consumer each time it (re)connects, for the prefetch window."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        current().attach_consumer(c)
        if _watchdog is not None:
            _watchdog.schedule = c.call_soon  # fed from the consumer's loop: a hung loop goes unfed

    def stop(self, c: Any) -> None:
        current().detach_consumer()
        if _watchdog is not None:
            _watchdog.schedule = None


#: systemd's watchdog, fed while `farmhand worker` runs under a unit with WatchdogSec=.
_watchdog: sd_notify.Watchdog | None = None
_celery_revoke = Panel.data["revoke"]
_celery_active = Panel.data["active"]


@inspect_command(name="active", alias="dump_active")
def active(state: Any, safe: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    """Celery's active list, and the tasks this process resumed after a restart (no Celery request of
    their own), in the same shape: `celery inspect active` and Flower see every task the node runs."""
    listed: list[dict[str, Any]] = list(_celery_active(state, safe=safe, **kwargs))
    node, seen = current(), {task["id"] for task in listed}
    for task_id in node.running():
        entry = None if task_id in seen or task_id in worker_state.requests else node.journal.get(task_id)
        if entry is not None:
            listed.append({
                "id": task_id, "name": settings.TASK_NAME, "type": settings.TASK_NAME, "hostname": node.name,
                "args": shown_arguments([entry.document]), "kwargs": "{}", "time_start": entry.accepted_at,
                "acknowledged": True, "delivery_info": {"routing_key": entry.context.get("queue"), "redelivered": False},
                "worker_pid": None, "resumed": True,
            })
    return listed


@control_command(name="revoke", variadic="task_id", signature="[id1 [id2 [... [idN]]]]")
def revoke(state: Any, task_id: Any, terminate: bool = False, signal: str | None = None, **kwargs: Any) -> Any:
    """Celery's revoke; ``--terminate`` also cancels a task this process resumed after a restart, which
    has no Celery request of its own to terminate."""
    reply = _celery_revoke(state, task_id, terminate=terminate, signal=signal, **kwargs)
    if not terminate:
        return reply
    node = current()
    ids = [task_id] if isinstance(task_id, str) else list(task_id or [])
    adopted = [t for t in ids if t not in worker_state.requests and t in node.running()]
    for t in adopted:
        log.info("cancel %s (revoke --terminate): %s", t, node.cancel(t))
    return ok("terminate: {}".format(", ".join(adopted))) if adopted and "unknown" in str(reply) else reply


@control_command(name="terminate", variadic="task_id", args=[("signal", str)], signature="<signal> [id1 [id2 [... [idN]]]]")
def terminate(state: Any, signal: str, task_id: Any, **kwargs: Any) -> Any:
    """`celery control terminate SIGNAL ID`: revoke --terminate (whatever the signal: a task is cancelled, never signalled)."""
    return revoke(state, task_id, terminate=True, signal=signal)


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
        Strategy="farmhand.dispatch.app:slot_gate",  # by name: a function as class attribute would be bound
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
            node.release(task_id)
            # Acknowledged with no state and no task-succeeded event: the task's one result is its first run's.
            raise Ignore()
        result = node.execute(task_id, task, reply_context(self.request))
        if result["state"] != "succeeded":
            raise TaskFailed(result)
        return result

    app.steps["consumer"].add(NodeStep)
    return app


def run_worker(config: WorkerConfig, node: Node, loglevel: str = "INFO") -> int:
    """Serve the configured queues until drained (exit 0) or detached by SIGTERM (exit 0, tasks left running)."""
    global _watchdog
    app = node.app
    base = app.Worker
    interval = sd_notify.watchdog_interval()
    if interval is not None:
        _watchdog = sd_notify.Watchdog(interval).start()

    class FarmhandWorker(base):  # type: ignore[misc, valid-type]
        def install_platform_tweaks(self, worker: Any) -> None:
            super().install_platform_tweaks(worker)
            signal.signal(signal.SIGTERM, lambda *_: (sd_notify.notify("STOPPING=1"), node.detach()))
            signal.signal(signal.SIGINT, lambda *_: node.detach())
            signal.signal(signal.SIGQUIT, lambda *_: (sd_notify.notify("STOPPING=1", "STATUS=draining"), node.drain()))

        def on_consumer_ready(self, consumer: Any) -> None:
            super().on_consumer_ready(consumer)
            sd_notify.notify("READY=1", f"STATUS=consuming {', '.join(config.node.queues)} with {node.slots} slot(s)")

    worker = FarmhandWorker(
        hostname=node.name,
        pool_cls="threads",
        concurrency=node.slots,
        queues=list(config.node.queues),
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
        quiet=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


def __getattr__(name: str) -> Any:
    """``celery -A farmhand.dispatch.app inspect active`` (or control, events, flower): the app of this
    host's config ($FARMHAND_CONFIG and the environment, as `farmhand worker` reads them)."""
    if name == "app":
        global app
        app = make_app(load_config())
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
