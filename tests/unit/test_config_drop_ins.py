"""config.d/ drop-ins: merged over the config file by name, key by key, before validation.

A baked image's instance gets its broker, credentials and queues this way at
first boot (cloud-init write_files, packer/README.md): a bad drop-in must be
named, a later one must win, and a secret written 0600 must stay readable by
the worker and nobody else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from farmhand import config as config_module
from farmhand.check import checks
from farmhand.config import DEFAULTS, load_config
from farmhand.errors import ConfigError


def write(path: Path, doc: Any, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    path.chmod(mode)
    return path


@pytest.fixture()
def etc(tmp_path: Path) -> Path:
    """An /etc/farmhand of its own: config.yml as the role renders its shape, and config.d/."""
    write(tmp_path / "config.yml", {"version": 1, "working_dir": str(tmp_path / "work"),
                                    "broker": {"url": "amqp://image@10.0.0.1//", "visibility_timeout": 100},
                                    "limits": {"max_run_time": 7200, "defaults": {"pids": 100}},
                                    "registries": {"a.example": {"username": "ua", "password": "pa"}}}, 0o640)
    (tmp_path / "config.d").mkdir()
    return tmp_path


def test_drop_ins_merge_in_name_order_and_the_last_wins(etc: Path) -> None:
    # Written in the reverse order: the name decides, not the age.
    write(etc / "config.d/20-site.yml", {"worker": {"queues": ["second"]}})
    write(etc / "config.d/10-image.yml", {"worker": {"queues": ["first"], "node_name": "from-10"}})
    cfg = load_config(etc / "config.yml", environ={})
    assert cfg.node.queues == ("second",)
    assert cfg.node.node_name == "from-10"


def test_only_yml_files_are_merged(etc: Path) -> None:
    write(etc / "config.d/50-queues.yaml", {"worker": {"queues": ["yaml-suffix"]}})
    for name in ["60-queues.yml.bak", ".70-hidden.yml", "README", "80-queues.json"]:
        write(etc / "config.d" / name, {"worker": {"queues": [name]}})
    (etc / "config.d/90-dir.yml").mkdir()
    cfg = load_config(etc / "config.yml", environ={})
    assert cfg.node.queues == ("yaml-suffix",)


def test_drop_ins_merge_key_by_key(etc: Path) -> None:
    """A drop-in that sets the broker's password keeps the image's broker URL, and every nested default."""
    write(etc / "config.d/50-cloud-init.yml", {"broker": {"password": "s3cret"},
                                              "limits": {"defaults": {"memory": "1g"}, "kill_grace": 3},
                                              "registries": {"b.example": {"username": "ub", "password": "pb"}}})
    cfg = load_config(etc / "config.yml", environ={})
    assert cfg.broker.url == "amqp://image@10.0.0.1//" and cfg.broker.password == "s3cret"
    assert cfg.broker.visibility_timeout == 100
    assert cfg.broker.queue_type == DEFAULTS["broker"]["queue_type"]
    assert cfg.max_run_time == 7200 and cfg.kill_grace == 3
    assert cfg.default_resources.pids == 100 and cfg.default_resources.memory == 1 << 30
    # Registries merge per registry; one registry's credentials are replaced whole.
    assert cfg.credentials_for("a.example") == {"username": "ua", "password": "pa"}
    assert cfg.credentials_for("b.example") == {"username": "ub", "password": "pb"}
    write(etc / "config.d/60-rotate.yml", {"registries": {"a.example": {"username": "ua2", "password": "pa2"}}})
    assert load_config(etc / "config.yml", environ={}).credentials_for("a.example") == {"username": "ua2", "password": "pa2"}


def test_lists_are_replaced_not_appended(etc: Path) -> None:
    write(etc / "config.yml", {"images": {"allowed": ["docker.io/a/*", "docker.io/b/*"]}})
    write(etc / "config.d/50.yml", {"images": {"allowed": ["docker.io/c/*"]}})
    assert load_config(etc / "config.yml", environ={}).allowed_images == ["docker.io/c/*"]


def test_environment_overrides_the_drop_ins(etc: Path) -> None:
    write(etc / "config.d/50.yml", {"broker": {"url": "amqp://drop-in//"}, "worker": {"queues": ["q"]}})
    cfg = load_config(etc / "config.yml", environ={"BROKER_URL": "amqp://env//"})
    assert cfg.broker.url == "amqp://env//" and cfg.node.queues == ("q",)


def test_drop_ins_apply_without_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default config path may be absent (an image with no rendered config): its config.d/ still counts."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "config.yml"))
    write(tmp_path / "config.d/50.yml", {"working_dir": str(tmp_path / "w"), "worker": {"queues": ["only-drop-in"]}})
    cfg = load_config(environ={})
    assert cfg.node.queues == ("only-drop-in",)
    assert cfg.source == f"defaults + {tmp_path / 'config.d/50.yml'}"


def test_the_source_and_farmhand_check_name_the_merged_drop_ins(etc: Path) -> None:
    first = write(etc / "config.d/10-a.yml", {"worker": {"queues": ["a"]}})
    second = write(etc / "config.d/20-b.yml", {"worker": {"queues": ["b"]}})
    name, ok, detail = next(checks(str(etc / "config.yml")))
    assert (name, ok) == ("config", True)
    assert detail == f"{etc / 'config.yml'} + {first}, {second}"
    # With none, the source is the file alone, as before.
    first.unlink(), second.unlink()
    assert load_config(etc / "config.yml", environ={}).source == str(etc / "config.yml")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"broker": {"port": "fifty"}}, "config.broker.port"),
        ({"worker": {"queus": ["x"]}}, "queus"),
        ({"limits": {"max_run_time": -1}}, "config.limits.max_run_time"),
        ("- a list\n- of things\n", "the top level must be a mapping of settings"),
        ("broker: {url: [unclosed\n", "50-bad.yml"),
        ("a: 1\na: 2\n", "50-bad.yml"),
    ],
)
def test_a_bad_drop_in_is_named_with_its_field(etc: Path, content: Any, expected: str) -> None:
    bad = write(etc / "config.d/50-bad.yml", content)
    write(etc / "config.d/40-good.yml", {"worker": {"queues": ["fine"]}})
    with pytest.raises(ConfigError) as info:
        load_config(etc / "config.yml", environ={})
    message = str(info.value)
    assert str(bad) in message, message
    assert expected in message, message
    assert "40-good.yml" not in message


def test_a_drop_in_error_hides_the_passwords(etc: Path) -> None:
    write(etc / "config.d/10-secret.yml", {"broker": {"password": "hunter2-pw"}})
    write(etc / "config.d/20-bad.yml", {"broker": {"url": "amqp://u:hunter2-pw@host//", "port": "x"}})
    with pytest.raises(ConfigError) as info:
        load_config(etc / "config.yml", environ={})
    assert "20-bad.yml" in str(info.value) and "hunter2-pw" not in str(info.value)


def test_a_combination_that_is_invalid_is_caught_after_the_merge(etc: Path) -> None:
    """Each drop-in is valid alone; the merged document is validated again before the worker uses it."""
    write(etc / "config.d/50.yml", {"firewall": {"allow": ["not-an-address"]}})
    with pytest.raises(ConfigError, match=r"config\.firewall\.allow\[0\]"):
        load_config(etc / "config.yml", environ={})


# --- secrets: 0600 drop-ins under the role's 0750 root:GROUP directory -------------------------

WORKER = (65534, 65534)  # nobody:nogroup stands in for farmhand:farmhand
OTHER = (1, 1)  # daemon: any other local user


def load_as(uid: int, gid: int, path: Path) -> dict[str, Any]:
    """load_config run by another user (a forked child that drops root), as the worker's service would."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                cfg = load_config(path, environ={})
                out = {"ok": True, "password": cfg.broker.password, "source": cfg.source}
            except ConfigError as exc:
                out = {"ok": False, "error": str(exc)}
            os.write(write_fd, json.dumps(out).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: {status}"
    return json.loads(data)


@pytest.fixture()
def role_etc() -> Iterator[Path]:
    """An /etc/farmhand laid out as the farmhand role makes it, in a directory every user may traverse."""
    if os.geteuid() != 0:
        pytest.skip("needs root: files owned by another user")
    top = Path(tempfile.mkdtemp(prefix="farmhand-etc-"))
    try:
        top.chmod(0o755)
        etc = top / "farmhand"
        for d in (etc, etc / "config.d"):
            d.mkdir()
            os.chown(d, 0, WORKER[1])
            d.chmod(0o750)
        cfg = write(etc / "config.yml", {"working_dir": str(top / "work"), "broker": {"url": "amqp://w@10.0.0.1//"}}, 0o640)
        os.chown(cfg, 0, WORKER[1])
        load_config(cfg, environ={})  # every lazy import done as root, before a child drops it
        yield etc
    finally:
        shutil.rmtree(top)


def test_a_0600_drop_in_of_the_worker_user_is_read_by_it_and_nobody_else(role_etc: Path) -> None:
    secret = write(role_etc / "config.d/50-cloud-init.yml", {"broker": {"password": "only-the-worker"}}, 0o600)
    os.chown(secret, *WORKER)
    as_worker = load_as(*WORKER, role_etc / "config.yml")
    assert as_worker["ok"] and as_worker["password"] == "only-the-worker", as_worker
    assert str(secret) in as_worker["source"]
    # Another user is stopped at the directory, and told which one.
    as_other = load_as(*OTHER, role_etc / "config.yml")
    assert not as_other["ok"] and "only-the-worker" not in json.dumps(as_other)
    assert str(role_etc) in as_other["error"], as_other
    # Reading never loosened anything.
    assert secret.stat().st_mode & 0o777 == 0o600 and (secret.stat().st_uid, secret.stat().st_gid) == WORKER


def test_a_drop_in_the_worker_cannot_read_is_named(role_etc: Path) -> None:
    """root:root 0600 (cloud-init's default owner) keeps the secret from the worker: it says which file."""
    secret = write(role_etc / "config.d/50-cloud-init.yml", {"broker": {"password": "root-only"}}, 0o600)
    as_worker = load_as(*WORKER, role_etc / "config.yml")
    assert not as_worker["ok"], as_worker
    assert str(secret) in as_worker["error"] and "cannot be read" in as_worker["error"], as_worker
    assert "root-only" not in json.dumps(as_worker)
