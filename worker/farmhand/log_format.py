"""``--log-format json``: one JSON object a line on stderr, for journald and log shippers.

Every line has the same keys (``time``, ``level``, ``logger``, ``task_id``,
``stage``, ``event``, ``message``) so a shipper can index them without
parsing prose. ``task_id`` and ``stage`` come from what the line is about:
fields the caller gave (``extra=``), else the task the logging thread is
working on (``bind``), else the id in one of Celery's own task lines; a
line about no task has them null. Celery's own lines go through the same
handler: Celery adds no handler to a root logger that has one, and what it
redirects from stdout and stderr becomes log lines too; warnings are
captured as lines (``logging.captureWarnings``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

FORMATS = ("text", "json")

_bound = threading.local()


def bind(task_id: str | None, stage: str | None = None) -> None:
    """Lines this thread logs from now on are about ``task_id`` in ``stage`` (None: about no task)."""
    _bound.task_id, _bound.stage = task_id, stage


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON; a traceback goes in ``exception``, never across lines."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args if isinstance(record.args, dict) else {}
        task_id = getattr(record, "task_id", None) or args.get("id") or getattr(_bound, "task_id", None)
        stage = getattr(record, "stage", None) or (getattr(_bound, "stage", None) if task_id == getattr(_bound, "task_id", None) else None)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "task_id": task_id,
            "stage": stage,
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_json(level: int) -> None:
    """The root logger's one handler: JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # a warning (Celery's, running as root) is a log line too, not text on stderr

