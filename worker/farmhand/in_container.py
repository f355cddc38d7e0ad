"""Whether this worker is the farmhand container image, and what such a worker needs from its host.

A few things the worker does look at the host through its own filesystem:
the sources of host mounts, the loopback devices in ``/sys`` and
``/proc/asound``, their claims in ``loopback_devices.lock_dir``, and iptables.
Inside the image that view is only what ``docker run`` gave it, so an error
about one of them says what the container lacks instead of blaming the host.

The image (``worker/container/Containerfile``) sets ``FARMHAND_CONTAINER=1``.
It is not guessed from ``/.dockerenv``: a host that is itself a container (a
CI runner, a development container) runs farmhand as any host does, its paths
being its dockerd's, and its messages must not send the operator looking for
``docker run`` options.
"""

from __future__ import annotations

import os
from typing import Mapping

ENV = "FARMHAND_CONTAINER"

DOCKER_SOCKET = (
    "the worker runs in a container: mount the engine's socket (-v /var/run/docker.sock:/var/run/docker.sock) and "
    "give the container its group (--group-add \"$(stat -c %g /var/run/docker.sock)\"), or run it as root (--user 0)"
)
WORKING_DIR = (
    "the worker runs in a container as its user farmhand (uid 10001): give it WORKING_DIR "
    "(chown 10001:10001 on the host), or run the container as root (--user 0)"
)
HOST_MOUNTS = (
    "the worker runs in a container, which sees only what `docker run` mounted into it: "
    "mount each allow.host_mounts path at the same path (-v PATH:PATH)"
)
FIREWALL = (
    "the worker runs in a container: apply the rules on the host, or from the image as root in the host's network: "
    "docker run --rm --user 0 --network host --cap-add NET_ADMIN IMAGE farmhand firewall apply"
)
LOOPBACK_DEVICES = (
    "the worker runs in a container: Docker hides /proc/asound from it unless it runs with "
    "--security-opt systempaths=unconfined, and its claims must be the host's (-v /run/farmhand:/run/farmhand)"
)


def in_container(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``FARMHAND_CONTAINER`` says this is the container image (set, and not 0/false/no)."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    return value not in ("", "0", "false", "no")


def hint(advice: str, environ: Mapping[str, str] | None = None) -> str:
    """``advice`` as a suffix for an error message (``" (ADVICE)"``) in the container image; empty elsewhere."""
    return f" ({advice})" if in_container(environ) else ""
