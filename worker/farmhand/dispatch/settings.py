"""From farmhand's config to Celery's settings: broker and result URLs, TLS, and per-transport behaviour.

Pure functions, so the rules (which URL wins, what the embedded default is,
how credentials are put in and kept out of sight) are tested without a broker.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from celery.app.backends import BACKEND_ALIASES
from kombu.transport import TRANSPORT_ALIASES
from kombu.utils.url import maybe_sanitize_url

from farmhand.config import WorkerConfig
from farmhand.errors import ConfigError

TASK_NAME = "farmhand.run_task"
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}
EMBEDDED_SCHEME = "farmhand"  # farmhand+sqlite:///PATH, the embedded broker

FAILOVER_SEPARATOR = ";"  # kombu's and Celery's own: amqp://a//;amqp://b// is a list of nodes, tried in turn
SENTINEL = "sentinel"  # sentinel://HOST:PORT;sentinel://..., with broker.master_name: Redis Sentinel
EMBEDDED_RESULTS = "farmhand-files"  # farmhand-files+file:///DIR, its result store
# By name, so the embedded broker's transport and result store load only where they are used.
TRANSPORT_ALIASES.setdefault(EMBEDDED_SCHEME, "farmhand.dispatch.sqlite_transport:Transport")
BACKEND_ALIASES.setdefault(EMBEDDED_RESULTS, "farmhand.dispatch.embedded_results:ResultStore")


def broker_url(config: WorkerConfig) -> str:
    """BROKER_URL, else one made of host/port/vhost parts, else the embedded SQLite broker.

    BROKER_URL may list several URLs, ``;``-separated (a list in the config
    file): the nodes of a RabbitMQ cluster, which kombu fails over between, or
    the sentinels of a Redis Sentinel set.
    """
    b = config.broker
    tls = b.tls_ca is not None
    if b.url:
        urls = split_urls(b.url)
        schemes = {urlsplit(u).scheme.replace("pyamqp", "amqp") for u in urls}
        if len(schemes) > 1:
            raise ConfigError(f"broker.url: the URLs of one broker share a scheme; this list mixes {', '.join(sorted(schemes))} ({shown(b.url)})")
        return FAILOVER_SEPARATOR.join(_with_credentials(u, b.username, b.password) for u in urls)
    if b.host:
        scheme = {"amqp": "amqps" if tls else "amqp", "redis": "rediss" if tls else "redis"}[b.transport]
        port = b.port or DEFAULT_PORTS[scheme]
        vhost = quote(b.vhost, safe="") if b.vhost else ""
        if b.transport == "redis" and vhost and not vhost.isdigit():
            raise ConfigError(f"broker.vhost: {b.vhost!r} must be a Redis database number for a Redis broker")
        return _with_credentials(f"{scheme}://{b.host}:{port}/{vhost}", b.username, b.password)
    return f"{EMBEDDED_SCHEME}+sqlite:///{config.working_dir / 'broker.sqlite'}"


def result_backend(config: WorkerConfig) -> str:
    """RESULT_BACKEND, else the natural store for the broker (see config-v1.json's broker.result_backend)."""
    if config.broker.result_backend:
        return config.broker.result_backend
    kind = transport_kind(broker_url(config))
    if kind == "redis":
        return broker_url(config)
    if kind == "amqp":
        return "rpc://"
    return f"{EMBEDDED_RESULTS}+file://{config.working_dir / 'results'}"


def split_urls(url: str) -> list[str]:
    """The URLs of a ``;``-separated failover list (one URL is a list of one)."""
    return [u.strip() for u in url.split(FAILOVER_SEPARATOR) if u.strip()]


def transport_kind(url: str) -> str:
    """amqp, redis or sql: what decides fanout, prefetch control and event support (Sentinel is Redis)."""
    scheme = urlsplit(split_urls(url)[0] if url.strip() else url).scheme
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    if scheme in ("redis", "rediss", SENTINEL):
        return "redis"
    return "sql"


def is_sentinel(url: str) -> bool:
    return url.strip().startswith(f"{SENTINEL}://")


def master_name(config: WorkerConfig, field: str) -> str:
    """The primary the sentinels are asked for; ``field`` names the sentinel:// URL that needs it."""
    name = config.broker.master_name
    if not name:
        raise ConfigError(
            f"broker.master_name: {field} lists Redis sentinels ({SENTINEL}://); give the name of the primary they "
            "monitor (their `sentinel monitor NAME ...`) as broker.master_name or BROKER_MASTER_NAME"
        )
    return name


def is_embedded(config: WorkerConfig) -> bool:
    return transport_kind(broker_url(config)) == "sql"


def node_name(config: WorkerConfig) -> str:
    return config.node.node_name or f"farmhand@{socket.gethostname()}"


def shown(url: str) -> str:
    """A URL (or a failover list of them) fit for logs and messages: the passwords replaced."""
    if FAILOVER_SEPARATOR in url and "://" in url:
        return FAILOVER_SEPARATOR.join(str(maybe_sanitize_url(u)) for u in split_urls(url))
    return str(maybe_sanitize_url(url))


def _with_credentials(url: str, username: str | None, password: str | None) -> str:
    """USERNAME/PASSWORD go into a URL that has none of its own (URL-quoted, so any character works)."""
    parts = urlsplit(url)
    if not username or "@" in parts.netloc:
        return url
    auth = quote(username, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{parts.netloc}", parts.path, parts.query, parts.fragment))


def probe_broker(config: WorkerConfig, timeout: float = 5, url: str | None = None) -> dict[str, Any]:
    """Connect once to the configured broker (not the embedded one), or to ``url``, one node of its
    failover list, raising what went wrong; returns what the broker says of itself (AMQP's server
    properties; a Sentinel set's primary as ``master``)."""
    from kombu import Connection

    conf = celery_settings(config)
    url = url or broker_url(config)
    options = conf.get("broker_transport_options") or {}
    with Connection(url, ssl=conf.get("broker_use_ssl") or False, connect_timeout=timeout, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        if is_sentinel(url):
            host, port = conn.default_channel.client.connection_pool.get_master_address()
            return {"master": f"{host}:{port}"}
        return dict(getattr(conn.connection, "server_properties", None) or {})


def check_tls(config: WorkerConfig) -> None:
    """At a worker's start: a TLS handshake the broker or we refuse is a configuration error, said at once.

    A broker that is down is waited for (it may be restarting); a wrong
    certificate, key or CA never heals by waiting, so it stops the start with
    a line naming broker.tls and the reason.
    """
    if config.broker.tls_ca is None or is_embedded(config):
        return
    for url in split_urls(broker_url(config)):  # each node of a failover list: a wrong CA is wrong for all
        try:
            probe_broker(config, url=url)
        except Exception as exc:  # noqa: BLE001 - only TLS failures are fatal here
            tls = tls_error(exc)
            if tls is not None:
                raise ConfigError(
                    f"broker.tls: the TLS handshake with {shown(url)} failed: {tls.reason or tls} "
                    f"(CA {config.broker.tls_ca}, certificate {config.broker.tls_cert}, key {config.broker.tls_key})"
                ) from None


def tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS failure behind a connection error, however the client library wrapped it."""
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            return None
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _tls_options(config: WorkerConfig, kind: str) -> dict[str, Any] | None:
    b = config.broker
    if b.tls_ca is None:
        return None
    if kind == "redis":
        opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": b.tls_ca}
        if b.tls_cert:
            opts.update(ssl_certfile=b.tls_cert, ssl_keyfile=b.tls_key)
        return opts
    opts = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": b.tls_ca}
    if b.tls_cert:
        opts.update(certfile=b.tls_cert, keyfile=b.tls_key)
    return opts


def celery_settings(config: WorkerConfig) -> dict[str, Any]:
    """Celery's configuration for this worker or client.

    Tasks are acknowledged by the worker once they are in its journal (not
    late, not early), so the broker's delivery timeouts never re-run a long
    task; prefetch follows free slots (see farmhand.dispatch.node).
    """
    url = broker_url(config)
    kind = transport_kind(url)
    fanout = kind != "sql"  # kombu's SQL transport cannot broadcast: no remote control, no events
    settings: dict[str, Any] = {
        "broker_url": url,
        "result_backend": result_backend(config),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": "default",
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        # The node sets the prefetch window itself (its free slots); Celery's own reduction after a
        # reconnect, restored one acknowledgement at a time, would fight it.
        "worker_enable_prefetch_count_reduction": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a broker restart is waited out, never fatal
        "result_extended": False,  # task arguments can carry secrets: never copied into the result store
        "worker_enable_remote_control": fanout,
        # The node's control queue lives and dies with its connection: one left on a cluster node that
        # died was found by the reconnect's declare and gone by its bind (404, a worker exit).
        "control_queue_exclusive": kind == "amqp",
        "worker_send_task_events": fanout,
        "task_send_sent_event": fanout,
        "worker_hijack_root_logger": False,
        # None: Celery's state file is a pickle (whoever can write it runs code as the worker) and its
        # revoked set expires after 3 h; the journal keeps cancellations, for good, as plain data.
        "worker_state_db": None,
        "worker_disable_prefetch": kind == "redis",
    }
    if config.broker.queue_type == "quorum":
        if kind != "amqp":
            raise ConfigError(f"broker.queue_type: quorum queues are RabbitMQ's; this broker is {kind} ({shown(url)})")
        # Every queue farmhand declares, the configured ones and those a client names, and never
        # global QoS (quorum queues refuse it; Celery detects them and uses per-consumer prefetch).
        settings.update(task_default_queue_type="quorum", task_create_missing_queue_type="quorum", worker_detect_quorum_queues=True)
    if kind == "redis":
        settings["broker_transport_options"] = {"visibility_timeout": config.broker.visibility_timeout}
        if is_sentinel(url):
            settings["broker_transport_options"]["master_name"] = master_name(config, "broker.url")
    if is_sentinel(settings["result_backend"]):  # Celery's SentinelBackend, asked for the same primary
        settings["result_backend_transport_options"] = {"master_name": master_name(config, "broker.result_backend")}
    tls = _tls_options(config, kind)
    if tls:
        settings["broker_use_ssl"] = tls
        if kind == "redis" and settings["result_backend"].startswith("rediss://"):
            settings["redis_backend_use_ssl"] = tls
    return settings
