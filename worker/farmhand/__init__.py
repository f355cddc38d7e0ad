"""farmhand: a container task worker.

The core (``farmhand.engine``) runs one task in a Docker container through
prepare, run, collect, cleanup and upload, and knows nothing about any
dispatcher: a CLI, Celery or anything else drives it with a task document and
gets a result document back.
"""

__version__ = "0.1.0"


def _load_docker_without_ssh() -> None:
    """docker-py imports paramiko (with cryptography, pynacl, bcrypt and invoke: the largest part of
    an idle worker's memory, bench/README.md) when it is imported, for ``ssh://`` engines alone. Loaded here
    first, without that transport; ``farmhand.docker_client.connect`` loads it for an ``ssh://`` engine,
    and SFTP uploads import paramiko when they run."""
    import sys

    if "docker" in sys.modules or "docker.transport.sshconn" in sys.modules:
        return
    sys.modules["docker.transport.sshconn"] = None  # type: ignore[assignment]  # an ImportError docker-py expects
    try:
        import docker  # noqa: F401
    finally:
        del sys.modules["docker.transport.sshconn"]


_load_docker_without_ssh()
