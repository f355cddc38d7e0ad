"""The sftp:// uploader's logic without a server: targets, names, host-key trust, error wording, config."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import paramiko
import pytest
import yaml

from farmhand.backoff import backoff_delay
from farmhand.config import load_config
from farmhand.errors import ConfigError, UploadFailed
from farmhand.keys import fingerprint, generate
from farmhand.uploaders import UploadItem, supported_schemes, uploader_for
from farmhand.uploaders.hashpipe import BackgroundHash
from farmhand.uploaders.sftp import SftpTarget, SftpUploader, check_name, check_startup
from farmhand.uploaders.sftp_connect import Endpoint, SftpError, _check_host_key, _host_key_types


def _config(tmp_path: Path, **doc: object):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), **doc}))
    return load_config(path, environ={})


# -- targets and names ---------------------------------------------------------------------


def test_target_parsing() -> None:
    t = SftpTarget.parse("sftp://zim@warehouse.example:2222/srv/zim/")
    assert t.endpoint == Endpoint("zim", "warehouse.example", 2222) and t.root == "/srv/zim"
    assert SftpTarget.parse("sftp://u@h/data").endpoint.port == 22
    assert SftpTarget.parse("sftp://u@h/~/uploads/").root == "uploads"
    assert SftpTarget.parse("sftp://u@h").root == "/"
    assert SftpTarget.parse("sftp://u@h/my%20dir/").root == "/my dir"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("sftp://host/path/", "needs a user name"),
        ("sftp://u:secret@host/path/", "passwords are not accepted"),
        ("sftp://u@:22/path/", "needs a host"),
        ("sftp://u@host:99999/path/", "port"),
        ("sftp://u@host/path/?x=1", "query"),
        ("sftp://u@host/pa%0Ath/", "control characters"),
    ],
)
def test_bad_targets_are_refused_naming_the_problem(uri: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UploadFailed, match=message):
        uploader_for(uri, _config(tmp_path))


def test_sftp_is_registered(tmp_path: Path) -> None:
    assert "sftp" in supported_schemes()
    assert isinstance(uploader_for("sftp://u@h:2022/w/", _config(tmp_path)), SftpUploader)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", ".", "a//b", "a/./b", "new\nline", "nul\x00", "del\x7f", "back\\slash"])
def test_names_that_could_leave_the_task_folder_are_refused(name: str) -> None:
    with pytest.raises(UploadFailed, match="not a plain relative name"):
        check_name(name)


def test_plain_names_pass() -> None:
    assert check_name("report/sub/when.txt") == ["report", "sub", "when.txt"]
    assert check_name("wiki_en.zim") == ["wiki_en.zim"]
    assert check_name("..hidden") == ["..hidden"]


def test_locations(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    up = SftpUploader("sftp://zim@wh:2222/srv/zim/", cfg)
    assert up.location("t1", "task.log.zst") == "sftp://zim@wh:2222/srv/zim/t1/task.log.zst"
    assert up.location("t1", "report/") == "sftp://zim@wh:2222/srv/zim/t1/report/"
    assert SftpUploader("sftp://zim@wh/~/up/", cfg).location("t1", "a b") == "sftp://zim@wh:22/~/up/t1/a%20b"
    with pytest.raises(UploadFailed):
        up.location("t1", "../x")


def test_an_item_that_would_overwrite_a_sidecar_is_refused(tmp_path: Path) -> None:
    up = SftpUploader("sftp://u@127.0.0.1:1/w/", _config(tmp_path))
    items = [UploadItem(tmp_path / "a", "a", 1, "0" * 64), UploadItem(tmp_path / "b", "a.sha256", 1, "0" * 64)]
    with pytest.raises(UploadFailed, match="checksum sidecar"):
        up.upload("t", items, lambda m, **f: None)


def test_a_missing_key_fails_the_upload_clearly_before_any_connection(tmp_path: Path) -> None:
    cfg = _config(tmp_path, sftp={"private_key": str(tmp_path / "absent"), "known_hosts": str(tmp_path / "kh")})
    up = SftpUploader("sftp://u@127.0.0.1:1/w/", cfg)
    with pytest.raises(UploadFailed, match=r"sftp.private_key: .*absent does not exist") as info:
        up.upload("t", [UploadItem(tmp_path / "x", "x", 1, "0" * 64)], lambda m, **f: None)
    assert info.value.reason == "upload-failed"


# -- trust ---------------------------------------------------------------------------------


def _key(tmp_path: Path, name: str) -> paramiko.PKey:
    return generate(tmp_path / name, "ed25519")


def test_host_key_checks(tmp_path: Path) -> None:
    good, bad = _key(tmp_path, "good"), _key(tmp_path, "bad")
    known = paramiko.HostKeys()
    known.add("[10.0.0.1]:2222", good.get_name(), good)
    ep = Endpoint("u", "10.0.0.1", 2222)
    _check_host_key(ep, good, known, tmp_path / "kh")
    with pytest.raises(SftpError, match="CHANGED") as changed:
        _check_host_key(ep, bad, known, tmp_path / "kh")
    assert fingerprint(good) in changed.value.message and fingerprint(bad) in changed.value.message
    assert not changed.value.transient
    with pytest.raises(SftpError, match="unknown"):
        _check_host_key(Endpoint("u", "10.0.0.1", 22), good, known, tmp_path / "kh")  # port 22 is another entry


def test_known_host_types_narrow_what_the_server_may_offer(tmp_path: Path) -> None:
    known = paramiko.HostKeys()
    offered = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    assert _host_key_types(Endpoint("u", "h"), known, offered) == offered
    rsa = generate(tmp_path / "rsa", "rsa")
    known.add("h", rsa.get_name(), rsa)
    assert _host_key_types(Endpoint("u", "h"), known, offered) == ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def test_startup_check_only_when_an_sftp_target_is_configured(tmp_path: Path) -> None:
    check_startup(_config(tmp_path))  # file:// only: no key needed
    cfg = _config(tmp_path, upload={"allowed_targets": ["sftp://u@h/w/"]}, sftp={"private_key": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="sftp.private_key"):
        check_startup(cfg)
    generate(tmp_path / "id")
    cfg = _config(tmp_path, upload={"default": "sftp://u@h/w/"}, sftp={"private_key": str(tmp_path / "id"), "known_hosts": str(tmp_path / "kh")})
    with pytest.raises(ConfigError, match="sftp.known_hosts: .*kh does not exist"):
        check_startup(cfg)
    (tmp_path / "kh").write_text("")
    check_startup(cfg)


# -- config --------------------------------------------------------------------------------


def test_sftp_config_defaults_env_and_bad_values(tmp_path: Path) -> None:
    cfg = load_config(environ={})
    assert str(cfg.sftp.private_key) == "/etc/farmhand/id_rsa" and cfg.sftp.verify == "stream"
    assert cfg.log_compression == "zstd" and cfg.pending_dir == cfg.working_dir / "pending"
    env = load_config(environ={"FARMHAND_SFTP_PRIVATE_KEY": "/usr/src/.ssh/id_rsa", "FARMHAND_SFTP_KNOWN_HOSTS": "/k"})
    assert str(env.sftp.private_key) == "/usr/src/.ssh/id_rsa" and str(env.sftp.known_hosts) == "/k"
    assert _config(tmp_path, sftp={"request_size": "64k"}).sftp.request_size == 65536
    for doc, field in [
        ({"sftp": {"private_key": "relative/id"}}, "config.sftp.private_key"),
        ({"sftp": {"verify": "maybe"}}, "config.sftp.verify"),
        ({"sftp": {"attempts": 0}}, "config.sftp.attempts"),
        ({"sftp": {"surprise": 1}}, "config.sftp"),
        ({"logs": {"compression": "gzip"}}, "config.logs.compression"),
        ({"upload": {"pending_retry_interval": 0}}, "config.upload.pending_retry_interval"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            _config(tmp_path, **doc)


# -- helpers -------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, 1.0, 10.0, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        base = min(10.0, 2 ** (n - 1))
        assert base <= d <= base * 1.5
    assert len({round(backoff_delay(3, 1.0, 10.0), 6) for _ in range(20)}) > 1, "jitter spreads retries"


def test_background_hash_matches_hashlib_in_order() -> None:
    rng = random.Random(3)
    chunks = [rng.randbytes(rng.randint(0, 300_000)) for _ in range(60)]
    h = BackgroundHash(batch=1 << 20)
    for c in chunks:
        h.update(c)
    assert h.finish() == hashlib.sha256(b"".join(chunks)).hexdigest() == h.finish()
    with pytest.raises(RuntimeError):
        h.update(b"late")
