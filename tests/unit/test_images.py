"""Pull policy, credentials by registry host, and retries: transient errors retry with growing backoff, permanent ones do not."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from docker.errors import APIError, ImageNotFound

from farmhand.config import load_config
from farmhand.errors import ImageUnavailable
from farmhand.images import ensure_image, full_reference, split_reference


@pytest.fixture
def config(tmp_path: Path):
    path = tmp_path / "config.yml"
    path.write_text(
        "images: {pull_attempts: 4, pull_backoff: 1.0}\n"
        "registries: {'reg.local:5000': {username: farmer, password: pw}}\n"
    )
    return load_config(path, environ={"WORKING_DIR": str(tmp_path)})


def fake_client(pull_outcomes: list, present: bool = False) -> mock.Mock:
    """A Docker client whose image lookups and pulls follow a script."""
    client = mock.Mock(spec_set=["images", "api"])
    pulled = {"done": False}

    def get(ref: str):
        if present or pulled["done"]:
            return mock.Mock(id="sha256:feed")
        raise ImageNotFound(f"no such image: {ref}")

    def pull(repo, tag=None, **kwargs):
        outcome = pull_outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        pulled["done"] = True
        return iter(outcome)

    client.images.get.side_effect = get
    client.api.pull.side_effect = pull
    return client


def test_references_get_latest_and_their_registry():
    assert split_reference("busybox") == ("docker.io", "busybox", "latest")
    assert split_reference("reg.local:5000/team/app:2") == ("reg.local:5000", "reg.local:5000/team/app", "2")
    assert full_reference("reg.local:5000/team/app") == "reg.local:5000/team/app:latest"
    assert full_reference("app@sha256:" + "a" * 64) == "app@sha256:" + "a" * 64


def test_if_not_present_uses_the_local_image_without_pulling(config):
    client = fake_client([], present=True)
    assert ensure_image(client, config, "reg.local:5000/app:1", "if-not-present") == "sha256:feed"
    client.api.pull.assert_not_called()


def test_never_on_a_missing_image_does_not_pull(config):
    client = fake_client([])
    with pytest.raises(ImageUnavailable, match="pull policy is 'never'"):
        ensure_image(client, config, "app:1", "never")
    client.api.pull.assert_not_called()


def test_always_pulls_with_the_hosts_credentials_for_that_registry(config):
    client = fake_client([[{"status": "Pulling"}]], present=True)
    ensure_image(client, config, "reg.local:5000/app:1", "always")
    assert client.api.pull.call_args.kwargs["auth_config"] == {"username": "farmer", "password": "pw"}
    other = fake_client([[{"status": "Pulling"}]], present=True)
    ensure_image(other, config, "elsewhere.example/app:1", "always")
    assert other.api.pull.call_args.kwargs["auth_config"] is None


def test_transient_errors_retry_with_growing_backoff(config):
    sleeps: list[float] = []
    client = fake_client([APIError("502 bad gateway"), APIError("connection reset by peer"), [{"status": "done"}]])
    assert ensure_image(client, config, "reg.local:5000/app:1", "if-not-present", sleep=sleeps.append) == "sha256:feed"
    assert client.api.pull.call_count == 3
    assert len(sleeps) == 2
    assert 1.0 <= sleeps[0] <= 1.5 and 2.0 <= sleeps[1] <= 3.0


def test_an_error_event_in_the_stream_counts_as_a_failure(config):
    sleeps: list[float] = []
    client = fake_client([[{"error": "unexpected EOF"}], [{"status": "ok"}]])
    ensure_image(client, config, "reg.local:5000/app:1", "always", sleep=sleeps.append)
    assert client.api.pull.call_count == 2 and len(sleeps) == 1


def test_permanent_errors_do_not_retry(config):
    sleeps: list[float] = []
    client = fake_client([APIError("unauthorized: authentication required")])
    with pytest.raises(ImageUnavailable) as exc:
        ensure_image(client, config, "reg.local:5000/app:1", "always", sleep=sleeps.append)
    assert sleeps == [] and client.api.pull.call_count == 1
    assert "with the credentials configured for reg.local:5000" in exc.value.message
    assert "pw" not in exc.value.message


def test_gives_up_after_the_configured_attempts(config):
    sleeps: list[float] = []
    client = fake_client([APIError("503 service unavailable")] * 4)
    with pytest.raises(ImageUnavailable, match="503 service unavailable"):
        ensure_image(client, config, "reg.local:5000/app:1", "always", sleep=sleeps.append)
    assert client.api.pull.call_count == 4 and len(sleeps) == 3
