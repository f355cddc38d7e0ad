"""The worker as a container image: configured by env alone, and errors about host-only things say what the
container lacks (``farmhand.in_container``) there, and only there."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from farmhand import firewall, in_container, sandbox
from farmhand.config import HostMountRule, load_config
from farmhand.devices import AUDIO, DeviceUnavailable, DevicePool
from farmhand.errors import ConfigError, PolicyDenied


def test_a_worker_configured_by_env_alone_runs_the_images_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("farmhand.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.yml"))  # no config file at all
    cfg = load_config(environ={"FARMHAND_IMAGES_ALLOWED": " farmhand-test/* ,docker.io/openzim/*,, ", "WORKING_DIR": str(tmp_path / "w")})
    assert cfg.source == "defaults"
    assert cfg.allowed_images == ["farmhand-test/*", "docker.io/openzim/*"]
    assert cfg.working_dir == tmp_path / "w"


def test_images_allowed_from_the_environment_replaces_the_files_list(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"images": {"allowed": ["docker.io/*"]}}))
    assert load_config(path, environ={"FARMHAND_IMAGES_ALLOWED": "ghcr.io/openzim/*"}).allowed_images == ["ghcr.io/openzim/*"]
    assert load_config(path, environ={"FARMHAND_IMAGES_ALLOWED": ""}).allowed_images == ["docker.io/*"]


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), ("", False), ("0", False), ("false", False), (None, False)])
def test_only_the_images_variable_says_container(value: str | None, expected: bool) -> None:
    environ = {} if value is None else {in_container.ENV: value}
    assert in_container.in_container(environ) is expected
    assert bool(in_container.hint("advice", environ)) is expected


def test_a_missing_host_mount_source_in_the_container_says_to_mount_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = (HostMountRule(str(tmp_path), writable=False),)
    monkeypatch.delenv(in_container.ENV, raising=False)
    with pytest.raises(PolicyDenied) as on_host:
        sandbox.resolve_host_mount(f"{tmp_path}/data", rules, writable=False, field="task.mounts[0].source")
    assert "does not exist on this host" in on_host.value.errors[0] and "container" not in on_host.value.errors[0]
    monkeypatch.setenv(in_container.ENV, "1")
    with pytest.raises(PolicyDenied) as in_image:
        sandbox.resolve_host_mount(f"{tmp_path}/data", rules, writable=False, field="task.mounts[0].source")
    assert in_image.value.errors[0].startswith("task.mounts[0].source: ")
    assert "mount each allow.host_mounts path at the same path" in in_image.value.errors[0]


def test_no_sound_card_in_the_container_says_docker_hides_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = DevicePool([], tmp_path / "locks")
    monkeypatch.setenv(in_container.ENV, "1")
    with pytest.raises(DeviceUnavailable, match=r"no loopback audio device.*systempaths=unconfined.*/run/farmhand"):
        pool.acquire(tmp_path / "task", [AUDIO], 0, threading.Event())


def test_the_firewall_line_in_the_container_says_where_to_apply_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall.os, "geteuid", lambda: 10001)
    monkeypatch.delenv(in_container.ENV, raising=False)
    assert "--cap-add NET_ADMIN" not in firewall.host_check(object())[2]
    monkeypatch.setenv(in_container.ENV, "1")
    name, ok, detail = firewall.host_check(object())
    assert (name, ok) == ("firewall", True) and detail.startswith("not checked")
    assert "--network host --cap-add NET_ADMIN" in detail and "farmhand firewall apply" in detail


def test_an_unreachable_engine_in_the_container_says_to_mount_the_socket_and_give_its_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from farmhand.docker_client import connect

    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "w"), "docker": {"base_url": f"unix://{tmp_path}/no-docker.sock"}}))
    cfg = load_config(path, environ={})
    monkeypatch.setenv(in_container.ENV, "1")
    with pytest.raises(ConfigError, match=r"^docker: cannot reach the Docker engine .*--group-add .*--user 0"):
        connect(cfg)
    monkeypatch.delenv(in_container.ENV)
    with pytest.raises(ConfigError) as on_host:
        connect(cfg)
    assert "--group-add" not in str(on_host.value)


def test_a_working_dir_the_worker_cannot_lock_stops_it_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    from farmhand import cli

    not_a_dir = tmp_path / "work"
    not_a_dir.write_text("")  # as unusable to the worker as a directory it may not write
    monkeypatch.setattr("farmhand.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.yml"))
    monkeypatch.setenv("WORKING_DIR", str(not_a_dir))
    monkeypatch.setenv(in_container.ENV, "1")
    for name in ("FARMHAND_CONFIG", "BROKER_URL", "FARMHAND_UPLOAD_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["worker"]) == 4
    err = capfd.readouterr().err
    assert err.startswith(f"farmhand: WORKING_DIR {not_a_dir}: cannot take its lock as uid ") and "chown 10001:10001" in err
    assert "Traceback" not in err
