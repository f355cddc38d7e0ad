"""The farm figure: many `farmhand worker` nodes on one RabbitMQ, thousands of trivial tasks, each counted.

Not a test: it prints figures. N worker processes (each its own NODE_NAME,
WORKING_DIR and CONCURRENCY) share one RabbitMQ started here on loopback;
one client submits the tasks (network `none`), taking the results that
arrive meanwhile every ten sends, then waits for the rest. Every task is counted three ways,
none assumed:

  results   final states received by the client, per task id
  journals  the task ids in each worker's journal (which node ran what)
  runs      lines the task appended to a cache volume each time it really ran

lost = tasks with no succeeded result; duplicated = the most extra copies any
of the three counts shows. Also tasks/s (first submit to last result),
p50/p99 of submit→result (the client's clock: when it sent the task, when
the result reached it), and each worker's peak RSS (VmHWM, and its process
tree sampled while the tasks ran).

Usage:
    .venv/bin/python bench/farm.py [--tasks 2000] [--nodes 8] [--concurrency 2] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_json_arg, emit, row, use_test_helpers  # noqa: E402

use_test_helpers()
import docker  # noqa: E402
import yaml  # noqa: E402
from celery.result import AsyncResult, ResultSet  # noqa: E402
from dispatch_support import RabbitMQ, WorkerProcess, counted_task, discard_left_tasks  # noqa: E402
from farmhand.config import load_config  # noqa: E402
from farmhand.dispatch.client import Client  # noqa: E402
from farmhand.sandbox import cache_volume_name  # noqa: E402
from support import BUSYBOX  # noqa: E402

FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def vm_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


class PeakRss:
    """Each worker's largest process-tree RSS, sampled every 0.2 s while the tasks run."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers
        self.peak = {w.root.name: 0 for w in workers}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for w in self.workers:
                if w.proc is not None:
                    rss = sum(vm_kib(p, "VmRSS") for p in tree(w.proc.pid))
                    self.peak[w.root.name] = max(self.peak[w.root.name], rss)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def journal_ids(worker: WorkerProcess) -> list[str]:
    path = worker.working_dir / "journal.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        return [r[0] for r in db.execute("SELECT task_id FROM tasks")]


