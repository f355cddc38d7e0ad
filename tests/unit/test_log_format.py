"""The JSON log format: one object a line, the same keys on every line, the task a line is about."""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import Iterator

import pytest

from farmhand import log_format

KEYS = {"time", "level", "logger", "task_id", "stage", "event", "message"}


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_format.JsonFormatter())
    logger = logging.getLogger("farmhand.test-json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    log_format.bind(None)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_has_the_same_keys_and_a_utc_time(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.warning("plain %s", "words")
    (line,) = lines(stream)
    assert KEYS <= set(line)
    assert (line["level"], line["message"], line["task_id"], line["stage"], line["event"]) == ("warning", "plain words", None, None, "log")
    assert str(line["time"]).endswith("Z") and "T" in str(line["time"])


def test_fields_given_by_the_caller_win(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    log_format.bind("other", "prepare")
    logger.info("x", extra={"task_id": "t1", "stage": "run", "event": "stage-started"})
    assert {k: lines(stream)[0][k] for k in ("task_id", "stage", "event")} == {"task_id": "t1", "stage": "run", "event": "stage-started"}


def test_a_thread_bound_to_a_task_labels_its_lines_and_no_other_threads(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    log_format.bind("t2", "upload")
    logger.info("in the task's thread")
    other = threading.Thread(target=logger.info, args=("elsewhere",))
    other.start()
    other.join()
    log_format.bind(None)
    logger.info("after the task")
    got = [(line["message"], line["task_id"], line["stage"]) for line in lines(stream)]
    assert got == [("in the task's thread", "t2", "upload"), ("elsewhere", None, None), ("after the task", None, None)]


def test_celery_task_lines_carry_their_task_id(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("Task %(name)s[%(id)s] received", {"name": "farmhand.run_task", "id": "abc123"})
    line = lines(stream)[0]
    assert (line["task_id"], line["message"]) == ("abc123", "Task farmhand.run_task[abc123] received")


def test_a_traceback_stays_on_its_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("failed")
    assert len(stream.getvalue().splitlines()) == 1
    line = lines(stream)[0]
    assert line["level"] == "error" and "RuntimeError: boom" in str(line["exception"])


def test_a_bad_log_format_in_the_environment_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from farmhand import cli

    monkeypatch.setenv("LOG_FORMAT", "yaml")
    with pytest.raises(SystemExit) as exited:
        cli.main(["worker"])
    assert exited.value.code == 2
    assert "LOG_FORMAT: 'yaml' is not a log format (text or json)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["worker", "--log-format", "yaml"])
    assert "--log-format" in capsys.readouterr().err
