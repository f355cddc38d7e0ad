"""The worker's configuration: one YAML file, the drop-ins of its config.d/, then environment variables.

The config is the host's policy. Tasks ask, the config decides; so every
value is validated at start-up and a bad one stops the worker with a line
naming it, instead of surfacing later as a confusing task failure.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from farmhand.documents import DocumentError, read_document
from farmhand.errors import ConfigError
from farmhand.resources import HostCapacity, Resources, parse_size
from farmhand.validation import errors_for

DEFAULT_CONFIG_PATH = "/etc/farmhand/config.yml"
#: Drop-ins merged over the config file, in name order: a baked image's
#: instance gets its broker, credentials and queues there at first boot
#: (cloud-init write_files, packer/README.md) without touching the image's file.
CONFIG_D = "config.d"
CONFIG_D_SUFFIXES = (".yml", ".yaml")

#: Docker's default capability set minus what a batch task has no business
#: with (raw sockets, mknod, setfcap, audit, chroot, setpcap).
DEFAULT_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"]

DEFAULTS: dict[str, Any] = {
    "working_dir": "/var/lib/farmhand",
    "docker": {"base_url": None, "timeout": 120},
    "registries": {},
    # No image until the operator lists patterns; a pulled image larger than max_size is refused.
    "images": {"allowed": [], "max_size": "20g", "pull_attempts": 3, "pull_backoff": 2.0},
    "limits": {
        "max_run_time": 86400,
        # Shares of this host: a task that names no memory gets half of it, and none may ask for all of it.
        "defaults": {"memory": "50%", "pids": 4096, "shm_size": "64m", "ulimits": {}},
        "ceilings": {"cpus": "100%", "memory": "90%", "pids": 65536, "shm_size": "4g", "ulimits": {"nofile": 1048576, "nproc": 65536, "stack": 67108864, "core": 0}},
        "kill_grace": 10,
        "max_prepare_time": 3600,
        "artifacts_max_bytes": "100g",
        "artifacts_max_files": 100000,
        "device_wait": 600,
    },
    "allow": {"privileged": False, "capabilities": [], "host_mounts": [], "devices": [], "caches": True, "loopback_devices": False},
    # The pool of per-task loopback devices: the loopback_devices role's card_label, and where every worker
    # process of this host keeps its claims (one directory for all of them).
    "loopback_devices": {"video_label": "farmhand-loopback", "lock_dir": "/run/farmhand/devices"},
    "container": {"capabilities": DEFAULT_CAPABILITIES},
    "logs": {"max_bytes": "1g", "compression": "zstd"},
    "upload": {"default": None, "allowed_targets": [], "keep_local": False, "pending_retry_interval": 300},
    "sftp": {
        "private_key": "/etc/farmhand/id_rsa",
        "known_hosts": "/etc/farmhand/known_hosts",
        "connect_timeout": 20,
        "attempts": 5,
        "backoff": 2.0,
        "backoff_max": 60,
        "streams": 4,
        "channels": 2,
        "requests_in_flight": 16,
        "request_size": 261120,
        "verify": "stream",
        "progress_interval": 0.5,
    },
    "broker": {
        "url": None,
        "result_backend": None,
        "transport": "amqp",
        "host": None,
        "port": None,
        "vhost": None,
        "username": None,
        "password": None,
        "tls": {"ca": None, "cert": None, "key": None},
        "visibility_timeout": 3600,
        "queue_type": "classic",
        "master_name": None,
    },
    "firewall": {"enabled": True, "allow": [], "block": ["169.254.0.0/16", "168.63.129.16/32", "100.100.100.200/32"]},
    # Disk hygiene (farmhand.gc): what may go when free space or inodes run short, and when the node stops taking tasks.
    "gc": {
        "enabled": True,
        "interval": 600,
        "min_free": "2g",
        "min_free_inodes": 10000,
        "retention": 604800,
        "keep_images": [],
        "docker": {"data_root": None, "free_space": "10g", "free_percent": 10, "free_inodes": 100000, "free_inodes_percent": 5},
        "working_dir": {"free_space": "10g", "free_percent": 10, "free_inodes": 100000, "free_inodes_percent": 5},
    },
    "worker": {"node_name": None, "concurrency": None, "queues": ["default"], "drain_grace": 600, "metrics_address": "127.0.0.1:9464", "api_token": None},
}

#: Environment variables that override a config key, with the type to read them as.
ENV_OVERRIDES: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "WORKING_DIR": (("working_dir",), str),
    "FARMHAND_LOG_MAX_BYTES": (("logs", "max_bytes"), str),
    "FARMHAND_UPLOAD_DEFAULT": (("upload", "default"), str),
    "FARMHAND_KILL_GRACE": (("limits", "kill_grace"), float),
    "FARMHAND_SFTP_PRIVATE_KEY": (("sftp", "private_key"), str),
    "FARMHAND_SFTP_KNOWN_HOSTS": (("sftp", "known_hosts"), str),
    # images.allowed, comma separated: a worker configured by env alone (the container image) runs something.
    "FARMHAND_IMAGES_ALLOWED": (("images", "allowed"), lambda raw: [p.strip() for p in raw.split(",") if p.strip()]),
    # The seeds' names (Zimfarm, saltant, cyberCommons) for the dispatcher's settings.
    "BROKER_URL": (("broker", "url"), str),
    "RESULT_BACKEND": (("broker", "result_backend"), str),
    "BROKER_TRANSPORT": (("broker", "transport"), str),
    "BROKER_HOST": (("broker", "host"), str),
    "BROKER_PORT": (("broker", "port"), int),
    "BROKER_VHOST": (("broker", "vhost"), str),
    "USERNAME": (("broker", "username"), str),
    "PASSWORD": (("broker", "password"), str),
    "BROKER_TLS_CA": (("broker", "tls", "ca"), str),
    "BROKER_TLS_CERT": (("broker", "tls", "cert"), str),
    "BROKER_TLS_KEY": (("broker", "tls", "key"), str),
    "BROKER_VISIBILITY_TIMEOUT": (("broker", "visibility_timeout"), float),
    "BROKER_QUEUE_TYPE": (("broker", "queue_type"), str),
    "BROKER_MASTER_NAME": (("broker", "master_name"), str),
    "NODE_NAME": (("worker", "node_name"), str),
    "CONCURRENCY": (("worker", "concurrency"), int),
    "QUEUES": (("worker", "queues"), lambda raw: [q.strip() for q in raw.split(",") if q.strip()]),
    "FARMHAND_DRAIN_GRACE": (("worker", "drain_grace"), float),
    "FARMHAND_METRICS_ADDRESS": (("worker", "metrics_address"), str),
    "FARMHAND_API_TOKEN": (("worker", "api_token"), str),
}


@dataclass(frozen=True)
class SftpSettings:
    """How the ``sftp://`` uploader reaches warehouses; see the ``sftp`` section of config-v1.json."""

    private_key: Path
    known_hosts: Path
    connect_timeout: float
    attempts: int
    backoff: float
    backoff_max: float
    streams: int
    channels: int
    requests_in_flight: int
    request_size: int
    verify: str
    progress_interval: float

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "SftpSettings":
        return cls(
            private_key=Path(doc["private_key"]),
            known_hosts=Path(doc["known_hosts"]),
            connect_timeout=float(doc["connect_timeout"]),
            attempts=int(doc["attempts"]),
            backoff=float(doc["backoff"]),
            backoff_max=float(doc["backoff_max"]),
            streams=int(doc["streams"]),
            channels=int(doc["channels"]),
            requests_in_flight=int(doc["requests_in_flight"]),
            request_size=int(parse_size(doc["request_size"]) or 0),
            verify=str(doc["verify"]),
            progress_interval=float(doc["progress_interval"]),
        )


