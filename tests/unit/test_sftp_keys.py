"""The worker's SSH key: safe permissions, clear refusals, OpenSSH-compatible output; `farmhand keys`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from farmhand import keys
from farmhand.cli import main
from farmhand.errors import ConfigError


@pytest.mark.parametrize("kind, name, bits", [("ed25519", "ssh-ed25519", 256), ("rsa", "ssh-rsa", 4096), ("ecdsa", "ecdsa-sha2-nistp256", 256)])
def test_generate_writes_a_private_key_only_root_reads_and_its_public_half(tmp_path: Path, kind: str, name: str, bits: int) -> None:
    path = tmp_path / "dir" / f"id_{kind}"
    key = keys.generate(path, kind, comment="test@host")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    pub = path.with_name(path.name + ".pub").read_text()
    assert pub == f"{name} {key.get_base64()} test@host\n"
    again = keys.load_private_key(path)
    assert again.get_base64() == key.get_base64() and again.get_bits() == bits
    # The same fingerprint as OpenSSH's own tool prints.
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == keys.fingerprint(key) and out.split()[0] == str(bits)


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "id"
    first = keys.generate(path)
    with pytest.raises(FileExistsError, match="--force"):
        keys.generate(path)
    assert keys.load_private_key(path).get_base64() == first.get_base64()
    assert keys.generate(path, force=True).get_base64() != first.get_base64()


def test_openssh_made_keys_load(tmp_path: Path) -> None:
    for kind in ("rsa", "ed25519", "ecdsa"):
        path = tmp_path / f"ssh-keygen-{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
        assert keys.public_line(keys.load_private_key(path)) == " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640 | 0o001])
def test_a_key_others_can_read_stops_startup(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "id"
    keys.generate(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=rf"sftp.private_key: {path} is accessible by other users .*chmod 600"):
        keys.load_private_key(path)


def test_group_readable_key_is_accepted(tmp_path: Path) -> None:
    """Only access by other users (world) is refused; group access is the operator's choice."""
    path = tmp_path / "id"
    key = keys.generate(path)
    path.chmod(0o640)
    loaded = keys.load_private_key(path)  # no ConfigError, unlike the modes others can read
    assert loaded.get_base64() == key.get_base64()
    assert path.stat().st_mode & 0o777 == 0o640, "loading left the operator's mode alone"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a key at all\n", "is not a private key farmhand can read"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n", "is not a private key farmhand can read"),
        (b"", "is not a private key farmhand can read"),
    ],
)
def test_a_key_that_does_not_parse_stops_startup(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "id"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=f"sftp.private_key: {path} {message}"):
        keys.load_private_key(path)


def test_missing_and_passphrase_protected_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist .*farmhand keys generate"):
        keys.load_private_key(tmp_path / "nope")
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", str(locked)], check=True)
    with pytest.raises(ConfigError, match="passphrase"):
        keys.load_private_key(locked)
    with pytest.raises(ConfigError, match="not a regular file"):
        keys.load_private_key(tmp_path)


def test_cli_keys_generate_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.yml"
    key = tmp_path / "keys" / "id_rsa"
    cfg.write_text(f"working_dir: {tmp_path}\nsftp:\n  private_key: {key}\n")
    assert main(["--config", str(cfg), "keys", "generate", "--type", "rsa"]) == 0
    generated = capsys.readouterr().out.splitlines()
    assert generated[0].startswith("ssh-rsa AAAA") and generated[1].startswith("4096 RSA SHA256:")
    assert main(["--config", str(cfg), "keys", "show"]) == 0
    assert capsys.readouterr().out.splitlines() == generated
    assert main(["--config", str(cfg), "keys", "generate"]) == 2
    assert "--force" in capsys.readouterr().err
    os.chmod(key, 0o644)
    assert main(["--config", str(cfg), "keys", "show"]) == 4
    assert "chmod 600" in capsys.readouterr().err
