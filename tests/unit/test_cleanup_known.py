"""Cleanup removes the containers the engine knows it made without listing them; otherwise it finds them by label."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from docker.errors import NotFound

from farmhand import sandbox


class FakeApi:
    def __init__(self, labelled: list[str]) -> None:
        self.labelled = labelled
        self.listed = 0
        self.removed: list[str] = []

    def containers(self, **kwargs: Any) -> list[dict[str, str]]:
        self.listed += 1
        assert kwargs["filters"] == {"label": f"{sandbox.TASK_LABEL}=t1"}
        return [{"Id": cid} for cid in self.labelled]

    def remove_container(self, cid: str, force: bool, v: bool) -> None:
        assert force and v
        if cid == "gone":
            raise NotFound("gone")
        self.removed.append(cid)


def test_known_containers_are_removed_without_a_listing() -> None:
    api = FakeApi(["task", "service"])
    assert sandbox.cleanup(SimpleNamespace(api=api), "t1", known=["task"]) == []  # type: ignore[arg-type]
    assert (api.listed, api.removed) == (0, ["task"])


def test_unknown_containers_are_found_by_label() -> None:
    api = FakeApi(["task", "service", "gone"])
    assert sandbox.cleanup(SimpleNamespace(api=api), "t1") == []  # type: ignore[arg-type]
    assert (api.listed, api.removed) == (1, ["task", "service"])