@dataclass(frozen=True)
class BrokerSettings:
    """Where the dispatcher's queues and results live; see the ``broker`` section of config-v1.json.

    No field has a default of its own: every value comes from the merged
    config document, whose defaults are ``DEFAULTS``. Everything None means the embedded default: a SQLite broker and result
    store under the working dir, shared by ``farmhand worker`` and ``farmhand submit``.
    """

    url: str | None
    result_backend: str | None
    transport: str
    host: str | None
    port: int | None
    vhost: str | None
    username: str | None
    password: str | None = field(repr=False)
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    visibility_timeout: float
    queue_type: str
    master_name: str | None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "BrokerSettings":
        tls = doc["tls"] or {}
        url = doc["url"]
        return cls(
            url=";".join(url) if isinstance(url, list) else url,  # a failover list, as kombu reads it
            result_backend=doc["result_backend"],
            transport=doc["transport"],
            host=doc["host"],
            port=doc["port"],
            vhost=doc["vhost"],
            username=doc["username"],
            password=doc["password"],
            tls_ca=tls.get("ca"),
            tls_cert=tls.get("cert"),
            tls_key=tls.get("key"),
            visibility_timeout=float(doc["visibility_timeout"]),
            queue_type=doc["queue_type"],
            master_name=doc["master_name"],
        )


