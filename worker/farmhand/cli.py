"""``farmhand`` command line: run a task on this host, check one, manage the SSH key and pending uploads.

Exit codes: 0 succeeded, 1 failed (the task's fault), 2 the task or the
command line is invalid, 3 exception (the host or the policy: image
unavailable, denied, upload failed...), 4 the worker's config is unusable.
``pending retry`` exits 3 when an upload still fails.
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

from farmhand import __version__, keys, pending, policy
from farmhand.config import WorkerConfig, load_config
from farmhand.docker_client import connect
from farmhand.engine import Engine
from farmhand.errors import ConfigError, InvalidDocument, PolicyDenied, TaskProblem
from farmhand.locks import Held, hold
from farmhand.result import Result
from farmhand.task import parse_task, read_task_file, task_id_problem

EXIT = {"succeeded": 0, "failed": 1, "exception": 3}
EXIT_INVALID = 2
EXIT_CONFIG = 4
#: In WORKING_DIR, held by the one worker that serves it.
WORKER_LOCK = "worker.lock"


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
            rate = f", {fields['rate'] / 1e6:.1f} MB/s" if fields.get("rate") else ""
            message += f" ({done / 1e6:.1f}/{total / 1e6:.1f} MB, {100 * done / total:.0f}%{rate})"
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


def _startup_checks(config: WorkerConfig) -> None:
    """What must be right before any work starts: the SSH key and known_hosts of sftp:// warehouses."""
    from urllib.parse import urlsplit

    if not any(urlsplit(t).scheme == "sftp" for t in [config.upload_default, *config.upload_allowed_targets]):
        return  # the SFTP uploader (paramiko: bench/README.md, idle RSS) loads with the first sftp:// upload
    from farmhand.uploaders.sftp import check_startup

    check_startup(config)


