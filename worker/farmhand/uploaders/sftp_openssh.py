"""Extra SFTP sessions for a large file through OpenSSH's ``ssh`` client processes, when it is installed.

Why: in this process every byte sent over paramiko is encrypted and
framed in Python under the GIL, so a large upload is bound to one core
whatever the number of channels; each ``ssh -s HOST sftp`` process
encrypts in C on a core of its own, and this process only reads, hashes
and frames requests (bench/README.md has the figures). ``SftpStream``
speaks SFTP over the process's stdin/stdout exactly as over a paramiko
channel.

Trust is not loosened: the connection that was already opened with
paramiko checked the server's host key against ``sftp.known_hosts``;
each ``ssh`` is given that key alone (a known_hosts file of one line) with
``StrictHostKeyChecking=yes``, and the client key of ``sftp.private_key``
alone. No user or system ssh configuration is read.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import paramiko

from farmhand.uploaders.sftp_connect import CIPHERS, HOSTKEY_ALGORITHMS, Endpoint, SftpError

#: OpenSSH's ciphers in farmhand's order of preference (chacha20 is fast in C, unlike in paramiko).
OPENSSH_CIPHERS = (*CIPHERS[:2], "chacha20-poly1305@openssh.com", *CIPHERS[2:])


def ssh_binary() -> str | None:
    """OpenSSH's client, if installed; without it large files are written over paramiko channels."""
    return shutil.which("ssh")


class _ProcessChannel:
    """The side of a socket pair that an ``ssh`` process's stdin and stdout are on, shaped like a paramiko channel."""

    def __init__(self, argv: list[str], label: str) -> None:
        self.label = label
        self._sock, theirs = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=self._stderr, start_new_session=True)
        except BaseException:
            self._sock.close()
            self._stderr.close()
            raise
        finally:
            theirs.close()
        self.closed = False

    def settimeout(self, timeout: float) -> None:
        self._sock.settimeout(timeout)

    def invoke_subsystem(self, name: str) -> None:
        """Already asked for on ssh's command line."""

    def sendall(self, data: bytes | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise EOFError(self._why(exc)) from None

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        if not data:
            raise EOFError(self._why(None))
        return data

    def _why(self, exc: OSError | None) -> str:
        """What ssh said before its session ended (its last stderr line), for the error."""
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        self._stderr.seek(0)
        said = [line for line in self._stderr.read()[-4000:].decode("utf-8", "replace").splitlines() if line.strip()]
        status = self._proc.returncode
        detail = said[-1] if said else (f"exit status {status}" if status is not None else str(exc or "end of stream"))
        return f"the ssh session to {self.label} ended: {detail}"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sock.close()  # ssh sees the end of its input and leaves
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


class OpensshLink:
    """Opens SFTP sessions as ``ssh`` processes to the server ``transport`` reached, pinned to the host key it checked."""

    def __init__(self, ssh: str, endpoint: Endpoint, transport: paramiko.Transport, private_key: Path, timeout: float) -> None:
        if endpoint.host.startswith("-") or endpoint.user.startswith("-"):
            # ssh would read it as an option (-oProxyCommand=...): never let a target's text become one.
            raise SftpError(f"upload target {endpoint.label}: a host or user starting with '-' is refused")
        host_key = transport.get_remote_server_key()
        self._dir = tempfile.TemporaryDirectory(prefix="farmhand-ssh-")
        known = Path(self._dir.name) / "known_hosts"
        known.write_text(f"{endpoint.known_hosts_name} {host_key.get_name()} {host_key.get_base64()}\n")
        algorithms = HOSTKEY_ALGORITHMS.get(host_key.get_name(), (host_key.get_name(),))
        self.label = endpoint.label
        self.argv = [
            ssh, "-F", os.devnull, "-T", "-x", "-a", "-e", "none",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}",
            "-o", f"GlobalKnownHostsFile={os.devnull}",
            "-o", "CheckHostIP=no",
            "-o", f"HostKeyAlgorithms={','.join(algorithms)}",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", f"Ciphers={','.join(OPENSSH_CIPHERS)}",
            "-o", f"ConnectTimeout={max(1, int(timeout))}",
            "-o", "ServerAliveInterval=15",
            "-o", "LogLevel=ERROR",
            "-i", str(private_key),
            "-p", str(endpoint.port),
            "-l", endpoint.user,
            "-s", endpoint.host, "sftp",
        ]  # fmt: skip
        self._channels: list[_ProcessChannel] = []
        self._started: list[_ProcessChannel] = []

    def start(self, count: int) -> None:
        """Start ``count`` ssh processes at once, so their handshakes overlap; ``open_session`` hands them out."""
        for _ in range(count):
            channel = _ProcessChannel(self.argv, self.label)
            self._channels.append(channel)
            self._started.append(channel)

    def open_session(self, timeout: float | None = None) -> _ProcessChannel:
        if self._started:
            return self._started.pop(0)
        self.start(1)
        return self._started.pop(0)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._dir.cleanup()
