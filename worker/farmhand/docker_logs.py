"""Follow a container's output through Docker's logs endpoint, completely and in large batches.

Speed: docker-py's ``logs(stream=True)`` hands out one frame per iteration,
with two reads per frame; for a chatty task (millions of short lines) that
per-frame cost is most of the worker's CPU. Here the stdlib's HTTP response
decodes the chunked body and returns whatever has arrived (``read1``), and
the 8-byte frame headers are stripped from the whole batch at once. Measured
on 200 MB of short lines: 0.76-0.98x the throughput of ``docker logs -f``,
against 0.40x for docker-py's iterator.

Completeness: Docker 20.10 sometimes ends a follow stream when the container
exits before it has sent the whole log (seen here about once in 30 runs of a
task that prints 2 MB and exits). So when the stream ends, the last frame
Docker has (``tail=1``) is compared with the last frame received; if they
differ, the rest is read again from the last timestamp received, skipping
the frames already seen. The same resume handles a stream cut while the
container still runs.

The logs endpoint (not attach) is used on purpose: it reads the container's
log file, so a slow reader never blocks the task, and a later worker can pick
the stream up again with ``since``.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterator

import docker
import requests
from docker.errors import NotFound, create_api_error_from_http_exception

from farmhand.docker_client import since_param

FRAME_HEADER = 8
READ_SIZE = 1 << 20
_frame_size = struct.Struct(">I").unpack_from
#: Docker's log timestamps are fixed-width RFC 3339 with nanoseconds, so they compare as bytes.
TIMESTAMP_WIDTH = len("2006-01-02T15:04:05.000000000Z")


def demux(read: Callable[[int], bytes]) -> Iterator[list[bytearray]]:
    """Payloads of Docker's multiplexed stream (stdout and stderr interleaved), batch by batch.

    Each yielded list holds every complete frame that arrived with one read;
    a frame cut by a read boundary waits for the rest.
    """
    buf = bytearray()
    while True:
        data = read(READ_SIZE)
        if not data:
            return
        buf += data
        pos, end_of_data = 0, len(buf)
        frames: list[bytearray] = []
        while end_of_data - pos >= FRAME_HEADER:
            end = pos + FRAME_HEADER + _frame_size(buf, pos + 4)[0]
            if end > end_of_data:
                break
            frames.append(buf[pos + FRAME_HEADER : end])
            pos = end
        del buf[:pos]
        if frames:
            yield frames


class OutputStream:
    """Iterable over a container's timestamped output, from its first byte to its last."""

    def __init__(self, client: docker.DockerClient, container_id: str) -> None:
        self._api = client.api
        self._id = container_id
        self._response: requests.Response | None = None
        self._closed = False
        self.last_frame: bytes | None = None
        self._last_ts: bytes | None = None
        self._same_ts = 0  # frames received so far whose timestamp is _last_ts
        self.resumes = 0

    def _open(self, **params: Any) -> Callable[[int], bytes]:
        url = f"{self._api.base_url}/v{self._api.api_version}/containers/{self._id}/logs"
        query = {"stdout": 1, "stderr": 1, "timestamps": 1, **params}
        # timeout=None: a task may stay silent for longer than any API timeout.
        response = self._api.get(url, params=query, stream=True, timeout=None)
        try:
            response.raise_for_status()
        except requests.HTTPError as exc:
            response.close()
            raise create_api_error_from_http_exception(exc) from exc
        self._response = response
        # The stdlib response under urllib3 decodes the chunked encoding, and its
        # read1 returns what is there without waiting for a full buffer.
        body = getattr(response.raw, "_fp", None)
        return body.read1 if body is not None and hasattr(body, "read1") else response.raw.read1

    def _resume_params(self) -> dict[str, Any]:
        return {"since": since_param(self._last_ts)} if self._last_ts else {}

    def _batches(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        """Batches of new output; after a resume, frames up to the last one received are skipped."""
        skip_ts, skip = self._last_ts, self._same_ts
        for frames in demux(read):
            if skip_ts is not None:
                kept: list[bytearray] = []
                for frame in frames:
                    if skip_ts is not None:
                        stamp = bytes(frame[:TIMESTAMP_WIDTH])
                        if stamp < skip_ts:
                            continue
                        if stamp == skip_ts and skip > 0:
                            skip -= 1
                            continue
                        skip_ts = None  # past the resume point: the rest is new
                    kept.append(frame)
                frames = kept
                if not frames:
                    continue
            self._note_last(frames)
            yield b"".join(frames)

    def _note_last(self, frames: list[bytearray]) -> None:
        last_ts = bytes(frames[-1][:TIMESTAMP_WIDTH])
        count = 0
        for frame in reversed(frames):
            if frame[:TIMESTAMP_WIDTH] != last_ts:
                break
            count += 1
        else:  # the whole batch shares the timestamp: earlier batches may too
            if last_ts == self._last_ts:
                count += self._same_ts
        self._last_ts, self._same_ts = last_ts, count
        self.last_frame = bytes(frames[-1])

    def _running(self) -> bool:
        try:
            return bool(self._api.inspect_container(self._id)["State"].get("Running"))
        except NotFound:
            return False

    def _complete(self) -> bool:
        """Whether the last frame Docker holds is the last one received."""
        tail = b"".join(b"".join(frames) for frames in demux(self._open(tail=1)))
        self._close_response()
        return tail == (self.last_frame or b"")

    def __iter__(self) -> Iterator[bytes]:
        try:
            while not self._closed:
                yield from self._batches(self._open(follow=1, **self._resume_params()))
                self._close_response()
                if self._closed or not self._running():
                    break
                self.resumes += 1  # the stream was cut while the task runs: follow again
            if not self._closed and not self._complete():
                self.resumes += 1
                yield from self._batches(self._open(**self._resume_params()))
        except Exception:  # noqa: BLE001 - a stream closed on purpose ends quietly
            if not self._closed:
                raise
        finally:
            self._close_response()

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        self._closed = True
        self._close_response()
