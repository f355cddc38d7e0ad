"""A farmhand node: what `farmhand worker` keeps between Celery and the engine.

Celery delivers; the node journals, runs, reports. The rules it keeps:

- A task is written to the journal before its message is acknowledged and
  before its container exists (``accept``); from then on the broker no longer
  holds it, so no delivery timeout can run it twice, and a worker killed at
  any point carries it on at its next start (``recover``).
- A result is recorded in the journal before it is reported, and reported
  again until the report goes through.
- Slots: a node holds no task it cannot start. Every delivery passes
  ``admit`` before Celery sees it: it takes a free slot, or goes straight
  back to its queue for another node; a task resumed after a restart holds
  a slot too. While every slot is busy the node consumes nothing (and its
  prefetch window is its free slots), so no message waits unacknowledged
  behind a running task, for any broker's delivery timeout to take back.
- SIGTERM detaches: the process leaves, the containers keep running for the
  next start to re-adopt. ``drain`` stops taking tasks, waits, then cancels
  what is left with reason worker-shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import docker
from celery import Celery
from celery.worker import state as worker_state

from farmhand import log_format, metrics, pending
from farmhand.config import WorkerConfig
from farmhand.dispatch import cancel_marks, settings, wake
from farmhand.engine import Engine
from farmhand.dispatch.journal import Journal
from farmhand.devices import DevicePool
from farmhand.network_pool import NetworkPool
from farmhand.result import Result, never_ran
from farmhand.task import task_id_problem

log = logging.getLogger("farmhand.node")

#: Celery states a task passes through, as any Celery client or Flower sees them.
RECEIVED, PREPARING, RUNNING, UPLOADING = "RECEIVED", "PREPARING", "RUNNING", "UPLOADING"
STATE_OF_STAGE = {"prepare": PREPARING, "run": RUNNING, "upload": UPLOADING}
REPORT_RETRY_INTERVAL = 15.0
#: Events held before they are sent whatever the time (housekeeping sends them 4 times a second anyway).
EVENTS_HELD = 200
#: The cache scope of a task whose delivery names no queue: its own, shared with no queue's tasks.
UNROUTED_SCOPE = "unrouted"


class TaskFailed(Exception):
    """A task that did not succeed; its one argument is the result document, stored as Celery's FAILURE."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__(document)
        self.document = document

    def __str__(self) -> str:
        doc = self.document
        return f"{doc.get('state')}/{doc.get('reason')}: {doc.get('message')}"


def reply_context(request: Any) -> dict[str, Any]:
    """What a report needs of the delivery, kept in the journal so it can be made after a restart."""
    info = getattr(request, "delivery_info", None) or {}
    return {
        "reply_to": getattr(request, "reply_to", None),
        "correlation_id": getattr(request, "correlation_id", None),
        "queue": info.get("routing_key"),
    }


class StageReporter:
    """The engine's reporter: stages go to the journal, the result store and Celery's event stream."""

    def __init__(self, node: "Node", task_id: str, context: dict[str, Any]) -> None:
        self.node, self.task_id, self.context = node, task_id, context
        self._state: str | None = None

    def stage_started(self, task_id: str, stage: str) -> None:
        log_format.bind(task_id, stage)  # this thread's lines are about the task now (--log-format json)
        log.info("%s %s: started", task_id, stage, extra={"task_id": task_id, "stage": stage, "event": "stage-started"})
        self.node.journal.set_stage(task_id, stage)
        state = STATE_OF_STAGE.get(stage)
        if state and state != self._state:
            self._state = state
            self.node.store(task_id, state, {"stage": stage, "node": self.node.name}, self.context)
        self.node.send_event("task-stage", uuid=task_id, stage=stage, status="started")

    def stage_finished(self, task_id: str, stage: str, outcome: str, duration: float) -> None:
        log.info("%s %s: %s in %.2fs", task_id, stage, outcome, duration, extra={"task_id": task_id, "stage": stage, "event": "stage-finished"})
        self.node.send_event("task-stage", uuid=task_id, stage=stage, status="finished", outcome=outcome, duration=duration)

    def progress(self, task_id: str, stage: str, message: str, **fields: Any) -> None:
        log.info("%s %s: %s", task_id, stage, message, extra={"task_id": task_id, "stage": stage, "event": "progress"})


