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
from typing import Callable

import docker
import requests

from support import BUSYBOX, wait_until

#: The address pool of its networks: far from Docker's defaults (172.17-31/16, 192.168/16) the host engine uses.
ADDRESS_POOL = "base=10.213.0.0/16,size=24"
# Its default bridge, made by the fixture: with --bridge=none a dockerd deletes the interface named
# docker0 at start, and sharing the host's network namespace, that is the host engine's own bridge.
BRIDGE, BRIDGE_ADDRESS = "smalldockerd0", "10.212.0.1/24"


class SmallDockerd:
    """Start with ``start()``, end with ``stop()``; ``mount`` is the tmpfs, ``data_root`` Docker's data root on it."""

    def __init__(self, size_mib: int = 320, extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = extra_args
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
        self._launch()
        assert self.client is not None
        self.client.images.load(b"".join(host_client.images.get(BUSYBOX).save(named=True)))
        return self

    def _launch(self) -> None:
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
                *self.extra_args,
            ],
            stdout=open(self.log, "ab"),  # noqa: SIM115 - the daemon's own, kept with it
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
            except (docker.errors.DockerException, requests.RequestException):
                return False

        wait_until(answers, 30, "the small dockerd to answer on its socket")

    def restart_after_kill(self, between: Callable[[], None] | None = None) -> None:
        """SIGKILL dockerd alone, as a crash does (its containerd and the containers' shims live on), run
        ``between()`` while it is down, then start it again on the same data."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self._forget_dead_containerd()
        if between is not None:
            between()
        self._launch()

    def _forget_dead_containerd(self) -> None:
        """Its containerd dies with it (parent-death signal). Where nothing reaps the orphan (a sandbox's
        PID 1, unlike systemd), it stays a zombie that dockerd's next start takes for a live containerd
        by its pid file, and waits on for good: the file goes once the process is dead."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return

        def dead() -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
            except OSError:
                return True

        wait_until(dead, 30, "the killed dockerd's containerd to end")
        pidfile.unlink(missing_ok=True)

    def signal(self, sig: int) -> None:
        """SIGSTOP makes an engine that keeps its connections open and answers nothing, as a deadlocked one; SIGCONT ends it."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """End the daemon (its containerd with it), then unmount the tmpfs and remove every file of it."""
        if self.client is not None:
            try:
                for c in self.client.api.containers(all=True, quiet=True):
                    self.client.api.remove_container(c["Id"], force=True, v=True)
                self.client.networks.prune()  # their bridges live in the host's namespace, not on the tmpfs
            except (docker.errors.DockerException, requests.RequestException):
                pass
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Shims a killed engine left (a test that failed between a kill and a start), and their containers' processes.
        shims = subprocess.run(["pgrep", "-f", "--", f"-address {self.exec_root}/"], capture_output=True, text=True).stdout.split()
        for pid in shims:
            subprocess.run(["pkill", "-KILL", "-P", pid], check=False)
            subprocess.run(["kill", "-KILL", pid], check=False, capture_output=True)
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