@dataclass(frozen=True)
class FirewallSettings:
    """What task networks may reach; see the ``firewall`` section of config-v1.json and ``farmhand.firewall``."""

    enabled: bool
    allow: tuple[str, ...]
    block: tuple[str, ...]

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "FirewallSettings":
        return cls(enabled=bool(doc["enabled"]), allow=tuple(doc["allow"]), block=tuple(doc["block"]))


@dataclass(frozen=True)
class FreeThreshold:
    """Free space and inodes a filesystem should keep; under either (absolute or percent, the larger
    of the two) the garbage collector removes what it may. 0 turns a bound off."""

    free_space: int
    free_percent: float
    free_inodes: int
    free_inodes_percent: float

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "FreeThreshold":
        return cls(
            free_space=int(parse_size(doc["free_space"]) or 0),
            free_percent=float(doc["free_percent"]),
            free_inodes=int(doc["free_inodes"]),
            free_inodes_percent=float(doc["free_inodes_percent"]),
        )


@dataclass(frozen=True)
class GcSettings:
    """The ``gc`` section of config-v1.json: see ``farmhand.gc``."""

    enabled: bool
    interval: float
    min_free: int
    min_free_inodes: int
    retention: float | None
    keep_images: tuple[str, ...]
    docker_root: str | None
    docker: FreeThreshold
    working_dir: FreeThreshold

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "GcSettings":
        return cls(
            enabled=bool(doc["enabled"]),
            interval=float(doc["interval"]),
            min_free=int(parse_size(doc["min_free"]) or 0),
            min_free_inodes=int(doc["min_free_inodes"]),
            retention=None if doc["retention"] is None else float(doc["retention"]),
            keep_images=tuple(doc["keep_images"]),
            docker_root=doc["docker"]["data_root"] or None,
            docker=FreeThreshold.from_doc(doc["docker"]),
            working_dir=FreeThreshold.from_doc(doc["working_dir"]),
        )


@dataclass(frozen=True)
class NodeSettings:
    """How this host serves the dispatcher: its name, slots and queues."""

    node_name: str | None
    concurrency: int | None
    queues: tuple[str, ...]
    drain_grace: float
    #: HOST:PORT of /metrics (and /tasks); None when off.
    metrics_address: str | None
    #: The bearer token of /tasks and /tasks/ID/log; None: those are off.
    api_token: str | None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "NodeSettings":
        return cls(
            node_name=doc["node_name"],
            concurrency=doc["concurrency"],
            queues=tuple(doc["queues"]),
            drain_grace=float(doc["drain_grace"]),
            metrics_address=doc["metrics_address"] or None,
            api_token=doc["api_token"] or None,
        )

    @property
    def slots(self) -> int:
        """CONCURRENCY, or one slot per CPU core this process may use."""
        if self.concurrency:
            return self.concurrency
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not Linux
            return os.cpu_count() or 1


