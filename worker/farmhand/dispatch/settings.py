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

EMBEDDED_RESULTS = "farmhand-files"  # farmhand-files+file:///DIR, its result store
# By name, so SQLAlchemy (the largest import of all; bench/README.md) is loaded only by a worker that uses the embedded broker.
TRANSPORT_ALIASES.setdefault(EMBEDDED_SCHEME, "farmhand.dispatch.sqlite_transport:Transport")
BACKEND_ALIASES.setdefault(EMBEDDED_RESULTS, "farmhand.dispatch.embedded_results:ResultStore")


def broker_url(config: WorkerConfig) -> str:
    """BROKER_URL, else one made of host/port/vhost parts, else the embedded SQLite broker."""
    b = config.broker
    tls = b.tls_ca is not None
    if b.url:
        return _with_credentials(b.url, b.username, b.password)
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


def transport_kind(url: str) -> str:
    """amqp, redis or sql: what decides fanout, prefetch control and event support."""
    scheme = urlsplit(url).scheme
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    if scheme in ("redis", "rediss"):
        return "redis"
    return "sql"


def is_embedded(config: WorkerConfig) -> bool:
    return transport_kind(broker_url(config)) == "sql"


def node_name(config: WorkerConfig) -> str:
    return config.node.node_name or f"farmhand@{socket.gethostname()}"


def shown(url: str) -> str:
    """A URL fit for logs and messages: the password replaced."""
    return str(maybe_sanitize_url(url))


def _with_credentials(url: str, username: str | None, password: str | None) -> str:
    """USERNAME/PASSWORD go into a URL that has none of its own (URL-quoted, so any character works)."""
    parts = urlsplit(url)
    if not username or "@" in parts.netloc:
        return url
    auth = quote(username, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{parts.netloc}", parts.path, parts.query, parts.fragment))


def probe_broker(config: WorkerConfig, timeout: float = 5) -> None:
    """Connect once to the configured broker (not the embedded one), raising what went wrong."""
    from kombu import Connection

    url = broker_url(config)
    with Connection(url, ssl=celery_settings(config).get("broker_use_ssl") or False, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def check_tls(config: WorkerConfig) -> None:
    """At a worker's start: a TLS handshake the broker or we refuse is a configuration error, said at once.

    A broker that is down is waited for (it may be restarting); a wrong
    certificate, key or CA never heals by waiting, so it stops the start with
    a line naming broker.tls and the reason.
    """
    if config.broker.tls_ca is None or is_embedded(config):
        return
    try:
        probe_broker(config)
    except Exception as exc:  # noqa: BLE001 - only TLS failures are fatal here
        chain: list[BaseException] = []
        cause: BaseException | None = exc
        while cause is not None and len(chain) < 8:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
        if tls is not None:
            raise ConfigError(
                f"broker.tls: the TLS handshake with {shown(broker_url(config))} failed: {tls.reason or tls} "
                f"(CA {config.broker.tls_ca}, certificate {config.broker.tls_cert}, key {config.broker.tls_key})"
            ) from None


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
    tls = _tls_options(config, kind)
    if tls:
        settings["broker_use_ssl"] = tls
        if kind == "redis" and settings["result_backend"].startswith("rediss://"):
            settings["redis_backend_use_ssl"] = tls
    return settings
