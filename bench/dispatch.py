"""The dispatcher's figures: real `farmhand worker` processes, real brokers, against `docker run --rm`.

Not a test: it prints figures, each measured against its baseline in the
same run on the same image (farmhand-test/busybox, `echo hello`):

  latency     submit→result of one trivial task, through the embedded broker
              and through RabbitMQ, vs `docker run --rm` of the same image
              (N interleaved runs, each network: `none` and the default `bridge`)
  throughput  40 trivial tasks at CONCURRENCY=4 (submit all, wait for all) vs
              4 parallel loops of `docker run --rm` (10 each); also the worker's
              CPU per task beside a `docker run` client's
  idle        the workers' RSS and CPU over 60 s doing nothing (from /proc,
              the worker process and its children)

The farm (many nodes, thousands of tasks, each counted) is bench/farm.py.

Usage:
    .venv/bin/python bench/dispatch.py [--only latency,throughput,idle] [--runs 10] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_json_arg, emit, row, timed, use_test_helpers  # noqa: E402

use_test_helpers()
import docker  # noqa: E402
import yaml  # noqa: E402
from dispatch_support import RabbitMQ, WorkerProcess, discard_left_tasks  # noqa: E402
from farmhand.dispatch.client import Client  # noqa: E402
from farmhand.config import load_config  # noqa: E402
from support import BUSYBOX  # noqa: E402

PARTS = ("latency", "throughput", "idle")


def trivial(network: str) -> dict[str, Any]:
    return {"image": BUSYBOX, "pull": "never", "command": ["echo", "hello"], "max_run_time": 60, "network": network}


def docker_run(network: str) -> None:
    subprocess.run(["docker", "run", "--rm", "--network", network, BUSYBOX, "echo", "hello"], check=True, capture_output=True)


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.rabbit: RabbitMQ | None = None
        self.workers: list[WorkerProcess] = []
        self.task_ids: set[str] = set()
        self.rows: list[dict[str, Any]] = []
        self._user_bridge: str | None = None

    # --- set-up and tear-down -------------------------------------------------------------------

    def rabbitmq(self) -> RabbitMQ:
        if self.rabbit is None:
            print("starting RabbitMQ...", file=sys.stderr)
            self.rabbit = RabbitMQ(self.root / "rabbitmq").start()
        return self.rabbit

    def worker(self, name: str, env: dict[str, str], concurrency: int) -> WorkerProcess:
        # Several workers on one host: each its own metrics port (any free one), as the idle figures count that server too.
        env = {"FARMHAND_METRICS_ADDRESS": "127.0.0.1:0", **env, "CONCURRENCY": str(concurrency), "QUEUES": "default"}
        w = WorkerProcess(self.root, env, None, name)
        self.workers.append(w)
        return w.start()

    def client(self, worker: WorkerProcess, env: dict[str, str]) -> Client:
        cfg = self.root / f"client-{worker.root.name}.yml"
        cfg.write_text(yaml.safe_dump({"working_dir": str(worker.working_dir)}))
        return Client(load_config(cfg, environ=env))

    def submit(self, client: Client, doc: dict[str, Any]) -> Any:
        handle = client.submit(doc)
        self.task_ids.add(handle.task_id)
        return handle

    def run_one(self, client: Client, doc: dict[str, Any]) -> None:
        result = self.submit(client, dict(doc)).result(timeout=120)
        assert result["state"] == "succeeded", result

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        dc = docker.from_env()
        discard_left_tasks(dc, self.task_ids)  # only ours: others may share the host
        if self._user_bridge is not None:
            dc.networks.get(self._user_bridge).remove()
        if self.rabbit is not None:
            self.rabbit.stop()

    # --- the figures ----------------------------------------------------------------------------

    def latency_and_throughput(self) -> None:
        a = self.args
        embedded_env: dict[str, str] = {}
        rabbit_env = {"BROKER_URL": self.rabbitmq().url}
        brokers = {
            "embedded": (embedded_env, self.worker("embedded", embedded_env, 4)),
            "RabbitMQ": (rabbit_env, self.worker("rabbit", rabbit_env, 4)),
        }
        clients = {name: self.client(w, env) for name, (env, w) in brokers.items()}
        pids = {name: w.proc.pid for name, (_, w) in brokers.items()}
        self.idle_candidates = {name: w for name, (_, w) in brokers.items()}
        for net in a.networks:
            # A farmhand task on bridge gets a network of its own (tasks cannot reach each other), which
            # docker run on docker0 does not: the same docker run on a user-defined bridge shows what that
            # isolation costs dockerd, beside the default-bridge baseline the targets use.
            user_net = self.user_bridge() if net == "bridge" else None
            if "latency" in a.only:
                fns: dict[str, Callable[[], None]] = {"docker": lambda: docker_run(net)}
                if user_net:
                    fns["docker-user"] = lambda: docker_run(user_net)
                for name, client in clients.items():
                    fns[name] = lambda client=client: self.run_one(client, trivial(net))
                for fn in fns.values():  # warm every path
                    fn()
                samples: dict[str, list[float]] = {k: [] for k in fns}
                for _ in range(a.runs):  # interleaved, so drift hits all alike
                    for k, fn in fns.items():
                        samples[k].append(timed(fn))
                for name in clients:
                    self.rows.append(row(
                        f"submit→result, {name}, network {net}", samples[name], baseline=f"docker run --rm --network {net}",
                        baseline_samples=samples["docker"], target="<= 1.10",
                    ))
                    if user_net:
                        self.rows.append(row(
                            f"submit→result, {name}, network {net} (same isolation)", samples[name],
                            baseline="docker run --rm on a user-defined bridge", baseline_samples=samples["docker-user"], target="<= 1.10",
                        ))
            if "throughput" in a.only:
                n, c = a.tasks, 4
                fns = {"docker": lambda: self.docker_loops(n, c, net)}
                if user_net:
                    fns["docker-user"] = lambda: self.docker_loops(n, c, user_net)
                for name, client in clients.items():
                    if name in a.throughput_brokers:
                        fns[name] = lambda client=client: self.batch(client, n, trivial(net))
                if "latency" not in a.only:  # warm each worker (first-task imports) as the latency part does
                    for client in clients.values():
                        self.run_one(client, trivial(net))
                rates: dict[str, list[float]] = {k: [] for k in fns}
                # CPU per task: the worker process's (utime+stime from /proc), and the `docker run` clients' (this
                # process's reaped children). Steadier than the rates on a shared host: other work slows both.
                cpu: dict[str, list[float]] = {k: [] for k in fns}
                for _ in range(a.throughput_runs):
                    for k, fn in fns.items():
                        before = tree_cpu_ticks(pids[k]) / TICKS if k in pids else children_cpu()
                        rates[k].append(n / timed(fn))
                        after = tree_cpu_ticks(pids[k]) / TICKS if k in pids else children_cpu()
                        cpu[k].append(1000 * (after - before) / n)
                for name in fns:
                    if not name.startswith("docker"):
                        self.rows.append(row(
                            f"{n} tasks at CONCURRENCY={c}, {name}, network {net}", rates[name], unit="tasks/s", higher_is_better=True,
                            baseline=f"{c} parallel docker run --rm loops", baseline_samples=rates["docker"], target=">= 0.95",
                            note=f"load {os.getloadavg()[0]:.1f} at the end",
                        ))
                        self.rows.append(row(
                            f"worker CPU per task, {name}, network {net}", cpu[name], unit="ms",
                            baseline="a docker run client process", baseline_samples=cpu["docker"],
                            note="the worker process's utime+stime over the batch / tasks; the baseline is the docker CLI's own",
                        ))
                        if user_net:
                            self.rows.append(row(
                                f"{n} tasks at CONCURRENCY={c}, {name}, network {net} (same isolation)", rates[name], unit="tasks/s",
                                higher_is_better=True, baseline=f"{c} docker run --rm loops on a user-defined bridge",
                                baseline_samples=rates["docker-user"], target=">= 0.95",
                            ))

    def user_bridge(self) -> str:
        """A user-defined bridge network for the baseline, made once and removed by ``close``."""
        if self._user_bridge is None:
            name = f"farmhand-bench-{os.getpid()}"
            docker.from_env().networks.create(name, driver="bridge")
            self._user_bridge = name
        return self._user_bridge

    def docker_loops(self, n: int, loops: int, network: str) -> None:
        def loop(count: int) -> None:
            for _ in range(count):
                docker_run(network)

        with ThreadPoolExecutor(loops) as pool:
            list(pool.map(loop, [n // loops + (1 if i < n % loops else 0) for i in range(loops)]))

    def batch(self, client: Client, n: int, doc: dict[str, Any]) -> list[dict[str, Any]]:
        handles = [self.submit(client, dict(doc)) for _ in range(n)]
        results = [h.result(timeout=600) for h in handles]
        bad = [r for r in results if r["state"] != "succeeded"]
        assert not bad, bad[0]
        return results

    def idle(self) -> None:
        """RSS (the process tree's) and CPU over idle_seconds, sampled each second, for workers that have done work
        (or a fresh embedded one)."""
        a = self.args
        workers = getattr(self, "idle_candidates", None) or {"embedded": self.worker("embedded-idle", {}, 4)}
        print(f"watching {len(workers)} idle worker(s) for {a.idle_seconds}s...", file=sys.stderr)
        time.sleep(2)  # let the last task's reports settle
        ticks = os.sysconf("SC_CLK_TCK")
        rss: dict[str, list[float]] = {k: [] for k in workers}
        cpu: dict[str, list[float]] = {k: [] for k in workers}
        first = {k: (time.monotonic(), tree_cpu_ticks(w.proc.pid)) for k, w in workers.items()}
        last = dict(first)
        for _ in range(int(a.idle_seconds)):
            time.sleep(1)
            for k, w in workers.items():
                now, ticks_now = time.monotonic(), tree_cpu_ticks(w.proc.pid)
                cpu[k].append(100 * (ticks_now - last[k][1]) / ticks / (now - last[k][0]))
                last[k] = (now, ticks_now)
                rss[k].append(tree_rss_kib(w.proc.pid) / 1024)
        for k in workers:
            overall = 100 * (last[k][1] - first[k][1]) / ticks / (last[k][0] - first[k][0])
            self.rows.append(row(f"idle worker RSS, {k} broker", rss[k], unit="MiB", target="<= 60", note=""))
            self.rows.append(row(
                f"idle worker CPU, {k} broker", cpu[k], unit="% of a core", target="<= 1",
                note=f"{overall:.2f} % over {a.idle_seconds}s (utime+stime, process and children, per-second samples)",
            ))


TICKS = os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the `docker run` clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def tree_cpu_ticks(pid: int) -> int:
    """utime+stime of the process and its live children, plus cutime+cstime (children already reaped)."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help="comma separated: " + ",".join(PARTS))
    parser.add_argument("--runs", type=int, default=10, help="latency: interleaved runs per path")
    parser.add_argument("--networks", default="none,bridge")
    parser.add_argument("--tasks", type=int, default=40, help="throughput: tasks per batch")
    parser.add_argument("--throughput-runs", type=int, default=3)
    parser.add_argument("--throughput-brokers", default="embedded,RabbitMQ")
    parser.add_argument("--idle-seconds", type=int, default=60)
    add_json_arg(parser)
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    args.networks = args.networks.split(",")
    args.throughput_brokers = set(args.throughput_brokers.split(","))
    with tempfile.TemporaryDirectory(prefix="farmhand-bench-", dir="/var/tmp") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            if args.only & {"latency", "throughput"}:
                bench.latency_and_throughput()
            if "idle" in args.only:
                bench.idle()
        finally:
            bench.close()
    emit(bench.rows, args.json, title=f"dispatch ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
