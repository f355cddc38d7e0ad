"""Worker configuration loading and the host policy applied to tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from farmhand import config as config_module
from farmhand import policy
from farmhand.config import WorkerConfig, load_config
from farmhand.resources import HostCapacity, Resources
from farmhand.errors import ConfigError, PolicyDenied
from farmhand.task import Task, parse_task

IMAGE = "farmhand-test/busybox:latest"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., WorkerConfig]:
    counter = iter(range(1000))

    def _make(doc: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> WorkerConfig:
        # No image is allowed until listed (images.allowed defaults to none): the tests' image is.
        full: dict[str, Any] = {"working_dir": str(tmp_path / "work"), "images": {"allowed": ["farmhand-test/*"]}}
        full.update(doc or {})
        path = tmp_path / f"config-{next(counter)}.yml"
        path.write_text(yaml.safe_dump(full))
        return load_config(path, environ=environ or {})

    return _make


def task(**fields: Any) -> Task:
    return parse_task({"image": IMAGE, "max_run_time": 10, **fields})


# -- config loading ---------------------------------------------------------------------


def test_config_file_values_are_typed(make_config: Callable[..., WorkerConfig], tmp_path: Path) -> None:
    cfg = make_config(
        {
            "images": {"allowed": ["farmhand-test/*"], "pull_attempts": 5},
            "limits": {"max_run_time": 600, "ceilings": {"memory": "1g", "cpus": 2}, "defaults": {"memory": "256m"}},
            "logs": {"max_bytes": "10m"},
            "allow": {"host_mounts": ["/srv/ok"]},
        }
    )
    assert cfg.working_dir == tmp_path / "work"
    assert cfg.tasks_dir == tmp_path / "work" / "tasks"
    assert cfg.allowed_images == ["farmhand-test/*"]
    assert cfg.pull_attempts == 5
    assert cfg.pull_backoff == 2.0  # default kept where the file says nothing
    assert cfg.max_run_time == 600
    assert cfg.ceilings.memory == 1 << 30 and cfg.ceilings.cpus == 2.0
    assert cfg.ceilings.pids == 65536  # merged with the defaults' ceilings
    assert cfg.default_resources.memory == 256 << 20 and cfg.default_resources.pids == 4096
    assert cfg.log_max_bytes == 10 << 20
    assert cfg.allowed_host_mounts == ["/srv/ok"]
    assert cfg.upload_default == (tmp_path / "work" / "warehouse").as_uri() + "/"
    assert cfg.source.endswith(".yml")


def test_env_working_dir_overrides_file(make_config: Callable[..., WorkerConfig], tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    cfg = make_config(environ={"WORKING_DIR": str(other)})
    assert cfg.working_dir == other
    assert cfg.upload_default == other.joinpath("warehouse").as_uri() + "/"


def test_env_overrides_other_keys(make_config: Callable[..., WorkerConfig]) -> None:
    cfg = make_config(
        {"upload": {"default": "file:///a/"}},
        environ={"FARMHAND_LOG_MAX_BYTES": "2k", "FARMHAND_UPLOAD_DEFAULT": "file:///b/", "FARMHAND_KILL_GRACE": "2.5"},
    )
    assert cfg.log_max_bytes == 2048
    assert cfg.upload_default == "file:///b/"
    assert cfg.kill_grace == 2.5


def test_empty_env_value_does_not_override(make_config: Callable[..., WorkerConfig], tmp_path: Path) -> None:
    cfg = make_config(environ={"WORKING_DIR": ""})
    assert cfg.working_dir == tmp_path / "work"


def test_farmhand_config_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "via-env.yml"
    path.write_text(yaml.safe_dump({"working_dir": "/data/fh", "limits": {"max_run_time": 77}}))
    cfg = load_config(None, environ={"FARMHAND_CONFIG": str(path)})
    assert cfg.max_run_time == 77
    assert cfg.working_dir == Path("/data/fh")
    assert cfg.source == str(path)


def test_farmhand_config_env_missing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, environ={"FARMHAND_CONFIG": str(path)})


def test_explicit_missing_path_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_no_file_at_default_path_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "no-such" / "config.yml"))
    cfg = load_config(None, environ={})
    assert cfg.source == "defaults"
    assert cfg.working_dir == Path(config_module.DEFAULTS["working_dir"])
    assert cfg.max_run_time == config_module.DEFAULTS["limits"]["max_run_time"]
    assert cfg.allowed_images == []
    assert cfg.max_image_size == 20 << 30
    assert cfg.allow_privileged is False and cfg.allow_caches is True
    assert cfg.container_capabilities == config_module.DEFAULT_CAPABILITIES


def test_file_at_default_path_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yml"
    path.write_text("limits: {max_run_time: 5}\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(path))
    cfg = load_config(None, environ={})
    assert cfg.max_run_time == 5 and cfg.source == str(path)


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("")
    cfg = load_config(path, environ={"WORKING_DIR": str(tmp_path)})
    assert cfg.max_run_time == 86400 and cfg.working_dir == tmp_path


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"limits": {"max_run_time": 0}}, "config.limits.max_run_time"),
        ({"limits": {"max_run_time": "1h"}}, "config.limits.max_run_time"),
        ({"limits": {"ceilings": {"memory": "12x"}}}, "config.limits.ceilings.memory"),
        ({"limits": {"ceilings": {"memory": "101%"}}}, "config.limits.ceilings.memory"),
        ({"limits": {"defaults": {"memory": "0%"}}}, "config.limits.defaults.memory"),
        ({"limits": {"ceilings": {"cpus": "150%"}}}, "config.limits.ceilings.cpus"),
        ({"working_dir": "relative/dir"}, "config.working_dir"),
        ({"images": {"allowed": "farmhand-test/*"}}, "config.images.allowed"),
        ({"allow": {"privileged": "yes"}}, "config.allow.privileged"),
        ({"upload": {"default": "not-a-uri"}}, "config.upload.default"),
        ({"unknown_section": {}}, "config.unknown_section: unknown field"),
        ({"limits": {"kill_grace": -1}}, "config.limits.kill_grace"),
        ({"registries": {"r.example": {"username": "u"}}}, "config.registries.r.example.password: required field is missing"),
    ],
)
def test_bad_config_value_names_the_field(tmp_path: Path, doc: dict[str, Any], field: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({"FARMHAND_KILL_GRACE": "soon"}, "FARMHAND_KILL_GRACE"),
        ({"FARMHAND_KILL_GRACE": "-3"}, "config.limits.kill_grace"),
        ({"WORKING_DIR": "relative"}, "config.working_dir"),
        ({"FARMHAND_LOG_MAX_BYTES": "lots"}, "config.logs.max_bytes"),
    ],
)
def test_bad_env_override_names_it(tmp_path: Path, environ: dict[str, str], name: str) -> None:
    path = tmp_path / "ok.yml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    assert name in str(info.value)


def test_config_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path, environ={})


def test_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("limits: {max_run_time: 5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, environ={})


# -- policy ----------------------------------------------------------------------------

STRICT: dict[str, Any] = {
    "images": {"allowed": ["farmhand-test/*", "registry.example.org/team/*"]},
    "limits": {
        "max_run_time": 3600,
        "ceilings": {"cpus": 2, "memory": "1g", "pids": 256, "shm_size": "128m", "ulimits": {"nofile": 4096}},
    },
    "allow": {
        "privileged": False,
        "capabilities": ["SYS_PTRACE"],
        "host_mounts": ["/srv/ok", "/data/shared/", {"path": "/srv/scratch", "writable": True}],
        "devices": ["/dev/fuse"],
        "caches": False,
    },
    "upload": {"allowed_targets": ["file:///srv/warehouse/", "sftp://up@store.example.org/drop"]},
}


@pytest.fixture
def strict(make_config: Callable[..., WorkerConfig]) -> WorkerConfig:
    return make_config(STRICT)


DENIALS: list[tuple[str, dict[str, Any], str]] = [
    ("image", {"image": "docker.io/library/alpine:3"}, "task.image: 'docker.io/library/alpine:3' matches none"),
    ("image prefix only", {"image": "farmhand-testing/x"}, "task.image"),
    ("service image", {"services": [{"name": "db", "image": "ok/no"}]}, "task.services[0].image: 'ok/no' matches none"),
    ("max_run_time", {"max_run_time": 3601}, "task.max_run_time: 3601s is above this worker's ceiling of 3600s"),
    ("memory", {"resources": {"memory": "2g"}}, "task.resources.memory: 2g is above this worker's ceiling of 1g"),
    ("memory by one byte", {"resources": {"memory": (1 << 30) + 1}}, "task.resources.memory"),
    ("cpus", {"resources": {"cpus": 2.5}}, "task.resources.cpus: 2.5 is above this worker's ceiling of 2"),
    ("pids", {"resources": {"pids": 257}}, "task.resources.pids: 257 is above this worker's ceiling of 256"),
    ("shm_size", {"resources": {"shm_size": "256m"}}, "task.resources.shm_size: 256m is above this worker's ceiling of 128m"),
    ("ulimit hard", {"resources": {"ulimits": {"nofile": {"soft": 10, "hard": 4097}}}}, "task.resources.ulimits.nofile: 4097 is above"),
    ("ulimit int", {"resources": {"ulimits": {"nofile": 5000}}}, "task.resources.ulimits.nofile"),
    ("ulimit unlimited", {"resources": {"ulimits": {"nofile": -1}}}, "task.resources.ulimits.nofile: unlimited is above"),
    ("ulimit hard unlimited", {"resources": {"ulimits": {"nofile": {"soft": 100, "hard": -1}}}}, "task.resources.ulimits.nofile: unlimited is above"),
    ("ulimit without a ceiling", {"resources": {"ulimits": {"rtprio": 99}}}, "task.resources.ulimits.rtprio: this worker sets no ceiling for it"),
    ("memlock without a ceiling", {"resources": {"ulimits": {"memlock": -1}}}, "task.resources.ulimits.memlock: this worker sets no ceiling"),
    ("privileged", {"privileged": True}, "task.privileged: privileged containers are not allowed"),
    ("cap_add", {"cap_add": ["SYS_ADMIN"]}, "task.cap_add: capability SYS_ADMIN is not allowed"),
    ("mount outside", {"mounts": [{"source": "/etc", "target": "/x"}]}, "task.mounts[0].source: host path '/etc' may not be mounted"),
    ("mount sibling prefix", {"mounts": [{"source": "/srv/okay", "target": "/x"}]}, "task.mounts[0].source"),
    ("mount dotdot escape", {"mounts": [{"source": "/srv/ok/../../etc", "target": "/x"}]}, "task.mounts[0].source: host path '/srv/ok/../../etc'"),
    ("mount dotdot sideways", {"mounts": [{"source": "/data/shared/../secret", "target": "/x"}]}, "task.mounts[0].source"),
    (
        "second mount",
        {"mounts": [{"source": "/srv/ok/a", "target": "/a"}, {"source": "/root", "target": "/b"}]},
        "task.mounts[1].source: host path '/root'",
    ),
    ("mount writable under a read-only prefix", {"mounts": [{"source": "/srv/ok/a", "target": "/x", "read_only": False}]}, "task.mounts[0].read_only: host path '/srv/ok/a' lies under /srv/ok"),
    ("device", {"devices": ["/dev/sda"]}, "task.devices: device /dev/sda is not allowed"),
    ("caches disabled", {"caches": {"pip": "/root/.cache/pip"}}, "task.caches: cache volumes are not allowed"),
    ("upload elsewhere", {"upload": "file:///etc/"}, "task.upload: target 'file:///etc/' is not among"),
    ("upload dotdot", {"upload": "file:///srv/warehouse/../etc/"}, "task.upload: target 'file:///srv/warehouse/../etc/'"),
    ("upload encoded dotdot", {"upload": "file:///srv/warehouse/%2e%2e/etc/"}, "task.upload"),
    ("upload sibling", {"upload": "file:///srv/warehouse2/"}, "task.upload"),
    ("upload other host", {"upload": "sftp://up@evil.example.org/drop"}, "task.upload"),
    ("upload other scheme", {"upload": "sftp:///srv/warehouse/"}, "task.upload"),
    ("upload sftp dotdot", {"upload": "sftp://up@store.example.org/drop/../etc"}, "task.upload"),
]


@pytest.mark.parametrize(("fields", "expected"), [(f, e) for _, f, e in DENIALS], ids=[n for n, _, _ in DENIALS])
def test_policy_denials_name_the_field(strict: WorkerConfig, fields: dict[str, Any], expected: str) -> None:
    t = task(**fields)
    found = policy.violations(strict, t)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found
    with pytest.raises(PolicyDenied) as info:
        policy.check(strict, t)
    assert info.value.reason == "policy-denied"
    assert info.value.errors == found


ALLOWED: list[tuple[str, dict[str, Any]]] = [
    ("minimal", {}),
    ("other allowed pattern", {"image": "registry.example.org/team/tool:1"}),
    ("service image", {"services": [{"name": "db", "image": "farmhand-test/db"}]}),
    ("max_run_time at ceiling", {"max_run_time": 3600}),
    (
        "resources at ceilings",
        {"resources": {"cpus": 2, "memory": "1g", "pids": 256, "shm_size": "128m", "ulimits": {"nofile": 4096}}},
    ),
    ("ulimit lowered under its ceiling", {"resources": {"ulimits": {"nofile": {"soft": 64, "hard": 128}}}}),
    ("allowed cap", {"cap_add": ["SYS_PTRACE"]}),
    ("cap from the default set", {"cap_add": ["CHOWN"]}),
    ("privileged false", {"privileged": False}),
    ("mount at prefix", {"mounts": [{"source": "/srv/ok", "target": "/x"}]}),
    ("mount below prefix", {"mounts": [{"source": "/srv/ok/deep/er", "target": "/x"}]}),
    ("mount dotdot staying inside", {"mounts": [{"source": "/srv/ok/a/../b", "target": "/x"}]}),
    ("mount under slash prefix", {"mounts": [{"source": "/data/shared/x", "target": "/x"}]}),
    ("writable mount under a writable prefix", {"mounts": [{"source": "/srv/scratch/t1", "target": "/x", "read_only": False}]}),
    ("read-only mount under a writable prefix", {"mounts": [{"source": "/srv/scratch/t1", "target": "/x"}]}),
    ("device", {"devices": ["/dev/fuse"]}),
    ("upload allowed", {"upload": "file:///srv/warehouse/"}),
    ("upload below allowed", {"upload": "file:///srv/warehouse/team/a/"}),
    ("upload sftp", {"upload": "sftp://up@store.example.org/drop/sub"}),
    ("upload sftp exact", {"upload": "sftp://up@store.example.org/drop/"}),
]


@pytest.mark.parametrize("fields", [f for _, f in ALLOWED], ids=[n for n, _ in ALLOWED])
def test_policy_allows(strict: WorkerConfig, fields: dict[str, Any]) -> None:
    t = task(**fields)
    assert policy.violations(strict, t) == []
    policy.check(strict, t)  # does not raise


def test_default_warehouse_is_always_allowed(strict: WorkerConfig) -> None:
    t = task(upload=strict.upload_default + "sub/")
    assert policy.violations(strict, t) == []
    t2 = task(upload=strict.upload_default + "../escape/")
    assert [v.split(":")[0] for v in policy.violations(strict, t2)] == ["task.upload"]


def test_all_violations_are_listed(strict: WorkerConfig) -> None:
    t = task(image="evil/x", max_run_time=99999, privileged=True, devices=["/dev/sda"], resources={"pids": 1000})
    fields = sorted(v.split(":")[0] for v in policy.violations(strict, t))
    assert fields == sorted(["task.image", "task.max_run_time", "task.privileged", "task.devices", "task.resources.pids"])


def test_permissive_config_allows_privilege(make_config: Callable[..., WorkerConfig]) -> None:
    cfg = make_config({"allow": {"privileged": True, "caches": True, "capabilities": ["SYS_ADMIN"]}})
    t = task(privileged=True, caches={"c": "/c"}, cap_add=["SYS_ADMIN"])
    assert policy.violations(cfg, t) == []


def test_default_config_denies_privileges(make_config: Callable[..., WorkerConfig]) -> None:
    cfg = make_config()
    t = task(privileged=True, cap_add=["NET_ADMIN"], mounts=[{"source": "/tmp", "target": "/t"}], devices=["/dev/null"])
    fields = sorted(v.split(":")[0] for v in policy.violations(cfg, t))
    assert fields == ["task.cap_add", "task.devices", "task.mounts[0].source", "task.privileged"]


def test_the_default_ceilings_are_shares_of_this_host(make_config: Callable[..., WorkerConfig]) -> None:
    # Without a ceiling one task could ask for all of the host's memory and more CPUs than it has.
    host = HostCapacity.measure()
    cfg = make_config()
    assert cfg.ceilings.cpus == host.cpus and cfg.ceilings.memory == int(0.9 * host.memory)
    fields = sorted(v.split(":")[0] for v in policy.violations(cfg, task(resources={"memory": host.memory, "cpus": host.cpus + 1})))
    assert fields == ["task.resources.cpus", "task.resources.memory"]
    assert policy.violations(cfg, task(resources={"memory": "64m", "cpus": host.cpus})) == []


def test_a_task_that_names_no_memory_gets_half_of_the_host(make_config: Callable[..., WorkerConfig]) -> None:
    assert make_config().default_resources.memory == HostCapacity.measure().memory // 2


def test_an_operator_may_lift_the_shares(make_config: Callable[..., WorkerConfig]) -> None:
    cfg = make_config({"limits": {"ceilings": {"cpus": 1024, "memory": "100%"}, "defaults": {"memory": "2g"}}})
    assert cfg.ceilings.cpus == 1024 and cfg.ceilings.memory == HostCapacity.measure().memory
    assert cfg.default_resources.memory == 2 << 30


@pytest.mark.parametrize(
    ("doc", "cpus", "memory"),
    [({"cpus": "50%", "memory": "25%"}, 4.0, 1 << 30), ({"cpus": "12.5%"}, 1.0, None), ({"cpus": "1%"}, 0.08, None)],
)
def test_shares_resolve_against_the_host(doc: dict[str, Any], cpus: float, memory: int | None) -> None:
    got = Resources.from_doc(doc, HostCapacity(cpus=8, memory=4 << 30))
    assert (got.cpus, got.memory) == (cpus, memory)


def test_the_smallest_share_of_a_small_host_is_still_a_limit() -> None:
    # 1% of one CPU is Docker's smallest limit; rounding it to 0 would mean "no limit".
    assert Resources.from_doc({"cpus": "1%"}, HostCapacity(cpus=1, memory=1 << 30)).cpus == 0.01
    assert Resources.from_doc({"cpus": "1.5%"}, HostCapacity(cpus=1, memory=1 << 30)).cpus == 0.01


def test_a_share_without_a_host_is_an_error() -> None:
    with pytest.raises(ValueError, match="memory"):
        Resources.from_doc({"memory": "50%"})


def test_default_values_are_not_judged_against_ceilings(make_config: Callable[..., WorkerConfig]) -> None:
    # defaults above ceilings are the operator's business; only what a task asks for is judged
    cfg = make_config({"limits": {"defaults": {"pids": 9999}, "ceilings": {"pids": 10}}})
    assert policy.violations(cfg, task()) == []
    assert policy.violations(cfg, task(resources={"pids": 11})) != []


def test_effective_resources_overlay_task_on_defaults(make_config: Callable[..., WorkerConfig]) -> None:
    cfg = make_config(
        {"limits": {"defaults": {"memory": "256m", "pids": 100, "cpus": 1, "shm_size": "64m", "ulimits": {"nofile": 1024, "nproc": 50}}}}
    )
    eff = policy.effective_resources(cfg, task(resources={"memory": "512m", "ulimits": {"nofile": {"soft": 10, "hard": 20}}}))
    assert eff == Resources(
        cpus=1.0,
        memory=512 << 20,
        pids=100,
        shm_size=64 << 20,
        ulimits={"nofile": (10, 20), "nproc": (50, 50)},
    )
    assert policy.effective_resources(cfg, task()) == cfg.default_resources
    assert policy.effective_resources(cfg, task(resources={"cpus": 0.5, "pids": 7, "shm_size": 1})) == Resources(
        cpus=0.5, memory=256 << 20, pids=7, shm_size=1, ulimits={"nofile": (1024, 1024), "nproc": (50, 50)}
    )


def test_zero_memory_cannot_escape_the_ceiling(strict: WorkerConfig) -> None:
    from farmhand.errors import InvalidDocument

    try:
        t = task(resources={"memory": "0"})
    except InvalidDocument:
        return
    assert any(v.startswith("task.resources.memory") for v in policy.violations(strict, t))
