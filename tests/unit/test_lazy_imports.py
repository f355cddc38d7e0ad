"""An idle worker holds only what serving tasks needs: heavy libraries load with the stage that uses them.

Each check runs in a fresh interpreter, since this one has imported everything
the other tests needed. The figures (what each library costs) are in
bench/README.md.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Loaded only by what uses them: SFTP uploads and keys (paramiko and its crypto), the embedded broker's
#: SQLAlchemy, a task that compresses artifacts (zstandard), templates (jinja2).
DEFERRED = ("paramiko", "cryptography", "nacl", "bcrypt", "invoke", "sqlalchemy", "zstandard", "jinja2")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_worker_on_an_amqp_broker_loads_no_deferred_library() -> None:
    out = _run(
        f"""
        import sys
        import farmhand.cli, farmhand.engine, farmhand.dispatch.app, farmhand.dispatch.node, farmhand.dispatch.client
        from farmhand.dispatch import settings
        print(sorted(m for m in {DEFERRED!r} if m in sys.modules))
        """
    )
    assert out == "[]"


def test_a_worker_on_the_embedded_broker_loads_no_deferred_library(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The worker's start (its start-up checks, the app) and a message through the embedded broker."""
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"working_dir: {tmp_path}\n")
    out = _run(
        f"""
        import sys
        from farmhand.cli import _startup_checks
        from farmhand.config import load_config
        from farmhand.dispatch.app import make_app
        config = load_config({str(cfg)!r}, environ={{}})
        _startup_checks(config)
        app = make_app(config)
        with app.connection_for_write() as conn:
            q = conn.SimpleQueue("default")
            q.put({{"n": 1}})
            q.get(timeout=5).ack()
        print(sorted(m for m in {DEFERRED!r} if m in sys.modules))
        """
    )
    assert out == "[]"


def test_an_ssh_engine_url_still_gets_docker_pys_ssh_transport(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """farmhand loads docker-py without its ssh:// transport; connect() loads it for an ssh:// engine. Nothing
    listens on port 1, so the SSH connection is refused: refused by paramiko, not by a missing transport."""
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"working_dir: {tmp_path}\ndocker:\n  base_url: ssh://farmhand@127.0.0.1:1\n")
    out = _run(
        f"""
        import sys
        from farmhand.config import load_config
        from farmhand.docker_client import connect
        assert "paramiko" not in sys.modules
        try:
            connect(load_config({str(cfg)!r}, environ={{}}))
        except Exception as exc:
            print(type(exc).__module__, type(exc).__name__, exc)
        """
    )
    assert "Install paramiko" not in out, out
    assert out.startswith("paramiko"), out
