"""Prepare: images by pull policy and host credentials, services, caches, policy denials."""

from __future__ import annotations

import os
import uuid

import pytest
import yaml

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
        # run-task's scope (the engine's default) is "local"; a worker's is the task's queue.
        labels = client.volumes.get(f"farmhand-cache-local-{name}").attrs["Labels"]
        assert (labels["farmhand.cache"], labels["farmhand.cache.scope"]) == (name, "local")
    finally:
        _remove_cache_volumes(client, name)


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


# -- what tasks share: scoped caches, listed and bounded images, resolved host mounts ----------


def _remove_cache_volumes(client, name: str) -> None:
    for vol in client.volumes.list(filters={"label": f"farmhand.cache={name}"}):
        vol.remove(force=True)


def test_a_cache_is_scoped_to_the_queue_of_its_task(client, config):
    """A task of queue B neither reads nor poisons the cache of queue A under the same name."""
    from farmhand.engine import Engine

    name = f"farmhand-it-scoped-{uuid.uuid4().hex[:8]}"
    caches = {name: "/cache"}
    try:
        a = Engine(config, client, cache_scope="queue-a").run(busybox_task("echo secret-of-a > /cache/marker", caches=caches))
        assert a.state == "succeeded", a.message
        b = Engine(config, client, cache_scope="queue-b").run(busybox_task("cat /cache/marker 2>/dev/null || echo no-marker; echo poison > /cache/marker", caches=caches))
        assert b.state == "succeeded", b.message
        assert "no-marker" in _log(b) and "secret-of-a" not in _log(b)
        again = Engine(config, client, cache_scope="queue-a").run(busybox_task("cat /cache/marker", caches=caches))
        assert again.state == "succeeded", again.message
        assert "secret-of-a" in _log(again) and "poison" not in _log(again)
        scopes = {v.attrs["Labels"].get("farmhand.cache.scope") for v in client.volumes.list(filters={"label": f"farmhand.cache={name}"})}
        assert scopes == {"queue-a", "queue-b"}
    finally:
        _remove_cache_volumes(client, name)


def test_a_cache_the_policy_shares_is_one_volume_for_every_queue(client, make_config):
    from farmhand.engine import Engine

    name = f"farmhand-it-shared-{uuid.uuid4().hex[:8]}"
    cfg = make_config(allow={"caches": [name]})
    try:
        a = Engine(cfg, client, cache_scope="queue-a").run(busybox_task("echo from-a > /cache/marker", caches={name: "/cache"}))
        assert a.state == "succeeded", a.message
        b = Engine(cfg, client, cache_scope="queue-b").run(busybox_task("cat /cache/marker", caches={name: "/cache"}))
        assert b.state == "succeeded", b.message
        assert "from-a" in _log(b)
        [vol] = client.volumes.list(filters={"label": f"farmhand.cache={name}"})
        assert vol.attrs["Labels"]["farmhand.cache.scope"] == "*"
    finally:
        _remove_cache_volumes(client, name)


def test_a_worker_with_no_image_listed_runs_none(run_task, client, tmp_path, workdir):
    from farmhand.config import load_config

    path = tmp_path / "bare.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(workdir)}))
    result = run_task(busybox_task("echo must-not-run"), load_config(path, environ={}))
    assert (result.state, result.reason) == ("exception", "policy-denied")
    assert f"task.image: {BUSYBOX!r}" in result.message and "images.allowed is empty" in result.message
    assert "run" not in result.stages and result.workspace is None


def test_an_image_above_max_size_never_starts(run_task, make_config, client):
    cfg = make_config(images={"max_size": "1k"})
    rec = Recorder()
    result = run_task(busybox_task("echo must-not-run", services=[web_service("echo nope")]), cfg, rec)
    assert (result.state, result.reason) == ("exception", "policy-denied")
    assert BUSYBOX in result.message and "images.max_size" in result.message
    assert "run" not in result.stages
    assert not [e for e in rec.events if "started" in e[-1]], rec.events  # neither the service nor the task


@pytest.fixture
def host_dirs(tmp_path):
    """An allowed prefix (world-writable, as a shared directory is) and a directory outside it holding a secret."""
    shared, outside = tmp_path / "shared", tmp_path / "outside"
    shared.mkdir()
    outside.mkdir()
    shared.chmod(0o777)
    (outside / "secret").write_text("host-secret\n")
    return shared, outside


def test_a_symlink_a_task_left_in_a_writable_mount_does_not_reach_the_host(run_task, make_config, host_dirs):
    shared, outside = host_dirs
    cfg = make_config(allow={"host_mounts": [{"path": str(shared), "writable": True}]})
    mount = {"source": str(shared), "target": "/shared", "read_only": False}
    first = run_task(busybox_task(f"ln -s {outside} /shared/esc", mounts=[mount]), cfg)
    assert first.state == "succeeded", first.message
    assert (shared / "esc").is_symlink()
    second = run_task(busybox_task("echo pwned > /host/pwned", mounts=[{"source": f"{shared}/esc", "target": "/host", "read_only": False}]), cfg)
    assert (second.state, second.reason) == ("exception", "policy-denied")
    assert "task.mounts[0].source" in second.message and "symbolic link" in second.message
    assert not (outside / "pwned").exists()


def test_a_symlink_under_a_read_only_prefix_does_not_reach_the_host(run_task, make_config, host_dirs):
    shared, outside = host_dirs
    os.symlink(outside, shared / "esc")  # left by whoever could write there
    cfg = make_config(allow={"host_mounts": [str(shared)]})
    result = run_task(busybox_task("cat /host/secret", mounts=[{"source": f"{shared}/esc", "target": "/host"}]), cfg)
    assert (result.state, result.reason) == ("exception", "policy-denied")
    assert "symbolic link" in result.message
    assert result.log is None or "host-secret" not in _log(result)


def test_a_plain_prefix_is_mounted_read_only_and_not_writable(run_task, make_config, host_dirs):
    shared, _ = host_dirs
    (shared / "data").mkdir()
    (shared / "data" / "in.txt").write_text("input-data\n")
    cfg = make_config(allow={"host_mounts": [str(shared)]})
    ok = run_task(busybox_task("cat /in/in.txt; touch /in/new 2>/dev/null && echo wrote || echo read-only", mounts=[{"source": f"{shared}/data", "target": "/in"}]), cfg)
    assert ok.state == "succeeded", ok.message
    assert "input-data" in _log(ok) and "read-only" in _log(ok)
    asked = run_task(busybox_task("touch /in/new", mounts=[{"source": f"{shared}/data", "target": "/in", "read_only": False}]), cfg)
    assert (asked.state, asked.reason) == ("exception", "policy-denied")
    assert "task.mounts[0].read_only" in asked.message
    assert not (shared / "data" / "new").exists()
