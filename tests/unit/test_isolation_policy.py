"""The hardening of what tasks share with the host and with each other.

- Cache volumes are scoped (per queue by default): a task reaches only the
  caches of its own scope, and those ``allow.caches`` shares.
- Images: nothing runs until the operator lists patterns (``images.allowed``
  defaults to none), and an image above ``images.max_size`` is refused.
- Host mounts: a source is resolved on the host when the container is made,
  refused if a symlink lies on its way below the allowed prefix; a mount is
  writable only under a prefix the policy marks writable.

Pure where it can be: Docker is a mock; the mount checks use real files in tmp_path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from unittest import mock

import pytest
import yaml

from farmhand import policy, sandbox
from farmhand.config import DEFAULTS, WorkerConfig, load_config
from farmhand.container_run import container_options
from farmhand.errors import ConfigError, PolicyDenied
from farmhand.task import Task, parse_task

IMAGE = "farmhand-test/busybox:latest"
#: What dockerd accepts as a volume name.
DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., WorkerConfig]:
    counter = iter(range(1000))

    def _make(doc: dict[str, Any] | None = None) -> WorkerConfig:
        full: dict[str, Any] = {"working_dir": str(tmp_path / "work"), "images": {"allowed": ["farmhand-test/*"]}}
        for key, value in (doc or {}).items():
            full[key] = {**full[key], **value} if isinstance(value, dict) and isinstance(full.get(key), dict) else value
        path = tmp_path / f"config-{next(counter)}.yml"
        path.write_text(yaml.safe_dump(full))
        return load_config(path, environ={})

    return _make


def task(**fields: Any) -> Task:
    return parse_task({"image": IMAGE, "max_run_time": 10, **fields})


# -- 1. caches are scoped ------------------------------------------------------------------


def test_a_cache_volume_is_named_by_its_scope() -> None:
    assert sandbox.cache_volume_name("pip", "small") != sandbox.cache_volume_name("pip", "large")
    assert sandbox.cache_volume_name("pip", "small") == sandbox.cache_volume_name("pip", "small")
    assert sandbox.cache_volume_name("pip", "small") == "farmhand-cache-small-pip"
    # Shared (scope None) is a volume of its own, no scope's.
    assert sandbox.cache_volume_name("pip", None) not in {sandbox.cache_volume_name("pip", s) for s in ("local", "shared", "_shared", "*", "")}


@pytest.mark.parametrize(
    "scope", ["default", "kill-run-1234abcd", "a b/c", "ünïcödé", "", "*", "x" * 300, "../../etc", "a.b", "_shared", "q:1"]
)
def test_every_scope_gives_a_valid_docker_volume_name(scope: str) -> None:
    name = sandbox.cache_volume_name("apt-cache.v2", scope)
    assert DOCKER_NAME.match(name), name
    assert len(name) <= 200
    assert name.startswith("farmhand-cache-")


def test_scopes_and_names_never_run_together() -> None:
    """scope a-b + cache c must not be scope a + cache b-c: one could read the other's volume."""
    pairs = [("a-b", "c"), ("a", "b-c"), ("a.b", "c"), ("a", "b.c"), ("a_b", "c"), ("a", "_b-c"), ("A", "c"), ("a", "c")]
    names = [sandbox.cache_volume_name(name, scope) for scope, name in pairs]
    assert len(set(names)) == len(names), names
    escaped = ["q:1", "q;1", "q/1", "q 1", "Q:1"]
    assert len({sandbox.cache_volume_name("c", s) for s in escaped}) == len(escaped)


def test_cache_volumes_are_labelled_for_a_later_gc() -> None:
    client = mock.Mock()
    client.volumes.get.side_effect = sandbox.NotFound("no such volume")
    binds = sandbox.ensure_caches(client, [sandbox.CacheVolume("pip", "small", "/root/.cache/pip"), sandbox.CacheVolume("apt", None, "/var/cache/apt")])
    created = {c.args[0]: c.kwargs["labels"] for c in client.volumes.create.call_args_list}
    assert created == {
        "farmhand-cache-small-pip": {"farmhand.cache": "pip", "farmhand.cache.scope": "small"},
        sandbox.cache_volume_name("apt", None): {"farmhand.cache": "apt", "farmhand.cache.scope": "*"},
    }
    assert binds["farmhand-cache-small-pip"] == {"bind": "/root/.cache/pip", "mode": "rw"}


