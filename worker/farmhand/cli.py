"""``farmhand`` command line: run a task on this host, or check one without running it.

Exit codes: 0 succeeded, 1 failed (the task's fault), 2 the task or the
command line is invalid, 3 exception (the host or the policy: image
unavailable, denied, upload failed...), 4 the worker's config is unusable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from farmhand import __version__, policy
from farmhand.config import load_config
from farmhand.engine import Engine, connect_docker
from farmhand.errors import ConfigError, InvalidDocument, PolicyDenied
from farmhand.result import Result
from farmhand.task import parse_task, read_task_file

EXIT = {"succeeded": 0, "failed": 1, "exception": 3}
EXIT_INVALID = 2
EXIT_CONFIG = 4


class ConsoleReporter:
    """Shows each stage as it happens on stderr, keeping stdout for the result."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self._last_progress = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def stage_started(self, task_id: str, stage: str) -> None:
        self._print(f"[{stage}] started")

    def stage_finished(self, task_id: str, stage: str, outcome: str, duration: float) -> None:
        self._print(f"[{stage}] {outcome} in {duration:.2f}s")

    def progress(self, task_id: str, stage: str, message: str, **fields: Any) -> None:
        if "bytes_total" in fields and fields["bytes_total"]:
            done, total = fields["bytes_done"], fields["bytes_total"]
            message += f" ({done / 1e6:.1f}/{total / 1e6:.1f} MB, {100 * done / total:.0f}%)"
        self._print(f"[{stage}] {message}")


def _summary(doc: dict[str, Any]) -> str:
    lines = [f"task {doc['task_id']}: {doc['state']}" + (f" ({doc['reason']})" if doc.get("reason") else "")]
    if doc.get("message"):
        lines.append(f"  {doc['message']}")
    if doc.get("exit_code") is not None:
        lines.append(f"  exit code: {doc['exit_code']}")
    for art in doc.get("artifacts", []):
        where = art.get("location") or art.get("problem") or "not uploaded"
        size = f"{art['size']} bytes, sha256 {art['sha256']}" if art.get("present") else "missing"
        lines.append(f"  artifact {art['name']}: {size} -> {where}")
    if doc.get("log"):
        lg = doc["log"]
        trunc = ", truncated" if lg.get("truncated") else ""
        lines.append(f"  log: {lg['size']} bytes{trunc} -> {lg.get('location') or 'not uploaded'}")
    for warning in doc.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if doc.get("workspace"):
        lines.append(f"  workspace: {doc['workspace']}")
    lines.append(f"  duration: {doc['duration']:.2f}s")
    return "\n".join(lines)


def cmd_run_task(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        document = read_task_file(args.task)
        parse_task(document)  # fail fast, before touching Docker
    except InvalidDocument as exc:
        print(f"farmhand: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    client = connect_docker(config)
    reporter = ConsoleReporter() if not args.quiet else None
    engine = Engine(config, client, reporter)
    with _cancel_on_signals(engine):
        result: Result = engine.run(document, task_id=args.task_id)
    doc = result.to_dict()
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_summary(doc))
    return EXIT[doc["state"]]


@contextmanager
def _cancel_on_signals(engine: Engine) -> Iterator[None]:
    """First SIGINT/SIGTERM cancels the task cleanly (result, cleanup, partial log); a second one kills."""
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        if engine_cancelled[0]:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        engine_cancelled[0] = True
        print(f"farmhand: {signal.Signals(signum).name} received, cancelling the task (again to abort)", file=sys.stderr, flush=True)
        engine.cancel()

    engine_cancelled = [False]
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        task = parse_task(read_task_file(args.task))
        policy.check(config, task)
    except (InvalidDocument, PolicyDenied) as exc:
        print(f"farmhand: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.task}: valid, and allowed by this worker's policy ({config.source})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farmhand", description="Container task worker.")
    parser.add_argument("--version", action="version", version=f"farmhand {__version__}")
    parser.add_argument("--config", help="worker config file (default: $FARMHAND_CONFIG or /etc/farmhand/config.yml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the worker's internals to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run-task", help="run one task on this host and print its result")
    run.add_argument("task", help="task file (YAML or JSON)")
    run.add_argument("--json", action="store_true", help="print only the result document, as JSON, on stdout")
    run.add_argument("--task-id", help="use this task id instead of the file's or a generated one")
    run.add_argument("-q", "--quiet", action="store_true", help="do not show stages as they happen")
    run.set_defaults(func=cmd_run_task)

    val = sub.add_parser("validate", help="check a task against the contract and this worker's policy; runs nothing")
    val.add_argument("task")
    val.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.Formatter.converter = time.gmtime
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"farmhand: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("farmhand: interrupted", file=sys.stderr)
        return 130