class Node:
    """One per worker process; the Celery task body and control commands reach it through ``current()``."""

    def __init__(self, app: Celery, config: WorkerConfig, client: docker.DockerClient) -> None:
        self.app, self.config, self.client = app, config, client
        self.name = settings.node_name(config)
        self.slots = config.node.slots
        self.journal = Journal(config.journal_path)
        self.draining = threading.Event()
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}
        self._claimed: set[str] = set()
        self._held: set[str] = set()  # the task ids holding a slot: admitted, resumed, running
        self._consumer: Any = None
        self._consuming: bool | None = None  # what was last asked of the consumer; None: not known
        # Redis brokers fetch only for an idle pool thread by themselves (worker_disable_prefetch).
        self._sets_prefetch = settings.transport_kind(settings.broker_url(config)) != "redis"
        self._events = bool(settings.celery_settings(config)["worker_send_task_events"])
        self._event_lock = threading.Lock()
        self._dispatcher: Any = None
        self._stop = threading.Event()
        self._retrier = pending.BackgroundRetrier(config)
        self.networks = NetworkPool(client, owner=self.name, keep=self.slots)
        # Disk hygiene (farmhand.gc): made by start_housekeeping; while None, the node takes tasks.
        self.disk: Any = None
        # Found once, at start: the loopback devices this host hands to tasks, one task each.
        self.devices = DevicePool.discover(config.loopback_video_label, config.device_lock_dir)
        self._wake_dir: Path | None = None
        if settings.is_embedded(config):
            from farmhand.dispatch.sqlite_transport import wake_directory

            self._wake_dir = wake_directory(settings.broker_url(config))

    # -- delivery -------------------------------------------------------------------
    def accept(self, task_id: str, document: Any, context: dict[str, Any]) -> bool:
        """Journal a delivered task (before its message is acknowledged); False for a second delivery, and
        for an id that is no task id (it would name directories): that one is refused unjournaled, and reported."""
        problem = task_id_problem(task_id)
        if problem is not None:
            result = Result(task_id=task_id)
            result.conclude("exception", "invalid-task", f"task is invalid:\n  - task.task_id: {problem}")
            result.finished_at = result.started_at
            self._report_safely(task_id, result.to_dict(), context)
            return False
        if not self.journal.accept(task_id, document, context):
            return False
        with self._lock:
            self._claimed.add(task_id)
        self.store(task_id, RECEIVED, {"node": self.name}, context)
        return True

    def claim(self, task_id: str) -> bool:
        """True once, for the delivery that journaled the task: only it may run the task."""
        with self._lock:
            if task_id in self._claimed:
                self._claimed.discard(task_id)
                return True
            return False

    def engine_for(self, task_id: str, context: dict[str, Any]) -> Engine:
        """An engine for one task; its caches are scoped by the queue it came from (a delivery that does not say: ``unrouted``)."""
        return Engine(
            self.config,
            self.client,
            StageReporter(self, task_id, context),
            self.networks,
            cache_scope=context.get("queue") or UNROUTED_SCOPE,
            devices=self.devices,
        )

    def execute(self, task_id: str, document: Any, context: dict[str, Any]) -> dict[str, Any]:
        engine = self.engine_for(task_id, context)
        with self._running(task_id, engine):
            if self.disk is not None:  # collect first when a threshold is crossed; under gc.min_free wait for space
                self.disk.before_task(lambda: self.journal.is_revoked(task_id))
            if self.is_revoked(task_id):  # cancelled between its journaling and now: it never starts
                return self.conclude(task_id, never_ran(task_id), context)
            result = engine.run(document, task_id=task_id).to_dict()
            return self.conclude(task_id, result, context)

    def duplicate(self, task_id: str) -> None:
        """A second delivery of a journaled task: never run again, and its result reported only if nobody has it yet.

        A broker redelivers a message whose acknowledgement a dropped
        connection lost; reporting the result again would give watchers a
        second terminal state.
        """
        entry = self.journal.get(task_id)
        log.warning("task %s was delivered again; it is already in the journal (%s), so it is not run again", task_id, entry.stage if entry else "?")
        if entry is not None and entry.result is not None and entry.reported_at is None and task_id not in self.running():
            self._report_safely(task_id, entry.result, entry.context)  # recorded by an earlier process, never heard

    def cancelled_before_start(self, task_id: str, context: dict[str, Any]) -> None:
        """A revoked task is discarded unrun; its result still says so, unless it is a late copy of one
        this node already journaled (whose own result stands)."""
        if self.journal.accept(task_id, None, context):
            self.conclude(task_id, never_ran(task_id), context)

    def is_revoked(self, task_id: str) -> bool:
        """Cancelled through this node (its journal), or while no worker was up to hear it (the result store's mark)."""
        if self.journal.is_revoked(task_id):
            return True
        if cancel_marks.is_marked(self.app, task_id):
            self.journal.revoke(task_id)  # kept here too: the mark expires with the results
            return True
        return False

    # -- results --------------------------------------------------------------------
    def conclude(self, task_id: str, result: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        """Record, then report: a crash between the two is healed by reporting again."""
        self.journal.record_result(task_id, result)
        metrics.task_finished(result.get("state", "exception"), result.get("reason"))
        self.flush_events()  # the task's last stage event, before its result
        self._report_safely(task_id, result, context)
        log.info("%s: %s%s", task_id, result.get("state"), f" ({result['reason']})" if result.get("reason") else "", extra={"task_id": task_id, "event": "task-concluded"})
        log_format.bind(None)
        return result

    def _report_safely(self, task_id: str, result: dict[str, Any], context: dict[str, Any]) -> None:
        try:
            if result["state"] == "succeeded":
                self.app.backend.store_result(task_id, result, "SUCCESS", request=_reply_to(context))
            else:
                self.app.backend.store_result(task_id, TaskFailed(result), "FAILURE", request=_reply_to(context))
        except Exception as exc:  # noqa: BLE001 - kept in the journal and reported again
            log.warning("the result of %s could not be reported yet (%s); it is kept and retried", task_id, exc)
            return
        self.journal.mark_reported(task_id)

    def store(self, task_id: str, state: str, meta: dict[str, Any], context: dict[str, Any]) -> None:
        """An intermediate state: advisory, so a failure to store it never stops the task."""
        try:
            self.app.backend.store_result(task_id, meta, state, request=_reply_to(context))
        except Exception as exc:  # noqa: BLE001
            log.warning("state %s of %s not stored: %s", state, task_id, exc)

    def send_event(self, event_type: str, **fields: Any) -> None:
        """Held, and sent with the others held at once by ``flush_events``: by housekeeping within a
        quarter of a second, and when a task concludes (its stage events before its result). One
        message then carries many events (a list, which Celery's receivers, `celery events` and
        Flower, read as the events one by one): a message per event was a large share of a trivial
        task's worker CPU (bench/README.md)."""
        if not self._events:
            return
        with self._event_lock:
            try:
                if self._dispatcher is None:
                    # One dispatcher on a connection of its own, kept: Celery's ``default_dispatcher``, made per event,
                    # cost more than all the rest of a trivial task's events.
                    # Not buffer_while_offline: a failed send raises here, so the dispatcher and its dead connection
                    # are dropped and the next event reconnects (Celery's default would keep both, and every event).
                    self._dispatcher = self.app.events.Dispatcher(
                        self.app.connection_for_write(), hostname=self.name, buffer_group={"task"}, buffer_limit=EVENTS_HELD,
                        buffer_while_offline=False,
                    )
                self._dispatcher.send(event_type, **fields)
            except Exception as exc:  # noqa: BLE001 - events are for watchers, never worth a task
                log.debug("event %s not sent: %s", event_type, exc)
                self._drop_dispatcher()

    def flush_events(self) -> None:
        """Send the events held by ``send_event`` now, as one message."""
        if not self._events:
            return
        with self._event_lock:
            if self._dispatcher is None:
                return
            try:
                self._dispatcher.flush(errors=False)
            except Exception as exc:  # noqa: BLE001 - events are for watchers, never worth a task
                log.debug("held events not sent: %s", exc)
                self._drop_dispatcher()

    def _drop_dispatcher(self) -> None:
        """After a failed send: the next event opens a fresh connection (the broker may have restarted)."""
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            try:
                dispatcher.connection.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass

    # -- slots: a node holds no task it cannot start ----------------------------------
    def admit(self, task_id: str) -> str:
        """A delivery's fate, decided before Celery reserves it: ``run`` (it takes a free slot), ``full``
        (back to its queue, for another node), or ``copy`` (a second delivery of a task this node holds,
        acknowledged and dropped: the first delivery runs and reports it)."""
        with self._lock:
            if task_id in self._held:
                return "copy"
            if len(self._held) >= self.slots or self.draining.is_set() or not self.takes_tasks():
                return "full"
            self._held.add(task_id)
        self._follow_slots()
        return "run"

    def _hold(self, task_id: str) -> None:
        """A resumed task holds a slot whatever the count: its container runs already (CONCURRENCY may have shrunk)."""
        with self._lock:
            self._held.add(task_id)
        self._follow_slots()

    def release(self, task_id: str) -> None:
        """The task's slot is free again (safe to repeat: each path that ends a delivery calls it)."""
        with self._lock:
            if task_id not in self._held:
                return
            self._held.discard(task_id)
        self._follow_slots()
        if self._wake_dir is not None:
            # The consumer sleeps until a publish wakes it; a free slot must wake it too, to fetch what waits.
            wake.notify(self._wake_dir, "consumer")

    def attach_consumer(self, consumer: Any) -> None:
        """The consumer (re)started, consuming every selected queue: bring it in line with the slots."""
        with self._lock:
            self._consumer, self._consuming = consumer, None
        self._follow_slots()

    def detach_consumer(self) -> None:
        with self._lock:
            self._consumer = None

    def _follow_slots(self) -> None:
        with self._lock:
            consumer = self._consumer
        if consumer is not None:
            consumer.call_soon(self._apply_slots, consumer)

    def _apply_slots(self, consumer: Any) -> None:
        """In the consumer's thread: a prefetch window of the free slots, and consuming only while one is free."""
        with self._lock:
            if consumer is not self._consumer:
                return
            free = self.slots - len(self._held)
            want = free > 0 and not self.draining.is_set() and self.takes_tasks()
            changed, self._consuming = want != self._consuming, want
        if self._sets_prefetch and consumer.qos is not None:
            delta = max(1, free) - consumer.qos.value
            if delta > 0:
                consumer.qos.increment_eventually(delta)
            elif delta < 0:
                consumer.qos.decrement_eventually(-delta)
        if changed:
            # The task consumer's own cancel and consume: every queue it serves stops, or starts again as it
            # was, still declared and bound. (Celery's cancel_task_queue/add_task_queue deselect the queue, then
            # copy, bind and declare it again, broker round trips included: a large share of a trivial task's
            # worker CPU when each freed slot takes one more task from a waiting queue.)
            tasks = getattr(consumer, "task_consumer", None)
            if tasks is None:
                return
            if want:
                tasks.consume()
            else:
                tasks.cancel()

    def takes_tasks(self) -> bool:
        """False while the disk is under gc.min_free after collecting (``disk.reason`` says why)."""
        return self.disk is None or bool(self.disk.accepting)

    def _disk_changed(self, accepting: bool, reason: str) -> None:
        """The node stops consuming while the disk is short, and consumes again (and fetches what waits) once space is back."""
        self._follow_slots()
        if accepting and self._wake_dir is not None:
            wake.notify(self._wake_dir, "consumer")

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._engines)

    def busy_slots(self) -> int:
        """Slots held by a task: admitted and waiting to start, running, or resumed."""
        with self._lock:
            return len(self._held)

    @contextmanager
    def _running(self, task_id: str, engine: Engine) -> Iterator[None]:
        with self._lock:
            self._engines[task_id] = engine
        try:
            yield
        finally:
            with self._lock:
                self._engines.pop(task_id, None)
            self.release(task_id)

    # -- a restart ------------------------------------------------------------------
    def recover(self) -> int:
        """Carry on every task an earlier process of this node accepted and did not report. Returns how many."""
        if self._wake_dir is not None:
            from farmhand.dispatch.sqlite_transport import restore_unacknowledged

            given_back = restore_unacknowledged(settings.broker_url(self.config))
            if given_back:
                log.info("%d task message(s) taken by an earlier process and never acknowledged are queued again", given_back)
        if self.config.allow_loopback_devices:
            log.info("loopback devices: %s", "; ".join(self.devices.describe()) or "none found on this host")
        swept = self.networks.sweep()
        if swept:
            log.info("removed %d idle task network(s) an earlier process of this node left", swept)
        entries = self.journal.unreported()
        for entry in entries:
            if entry.result is not None:
                log.info("reporting the result of %s, recorded before the last stop", entry.task_id)
                self._report_safely(entry.task_id, entry.result, entry.context)
                continue
            log.info("resuming task %s (it was in its %s stage when the worker stopped)", entry.task_id, entry.stage)
            engine = self.engine_for(entry.task_id, entry.context)
            with self._lock:
                self._engines[entry.task_id] = engine
            self._hold(entry.task_id)
            threading.Thread(target=self._resume, args=(engine, entry), name=f"resume:{entry.task_id}", daemon=True).start()
        return len(entries)

    def _resume(self, engine: Engine, entry: Any) -> None:
        with self._running(entry.task_id, engine):
            try:
                result = engine.resume(entry.document, task_id=entry.task_id).to_dict()
            except Exception as exc:  # noqa: BLE001 - the task must still end in a result
                log.exception("resuming %s failed", entry.task_id)
                res = Result(task_id=entry.task_id)
                res.conclude("exception", "internal-error", f"the task could not be resumed after a worker restart: {exc}")
                result = res.to_dict()
            self.conclude(entry.task_id, result, entry.context)

    # -- control ----------------------------------------------------------------------
    def cancel(self, task_id: str, reason: str = "cancelled") -> str:
        """Stop a running task, or make sure a queued one is discarded unrun when it arrives."""
        with self._lock:
            engine = self._engines.get(task_id)
        self.journal.revoke(task_id)  # a later delivery, whatever the delay and restarts, never runs it
        if engine is not None:
            engine.cancel(reason)
            return "cancelling"
        worker_state.revoked.add(task_id)
        return "revoked"

    def drain(self, grace: float | None = None) -> None:
        """Stop taking tasks; after ``grace`` seconds cancel what still runs (worker-shutdown); then exit."""
        if self.draining.is_set():
            return
        self.draining.set()
        grace = self.config.node.drain_grace if grace is None else grace
        log.warning("draining: no new tasks; waiting up to %ss for %d running task(s)", grace, len(self.running()))
        self._follow_slots()  # consume nothing more
        threading.Thread(target=self._drain, args=(grace,), name="drain", daemon=True).start()

    def _drain(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.running()
        for task_id in left:
            self.cancel(task_id, "worker-shutdown")
        while self.running():
            time.sleep(0.2)
        log.warning("drained (%d task(s) cancelled at the end of the grace); stopping", len(left))
        self.close_networks()
        worker_state.should_stop = 0  # Celery's warm shutdown; nothing is left to wait for

    def detach(self) -> None:
        """SIGTERM: leave now; running containers stay for the next start to re-adopt (see ``recover``)."""
        left = self.running()
        log.warning("stopping without waiting: %d running task(s) left to the next start: %s", len(left), ", ".join(left) or "none")
        self.close_networks()
        logging.shutdown()
        os._exit(0)

    def close_networks(self) -> None:
        """Idle task networks go with the worker; those of running tasks stay with their containers."""
        for problem in self.networks.close():
            log.warning("idle task network not removed: %s", problem)

    # -- housekeeping -------------------------------------------------------------------
    def start_housekeeping(self) -> None:
        """Local requests (cancel, drain) from commands on this host; results whose report failed; pending uploads;
        garbage collection."""
        from farmhand.gc_pass import Collector, DiskGuard

        self._retrier.start()
        collector = Collector(self.config, self.client, owners=frozenset({self.name, "farmhand"}), live=frozenset({self.name}))
        self.disk = DiskGuard(collector, on_change=self._disk_changed).start()
        # Requests made while no worker ran (`farmhand cancel` on the embedded broker) are handled before the
        # consumer starts: left to the thread's first pass, a cancelled task waiting in the queue ran first.
        self._take_local_requests()
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()

    def stop_housekeeping(self) -> None:
        self._stop.set()
        if self.disk is not None:
            self.disk.stop()
        self._retrier.stop()

    def _housekeeping(self) -> None:
        last_retry = time.monotonic()
        while not self._stop.wait(0.25):
            self.flush_events()
            try:
                self._take_local_requests()
                if time.monotonic() - last_retry >= REPORT_RETRY_INTERVAL:
                    last_retry = time.monotonic()
                    running = set(self.running())
                    for entry in self.journal.unreported():
                        if entry.result is not None and entry.task_id not in running:
                            self._report_safely(entry.task_id, entry.result, entry.context)
            except Exception:  # noqa: BLE001 - housekeeping must outlive a hiccup
                log.exception("housekeeping")

    def _take_local_requests(self) -> None:
        for command, argument in self.journal.take_requests():
            if command == "cancel" and argument:
                log.info("cancel %s: %s", argument, self.cancel(argument))
            elif command == "drain":
                self.drain(float(argument) if argument else None)


def _reply_to(context: dict[str, Any]) -> SimpleNamespace:
    """The bits of a Celery request a result backend reads (rpc:// needs the reply queue)."""
    return SimpleNamespace(
        reply_to=context.get("reply_to"),
        correlation_id=context.get("correlation_id"),
        ignore_result=False,
        delivery_info={},
        chord=None,
        group=None,
        parent_id=None,
        root_id=None,
    )


_current: Node | None = None


def current() -> Node:
    if _current is None:
        raise RuntimeError("no farmhand node in this process (start it with `farmhand worker`)")
    return _current


def set_current(node: Node | None) -> None:
    global _current
    _current = node
