"""``farmhand engine-check``'s verdicts: stuck only when a probe goes unanswered, a restart only when it stays so."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from farmhand.engine_check import AFTER, Probe, decide, load_count, probes, run_probes, save_count
from farmhand.sandbox import TASK_LABEL

OK, STUCK, DOWN = Probe("ping", "ok"), Probe("inspect abc", "stuck", "no answer within 120s"), Probe("ping", "down", "ConnectionError: refused")


@pytest.mark.parametrize(
    ("results", "before", "count", "restart", "says"),
    [
        ([OK, OK], 0, 0, False, "answers (2 probes)"),
        ([OK, OK], 1, 0, False, "answers"),  # one stuck check, then a healthy one: the count starts again
        ([DOWN], 1, 0, False, "is down"),  # refused: systemd's business, never a restart from here
        ([OK, STUCK], 0, 1, False, "1 of 2 checks in a row"),
        ([OK, STUCK], 1, 0, True, "2 checks in a row: restarting docker.service"),
        ([DOWN, STUCK], 5, 0, True, "restarting"),
    ],
)
def test_a_check_concludes_from_its_probes_and_the_ones_before(results: list[Probe], before: int, count: int, restart: bool, says: str) -> None:
    verdict = decide(results, before, AFTER)
    assert (verdict.stuck_in_a_row, verdict.restart) == (count, restart)
    assert says in verdict.line and verdict.line.startswith("engine-check: ")
    if any(p.outcome == "stuck" for p in results):
        assert "inspect abc: no answer within 120s" in verdict.line


def test_a_probe_that_never_returns_is_stuck_and_holds_up_no_other() -> None:
    never = threading.Event()
    calls = [
        ("ping", lambda: True),
        ("hangs", never.wait),  # not even the client's timeout ends it
        ("times out", lambda: (_ for _ in ()).throw(requests.exceptions.ReadTimeout("read timed out"))),
        ("refused", lambda: (_ for _ in ()).throw(requests.exceptions.ConnectionError("refused"))),
        ("says no", lambda: (_ for _ in ()).throw(ValueError("an error answer is an answer"))),
    ]
    try:
        found = run_probes(calls, timeout=0.05)
    finally:
        never.set()
    assert [(p.name, p.outcome) for p in found] == [("ping", "ok"), ("hangs", "stuck"), ("times out", "stuck"), ("refused", "down"), ("says no", "ok")]


def test_every_farmhand_container_is_inspected() -> None:
    class Api:
        def __init__(self) -> None:
            self.inspected: list[str] = []
            self.filters: Any = None

        def ping(self) -> bool:
            return True

        def networks(self) -> list[Any]:
            return []

        def containers(self, **kw: Any) -> list[dict[str, str]]:
            self.filters = kw["filters"]
            return [{"Id": "a" * 64}, {"Id": "b" * 64}]

        def inspect_container(self, cid: str) -> dict[str, Any]:
            self.inspected.append(cid)
            return {}

    api = Api()
    found = run_probes(probes(api), timeout=5)
    assert [p.name for p in found] == ["ping", "networks", "inspect aaaaaaaaaaaa", "inspect bbbbbbbbbbbb"]
    assert all(p.outcome == "ok" for p in found)
    assert sorted(api.inspected) == ["a" * 64, "b" * 64] and api.filters == {"label": TASK_LABEL}


def test_the_count_survives_between_runs_and_a_bad_file_counts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "run" / "engine-check.json"
    assert load_count(state) == 0
    save_count(state, 1)
    assert load_count(state) == 1
    for junk in ("", "[]", "{\"stuck_in_a_row\": \"x\"}", "not json"):
        state.write_text(junk)
        assert load_count(state) == 0


def test_a_container_listing_that_fails_is_a_probe_of_its_own() -> None:
    class Api:
        def ping(self) -> bool:
            return True

        def networks(self) -> list[Any]:
            return []

        def containers(self, **kw: Any) -> list[Any]:
            raise requests.exceptions.ReadTimeout("read timed out")

    found = run_probes(probes(Api()), timeout=5)
    assert [(p.name, p.outcome) for p in found] == [("ping", "ok"), ("networks", "ok"), ("containers", "stuck")]
