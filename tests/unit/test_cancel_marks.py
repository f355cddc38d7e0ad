"""Cancel marks in the result store, read back by a worker that was not running when the client cancelled."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery

from farmhand.dispatch import cancel_marks
from farmhand.dispatch.embedded_results import ResultStore


@pytest.fixture
def embedded(tmp_path: Path) -> SimpleNamespace:
    app = Celery("marks", set_as_current=False)
    return SimpleNamespace(backend=ResultStore(url=f"file://{tmp_path}", app=app))


def test_a_mark_left_in_the_embedded_store_is_read_back(embedded: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    # The embedded store (the default one) reads bytes keys only: a str key failed every read, so a cancel
    # made while no worker ran was logged as unreadable and the task ran anyway.
    assert cancel_marks.mark(embedded, "task-1") is True
    assert cancel_marks.is_marked(embedded, "task-1") is True
    assert cancel_marks.is_marked(embedded, "task-2") is False
    assert "cannot read cancellations" not in caplog.text


def test_a_task_id_that_could_name_another_file_is_never_a_key(embedded: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="task_id"):
        cancel_marks.mark(embedded, "../results/x")
    assert cancel_marks.is_marked(embedded, "../results/x") is False


def test_a_store_that_keeps_no_keys_cannot_keep_a_mark() -> None:
    rpc = SimpleNamespace(backend=object())
    assert cancel_marks.can_keep(rpc) is False and cancel_marks.mark(rpc, "task-1") is False
    assert cancel_marks.is_marked(rpc, "task-1") is False