def test_a_volume_of_that_name_made_by_someone_else_is_not_used() -> None:
    client = mock.Mock()
    client.volumes.get.return_value = SimpleNamespace(attrs={"Labels": {"farmhand.cache": "pip"}})
    with pytest.raises(Exception, match="farmhand-cache-small-pip"):
        sandbox.ensure_caches(client, [sandbox.CacheVolume("pip", "small", "/c")])
    client.volumes.get.return_value = SimpleNamespace(attrs={"Labels": {"farmhand.cache": "pip", "farmhand.cache.scope": "small"}})
    assert list(sandbox.ensure_caches(client, [sandbox.CacheVolume("pip", "small", "/c")])) == ["farmhand-cache-small-pip"]


@pytest.mark.parametrize(
    ("setting", "scoped", "shared", "scopes"),
    [
        (True, True, (), {}),
        (False, False, (), {}),
        (["pip", "apt-*"], True, ("pip", "apt-*"), {}),
        ({"scoped": False, "shared": ["pip"]}, False, ("pip",), {}),
        ({"scopes": {"small": "team-a", "large": "team-a"}}, True, (), {"small": "team-a", "large": "team-a"}),
    ],
)
def test_allow_caches_takes_a_bool_a_list_or_a_mapping(make_config, setting, scoped, shared, scopes) -> None:
    cfg = make_config({"allow": {"caches": setting}})
    assert (cfg.caches.scoped, cfg.caches.shared, cfg.caches.scopes) == (scoped, shared, scopes)
    assert cfg.allow_caches is (scoped or bool(shared))


@pytest.mark.parametrize("setting", ["yes", [""], ["a b"], {"shared": "pip"}, {"scopes": {"q": ""}}, {"other": 1}, [1]])
def test_bad_allow_caches_names_the_field(make_config, setting) -> None:
    with pytest.raises(ConfigError, match=r"config\.allow\.caches"):
        make_config({"allow": {"caches": setting}})


def test_by_default_a_task_gets_its_scopes_volume(make_config) -> None:
    cfg = make_config()
    t = task(caches={"pip": "/root/.cache/pip"})
    assert policy.violations(cfg, t) == []
    [vol] = policy.cache_volumes(cfg, t, "small")
    assert (vol.name, vol.scope, vol.target, vol.volume) == ("pip", "small", "/root/.cache/pip", "farmhand-cache-small-pip")
    assert policy.cache_volumes(cfg, t, "large")[0].volume == "farmhand-cache-large-pip"


def test_listed_caches_are_shared_and_the_rest_scoped(make_config) -> None:
    cfg = make_config({"allow": {"caches": ["pip", "apt-*"]}})
    t = task(caches={"pip": "/p", "apt-debian": "/a", "npm": "/n"})
    assert policy.violations(cfg, t) == []
    small = {v.name: v.volume for v in policy.cache_volumes(cfg, t, "small")}
    large = {v.name: v.volume for v in policy.cache_volumes(cfg, t, "large")}
    assert small["pip"] == large["pip"] == sandbox.cache_volume_name("pip", None)
    assert small["apt-debian"] == large["apt-debian"]
    assert small["npm"] != large["npm"]


def test_queues_the_policy_puts_in_one_namespace_share_their_caches(make_config) -> None:
    cfg = make_config({"allow": {"caches": {"scopes": {"small": "team-a", "large": "team-a"}}}})
    t = task(caches={"pip": "/p"})
    vols = {q: policy.cache_volumes(cfg, t, q)[0] for q in ("small", "large", "other")}
    assert vols["small"].volume == vols["large"].volume == sandbox.cache_volume_name("pip", "team-a")
    assert vols["small"].scope == "team-a"
    assert vols["other"].volume == "farmhand-cache-other-pip"


