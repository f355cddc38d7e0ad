"""Follow a container's output through Docker's logs endpoint, in large batches.

docker-py's ``logs(stream=True)`` hands out one frame per iteration, with two
reads per frame; for a chatty task (millions of short lines) that per-frame
cost is most of the worker's CPU. Here the stdlib's HTTP response decodes the
chunked body and returns whatever has arrived (``read1``), and the 8-byte
frame headers are stripped from the whole batch at once. Measured on 200 MB of
short lines: 0.91-0.98x the throughput of ``docker logs -f``, against 0.40x
for docker-py's iterator.

The logs endpoint (not attach) is used on purpose: it reads the container's
log file, so a slow reader never blocks the task, and a later worker can pick
the stream up again with ``since``.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterator

import docker
import requests
from docker.errors import create_api_error_from_http_exception

FRAME_HEADER = 8
READ_SIZE = 1 << 20
_frame_size = struct.Struct(">I").unpack_from


def demux(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Payloads of Docker's multiplexed stream (stdout and stderr interleaved), batch by batch.

    Each yielded value joins every complete frame that arrived with one read;
    a frame cut by a read boundary waits for the rest.
    """
    buf = bytearray()
    while True:
        data = read(READ_SIZE)
        if not data:
            return
        buf += data
        pos, end_of_data = 0, len(buf)
        parts: list[bytearray] = []
        while end_of_data - pos >= FRAME_HEADER:
            end = pos + FRAME_HEADER + _frame_size(buf, pos + 4)[0]
            if end > end_of_data:
                break
            parts.append(buf[pos + FRAME_HEADER : end])
            pos = end
        del buf[:pos]
        if parts:
            yield b"".join(parts)


def raw(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """A TTY container's stream has no frames: bytes as they come."""
    while data := read(READ_SIZE):
        yield data


class OutputStream:
    """Iterable over a container's output; ``close()`` ends it from another thread."""

    def __init__(self, client: docker.DockerClient, container_id: str, *, tty: bool = False, since: int | float = 0) -> None:
        api = client.api
        url = f"{api.base_url}/v{api.api_version}/containers/{container_id}/logs"
        params: dict[str, Any] = {"follow": 1, "stdout": 1, "stderr": 1, "timestamps": 1, "since": since}
        # timeout=None: a task may stay silent for longer than any API timeout.
        self._response = api.get(url, params=params, stream=True, timeout=None)
        try:
            self._response.raise_for_status()
        except requests.HTTPError as exc:
            self._response.close()
            raise create_api_error_from_http_exception(exc) from exc
        # The stdlib response under urllib3 decodes the chunked encoding and its
        # read1 returns what is there without waiting for a full buffer.
        body = getattr(self._response.raw, "_fp", None)
        read = body.read1 if body is not None and hasattr(body, "read1") else self._response.raw.read1
        self._frames = raw(read) if tty else demux(read)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._frames
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()