def on_counter(dc: Any, script: str) -> str:
    """A shell line run beside the run counter (the cache volume counted_task appends to); no network needed."""
    volume = {cache_volume_name("runcount", None): {"bind": "/count"}}
    return dc.containers.run(BUSYBOX, ["sh", "-c", script], volumes=volume, network_mode="none", remove=True).decode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]  # nearest rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for every result")
    add_json_arg(parser)
    args = parser.parse_args()
    n, label = args.tasks, f"farm {args.nodes}x{args.concurrency} RabbitMQ, {args.tasks} tasks"
    dc = docker.from_env()
    counter = f"farm-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4().hex for _ in range(n)]
    workers: list[WorkerProcess] = []
    rabbit: RabbitMQ | None = None
    with tempfile.TemporaryDirectory(prefix="farmhand-farm-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        try:
            print("starting RabbitMQ...", file=sys.stderr)
            rabbit = RabbitMQ(root / "rabbitmq").start()
            env = {"BROKER_URL": rabbit.url, "CONCURRENCY": str(args.concurrency), "QUEUES": "default",
                   "FARMHAND_METRICS_ADDRESS": "127.0.0.1:0"}  # one host, many workers: any free metrics port each
            print(f"starting {args.nodes} workers...", file=sys.stderr)
            for i in range(1, args.nodes + 1):
                workers.append(WorkerProcess(root, env, None, f"node{i}").start())
            cfg = root / "client.yml"
            cfg.write_text(yaml.safe_dump({"working_dir": str(root / "client")}))
            client = Client(load_config(cfg, environ={"BROKER_URL": rabbit.url}))
            doc = counted_task(counter)

            sent: dict[str, float] = {}
            arrived: dict[str, float] = {}
            finals: Counter[str] = Counter()
            states: dict[str, str] = {}

            def on_message(meta: dict[str, Any]) -> None:
                if meta.get("status") in FINAL:
                    tid = meta["task_id"]
                    finals[tid] += 1
                    arrived.setdefault(tid, time.perf_counter())
                    states[tid] = meta["status"]

            consumer: Any = None  # the client's rpc:// result consumer

            def take_arrived() -> None:
                """Results that arrived while submitting, taken now, so their arrival time is theirs."""
                while True:
                    try:
                        consumer.drain_events(timeout=0.001)
                    except socket.timeout:
                        return

            print(f"{n} tasks on {args.nodes} nodes x {args.concurrency}...", file=sys.stderr)
            with PeakRss(workers) as peaks:
                # One thread: Celery's rpc:// results go to the reply queue of the thread that sent the task.
                results = ResultSet([AsyncResult(tid, app=client.app) for tid in ids], app=client.app)
                client.app.backend.add_pending_results(results.results)  # waited on, not buffered as strays
                start = time.perf_counter()
                for i, tid in enumerate(ids):
                    sent[tid] = time.perf_counter()
                    client.submit(dict(doc), task_id=tid)
                    if consumer is None:  # started by the first send
                        consumer = client.app.backend.result_consumer
                        consumer.on_message = on_message
                    if i % 10 == 9:
                        take_arrived()
                try:
                    results.join_native(timeout=args.timeout, propagate=False, on_message=on_message)
                except Exception as exc:  # noqa: BLE001 - a timeout still reports what came back
                    print(f"farm: waiting for results: {type(exc).__name__}: {exc}", file=sys.stderr)
                elapsed = (max(arrived.values()) if arrived else time.perf_counter()) - start
                quiet_until = time.monotonic() + 3  # a second result of any task would come now: counted too
                while time.monotonic() < quiet_until:
                    take_arrived()
                    time.sleep(0.1)
            hwm = {w.root.name: vm_kib(w.proc.pid, "VmHWM") for w in workers if w.proc is not None}
            for w in workers:
                w.stop()
            per_node = {w.root.name: journal_ids(w) for w in workers}
            runs = on_counter(dc, f"cat /count/{counter} 2>/dev/null || true").count("run")
        finally:
            try:
                for w in workers:
                    w.stop()
                discard_left_tasks(dc, set(ids))
                on_counter(dc, f"rm -f /count/{counter}")
            finally:
                if rabbit is not None:
                    rabbit.stop()

    ok = {tid for tid, s in states.items() if s == "SUCCESS"}
    in_journals = Counter(tid for tids in per_node.values() for tid in tids)
    dup_results = sum(c - 1 for c in finals.values() if c > 1)
    dup_journals = sum(c - 1 for c in in_journals.values() if c > 1)
    lost, dup = n - len(ok), max(dup_results, dup_journals, runs - n, 0)
    latencies = [arrived[t] - sent[t] for t in ok if t in sent]
    peak_mib = {k: max(peaks.peak[k], hwm.get(k, 0)) / 1024 for k in peaks.peak}
    split = ", ".join(f"{k} {len(v)}" for k, v in per_node.items())
    rows = [
        row(f"{label}: lost", [lost], unit="tasks", target="== 0",
            note=f"{len(ok)} succeeded of {len(finals)} results; {runs} runs counted in the cache volume; "
                 f"{len(in_journals)} task ids in the journals ({split})"),
        row(f"{label}: duplicated", [dup], unit="runs", target="== 0",
            note=f"extra results {dup_results}, task ids in two journals {dup_journals}, runs beyond {n}: {max(0, runs - n)}"),
        row(f"{label}: throughput", [n / elapsed], unit="tasks/s", higher_is_better=True,
            note=f"network none, counted_task (appends to a cache volume); {elapsed:.1f}s first submit to last result"),
        row(f"{label}: submit→result p50", [percentile(latencies, 50)] if latencies else [], unit="s",
            note=f"all {n} submitted at once from one client: includes the wait in the queue; mean {statistics.fmean(latencies):.2f}s" if latencies else ""),
        row(f"{label}: submit→result p99", [percentile(latencies, 99)] if latencies else [], unit="s"),
        row(f"{label}: worker peak RSS", list(peak_mib.values()), unit="MiB",
            note="per worker (VmHWM, or the sampled process tree if larger): " + ", ".join(f"{k} {v:.1f}" for k, v in peak_mib.items())),
    ]
    emit(rows, args.json, title=f"farm ({args.nodes} nodes x {args.concurrency})")


if __name__ == "__main__":
    main()
