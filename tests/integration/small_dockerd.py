"""A dockerd of the suite's own whose data root sits on a small tmpfs: a disk that really fills.

The garbage collector's tests need a Docker engine on a filesystem of a few
hundred MiB, so that free space moves with every image, volume and
workspace, and so that nothing they do can touch the host's own engine. This
one has its own ``--data-root``, ``--exec-root`` (its own containerd under it),
``--pidfile`` and Unix socket; it does not touch iptables, its default bridge
is one the fixture makes (never the host engine's docker0), and its networks
come from an address pool of its own, clear of the host engine's. It is given the suite's busybox image from the host engine
(``docker save`` / ``load``: nothing is pulled from a hub). ``stop`` ends it and
unmounts the tmpfs, whatever it held.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import docker

from support import BUSYBOX, wait_until

#: The address pool of its networks: far from Docker's defaults (172.17-31/16, 192.168/16) the host engine uses.
ADDRESS_POOL = "base=10.213.0.0/16,size=24"
# Its default bridge, made by the fixture: with --bridge=none a dockerd deletes the interface named
# docker0 at start, and sharing the host's network namespace, that is the host engine's own bridge.
BRIDGE, BRIDGE_ADDRESS = "smalldockerd0", "10.212.0.1/24"


class SmallDockerd:
    """Start with ``start()``, end with ``stop()``; ``mount`` is the tmpfs, ``data_root`` Docker's data root on it."""

    def __init__(self, size_mib: int = 320) -> None:
        # A short path: containerd's sockets live under the exec root, and a Unix socket path has 107 bytes at most.
        self.base = Path(tempfile.mkdtemp(prefix="fh-dd-", dir="/tmp"))
        self.size_mib = size_mib
        self.mount = self.base / "fs"
        self.data_root = self.mount / "docker"
        self.exec_root = self.base / "exec"
        self.socket = self.base / "docker.sock"
        self.pidfile = self.base / "dockerd.pid"
        self.log = self.base / "dockerd.log"
        self.base_url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: docker.DockerClient | None = None
        self._mounted = False

    def start(self, host_client: docker.DockerClient) -> "SmallDockerd":
        self.mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m,mode=0755", "fh-small-docker", str(self.mount)], check=True)
        self._mounted = True
        self.exec_root.mkdir()
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)  # a killed run's
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        self.proc = subprocess.Popen(
            [
                shutil.which("dockerd") or "/usr/sbin/dockerd",
                "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root),
                "--pidfile", str(self.pidfile),
                "-H", self.base_url,
                f"--bridge={BRIDGE}",
                "--iptables=false",
                "--ip-masq=false",
                "--default-address-pool", ADDRESS_POOL,
                "--log-level=warn",
            ],
            stdout=open(self.log, "wb"),  # noqa: SIM115 - the daemon's own, kept with it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the small dockerd exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if self.client is None:  # docker-py asks the daemon its API version as it is made
                    self.client = docker.DockerClient(base_url=self.base_url, timeout=60)
                return bool(self.client.ping())
            except docker.errors.DockerException:
                return False

        wait_until(answers, 30, "the small dockerd to answer on its socket")
        assert self.client is not None
        self.client.images.load(b"".join(host_client.images.get(BUSYBOX).save(named=True)))
        return self

    def stop(self) -> None:
        """End the daemon (its containerd with it), then unmount the tmpfs and remove every file of it."""
        if self.client is not None:
            try:
                for c in self.client.api.containers(all=True, quiet=True):
                    self.client.api.remove_container(c["Id"], force=True, v=True)
                self.client.networks.prune()  # their bridges live in the host's namespace, not on the tmpfs
            except docker.errors.DockerException:
                pass
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._mounted:
            # Lazily: overlay mounts of the daemon's containers may linger below it a moment.
            subprocess.run(["umount", "--lazy", "--recursive", str(self.mount)], check=False)
            self._mounted = False
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- what a test fills it with --------------------------------------------------------------
    def free(self) -> int:
        st = os.statvfs(self.mount)
        return st.f_bavail * st.f_frsize

    def image_with_bytes(self, repository: str, tag: str, size: int, labels: dict[str, str] | None = None) -> str:
        """An image made here: busybox plus ``size`` random bytes in a layer of its own; returns its id."""
        assert self.client is not None
        container = self.client.containers.create(BUSYBOX, ["true"], network_disabled=True)
        try:
            subprocess.run(
                ["dd", "if=/dev/urandom", f"of={self.base / 'blob'}", "bs=1M", f"count={size >> 20}", "status=none"], check=True
            )
            with tempfile.TemporaryFile() as tar:
                subprocess.run(["tar", "-C", str(self.base), "-cf", "-", "blob"], stdout=tar, check=True)
                tar.seek(0)
                container.put_archive("/", tar.read())
            (self.base / "blob").unlink()
            image = container.commit(repository=repository, tag=tag, conf={"Labels": labels or {}})
        finally:
            container.remove(force=True)
        return str(image.id)
