"""A node short of disk stops consuming, as when its slots are full, and consumes again once space is back."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from farmhand.config import load_config
from farmhand.dispatch.app import make_app
from farmhand.dispatch.node import Node


class FakeConsumer:
    """What ``Node._apply_slots`` drives: queues consumed or not (Celery's consumer, as the node sees it)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.qos = None
        self.task_consumer = self  # kombu's Consumer of the task queues: cancel() and consume() every one

    def call_soon(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def consume(self) -> None:
        self.calls.append("consume")

    def cancel(self) -> None:
        self.calls.append("cancel")


def test_a_node_short_of_disk_consumes_nothing_and_refuses_deliveries_until_space_is_back(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), "worker": {"node_name": "n1", "concurrency": 2, "queues": ["small"]}}))
    config = load_config(path, environ={})
    node = Node(make_app(config), config, client=None)  # type: ignore[arg-type] - nothing here reaches Docker
    node.disk = SimpleNamespace(accepting=False)
    consumer = FakeConsumer()
    node.attach_consumer(consumer)
    assert consumer.calls == ["cancel"]
    assert node.admit("t1") == "full"  # a delivery that raced the cancel goes back to its queue
    node.disk.accepting = True
    node._disk_changed(True, "")
    assert consumer.calls[-1] == "consume"
    assert node.admit("t1") == "run"