def test_only_shared_caches_when_scoped_ones_are_off(make_config) -> None:
    cfg = make_config({"allow": {"caches": {"scoped": False, "shared": ["pip"]}}})
    assert policy.violations(cfg, task(caches={"pip": "/p"})) == []
    found = policy.violations(cfg, task(caches={"pip": "/p", "npm": "/n"}))
    assert len(found) == 1 and found[0].startswith("task.caches.npm: "), found


def test_caches_off(make_config) -> None:
    cfg = make_config({"allow": {"caches": False}})
    assert [v.split(":")[0] for v in policy.violations(cfg, task(caches={"pip": "/p"}))] == ["task.caches"]


def test_the_engine_takes_a_cache_scope_and_run_task_is_local(make_config) -> None:
    from farmhand.engine import Engine

    cfg = make_config()
    assert Engine(cfg, mock.Mock(), networks=mock.Mock()).cache_scope == "local"
    assert Engine(cfg, mock.Mock(), networks=mock.Mock(), cache_scope="small").cache_scope == "small"


def test_the_node_scopes_a_task_by_the_queue_it_came_from(make_config) -> None:
    from farmhand.dispatch.node import Node

    cfg = make_config()
    node = SimpleNamespace(config=cfg, client=mock.Mock(), networks=mock.Mock(), devices=mock.Mock())
    assert Node.engine_for(node, "t1", {"queue": "small"}).cache_scope == "small"
    assert Node.engine_for(node, "t2", {"queue": "large"}).cache_scope == "large"
    unknown = Node.engine_for(node, "t3", {}).cache_scope
    assert unknown not in ("local", "small", "large", "default")


# -- 2. images: none until listed, and bounded in size -----------------------------------------


def test_no_image_is_allowed_until_the_operator_lists_some(tmp_path: Path) -> None:
    assert DEFAULTS["images"]["allowed"] == []
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work")}))
    cfg = load_config(path, environ={})
    found = policy.violations(cfg, task())
    assert len(found) == 1 and found[0].startswith(f"task.image: {IMAGE!r}"), found
    assert "images.allowed is empty" in found[0]


def test_a_listed_pattern_still_allows(make_config) -> None:
    assert policy.violations(make_config(), task()) == []


def image_client(size: Any) -> mock.Mock:
    client = mock.Mock(spec_set=["images", "api"])
    client.images.get.return_value = SimpleNamespace(id="sha256:feed", attrs={"Size": size})
    return client


def test_max_size_defaults_to_20g_and_null_is_unbounded(make_config) -> None:
    assert DEFAULTS["images"]["max_size"] == "20g"
    assert make_config().max_image_size == 20 << 30
    assert make_config({"images": {"max_size": None}}).max_image_size is None
    assert make_config({"images": {"max_size": "512m"}}).max_image_size == 512 << 20
    with pytest.raises(ConfigError, match=r"config\.images\.max_size"):
        make_config({"images": {"max_size": "huge"}})


def test_an_image_above_max_size_is_refused_before_any_container(make_config) -> None:
    from farmhand.images import ensure_image

    cfg = make_config({"images": {"max_size": "1m"}})
    for pull in ("never", "if-not-present"):
        with pytest.raises(PolicyDenied) as info:
            ensure_image(image_client((1 << 20) + 1), cfg, IMAGE, pull)
        assert info.value.reason == "policy-denied"
        assert IMAGE in info.value.message and "images.max_size" in info.value.message and "1m" in info.value.message
    assert ensure_image(image_client(1 << 20), cfg, IMAGE, "never") == "sha256:feed"
    unbounded = make_config({"images": {"max_size": None}})
    assert ensure_image(image_client(1 << 45), unbounded, IMAGE, "never") == "sha256:feed"


def test_an_image_pulled_above_max_size_is_refused(make_config) -> None:
    from farmhand.images import ensure_image

    cfg = make_config({"images": {"max_size": "1m"}})
    client = image_client(5 << 20)
    client.api.pull.return_value = iter([{"status": "done"}])
    with pytest.raises(PolicyDenied, match="images.max_size"):
        ensure_image(client, cfg, IMAGE, "always")


