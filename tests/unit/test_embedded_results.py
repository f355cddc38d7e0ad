"""The embedded result store: Celery's file backend, written whole, waking a waiting client."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from farmhand.dispatch import settings  # registers the backend's name with Celery


def _app(directory: Path) -> Celery:
    return Celery("t", set_as_current=False, broker="memory://", backend=f"{settings.EMBEDDED_RESULTS}+file://{directory}")


def test_states_and_the_result_are_stored_as_whole_files(tmp_path: Path) -> None:
    store = _app(tmp_path / "results").backend
    store.store_result("t1", {"stage": "run"}, "RUNNING")
    assert store.get_task_meta("t1")["status"] == "RUNNING"
    store.store_result("t1", {"state": "succeeded"}, "SUCCESS")
    assert store.get_task_meta("t1")["result"] == {"state": "succeeded"}
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["celery-task-meta-t1"], "no temporary file is left"


def test_a_success_is_never_overwritten_by_a_late_state(tmp_path: Path) -> None:
    store = _app(tmp_path / "results").backend
    store.store_result("t2", {"state": "succeeded"}, "SUCCESS")
    store.store_result("t2", {"stage": "upload"}, "UPLOADING")
    assert store.get_task_meta("t2")["status"] == "SUCCESS"


def test_a_waiting_client_is_woken_by_the_result(tmp_path: Path) -> None:
    worker_side, client_side = _app(tmp_path / "results").backend, _app(tmp_path / "results").backend
    threading.Timer(0.3, worker_side.store_result, args=("t3", {"state": "succeeded"}, "SUCCESS")).start()
    started = time.monotonic()
    meta = client_side.wait_for("t3", timeout=10)
    assert meta["status"] == "SUCCESS"
    assert time.monotonic() - started < 0.9, "woken, not found by the once-a-second safety poll"


def test_waiting_past_the_timeout_raises_celerys_timeout(tmp_path: Path) -> None:
    with pytest.raises(CeleryTimeout):
        _app(tmp_path / "results").backend.wait_for("never", timeout=0.2)