def cmd_run_task(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        document = read_task_file(args.task)
        parse_task(document, task_id=args.task_id)  # fail fast, before touching Docker
    except InvalidDocument as exc:
        print(f"farmhand: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    _startup_checks(config)
    client = connect(config)
    reporter = ConsoleReporter() if not args.quiet else None
    engine = Engine(config, client, reporter)
    retrier = pending.BackgroundRetrier(config).start()  # earlier failed uploads travel while this task runs
    try:
        with _cancel_on_signals(engine):
            result: Result = engine.run(document, task_id=args.task_id)
    finally:
        retrier.stop()
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


def cmd_keys_generate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = args.key or config.sftp.private_key
    try:
        key = keys.generate(path, args.type, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"farmhand: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {path} (mode 0600) and {path}.pub", file=sys.stderr)
    print(keys.public_line(key, f"farmhand@{os.uname().nodename}"))
    print(f"{keys.key_kind(key)} {keys.fingerprint(key)}")
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    key = keys.load_private_key(args.key or config.sftp.private_key)
    print(keys.public_line(key, f"farmhand@{os.uname().nodename}"))
    print(f"{keys.key_kind(key)} {keys.fingerprint(key)}")
    return 0


def _entry_line(entry: pending.Entry) -> str:
    age = time.time() - float(entry.job.get("created_at", time.time()))
    due = float(entry.job.get("next_try_at", 0)) - time.time()
    when = f"next try in {due:.0f}s" if due > 0 else "due now"
    return (
        f"{entry.path.name}  {len(entry.job['items'])} file(s), {entry.size} bytes -> {entry.target}\n"
        f"    waiting {age:.0f}s, {entry.job.get('tries', 0)} tries, {when}; last error: {entry.job.get('last_error')}"
    )


def cmd_pending_list(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    found = pending.entries(config)
    if args.json:
        json.dump([{"name": e.path.name, "path": str(e.path), **e.job} for e in found], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not found:
        print(f"no pending uploads in {config.pending_dir}")
    else:
        for entry in found:
            print(_entry_line(entry))
    return 0


def cmd_pending_retry(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _startup_checks(config)
    if args.watch:
        return _watch_pending(config)
    try:
        chosen = [pending.find(config, n) for n in args.names] if args.names else pending.entries(config)
    except KeyError as exc:
        print(f"farmhand: {exc.args[0]}", file=sys.stderr)
        return EXIT_INVALID
    reporter = ConsoleReporter(sys.stderr)
    failed = 0
    for entry in chosen:
        try:
            pending.deliver(config, entry, lambda m, **f: reporter.progress(entry.task_id, "upload", m, **f))
            print(f"{entry.path.name}: delivered to {entry.target}")
        except (pending.Busy, TaskProblem) as exc:
            failed += 1
            print(f"{entry.path.name}: still pending: {getattr(exc, 'message', exc)}")
    return EXIT["exception"] if failed else 0


def _watch_pending(config: WorkerConfig) -> int:
    """Deliver pending uploads until interrupted: the background retrier as a service of its own."""
    retrier = pending.BackgroundRetrier(config)
    print(f"farmhand: retrying pending uploads in {config.pending_dir} every {retrier.interval:g}s (Ctrl-C to stop)", file=sys.stderr)
    retrier.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        retrier.stop()


def cmd_pending_discard(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    code = 0
    for name in args.names:
        try:
            entry = pending.find(config, name)
            pending.discard(config, entry)
        except KeyError as exc:
            print(f"farmhand: {exc.args[0]}", file=sys.stderr)
            code = EXIT_INVALID
            continue
        except pending.Busy as exc:
            print(f"farmhand: {exc}", file=sys.stderr)
            code = EXIT["exception"]
            continue
        print(f"{name}: discarded ({len(entry.job['items'])} file(s), {entry.size} bytes never uploaded to {entry.target})")
    return code


def cmd_worker(args: argparse.Namespace) -> int:
    """Serve the queues: journal, run, report; resume what an earlier process left."""
    from farmhand.dispatch.app import make_app, run_worker
    from farmhand.dispatch.node import Node, set_current
    from farmhand.dispatch.settings import check_tls

    import faulthandler

    faulthandler.enable()  # SIGABRT from systemd's watchdog: every thread's stack goes to the journal first
    config = load_config(args.config)
    _startup_checks(config)
    check_tls(config)
    try:
        # Held for the process's life: two workers on one WORKING_DIR (or one embedded broker) would
        # both resume every unreported task and hand each other's messages back to the queue.
        held = hold(config.working_dir / WORKER_LOCK, f"WORKING_DIR {config.working_dir}")
    except Held as exc:
        raise ConfigError(f"{exc}: another farmhand worker serves it; one worker per WORKING_DIR") from None
    except OSError as exc:  # not this user's (a container's WORKING_DIR left to root), or not a directory
        from farmhand.in_container import WORKING_DIR, hint

        raise ConfigError(f"WORKING_DIR {config.working_dir}: cannot take its lock as uid {os.getuid()}: {exc.strerror or exc}{hint(WORKING_DIR)}") from None
    client = connect(config)
    node = Node(make_app(config), config, client)
    set_current(node)
    logging.getLogger("farmhand").setLevel(logging.INFO)
    from farmhand.observe_http import start_for_worker

    observer = start_for_worker(config, node, client)  # /metrics, /tasks: before any task is resumed
    node.recover()
    node.start_housekeeping()
    try:
        return run_worker(config, node, loglevel="DEBUG" if args.verbose else "INFO")
    finally:
        node.stop_housekeeping()
        node.close_networks()
        if observer is not None:
            observer.stop()
        held.close()


def cmd_logs(args: argparse.Namespace) -> int:
    """A task's log on this host, as stored (masked); with -f, followed until the task's log is final."""
    from farmhand.live_log import LiveLog, LogUnavailable, SinceFilter, since_stamp, workspace_of

    config = load_config(args.config)
    try:
        keep = SinceFilter(since_stamp(args.since)) if args.since else None
    except ValueError as exc:
        print(f"farmhand: {exc}", file=sys.stderr)
        return EXIT_INVALID
    out = sys.stdout.buffer
    try:
        reader = LiveLog(workspace_of(config.tasks_dir, args.task_id))
        reader.check()
        for data in reader.chunks(follow=args.follow):
            out.write(keep.feed(data) if keep else data)
            out.flush()
        if keep:
            out.write(keep.flush())
    except LogUnavailable as exc:
        print(f"farmhand: {exc.message}", file=sys.stderr)
        return EXIT_INVALID if exc.status in (400, 404) else EXIT["exception"]
    except BrokenPipeError:  # | head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    out.flush()
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    """The tasks running on this node: from WORKING_DIR and Docker, whether a worker runs or not."""
    from farmhand import ps

    config = load_config(args.config)
    try:
        client = connect(config)
    except Exception as exc:  # noqa: BLE001 - the working dir alone still says what runs
        client = None
        problems = [f"docker: {getattr(exc, 'message', exc)}"]
    else:
        problems = []
    rows, more = ps.running_tasks(config.tasks_dir, client)
    problems += more
    if args.json:
        json.dump({"tasks": rows, "problems": problems}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(ps.table(rows) if rows else f"no task runs on this host ({config.tasks_dir})")
        for problem in problems:
            print(f"farmhand: {problem}", file=sys.stderr)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """One garbage collection pass, as the worker makes them: each item with its size and why; --dry-run removes nothing."""
    from farmhand import gc
    from farmhand.dispatch.settings import node_name
    from farmhand.docker_client import DOCKER_ERRORS, error_text
    from farmhand.gc_pass import Collector, lock_held

    config = load_config(args.config)
    client = connect(config)
    name = node_name(config)
    # A running worker's pool keeps its idle networks on purpose.
    live = frozenset({name}) if lock_held(config.working_dir / WORKER_LOCK) else frozenset()
    try:
        report = Collector(config, client, owners=frozenset({name, "farmhand"}), live=live).run(dry_run=args.dry_run)
    except DOCKER_ERRORS as exc:
        print(f"farmhand: gc: Docker engine error: {error_text(exc)}", file=sys.stderr)
        return EXIT["exception"]
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for fs in report.before:
            share = f" ({100 * fs.free / fs.total:.0f}%)" if fs.total else ""
            inodes = f", {fs.free_inodes} inodes free" if fs.inodes else ""
            print(f"{fs.name}: {fs.path}: {gc.human(fs.free)} free of {gc.human(fs.total)}{share}{inodes}")
        for done in report.items:
            detail = f" ({done.detail})" if done.detail else ""
            print(f"{done.outcome}: {done.item.kind} {done.item.name}, {gc.human(done.item.size)}: {done.item.reason}{detail}")
        if not report.items:
            print("nothing to remove: every filesystem is above its threshold and nothing is older than gc.retention")
        print(f"kept {len(report.kept)} item(s) farmhand did not make or a task needs (--json says each and why)")
        freed = "would free" if args.dry_run else "freed"
        state = "the node takes tasks" if report.accepting else f"the node takes no tasks: {report.reason}"
        print(f"{freed} {gc.human(report.freed if not args.dry_run else sum(o.item.size for o in report.items))}; {state}")
    failed = any(o.outcome == "failed" for o in report.items)
    return EXIT["exception"] if failed or not report.accepting else 0


def _client(args: argparse.Namespace) -> Any:
    from farmhand.dispatch.client import Client

    return Client(load_config(args.config))


def _print_result(doc: dict[str, Any], as_json: bool) -> int:
    if as_json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_summary(doc))
    return EXIT[doc["state"]]


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        document = read_task_file(args.task)
        handle = _client(args).submit(document, queue=args.queue, task_id=args.task_id)
    except InvalidDocument as exc:
        print(f"farmhand: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    if not args.wait:
        if args.json:
            print(json.dumps({"task_id": handle.task_id, "queue": args.queue, "state": "pending"}))
        else:
            print(handle.task_id)
        return 0
    if not args.json:
        print(handle.task_id, file=sys.stderr)
    return _wait_and_print(handle, args)


def _wait_and_print(handle: Any, args: argparse.Namespace) -> int:
    try:
        doc = handle.result(timeout=args.timeout)
    except TimeoutError as exc:
        print(f"farmhand: {exc}", file=sys.stderr)
        return EXIT["exception"]
    return _print_result(doc, args.json)


def cmd_status(args: argparse.Namespace) -> int:
    handle = _client(args).get(args.task_id)
    if args.wait:
        return _wait_and_print(handle, args)
    if handle.done():
        return _print_result(handle.result(timeout=10), args.json)
    state = handle.state
    if args.json:
        print(json.dumps({"task_id": args.task_id, "state": state}))
    else:
        print(f"task {args.task_id}: {state}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    outcome = _client(args).cancel(args.task_id)
    print(f"task {args.task_id}: cancel {outcome}")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    nodes = _client(args).drain(node=args.node, grace=args.grace)
    if not nodes:
        print("farmhand: no worker answered", file=sys.stderr)
        return EXIT["exception"]
    print("draining: " + ", ".join(nodes))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Is this host ready to serve? Each check on its own line; exit 0 only when all pass."""
    from farmhand import check

    problems = 0
    for name, ok, detail in check.checks(args.config):
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        problems += not ok
    return 0 if problems == 0 else EXIT["exception"]


def cmd_engine_check(args: argparse.Namespace) -> int:
    """Probe the Docker engine once; restart it after ``--after`` stuck checks in a row (see ``farmhand.engine_check``)."""
    import pathlib
    import shlex
    import subprocess

    from farmhand import engine_check
    from farmhand.docker_client import make_client

    config = load_config(args.config)
    state = pathlib.Path(args.state)
    # Not connect(), nor docker-py's version negotiation: each is a call a stuck engine may never answer,
    # and this check's calls must each run under its own clock. Every call it makes exists since API 1.40.
    client = make_client(config, version=engine_check.API_VERSION)
    results = engine_check.run_probes(engine_check.probes(client.api), config.docker_timeout)
    verdict = engine_check.decide(results, engine_check.load_count(state), args.after)
    engine_check.save_count(state, verdict.stuck_in_a_row)
    print(verdict.line, flush=True)
    if not verdict.restart:
        return 0 if verdict.stuck_in_a_row == 0 else EXIT["exception"]
    if not args.restart:
        print("engine-check: --restart not given: restart it yourself (systemctl restart docker.service)")
        return EXIT["exception"]
    command = shlex.split(args.restart_command) if args.restart_command else list(engine_check.RESTART)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        print(f"engine-check: {shlex.join(command)} exited {done.returncode}", file=sys.stderr)
        return EXIT["exception"]
    return 0


def cmd_firewall(args: argparse.Namespace) -> int:
    """The iptables rules that keep task networks off this host and link-local addresses (as root)."""
    from farmhand import firewall

    try:
        if args.firewall_command == "remove":
            report = firewall.remove()
            enabled = True
        else:
            enabled, policy = firewall.policy_from_config(load_config(args.config), allow=args.allow, block=args.block)
            if args.firewall_command == "check":
                problems = firewall.check(policy) if enabled else []
                for line in problems:
                    print(f"firewall: missing: {line}")
                if not enabled:
                    print("firewall: disabled by the config")
                elif problems:
                    print("firewall: not in place: run `farmhand firewall apply` as root, or restart farmhand")
                else:
                    print(f"firewall: in place: {policy.summary()}")
                return 0 if not problems else EXIT["exception"]
            report = firewall.apply(policy) if enabled else firewall.remove()
    except ValueError as exc:
        print(f"farmhand: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except firewall.FirewallError as exc:
        from farmhand.in_container import FIREWALL, hint

        print(f"farmhand: firewall: {exc}{hint(FIREWALL)}", file=sys.stderr)
        return EXIT["exception"]
    for note in report.notes:
        print(f"firewall: note: {note}")
    for change in report.changes:
        print(f"firewall: changed: {change}")
    done = "removed" if args.firewall_command == "remove" or not enabled else "applied"
    print(f"firewall: {done}, {len(report.changes)} change(s)" if report.changes else f"firewall: {done}, unchanged")
    return 0


def task_id_argument(value: str) -> str:
    """A task id given on the command line obeys the contract's task_id pattern; else argparse exits 2 naming the option."""
    problem = task_id_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farmhand", description="Container task worker.")
    parser.add_argument("--version", action="version", version=f"farmhand {__version__}")
    parser.add_argument("--config", help="worker config file (default: $FARMHAND_CONFIG or /etc/farmhand/config.yml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the worker's internals to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run-task", help="run one task on this host and print its result")
    run.add_argument("task", help="task file (YAML or JSON)")
    run.add_argument("--json", action="store_true", help="print only the result document, as JSON, on stdout")
    run.add_argument("--task-id", type=task_id_argument, help="use this task id instead of the file's or a generated one")
    run.add_argument("-q", "--quiet", action="store_true", help="do not show stages as they happen")
    run.set_defaults(func=cmd_run_task)

    val = sub.add_parser("validate", help="check a task against the contract and this worker's policy; runs nothing")
    val.add_argument("task")
    val.set_defaults(func=cmd_validate)

    keys_cmd = sub.add_parser("keys", help="the worker's SSH key for sftp:// warehouses")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="write a new key pair (private key mode 0600) at sftp.private_key")
    gen.add_argument("--type", choices=keys.KEY_TYPES, default="ed25519")
    gen.add_argument("--key", help="where to write it (default: the config's sftp.private_key)")
    gen.add_argument("--force", action="store_true", help="replace an existing key")
    gen.set_defaults(func=cmd_keys_generate)
    show = keys_sub.add_parser("show", help="print the public key (authorized_keys line) and its SHA256 fingerprint")
    show.add_argument("--key", help="private key to show (default: the config's sftp.private_key)")
    show.set_defaults(func=cmd_keys_show)

    wk = sub.add_parser("worker", help="serve the configured queues (a Celery node); SIGTERM leaves running tasks to the next start, SIGQUIT drains")
    wk.add_argument("--log-format", choices=("text", "json"), help="stderr as text, or one JSON object a line for journald and log shippers (default: $LOG_FORMAT, else text)")
    wk.set_defaults(func=cmd_worker)

    sbm = sub.add_parser("submit", help="queue a task for the workers; prints its task_id")
    sbm.add_argument("task", help="task file (YAML or JSON)")
    sbm.add_argument("--queue", default="default", help="queue to send it to (default: default)")
    sbm.add_argument("--task-id", type=task_id_argument, help="use this task id instead of the file's or a generated one")
    sbm.add_argument("--wait", action="store_true", help="wait for the result document and print it")
    sbm.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    sbm.add_argument("--json", action="store_true", help="stdout is one JSON object: task_id and, when known, the result")
    sbm.set_defaults(func=cmd_submit)

    lg = sub.add_parser("logs", help="a task's log on this host (masked as stored); -f follows a running task until it ends")
    lg.add_argument("task_id", metavar="TASK_ID")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing while the task runs")
    lg.add_argument("--since", metavar="T", help="only lines from T on: a duration back from now (90s, 10m, 2h, 1d) or a time (2026-11-29T15:00:00Z)")
    lg.set_defaults(func=cmd_logs)

    gcp = sub.add_parser("gc", help="one garbage collection pass (images farmhand pulled, caches, old results...): each item, its size and why")
    gcp.add_argument("--dry-run", action="store_true", help="show what the pass would remove; remove nothing")
    gcp.add_argument("--json", action="store_true", help="the pass as one JSON document: filesystems, items with outcome, what is kept and why")
    gcp.set_defaults(func=cmd_gc)

    pss = sub.add_parser("ps", help="the tasks running on this node: stage, age, container, memory")
    pss.add_argument("--json", action="store_true")
    pss.set_defaults(func=cmd_ps)

    st = sub.add_parser("status", help="a submitted task's state, or its result once it has one")
    st.add_argument("task_id", type=task_id_argument)
    st.add_argument("--wait", action="store_true", help="wait for the result document")
    st.add_argument("--timeout", type=float, default=None)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    cn = sub.add_parser("cancel", help="cancel a task: stop it if it runs (its partial log is kept), discard it if queued")
    cn.add_argument("task_id", type=task_id_argument)
    cn.set_defaults(func=cmd_cancel)

    dr = sub.add_parser("drain", help="workers stop taking tasks, finish or cancel (worker-shutdown) what runs, and stop")
    dr.add_argument("--node", help="only this node (default: every worker on the broker)")
    dr.add_argument("--grace", type=float, help="seconds to wait before cancelling (default: the worker's drain_grace)")
    dr.set_defaults(func=cmd_drain)

    ck = sub.add_parser("check", help="is this host ready: config, Docker, working dir, broker, SSH key")
    ck.set_defaults(func=cmd_check)

    ec = sub.add_parser("engine-check", help="is the Docker engine stuck (calls unanswered past docker.timeout)? restart it when it stays so (as root, from a timer)")
    ec.add_argument("--restart", action="store_true", help="restart the engine after --after stuck checks in a row")
    ec.add_argument("--after", type=int, default=2, metavar="N", help="stuck checks in a row before a restart (default 2)")
    ec.add_argument("--state", default="/run/farmhand/engine-check.json", metavar="FILE", help="where the count of stuck checks in a row is kept between runs")
    ec.add_argument("--restart-command", metavar="CMD", help="instead of `systemctl restart docker.service` (a dockerd not run by systemd)")
    ec.set_defaults(func=cmd_engine_check)

    fw = sub.add_parser("firewall", help="iptables rules (as root): task networks reach neither this host nor link-local/metadata addresses")
    fw_sub = fw.add_subparsers(dest="firewall_command", required=True)
    for verb, text in (
        ("apply", "install or correct the rules (idempotent; the systemd unit runs it before the worker)"),
        ("check", "exit 0 when the rules are in place as the config says, 3 naming what is missing"),
        ("remove", "take every farmhand rule and chain away"),
    ):
        fw_cmd = fw_sub.add_parser(verb, help=text)
        if verb != "remove":
            fw_cmd.add_argument("--allow", action="append", metavar="DEST", help="instead of the config's list: host[:PORT[/PROTO]] or CIDR[:PORT[/PROTO]] tasks may reach (repeat)")
            fw_cmd.add_argument("--block", action="append", metavar="CIDR", help="instead of the config's list: a network tasks may not reach (repeat)")
        fw_cmd.set_defaults(func=cmd_firewall)

    pend = sub.add_parser("pending", help="uploads that failed and wait in WORKING_DIR/pending/")
    pend_sub = pend.add_subparsers(dest="pending_command", required=True)
    plist = pend_sub.add_parser("list", help="show what waits, where it goes and why it failed")
    plist.add_argument("--json", action="store_true")
    plist.set_defaults(func=cmd_pending_list)
    retry = pend_sub.add_parser("retry", help="upload pending entries now (all of them when none is named)")
    retry.add_argument("names", nargs="*", metavar="TASK_ID")
    retry.add_argument("--watch", action="store_true", help="keep retrying in the background until interrupted")
    retry.set_defaults(func=cmd_pending_retry)
    discard = pend_sub.add_parser("discard", help="give up on entries: delete their files without uploading them")
    discard.add_argument("names", nargs="+", metavar="TASK_ID")
    discard.set_defaults(func=cmd_pending_discard)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        args.log_format = args.log_format or os.environ.get("LOG_FORMAT") or "text"
        if args.log_format not in ("text", "json"):
            parser.error(f"LOG_FORMAT: {args.log_format!r} is not a log format (text or json)")
    if getattr(args, "log_format", "text") == "json":
        from farmhand import log_format

        log_format.configure_json(logging.DEBUG if args.verbose else logging.WARNING)
    else:
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
