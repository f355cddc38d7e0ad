"""Cancellations kept in the result store, for the worker that is not running yet.

``farmhand cancel`` broadcasts to the workers that are up; a broadcast made
while none is (a host rebooting, every node drained) reaches nobody, and the
task would run when a worker comes back. So the client also leaves a mark in
the result store, which every worker reads before it starts a task. The mark
lives as long as results do (``result_expires``); a result store that is no
key-value store (``rpc://``) cannot hold one, and there a cancel reaches only
the workers that are up.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.backends.base import BaseKeyValueStoreBackend

from farmhand.task import task_id_problem

log = logging.getLogger("farmhand.dispatch")

PREFIX = "farmhand-cancel-"


def _store(app: Any) -> BaseKeyValueStoreBackend | None:
    backend = app.backend
    return backend if isinstance(backend, BaseKeyValueStoreBackend) else None


def _key(store: BaseKeyValueStoreBackend, task_id: str) -> Any:
    """The mark's key in the store's own key type (``key_t``): bytes for the embedded store, whose reads take
    nothing else, str for Redis. The key names a file in the embedded store: an id that is no task id never becomes one."""
    problem = task_id_problem(task_id)
    if problem is not None:
        raise ValueError(f"task_id: {problem}")
    return store.key_t(PREFIX + task_id)


def can_keep(app: Any) -> bool:
    return _store(app) is not None


def mark(app: Any, task_id: str) -> bool:
    """Leave the mark; False where the result store cannot keep one."""
    store = _store(app)
    if store is None:
        return False
    store.set(_key(store, task_id), b"1")
    return True


def is_marked(app: Any, task_id: str) -> bool:
    """Whether a client cancelled ``task_id``; a store that cannot be read counts as "no" and says so,
    since the broadcast and the journal still stand for the workers that were up."""
    store = _store(app)
    if store is None or task_id_problem(task_id) is not None:
        return False
    try:
        return store.get(_key(store, task_id)) is not None
    except Exception as exc:  # noqa: BLE001 - a result store outage must not stop tasks from running
        log.warning("cannot read cancellations for %s from the result store: %s", task_id, exc)
        return False
