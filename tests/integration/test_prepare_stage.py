"""Prepare: images by pull policy and host credentials, services, caches, policy denials."""

from __future__ import annotations


import pytest

from support import BUSYBOX, Recorder, busybox_task, read_log, web_service


def _log(result) -> str:
    return read_log(result.log.location).decode()


def _count_containers(client) -> int:
    return len(client.containers.list(all=True))


def test_pull_never_on_a_missing_image(run_task, client):
    before = _count_containers(client)
    result = run_task({"image": "farmhand-test/not-built-anywhere:1", "pull": "never", "max_run_time": 10})
    assert (result.state, result.reason) == ("exception", "image-unavailable")
    assert "pull policy is 'never'" in result.message
    assert _count_containers(client) == before


def test_pull_with_host_credentials_from_a_private_registry(run_task, make_config, registry, client):
    cfg = make_config(registries={registry.host: {"username": registry.username, "password": registry.password}})
    rec = Recorder()
    result = run_task({"image": registry.image, "pull": "always", "command": ["echo", "pulled-ok"], "max_run_time": 30}, cfg, rec)
    try:
        assert result.state == "succeeded", result.message
        assert "pulled-ok" in _log(result)
        assert result.image["id"] == client.images.get(registry.image).id
        assert any(e[0] == "progress" and "pulling" in e[2] for e in rec.events)
    finally:
        client.images.remove(registry.image, force=True)


def test_wrong_registry_password_gives_image_unavailable(run_task, make_config, registry, client):
    cfg = make_config(registries={registry.host: {"username": registry.username, "password": "wrong"}})
    result = run_task({"image": registry.image, "pull": "if-not-present", "max_run_time": 30}, cfg)
    assert (result.state, result.reason) == ("exception", "image-unavailable")
    assert "unauthorized" in result.message or "authentication required" in result.message
    assert "wrong" not in result.message


def test_missing_credentials_give_image_unavailable(run_task, registry):
    result = run_task({"image": registry.image, "pull": "always", "max_run_time": 30})
    assert (result.state, result.reason) == ("exception", "image-unavailable")
    assert f"no credentials configured for {registry.host}" in result.message


def test_service_is_reachable_by_name(run_task):
    web = web_service("echo pong-from-web")
    result = run_task(busybox_task("wget -q -O- http://web:8080/", services=[web]))
    assert result.state == "succeeded", result.message
    assert "pong-from-web" in _log(result)


def test_service_that_never_gets_ready(run_task):
    svc = {
        "name": "db",
        "image": BUSYBOX,
        "pull": "never",
        "command": ["sleep", "300"],
        "readiness": {"command": ["false"], "timeout": 1.5, "interval": 0.2},
    }
    result = run_task(busybox_task("echo should-not-run", services=[svc]))
    assert (result.state, result.reason) == ("exception", "service-unready")
    assert "'db'" in result.message
    assert "run" not in result.stages


def test_cache_survives_two_tasks(run_task, client):
    name = "farmhand-it-cache"
    try:
        first = run_task(busybox_task("echo kept-across-tasks > /cache/marker", caches={name: "/cache"}))
        assert first.state == "succeeded", first.message
        second = run_task(busybox_task("cat /cache/marker", caches={name: "/cache"}))
        assert second.state == "succeeded", second.message
        assert "kept-across-tasks" in _log(second)
        assert client.volumes.get(f"farmhand-cache-{name}").attrs["Labels"]["farmhand.cache"] == name
    finally:
        client.volumes.get(f"farmhand-cache-{name}").remove(force=True)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"image": "127.0.0.2/evil/image:1"}, "task.image"),
        ({"resources": {"memory": "64g"}}, "task.resources.memory"),
        ({"max_run_time": 999999}, "task.max_run_time"),
        ({"privileged": True}, "task.privileged"),
        ({"cap_add": ["SYS_ADMIN"]}, "task.cap_add"),
        ({"mounts": [{"source": "/etc", "target": "/host-etc"}]}, "task.mounts[0].source"),
        ({"devices": ["/dev/kmsg"]}, "task.devices"),
        ({"upload": "file:///etc/"}, "task.upload"),
        ({"upload": "gopher://warehouse/"}, "task.upload"),
    ],
)
def test_policy_denials_create_nothing(run_task, make_config, client, workdir, fields, field):
    cfg = make_config(limits={"ceilings": {"memory": "1g"}, "max_run_time": 3600, "kill_grace": 1})
    before = _count_containers(client)
    doc = busybox_task("echo must-not-run")
    doc.update(fields)
    result = run_task(doc, cfg)
    assert (result.state, result.reason) == ("exception", "policy-denied")
    assert field in result.message
    assert _count_containers(client) == before
    assert not (workdir / "tasks").exists() or not any((workdir / "tasks").iterdir())
