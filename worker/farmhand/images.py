"""Make sure an image is on the host, as the task's pull policy says, with the host's credentials.

Registry credentials come from the worker's config, keyed by registry host:
a task names an image, never a password. An image larger than the config's
``images.max_size`` is refused (policy-denied) once it is on the host, before
any container of the task exists.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import docker
from docker.auth import resolve_repository_name
from docker.errors import APIError, ImageNotFound
from docker.utils import parse_repository_tag

from farmhand import metrics
from farmhand.backoff import backoff_delay
from farmhand.config import WorkerConfig
from farmhand.docker_client import DOCKER_ERRORS, error_text
from farmhand.errors import ImageUnavailable, PolicyDenied
from farmhand.policy import human_size

#: Registry answers that another try will not change.
PERMANENT = re.compile(
    r"unauthorized|authentication required|access.*denied|denied:|not found|manifest unknown|"
    r"no basic auth credentials|invalid reference format|repository name must",
    re.IGNORECASE,
)

#: The longest wait between two pull tries, in seconds.
PULL_BACKOFF_CAP = 60.0

ProgressFn = Callable[[str, dict[str, int]], None]


def split_reference(image: str) -> tuple[str, str, str]:
    """(registry, repository, tag-or-digest) of an image reference; tag defaults to latest."""
    repo, tag = parse_repository_tag(image)
    registry, _ = resolve_repository_name(repo)
    return registry, repo, tag or "latest"


def full_reference(image: str) -> str:
    _, repo, tag = split_reference(image)
    sep = "@" if tag.startswith("sha256:") else ":"
    return f"{repo}{sep}{tag}"


class _PullProgress:
    """Sums per-layer progress into one (done, total) pair for display."""

    def __init__(self, report: ProgressFn | None) -> None:
        self._report = report
        self._layers: dict[str, tuple[int, int]] = {}
        self._last = 0.0

    def feed(self, event: dict) -> None:
        detail = event.get("progressDetail") or {}
        layer = event.get("id")
        if layer and "total" in detail:
            self._layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif layer and event.get("status") in ("Pull complete", "Already exists", "Download complete"):
            cur = self._layers.get(layer)
            if cur:
                self._layers[layer] = (cur[1], cur[1])
        now = time.monotonic()
        if self._report and now - self._last >= 0.5:
            self._last = now
            done = sum(c for c, _ in self._layers.values())
            total = sum(t for _, t in self._layers.values())
            self._report(str(event.get("status", "")), {"bytes_done": done, "bytes_total": total})


def _pull_once(client: docker.DockerClient, image: str, auth: dict[str, str] | None, progress: _PullProgress) -> None:
    _, repo, tag = split_reference(image)
    for event in client.api.pull(repo, tag=tag, stream=True, decode=True, auth_config=auth):
        if "error" in event:
            raise APIError(str(event.get("error")))
        progress.feed(event)


def _within_size(config: WorkerConfig, image: str, found: Any) -> str:
    """The image's id, once its size (docker inspect's ``Size``) is within ``images.max_size``."""
    limit = config.max_image_size
    attrs = getattr(found, "attrs", None)
    if limit is not None and isinstance(attrs, dict):
        size = attrs.get("Size")
        if not isinstance(size, int):
            raise ImageUnavailable(f"image {image!r}: Docker does not say its size, and this worker bounds it (images.max_size)")
        if size > limit:
            raise PolicyDenied(
                [f"image {image!r} is {human_size(size)}, above this worker's images.max_size of {human_size(limit)} (it is not run; it stays on the host)"]
            )
    return str(found.id)


def ensure_image(
    client: docker.DockerClient,
    config: WorkerConfig,
    image: str,
    pull_policy: str,
    report: ProgressFn | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Return the local image id of ``image``, pulling as ``pull_policy`` says.

    Raises ``ImageUnavailable`` with the registry's own words when the image
    cannot be had: a missing image under ``never``, bad credentials, or a
    registry still failing after ``pull_attempts`` tries with backoff; and
    ``PolicyDenied`` when the image is larger than ``images.max_size``.
    """
    ref = full_reference(image)
    if pull_policy in ("never", "if-not-present"):
        try:
            found = client.images.get(ref)
        except ImageNotFound:
            if pull_policy == "never":
                raise ImageUnavailable(f"image {image!r} is not on this host and its pull policy is 'never'") from None
        except DOCKER_ERRORS as exc:
            raise ImageUnavailable(f"image {image!r}: cannot inspect it: {error_text(exc)}") from exc
        else:
            return _within_size(config, image, found)

    registry, _, _ = split_reference(image)
    auth = config.credentials_for(registry)
    progress = _PullProgress(report)
    attempts = max(1, config.pull_attempts)
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        began = time.monotonic()
        try:
            _pull_once(client, image, auth, progress)
            found = client.images.get(ref)
        except DOCKER_ERRORS as exc:
            metrics.image_pulled(time.monotonic() - began, ok=False)
            last = exc
            text = error_text(exc)
            if PERMANENT.search(str(text)) or attempt == attempts:
                break
            delay = backoff_delay(attempt, config.pull_backoff, cap=PULL_BACKOFF_CAP)
            if report:
                report(f"pull failed ({text}); try {attempt + 1} of {attempts} in {delay:.1f}s", {})
            sleep(delay)
        else:
            metrics.image_pulled(time.monotonic() - began, ok=True)
            return _within_size(config, image, found)
    assert last is not None  # at least one attempt was made
    text = error_text(last)
    who = f" with the credentials configured for {registry}" if auth else f" (no credentials configured for {registry})"
    raise ImageUnavailable(f"image {image!r} could not be pulled{who}: {text}")
