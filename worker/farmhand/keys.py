"""The worker's SSH identity: load it safely, make a new one, show what to put in authorized_keys.

A private key that others on the host can read is a leaked key, and one that
does not parse would only surface as a baffling authentication failure in the
middle of an upload; both stop the worker at start-up instead, with a message
that names the setting and says what to do.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from farmhand import durable
from farmhand.errors import ConfigError

if TYPE_CHECKING:  # paramiko and cryptography are loaded by the functions that use them (bench/README.md: idle RSS)
    import paramiko

#: Key types farmhand accepts and generates (DSA is obsolete and refused).
KEY_TYPES = ("ed25519", "rsa", "ecdsa")
RSA_BITS = 4096


def _setting(field: str) -> str:
    return f"sftp.{field}"


def load_private_key(path: str | os.PathLike[str], field: str = "private_key") -> paramiko.PKey:
    """The private key at ``path``, refused with a clear ``ConfigError`` if unsafe or unusable."""
    import paramiko

    where = Path(path)
    name = _setting(field)
    try:
        st = where.stat()
    except FileNotFoundError:
        raise ConfigError(f"{name}: {where} does not exist (create one with `farmhand keys generate`)") from None
    except OSError as exc:
        raise ConfigError(f"{name}: {where} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{name}: {where} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        raise ConfigError(
            f"{name}: {where} is accessible by other users (mode {mode:04o}); a private key must not be: chmod 600 {where}"
        )
    try:
        key = paramiko.PKey.from_path(where)
    except paramiko.PasswordRequiredException:
        raise ConfigError(f"{name}: {where} is protected by a passphrase; farmhand needs an unencrypted key") from None
    except paramiko.UnknownKeyType as exc:
        raise ConfigError(f"{name}: {where} is a key of a type farmhand does not support ({exc}); use ed25519, rsa or ecdsa") from None
    except (ValueError, paramiko.SSHException, TypeError) as exc:
        raise ConfigError(f"{name}: {where} is not a private key farmhand can read (OpenSSH or PEM; ed25519, rsa, ecdsa): {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{name}: {where} cannot be read: {exc.strerror}") from None
    return key


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint (``SHA256:`` then unpadded base64), as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_line(key: paramiko.PKey, comment: str | None = None) -> str:
    """The key in authorized_keys form: ``TYPE BASE64 [COMMENT]``."""
    line = f"{key.get_name()} {key.get_base64()}"
    return f"{line} {comment}" if comment else line


def key_kind(key: paramiko.PKey) -> str:
    """ED25519, RSA or ECDSA, with bits, the way ``ssh-keygen -l`` names them."""
    kind = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}.get(key.get_name(), "ECDSA")
    return f"{key.get_bits()} {kind}"


def generate(path: str | os.PathLike[str], key_type: str = "ed25519", *, force: bool = False, comment: str | None = None) -> paramiko.PKey:
    """Write a new key pair: ``path`` (mode 0600, in OpenSSH format) and ``path.pub``.

    An existing key is never overwritten unless ``force``: replacing it would
    lock the worker out of every warehouse that trusts it.
    """
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type not in KEY_TYPES:
        raise ValueError(f"--type: {key_type!r} is not one of {', '.join(KEY_TYPES)}")
    where = Path(path)
    if where.exists() and not force:
        raise FileExistsError(f"{where} already exists; pass --force to replace it (servers trusting the old key will refuse the new one)")
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = where.with_name(f".{where.name}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    durable.replace(tmp, where)
    key = paramiko.PKey.from_path(where)
    pub = where.with_name(where.name + ".pub")
    pub.write_text(public_line(key, comment or f"farmhand@{socket.gethostname()}") + "\n")
    pub.chmod(0o644)
    return key
