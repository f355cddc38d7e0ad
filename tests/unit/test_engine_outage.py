"""A task's view of an engine that goes away or stops answering: wait, re-attach, say so; never a hang or a bug report."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from farmhand import engine_outage
from farmhand.engine_outage import STUCK, EngineWatch, gone


class Api:
    """An engine that refuses pings until ``up`` is set; inspect answers, or times out, as told."""

    def __init__(self, up: bool = False, inspect_error: Exception | None = None) -> None:
        self.up = threading.Event()
        if up:
            self.up.set()
        self.pings = 0
        self.inspect_error = inspect_error
        self.inspected = threading.Event()

    def ping(self) -> bool:
        self.pings += 1
        if not self.up.is_set():
            raise requests.exceptions.ConnectionError("connection refused")
        return True

    def inspect_container(self, cid: str) -> dict[str, Any]:
        self.inspected.set()
        if self.inspect_error is not None:
            raise self.inspect_error
        return {"State": {"Running": True}}


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_outage, "FIRST_PAUSE", 0.001)
    monkeypatch.setattr(engine_outage, "MAX_PAUSE", 0.01)


def watch(api: Api, said: list[str], give_up: Any = lambda: False) -> EngineWatch:
    return EngineWatch(api, said.append, "c0ffee" * 10, 120, give_up=give_up)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ChunkedEncodingError("cut"),
        ConnectionResetError(104, "reset"),
        __import__("http.client").client.RemoteDisconnected("closed"),
        __import__("urllib3").exceptions.ProtocolError("broken"),
    ],
)
def test_a_broken_connection_is_an_engine_gone(exc: BaseException) -> None:
    assert gone(exc)


@pytest.mark.parametrize("exc", [requests.exceptions.ReadTimeout("slow"), ValueError("bad json"), KeyError("State")])
def test_anything_else_is_not(exc: BaseException) -> None:
    assert not gone(exc)


def test_a_call_broken_by_an_engine_restart_is_made_again_once_it_answers() -> None:
    api, said = Api(), []
    calls: list[int] = []

    def wait() -> dict[str, int]:
        calls.append(1)
        if len(calls) == 1:
            threading.Timer(0.05, api.up.set).start()  # dockerd comes back a moment later
            raise requests.exceptions.ConnectionError("Connection aborted: RemoteDisconnected")
        return {"StatusCode": 0}

    w = watch(api, said)
    assert w.call(wait) == {"StatusCode": 0}
    assert len(calls) == 2 and w.outages == 1 and api.pings >= 1
    assert said[0].startswith("the Docker engine went away (ConnectionError)")
    assert said[1].startswith("the Docker engine answers again after") and "watching container c0ffeec0ffee again" in said[1]


def test_threads_that_lose_the_engine_together_count_one_outage() -> None:
    api, said = Api(), []
    w = watch(api, said)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(w.wait_back(ConnectionResetError()))) for _ in range(4)]
    for t in threads:
        t.start()
    api.up.set()
    for t in threads:
        t.join(30)
    assert results == [True] * 4 and w.outages == 1
    assert sum("went away" in s for s in said) == 1


def test_waiting_stops_when_the_task_gives_up_and_the_error_stands() -> None:
    api, said = Api(), []
    give_up = threading.Event()
    w = watch(api, said, give_up=give_up.is_set)
    threading.Timer(0.05, give_up.set).start()  # its clocks ran out while the engine stayed away

    def wait() -> None:
        raise requests.exceptions.ConnectionError("refused")

    with pytest.raises(requests.exceptions.ConnectionError):
        w.call(wait)
    assert w.outages == 1 and len(said) == 1


def test_an_error_of_the_engine_itself_is_not_waited_on() -> None:
    api, said = Api(up=True), []

    def wait() -> None:
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError):
        watch(api, said).call(wait)
    assert api.pings == 0 and said == []


def test_an_engine_that_never_answers_the_probe_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    api, said = Api(up=True, inspect_error=requests.exceptions.ReadTimeout("read timed out")), []
    w = watch(api, said)
    monkeypatch.setattr(engine_outage, "PROBE_EVERY", 0.0)
    for _ in range(3):
        w.maybe_probe()
        assert api.inspected.wait(30)
        api.inspected.clear()
        while w._probing:  # noqa: SLF001 - the probe thread finishes
            threading.Event().wait(0.001)
    assert said == [STUCK.format(cid="c0ffeec0ffee", timeout=120)]
    assert "moby/moby#46661" in said[0] and "systemctl restart docker" in said[0]


def test_a_probe_waits_its_interval_and_an_answering_engine_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    api, said = Api(up=True), []
    w = watch(api, said)
    w.maybe_probe()
    assert not api.inspected.is_set()  # less than PROBE_EVERY since the watch began
    monkeypatch.setattr(engine_outage, "PROBE_EVERY", 0.0)
    w.maybe_probe()
    assert api.inspected.wait(30)
    assert said == []


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (requests.exceptions.ConnectionError("('Connection aborted.', ConnectionRefusedError(111))"), "docker-error"),
        (requests.exceptions.ReadTimeout("UnixHTTPConnectionPool: Read timed out. (read timeout=120)"), "docker-error"),
        (requests.exceptions.ChunkedEncodingError("Response ended prematurely"), "docker-error"),
        (KeyError("State"), "internal-error"),  # a bug of ours stays one
    ],
)
def test_a_docker_call_the_engine_never_answered_is_dockers_problem_not_a_bug(exc: Exception, reason: str) -> None:
    from farmhand.engine import _conclude_problem
    from farmhand.result import Result

    result = Result(task_id="t")
    _conclude_problem(result, exc)
    assert (result.state, result.reason) == ("exception", reason)
    if reason == "docker-error":
        assert result.message.startswith("the Docker engine did not answer: ")


def test_a_pull_the_engine_broke_is_retried_then_image_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from farmhand import images
    from farmhand.errors import ImageUnavailable

    attempts: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> None:
        attempts.append(1)
        raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")

    monkeypatch.setattr(images, "_pull_once", broken)

    class Config:
        pull_attempts, pull_backoff, registries, max_image_size = 3, 0.0, {}, None

        def credentials_for(self, registry: str) -> None:
            return None

    with pytest.raises(ImageUnavailable):
        images.ensure_image(object(), Config(), "registry.example/app:1", "always", sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(attempts) == 3