# -- 3. host mounts: resolved at mount time, writable only where the policy says -------------------


def test_host_mounts_take_paths_and_writable_prefixes(make_config) -> None:
    cfg = make_config({"allow": {"host_mounts": ["/srv/ro", {"path": "/srv/rw", "writable": True}, {"path": "/srv/also-ro"}]}})
    assert cfg.allowed_host_mounts == ["/srv/ro", "/srv/rw", "/srv/also-ro"]
    assert [(m.path, m.writable) for m in cfg.host_mounts] == [("/srv/ro", False), ("/srv/rw", True), ("/srv/also-ro", False)]
    with pytest.raises(ConfigError, match=r"config\.allow\.host_mounts"):
        make_config({"allow": {"host_mounts": [{"path": "relative"}]}})
    with pytest.raises(ConfigError, match=r"config\.allow\.host_mounts"):
        make_config({"allow": {"host_mounts": [{"path": "/x", "writable": "yes"}]}})


def test_a_writable_mount_needs_a_writable_prefix(make_config) -> None:
    cfg = make_config({"allow": {"host_mounts": ["/srv/ro", {"path": "/srv/rw", "writable": True}]}})
    assert policy.violations(cfg, task(mounts=[{"source": "/srv/ro/a", "target": "/a"}])) == []
    assert policy.violations(cfg, task(mounts=[{"source": "/srv/rw/a", "target": "/a", "read_only": False}])) == []
    found = policy.violations(cfg, task(mounts=[{"source": "/srv/ro/a", "target": "/a", "read_only": False}]))
    assert len(found) == 1 and found[0].startswith("task.mounts[0].read_only: "), found
    assert "/srv/ro" in found[0]


def test_a_read_only_prefix_inside_a_writable_one_stays_read_only(make_config) -> None:
    cfg = make_config({"allow": {"host_mounts": [{"path": "/srv/rw", "writable": True}, "/srv/rw/golden"]}})
    found = policy.violations(cfg, task(mounts=[{"source": "/srv/rw/golden/x", "target": "/a", "read_only": False}]))
    assert [v.split(":")[0] for v in found] == ["task.mounts[0].read_only"]


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """An allowed prefix, a directory outside it, and a symlink a task left inside pointing out."""
    root = tmp_path / "shared"
    (root / "ok" / "deeper").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "esc")
    os.symlink("/", root / "root")
    os.symlink("deeper", root / "ok" / "rel")
    (root / "ok" / "file.txt").write_text("x")
    return root


def options(cfg: WorkerConfig, t: Task) -> dict[str, Any]:
    return container_options(cfg, t, policy.effective_resources(cfg, t), None, {})


