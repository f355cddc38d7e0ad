"""Stage events are held and sent together; a send that fails drops the dispatcher, so the next event reconnects."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from farmhand.config import load_config
from farmhand.dispatch.app import make_app
from farmhand.dispatch.node import Node


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_held_events_that_cannot_be_sent_drop_the_dispatcher(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), "worker": {"node_name": "n1", "concurrency": 1}}))
    config = load_config(path, environ={"BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed_port()}//"})
    node = Node(make_app(config), config, client=None)  # type: ignore[arg-type] - nothing here reaches Docker
    node.app.conf.broker_transport_options = {"max_retries": 1, "interval_start": 0, "interval_step": 0}  # fail fast
    node.send_event("task-stage", uuid="t1", stage="run", status="started")
    held = node._dispatcher
    assert held is not None and [e["stage"] for e in held._group_buffer["task"]] == ["run"], "held, not sent"
    node.flush_events()  # the broker is not there: the send fails
    assert node._dispatcher is None, "a dispatcher whose send failed is dropped (with its connection), never kept buffering"
    held.connection.close()