@dataclass(frozen=True)
class HostMountRule:
    """An ``allow.host_mounts`` entry: a host directory bind-mount sources may lie under, and
    whether a task may mount it read-write (a plain path in the config: read-only)."""

    path: str
    writable: bool

    @classmethod
    def from_doc(cls, entry: str | Mapping[str, Any]) -> "HostMountRule":
        if isinstance(entry, str):
            return cls(path=os.path.normpath(entry), writable=False)
        return cls(path=os.path.normpath(entry["path"]), writable=bool(entry.get("writable", False)))


def under(path: str, prefix: str) -> bool:
    """Whether normalised ``path`` is ``prefix`` or lies below it (by name: ``/srv/okay`` is not under ``/srv/ok``)."""
    prefix = os.path.normpath(prefix)
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def host_mount_rule(rules: "Iterable[HostMountRule]", path: str) -> HostMountRule | None:
    """The ``allow.host_mounts`` entry that decides for ``path``: the innermost prefix holding it."""
    matching = [r for r in rules if under(os.path.normpath(path), r.path)]
    return max(matching, key=lambda r: len(r.path)) if matching else None


@dataclass(frozen=True)
class CachePolicy:
    """``allow.caches``: which cache volumes tasks may use, and who shares each.

    A cache volume belongs to a scope, the queue its task came from (``local``
    for ``farmhand run-task``) or the namespace ``scopes`` maps that queue to;
    a task reaches only its own scope's volumes. ``shared`` names (fnmatch
    patterns) are one volume for every scope. ``scoped`` false: only the
    shared names may be used at all.
    """

    scoped: bool
    shared: tuple[str, ...]
    scopes: dict[str, str]

    @classmethod
    def from_doc(cls, value: bool | list[str] | Mapping[str, Any]) -> "CachePolicy":
        if isinstance(value, bool):
            return cls(scoped=value, shared=(), scopes={})
        if isinstance(value, list):
            return cls(scoped=True, shared=tuple(value), scopes={})
        return cls(scoped=bool(value.get("scoped", True)), shared=tuple(value.get("shared", ())), scopes=dict(value.get("scopes", {})))

    @property
    def enabled(self) -> bool:
        return self.scoped or bool(self.shared)

    def is_shared(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.shared)

    def scope_for(self, scope: str) -> str:
        """The namespace a task's scope (its queue) keeps its caches in."""
        return self.scopes.get(scope, scope)


