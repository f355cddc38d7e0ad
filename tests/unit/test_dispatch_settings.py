"""Broker settings from config and env (the seeds' names), the journal's bookkeeping, and what never shows a password."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from farmhand.config import load_config
from farmhand.dispatch import settings
from farmhand.errors import ConfigError
from farmhand.dispatch.journal import Journal


def config(tmp_path: Path, doc: dict | None = None, **env: str):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"working_dir": str(tmp_path / "work"), **(doc or {})}))
    return load_config(path, environ=env)


def test_no_broker_configured_means_the_embedded_sqlite_broker_and_store(tmp_path):
    cfg = config(tmp_path)
    assert settings.broker_url(cfg) == f"farmhand+sqlite:///{tmp_path}/work/broker.sqlite"
    assert settings.result_backend(cfg) == f"farmhand-files+file://{tmp_path}/work/results"
    assert settings.is_embedded(cfg)
    conf = settings.celery_settings(cfg)
    assert conf["worker_enable_remote_control"] is False and conf["worker_send_task_events"] is False


def test_seed_env_names_build_the_url_with_quoted_credentials(tmp_path):
    cfg = config(tmp_path, BROKER_HOST="mq.example", USERNAME="farm", PASSWORD="p@ss:w/rd", BROKER_VHOST="zim")
    assert settings.broker_url(cfg) == "amqp://farm:p%40ss%3Aw%2Frd@mq.example:5672/zim"
    assert settings.result_backend(cfg) == "rpc://"
    assert "p%40ss" not in settings.shown(settings.broker_url(cfg))


def test_broker_url_wins_and_gets_credentials_only_when_it_has_none(tmp_path):
    cfg = config(tmp_path, BROKER_URL="redis://127.0.0.1:6390/2", USERNAME="default", PASSWORD="s3cret")
    assert settings.broker_url(cfg) == "redis://default:s3cret@127.0.0.1:6390/2"
    assert settings.result_backend(cfg) == settings.broker_url(cfg)
    own = config(tmp_path, BROKER_URL="amqp://a:b@h//", USERNAME="other", PASSWORD="x")
    assert settings.broker_url(own) == "amqp://a:b@h//"


def test_tls_switches_the_scheme_and_passes_ca_cert_and_key(tmp_path):
    cfg = config(tmp_path, {"broker": {"host": "mq", "tls": {"ca": "/etc/ssl/ca.pem", "cert": "/etc/c.pem", "key": "/etc/k.pem"}}})
    assert settings.broker_url(cfg).startswith("amqps://mq:5671/")
    ssl_opts = settings.celery_settings(cfg)["broker_use_ssl"]
    assert ssl_opts["ca_certs"] == "/etc/ssl/ca.pem" and ssl_opts["certfile"] == "/etc/c.pem" and ssl_opts["keyfile"] == "/etc/k.pem"
    redis_cfg = config(tmp_path, {"broker": {"host": "r", "transport": "redis", "tls": {"ca": "/ca.pem"}}})
    assert settings.broker_url(redis_cfg) == "rediss://r:6379/"
    assert settings.celery_settings(redis_cfg)["broker_use_ssl"]["ssl_ca_certs"] == "/ca.pem"


def test_redis_vhost_must_be_a_database_number(tmp_path):
    cfg = config(tmp_path, {"broker": {"host": "r", "transport": "redis", "vhost": "zim"}})
    with pytest.raises(ConfigError, match="broker.vhost"):
        settings.broker_url(cfg)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"CONCURRENCY": "many"}, "CONCURRENCY"),
        ({"CONCURRENCY": "0"}, "config.worker.concurrency"),
        ({"BROKER_PORT": "99999"}, "config.broker.port"),
        ({"QUEUES": "ok,bad queue"}, "config.worker.queues"),
        ({"BROKER_URL": "http://nope"}, "config.broker.url"),
        ({"NODE_NAME": "has space"}, "config.worker.node_name"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, env, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config(tmp_path, **env)


def test_a_bad_password_value_is_never_echoed(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"broker": {"password": 12345}}))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "config.broker.password" in str(info.value) and "12345" not in str(info.value)


def test_queues_concurrency_and_node_name_from_env(tmp_path):
    cfg = config(tmp_path, QUEUES="default, small,large", CONCURRENCY="3", NODE_NAME="zim@host1")
    assert cfg.node.queues == ("default", "small", "large")
    assert cfg.node.slots == 3
    assert settings.node_name(cfg) == "zim@host1"
    assert config(tmp_path).node.slots == len(os.sched_getaffinity(0))


def test_journal_accepts_once_records_then_reports_and_forgets_secrets(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    assert stat.S_IMODE((tmp_path / "j.sqlite").stat().st_mode) == 0o600
    doc = {"image": "x", "env": {"TOKEN": "secret"}}
    assert journal.accept("t1", doc, {"reply_to": "q"}) is True
    assert journal.accept("t1", doc, {"reply_to": "q"}) is False  # a second delivery
    journal.set_stage("t1", "run")
    assert [e.stage for e in journal.unreported()] == ["run"]
    journal.record_result("t1", {"state": "succeeded"})
    journal.set_stage("t1", "upload")  # too late: a finished task keeps its stage
    entry = journal.get("t1")
    assert entry is not None and entry.stage == "finished" and entry.result == {"state": "succeeded"}
    journal.mark_reported("t1")
    assert journal.unreported() == []
    reopened = Journal(tmp_path / "j.sqlite").get("t1")
    assert reopened is not None and reopened.document is None and reopened.reported_at


def test_journal_syncs_every_commit_but_a_stage_change(tmp_path):
    """A stage is for people (a resume goes by the checkpoint): written unsynced. Everything else an
    acknowledged task depends on is synced (synchronous=FULL), before and after a stage change."""
    journal = Journal(tmp_path / "j.sqlite")
    synced = {}
    journal._db.set_trace_callback(lambda sql: synced.setdefault(sql.split()[0], []).append(journal._db.execute("PRAGMA synchronous").fetchone()[0]) if sql.split()[0] in ("INSERT", "UPDATE") else None)
    journal.accept("t1", {}, {})
    journal.set_stage("t1", "run")
    journal.record_result("t1", {"state": "succeeded"})
    journal.mark_reported("t1")
    assert synced == {"INSERT": [2], "UPDATE": [1, 2, 2]}  # 2: FULL, 1: NORMAL


def test_journal_requests_are_handed_out_once(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    other = Journal(tmp_path / "j.sqlite")  # a command on the same host
    other.request("cancel", "t9")
    other.request("drain")
    assert journal.take_requests() == [("cancel", "t9"), ("drain", None)]
    assert journal.take_requests() == []


def test_quorum_queues_are_declared_for_every_queue_and_only_on_rabbitmq(tmp_path):
    cfg = config(tmp_path, BROKER_URL="amqp://farm:secret@mq.example:5672//", BROKER_QUEUE_TYPE="quorum")
    conf = settings.celery_settings(cfg)
    assert (conf["task_default_queue_type"], conf["task_create_missing_queue_type"]) == ("quorum", "quorum")
    assert settings.celery_settings(config(tmp_path, BROKER_URL="amqp://mq.example//")).get("task_default_queue_type") is None
    with pytest.raises(ConfigError, match="broker.queue_type: quorum queues are RabbitMQ's") as info:
        settings.celery_settings(config(tmp_path, BROKER_URL="redis://:secret@127.0.0.1:6379/0", BROKER_QUEUE_TYPE="quorum"))
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="broker.queue_type"):
        config(tmp_path, BROKER_QUEUE_TYPE="mirrored")


def test_firewall_lists_are_checked_at_load_naming_the_entry(tmp_path):
    cfg = config(tmp_path, {"firewall": {"allow": ["10.0.0.5:3128/tcp", "host:5432"], "block": ["192.168.0.0/16"]}})
    assert (cfg.firewall.enabled, cfg.firewall.allow, cfg.firewall.block) == (True, ("10.0.0.5:3128/tcp", "host:5432"), ("192.168.0.0/16",))
    assert config(tmp_path).firewall.block == ("169.254.0.0/16", "168.63.129.16/32", "100.100.100.200/32")
    for section, where in [({"allow": ["10.0.0.1/8"]}, "config.firewall.allow[0]"), ({"block": ["10.0.0.0/8", "host"]}, "config.firewall.block[1]")]:
        with pytest.raises(ConfigError, match=rf"{re.escape(where)}: "):
            config(tmp_path, {"firewall": section})


@pytest.mark.parametrize("url", ["amqp//farm:PWsecret1@mq.example", "amqp:/farm:PWsecret1@mq.example//", "x://farm:PWsecret1@h"])
def test_a_malformed_broker_url_is_refused_without_its_password(tmp_path, url):
    with pytest.raises(ConfigError, match="config.broker.url") as info:
        config(tmp_path, BROKER_URL=url, PASSWORD="PWsecret1")
    assert "PWsecret1" not in str(info.value)


def test_a_failover_list_of_rabbitmq_nodes_from_env_or_a_config_list(tmp_path):
    env = config(tmp_path, BROKER_URL="amqp://mq1:5672//; amqp://mq2:5672//;amqp://mq3:5672//", USERNAME="farm", PASSWORD="s3cret")
    assert settings.broker_url(env) == "amqp://farm:s3cret@mq1:5672//;amqp://farm:s3cret@mq2:5672//;amqp://farm:s3cret@mq3:5672//"
    assert settings.shown(settings.broker_url(env)) == "amqp://farm:**@mq1:5672//;amqp://farm:**@mq2:5672//;amqp://farm:**@mq3:5672//"
    assert settings.transport_kind(settings.broker_url(env)) == "amqp" and settings.result_backend(env) == "rpc://"
    listed = config(tmp_path, {"broker": {"url": ["amqp://mq1//", "amqp://mq2//"], "queue_type": "quorum"}})
    assert settings.celery_settings(listed)["broker_url"] == "amqp://mq1//;amqp://mq2//"
    from kombu import Connection

    assert Connection(settings.broker_url(listed)).alt == ["amqp://mq1//", "amqp://mq2//"]  # what kombu fails over between


@pytest.mark.parametrize(
    ("doc", "env", "field"),
    [
        ({}, {"BROKER_URL": "amqp://mq1//;http://mq2//"}, "config.broker.url"),
        ({"broker": {"url": ["amqp://mq1//", "ftp://x"]}}, {}, r"config.broker.url\[1\]"),
        ({"broker": {"url": []}}, {}, "config.broker.url"),
    ],
)
def test_a_bad_failover_list_names_the_field(tmp_path, doc, env, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.") if "[" not in field else field):
        config(tmp_path, doc, **env)


def test_a_failover_list_mixing_brokers_is_refused_naming_the_field(tmp_path):
    cfg = config(tmp_path, BROKER_URL="amqp://u:pw1@mq1//;redis://:pw2@r:6379/0")
    with pytest.raises(ConfigError, match=r"broker\.url: .* mixes amqp, redis") as info:
        settings.broker_url(cfg)
    assert "pw1" not in str(info.value) and "pw2" not in str(info.value)


def test_sentinel_urls_and_the_master_name_reach_broker_and_result_store(tmp_path):
    cfg = config(tmp_path, BROKER_URL="sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0", BROKER_MASTER_NAME="prod")
    conf = settings.celery_settings(cfg)
    assert settings.transport_kind(conf["broker_url"]) == "redis" and conf["worker_disable_prefetch"] is True
    assert conf["broker_transport_options"] == {"visibility_timeout": 3600, "master_name": "prod"}
    assert conf["result_backend"] == conf["broker_url"]  # Celery's SentinelBackend, through the same sentinels
    assert conf["result_backend_transport_options"] == {"master_name": "prod"}
    from celery import Celery

    app = Celery(set_as_current=False)
    app.conf.update(conf)
    assert type(app.backend).__name__ == "SentinelBackend"


@pytest.mark.parametrize("where", ["BROKER_URL", "RESULT_BACKEND"])
def test_sentinel_urls_without_a_master_name_name_the_field(tmp_path, where):
    env = {"BROKER_URL": "redis://127.0.0.1:6379/0", where: "sentinel://127.0.0.1:26379/0"}
    with pytest.raises(ConfigError, match=r"broker\.master_name: broker\.(url|result_backend) lists Redis sentinels") as info:
        settings.celery_settings(config(tmp_path, **env))
    assert "BROKER_MASTER_NAME" in str(info.value)
    with pytest.raises(ConfigError, match=r"config\.broker\.master_name"):
        config(tmp_path, BROKER_MASTER_NAME="two words")


def test_redis_tls_covers_the_broker_and_its_result_store(tmp_path):
    cfg = config(tmp_path, BROKER_URL="rediss://127.0.0.1:6380/0", BROKER_TLS_CA="/ca.pem", BROKER_TLS_CERT="/c.pem", BROKER_TLS_KEY="/k.pem")
    conf = settings.celery_settings(cfg)
    expected = {"ssl_cert_reqs": __import__("ssl").CERT_REQUIRED, "ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}
    assert conf["broker_use_ssl"] == expected and conf["redis_backend_use_ssl"] == expected
    assert conf["result_backend"] == "rediss://127.0.0.1:6380/0"


def test_a_tls_failure_is_found_however_the_client_wrapped_it():
    import ssl

    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    try:
        try:
            raise cause
        except OSError as exc:
            raise ConnectionError(f"Error connecting: {exc}")  # redis-py's way: the SSL error as context only
    except ConnectionError as wrapped:
        assert settings.tls_error(wrapped) is cause
    assert settings.tls_error(ConnectionRefusedError()) is None