def bind_sources(opts: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = [(m["Source"], m["Target"], bool(m.get("ReadOnly"))) for m in opts.get("mounts") or []]
    out += [(src, spec["bind"], spec["mode"] == "ro") for src, spec in (opts.get("volumes") or {}).items() if src.startswith("/")]
    return out


@pytest.mark.parametrize(
    "source",
    ["esc", "esc/etc", "root", "root/etc", "ok/rel", "ok/rel/x", "ok/../esc"],
)
def test_a_symlink_on_the_way_is_refused_at_mount_time(make_config, shared: Path, source: str) -> None:
    cfg = make_config({"allow": {"host_mounts": [{"path": str(shared), "writable": True}]}})
    t = task(mounts=[{"source": f"{shared}/{source}", "target": "/host", "read_only": False}])
    assert policy.violations(cfg, t) == []  # by name it lies under the prefix: only the host can tell
    with pytest.raises(PolicyDenied) as info:
        options(cfg, t)
    assert info.value.errors[0].startswith("task.mounts[0].source: "), info.value.errors
    assert "symbolic link" in info.value.errors[0] or "outside" in info.value.errors[0]


def test_a_plain_directory_is_mounted_by_its_resolved_path(make_config, shared: Path, tmp_path: Path) -> None:
    # The operator's own prefix may go through a link: only what lies below it is the tasks' doing.
    os.symlink(shared, tmp_path / "via-link")
    cfg = make_config({"allow": {"host_mounts": [str(tmp_path / "via-link"), {"path": str(shared / "ok"), "writable": True}]}})
    t = task(
        mounts=[
            {"source": str(tmp_path / "via-link" / "ok" / "deeper"), "target": "/a"},
            {"source": f"{shared}/ok/./deeper/../file.txt", "target": "/b", "read_only": False},
        ]
    )
    assert bind_sources(options(cfg, t)) == [(str(shared / "ok" / "deeper"), "/a", True), (str(shared / "ok" / "file.txt"), "/b", False)]


def test_a_missing_source_is_refused_not_created(make_config, shared: Path) -> None:
    cfg = make_config({"allow": {"host_mounts": [str(shared)]}})
    with pytest.raises(PolicyDenied, match=r"task\.mounts\[0\]\.source: .*does not exist"):
        options(cfg, task(mounts=[{"source": f"{shared}/nothing/here", "target": "/a"}]))
    assert not (shared / "nothing").exists()


def test_a_read_only_prefix_a_task_replaced_by_a_link_is_refused(make_config, tmp_path: Path) -> None:
    """/srv/rw writable and /srv/rw/golden read-only: a task with /srv/rw may swap golden for a link."""
    rw = tmp_path / "rw"
    rw.mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", rw / "golden")
    cfg = make_config({"allow": {"host_mounts": [{"path": str(rw), "writable": True}, str(rw / "golden")]}})
    with pytest.raises(PolicyDenied, match="symbolic link"):
        options(cfg, task(mounts=[{"source": str(rw / "golden"), "target": "/a"}]))


def test_the_mount_check_is_repeated_against_the_policy(make_config, shared: Path) -> None:
    """container_options refuses what the policy refuses, whoever called it."""
    cfg = make_config({"allow": {"host_mounts": [str(shared)]}})
    with pytest.raises(PolicyDenied, match=r"task\.mounts\[0\]\.read_only"):
        options(cfg, task(mounts=[{"source": f"{shared}/ok", "target": "/a", "read_only": False}]))
    with pytest.raises(PolicyDenied, match=r"task\.mounts\[0\]\.source"):
        options(cfg, task(mounts=[{"source": "/etc", "target": "/a"}]))


def test_no_network_makes_no_docker_network_and_a_bridge_task_joins_its_own(make_config) -> None:
    cfg = make_config({})
    t = task()
    none = options(cfg, t)
    assert (none["network_mode"], none["network_disabled"]) == ("none", True)  # no sandbox, endpoint or setkey hook
    assert "network" not in none
    bridge = container_options(cfg, t, policy.effective_resources(cfg, t), "farmhand-net-1", {})
    assert bridge["network"] == "farmhand-net-1" and "network_mode" not in bridge and "network_disabled" not in bridge


def test_a_container_without_network_gets_dockers_hosts_file() -> None:
    import io
    import tarfile

    from farmhand.container_run import NO_NETWORK_HOSTS, give_hosts_file

    calls: list[tuple[str, str, bytes]] = []

    class Api:
        def put_archive(self, cid: str, path: str, data: bytes) -> None:
            calls.append((cid, path, data))

    class Client:
        api = Api()

    give_hosts_file(Client(), "c1", {"network": "farmhand-net-1"})  # type: ignore[arg-type]
    assert calls == []  # Docker writes a networked container's own
    give_hosts_file(Client(), "c1", {"network_mode": "none", "network_disabled": True})  # type: ignore[arg-type]
    [(cid, path, data)] = calls
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        [entry] = tar.getmembers()
        assert (cid, path, entry.name, entry.mode, entry.uid) == ("c1", "/", "etc/hosts", 0o644, 0)
        assert tar.extractfile(entry).read().decode() == NO_NETWORK_HOSTS  # type: ignore[union-attr]
    assert NO_NETWORK_HOSTS.startswith("127.0.0.1\tlocalhost\n")