@dataclass(frozen=True)
class WorkerConfig:
    """Validated, typed view of the config document.

    No field here (nor in the settings it holds) has a default: ``DEFAULTS`` is
    the one source, merged under the file and the environment by ``load_config``.
    """

    working_dir: Path
    docker_base_url: str | None
    docker_timeout: float
    registries: dict[str, dict[str, str]]
    allowed_images: list[str]
    max_image_size: int | None
    pull_attempts: int
    pull_backoff: float
    max_run_time: int
    max_prepare_time: float
    default_resources: Resources
    ceilings: Resources
    kill_grace: float
    allow_privileged: bool
    allowed_capabilities: list[str]
    host_mounts: tuple[HostMountRule, ...]
    allowed_devices: list[str]
    allow_loopback_devices: bool
    device_wait: float
    loopback_video_label: str
    device_lock_dir: Path
    caches: CachePolicy
    container_capabilities: list[str]
    log_max_bytes: int
    artifacts_max_bytes: int | None
    artifacts_max_files: int | None
    upload_default: str
    upload_allowed_targets: list[str]
    keep_local: bool
    source: str
    sftp: SftpSettings
    log_compression: str
    pending_retry_interval: float
    broker: BrokerSettings
    node: NodeSettings
    firewall: FirewallSettings
    gc: GcSettings

    @property
    def allowed_host_mounts(self) -> list[str]:
        """The host paths of ``allow.host_mounts``, writable or not."""
        return [rule.path for rule in self.host_mounts]

    @property
    def allow_caches(self) -> bool:
        """Whether a task may use any cache volume at all."""
        return self.caches.enabled

    @property
    def tasks_dir(self) -> Path:
        return self.working_dir / "tasks"

    @property
    def journal_path(self) -> Path:
        """The dispatcher's record of every accepted task (SQLite), written before a container starts."""
        return self.working_dir / "journal.sqlite"

    @property
    def pending_dir(self) -> Path:
        """Uploads that failed wait here, files and all, until delivered or discarded."""
        return self.working_dir / "pending"

    def credentials_for(self, registry: str) -> dict[str, str] | None:
        entry = self.registries.get(registry)
        if entry is None:
            return None
        return {"username": entry["username"], "password": entry["password"]}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key == "registries" and isinstance(value, Mapping) and isinstance(out.get(key), dict):
            # One registry's credentials are one value: merged per registry, never field by field.
            out[key] = {**out[key], **copy.deepcopy(dict(value))}
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_env(doc: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    errors = []
    for var, (path, kind) in ENV_OVERRIDES.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            value: Any = kind(raw)
        except ValueError:
            shown = "(hidden)" if var == "PASSWORD" else repr(raw)
            errors.append(f"{var}: {shown} is not a valid {getattr(kind, '__name__', 'value')}")
            continue
        target = doc
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return errors


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Read the config file (none at all means defaults), merge its config.d/ drop-ins, apply env overrides, validate.

    ``path`` defaults to $FARMHAND_CONFIG, then /etc/farmhand/config.yml. A path
    given explicitly must exist; the default one may be absent. The drop-ins
    (``config.d/*.yml`` next to it, in name order) are merged over it key by
    key, each one checked on its own first so that an error names its file.
    """
    environ = os.environ if environ is None else environ
    explicit = path is not None or bool(environ.get("FARMHAND_CONFIG"))
    cfg_path = Path(path or environ.get("FARMHAND_CONFIG") or DEFAULT_CONFIG_PATH)
    file_doc: Any = {}
    source = "defaults"
    try:
        found = cfg_path.exists()
    except OSError as exc:  # a directory on the way this user may not enter
        raise ConfigError(f"{cfg_path}: cannot be read: {exc.strerror or exc}") from None
    if found:
        file_doc = _read_config_file(cfg_path)
        source = str(cfg_path)
    elif explicit:
        raise ConfigError(f"{cfg_path}: config file does not exist")

    layers: list[tuple[Path, dict[str, Any]]] = [(cfg_path, file_doc)] if source != "defaults" else []
    drop_ins = config_d_files(cfg_path)
    layers += [(drop_in, _read_config_file(drop_in)) for drop_in in drop_ins]
    passwords = [p for p in [environ.get("PASSWORD")] + [_password_of(doc) for _, doc in layers] if isinstance(p, str) and p]
    doc = copy.deepcopy(DEFAULTS)
    for layer_path, layer in layers:
        errors = errors_for("config-v1.json", layer, "config")
        if errors:
            raise ConfigError(f"{layer_path}: invalid configuration:\n" + _listed(errors, passwords))
        doc = _merge(doc, layer)
    if drop_ins:
        source = f"{source} + {', '.join(str(d) for d in drop_ins)}"
    env_errors = _apply_env(doc, environ)
    errors = env_errors + errors_for("config-v1.json", doc, "config") or _firewall_errors(doc["firewall"])
    if errors:
        raise ConfigError("invalid configuration:\n" + _listed(errors, passwords))
    return _typed(doc, source)


def config_d_files(cfg_path: Path) -> list[Path]:
    """The drop-ins of ``cfg_path``'s ``config.d/``, in the order they are merged (by name); hidden files are skipped."""
    directory = cfg_path.parent / CONFIG_D
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot be listed: {exc.strerror or exc}") from None
    return [p for p in entries if p.suffix in CONFIG_D_SUFFIXES and not p.name.startswith(".") and not p.is_dir()]


def _read_config_file(cfg_path: Path) -> dict[str, Any]:
    try:
        doc = read_document(cfg_path, root="config") or {}
    except DocumentError as exc:  # unreadable, too big, not YAML, an alias, a duplicate key...
        text = str(exc)
        raise ConfigError(text if str(cfg_path) in text else f"{cfg_path}: {text}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{cfg_path}: the top level must be a mapping of settings")
    return doc


def _password_of(doc: Mapping[str, Any]) -> Any:
    broker = doc.get("broker")
    return broker.get("password") if isinstance(broker, Mapping) else None


#: user:password@ in anything URL-like, malformed URLs included (amqp//u:PW@h).
_URL_PASSWORD = re.compile(r"(//[^/@\s:'\"]*:)[^@\s'\"]*@")


def _listed(errors: list[str], passwords: list[str]) -> str:
    """The problems, one a line, with no password in them: a malformed broker URL is quoted in its error."""
    text = "\n".join(f"  - {e}" for e in errors)
    text = _URL_PASSWORD.sub(r"\1**@", text)
    for password in passwords:
        text = text.replace(password, "**")
    return text


def _firewall_errors(section: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say of the firewall's lists: each entry parses as the rules will read it."""
    from farmhand.firewall import parse_block, parse_destination

    errors: list[str] = []
    for key, parse in (("allow", parse_destination), ("block", parse_block)):
        for i, entry in enumerate(section[key]):
            try:
                parse(entry)
            except ValueError as exc:
                errors.append(f"config.firewall.{key}[{i}]: {exc}")
    return errors


def _typed(doc: dict[str, Any], source: str) -> WorkerConfig:
    working_dir = Path(doc["working_dir"])
    limits = doc["limits"]
    host = HostCapacity.measure()
    upload_default = doc["upload"]["default"] or (working_dir / "warehouse").as_uri() + "/"
    return WorkerConfig(
        working_dir=working_dir,
        docker_base_url=doc["docker"]["base_url"],
        docker_timeout=float(doc["docker"]["timeout"]),
        registries=dict(doc["registries"]),
        allowed_images=list(doc["images"]["allowed"]),
        max_image_size=parse_size(doc["images"]["max_size"]),
        pull_attempts=int(doc["images"]["pull_attempts"]),
        pull_backoff=float(doc["images"]["pull_backoff"]),
        max_run_time=int(limits["max_run_time"]),
        max_prepare_time=float(limits["max_prepare_time"]),
        default_resources=Resources.from_doc(limits["defaults"], host),
        ceilings=Resources.from_doc(limits["ceilings"], host),
        kill_grace=float(limits["kill_grace"]),
        allow_privileged=bool(doc["allow"]["privileged"]),
        allowed_capabilities=list(doc["allow"]["capabilities"]),
        host_mounts=tuple(HostMountRule.from_doc(entry) for entry in doc["allow"]["host_mounts"]),
        allowed_devices=list(doc["allow"]["devices"]),
        allow_loopback_devices=bool(doc["allow"]["loopback_devices"]),
        device_wait=float(limits["device_wait"]),
        loopback_video_label=str(doc["loopback_devices"]["video_label"]),
        device_lock_dir=Path(doc["loopback_devices"]["lock_dir"]),
        caches=CachePolicy.from_doc(doc["allow"]["caches"]),
        container_capabilities=list(doc["container"]["capabilities"]),
        log_max_bytes=int(parse_size(doc["logs"]["max_bytes"]) or 0),
        artifacts_max_bytes=parse_size(limits["artifacts_max_bytes"]),
        artifacts_max_files=limits["artifacts_max_files"],
        upload_default=upload_default,
        upload_allowed_targets=list(doc["upload"]["allowed_targets"]),
        keep_local=bool(doc["upload"]["keep_local"]),
        source=source,
        sftp=SftpSettings.from_doc(doc["sftp"]),
        log_compression=str(doc["logs"]["compression"]),
        pending_retry_interval=float(doc["upload"]["pending_retry_interval"]),
        broker=BrokerSettings.from_doc(doc["broker"]),
        node=NodeSettings.from_doc(doc["worker"]),
        firewall=FirewallSettings.from_doc(doc["firewall"]),
        gc=GcSettings.from_doc(doc["gc"]),
    )
