"""Open an authenticated SSH transport to a warehouse, trusting only the host keys in known_hosts.

Why not ``paramiko.SSHClient``: its host-key policies make it easy to accept
an unknown key by accident. Here the check is explicit: the server's key
must be in the configured known_hosts file for ``host`` (``[host]:port`` off
port 22), an unknown key or a changed one is refused with both fingerprints,
and nothing is ever written to known_hosts.

Errors say whether trying again could help (``SftpError.transient``): a
refused connection can, a refused key cannot.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko

from farmhand.config import SftpSettings
from farmhand.errors import UploadFailed
from farmhand.keys import fingerprint

#: AES-GCM first: with AES-NI it costs the least CPU per byte in paramiko, and
#: needs no separate MAC pass. CTR with HMAC for servers without it.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr", "aes192-ctr")
#: Our receive window and packet size (replies to uploads are small; generous anyway).
WINDOW = 8 << 20
MAX_PACKET = 32768

#: Host key algorithms a known_hosts key type allows the server to use.
HOSTKEY_ALGORITHMS = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}


class SftpError(UploadFailed):
    """An upload problem; ``transient`` says whether another try may succeed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Endpoint:
    user: str
    host: str
    port: int = 22

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this server's key under in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    try:
        return paramiko.HostKeys(str(path))
    except FileNotFoundError:
        raise SftpError(f"sftp.known_hosts: {path} does not exist; add the warehouse's host key to it (ssh-keyscan, checked against the server's fingerprint)") from None
    except OSError as exc:
        raise SftpError(f"sftp.known_hosts: {path} cannot be read: {exc.strerror}") from None


def _check_host_key(endpoint: Endpoint, offered: paramiko.PKey, known: paramiko.HostKeys, known_path: Path) -> None:
    name = endpoint.known_hosts_name
    entries = known.lookup(name)
    seen = f"{offered.get_name()} {fingerprint(offered)}"
    if not entries:
        raise SftpError(
            f"host key of {name} is unknown: it is not in sftp.known_hosts ({known_path}); the server offers {seen}. "
            "Refusing to connect: farmhand never accepts a host key by itself; add it to known_hosts once its fingerprint is checked"
        )
    expected = entries.get(offered.get_name())
    if expected is None or expected.asbytes() != offered.asbytes():
        listed = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in entries.values())
        raise SftpError(
            f"host key of {name} has CHANGED: the server offers {seen} but sftp.known_hosts ({known_path}) lists {listed}. "
            "Refusing to connect (someone may be intercepting the connection, or the server was reinstalled: check, then fix known_hosts)"
        )


def _host_key_types(endpoint: Endpoint, known: paramiko.HostKeys, offered: tuple[str, ...]) -> tuple[str, ...]:
    """Ask only for host key types known_hosts can vouch for, as OpenSSH does; all of them when none is known."""
    entries = known.lookup(endpoint.known_hosts_name)
    if not entries:
        return offered
    wanted = {alg for kind in entries.keys() for alg in HOSTKEY_ALGORITHMS.get(kind, (kind,))}
    chosen = tuple(a for a in offered if a in wanted)
    return chosen or offered


def connect(endpoint: Endpoint, settings: SftpSettings, pkey: paramiko.PKey, known: paramiko.HostKeys) -> paramiko.Transport:
    """An authenticated transport; the caller closes it. Raises ``SftpError``."""
    timeout = settings.connect_timeout
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError as exc:
        raise SftpError(f"cannot connect to {endpoint.host}:{endpoint.port}: {exc.strerror or exc}", transient=True) from None
    transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
    try:
        options = transport.get_security_options()
        options.ciphers = tuple(c for c in CIPHERS if c in options.ciphers)
        options.key_types = _host_key_types(endpoint, known, tuple(options.key_types))
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SftpError(f"SSH handshake with {endpoint.host}:{endpoint.port} failed: {exc or type(exc).__name__}", transient=True) from None
        _check_host_key(endpoint, transport.get_remote_server_key(), known, settings.known_hosts)
        try:
            transport.auth_publickey(endpoint.user, pkey)
        except paramiko.AuthenticationException as exc:
            raise SftpError(
                f"authentication failed: {endpoint.label} did not accept the key in sftp.private_key ({settings.private_key}, "
                f"{pkey.get_name()} {fingerprint(pkey)}): {exc}. Add its public key (`farmhand keys show`) to that account's authorized_keys"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SftpError(f"authentication with {endpoint.label} was interrupted: {exc or type(exc).__name__}", transient=True) from None
        transport.set_keepalive(15)
        return transport
    except BaseException:
        transport.close()
        raise
