"""A real OpenSSH ``sshd`` on 127.0.0.1 with key-only auth, for the SFTP tests and bench/upload.py.

Runs as ``sshd -D -f OWN_CONFIG`` on a free high port with its own host key,
authorized_keys and log under one directory; ``kill`` takes down the
listener and every session process (an interrupted upload), ``start`` brings
it back on the same port with the same host key.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from support import free_port, listening, wait_for_port, wait_until

SSHD = "/usr/sbin/sshd"

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/ssh_host_ed25519_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# The files live under /tmp, which is world-writable: StrictModes would refuse them.
StrictModes no
Subsystem sftp internal-sftp
MaxStartups 64
LogLevel VERBOSE
"""


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


class Sshd:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
        host_key = root / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        (root / "authorized_keys").touch()
        (root / "sshd_config").write_text(CONFIG.format(port=self.port, root=root))

    @property
    def host_public_key(self) -> str:
        return " ".join((self.root / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"

    def authorize(self, public_line: str) -> None:
        with open(self.root / "authorized_keys", "a") as fh:
            fh.write(public_line.strip() + "\n")

    def start(self) -> None:
        log = open(self.root / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout=20)
        except RuntimeError:
            raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()[-2000:]}") from None

    def kill(self) -> None:
        """SIGKILL the listener and every session: connections drop mid-transfer."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self.proc = None
        wait_until(lambda: not listening(self.port), 10, f"port {self.port} to be free again for a restart", interval=0.05)

    stop = kill
