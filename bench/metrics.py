"""What the metrics server costs: a worker's CPU with /metrics on, idle and scraped every 5 s, against one with it off.

Not a test: it prints figures. Two `farmhand worker` processes (embedded
broker, CONCURRENCY=2, one trivial task each so the histograms hold
something) run side by side over the same windows: the baseline with
`worker.metrics_address` empty, the other serving /metrics. CPU is
utime+stime of each process and its children (/proc), in % of one core:

  idle      neither is scraped, over --seconds
  scraped   the second is scraped every 5 s over --seconds, as Prometheus would
  a scrape  CPU per scrape over 200 back-to-back scrapes, and what that costs at one every 5 s

The server's cost is the difference from the baseline's CPU in the same
window (target: under 1 % of a core).

Usage:
    .venv/bin/python bench/metrics.py [--seconds 60] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_json_arg, emit, row, use_test_helpers  # noqa: E402

use_test_helpers()
import docker  # noqa: E402
import yaml  # noqa: E402
from dispatch import tree_cpu_ticks  # noqa: E402
from dispatch_support import WorkerProcess, discard_left_tasks  # noqa: E402
from farmhand.config import load_config  # noqa: E402
from farmhand.dispatch.client import Client  # noqa: E402
from support import BUSYBOX, free_port  # noqa: E402

SCRAPE_EVERY = 5.0
TICK = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="each window (idle, scraped)")
    add_json_arg(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="farmhand-bench-metrics-") as tmp:
        root = Path(tmp)
        port = free_port()
        workers = {
            "off": WorkerProcess(root, {"CONCURRENCY": "2"}, {"worker": {"metrics_address": ""}}, "off"),
            "on": WorkerProcess(root, {"CONCURRENCY": "2"}, {"worker": {"metrics_address": f"127.0.0.1:{port}"}}, "on"),
        }
        try:
            for w in workers.values():
                w.start()
                cfg = w.root / "client.yml"
                cfg.write_text(yaml.safe_dump({"working_dir": str(w.working_dir)}))
                doc = Client(load_config(cfg, environ={})).submit(
                    {"image": BUSYBOX, "pull": "never", "command": ["echo", "hello"], "max_run_time": 60, "network": "none"}
                ).result(timeout=120)
                assert doc["state"] == "succeeded", doc
            url = f"http://127.0.0.1:{port}/metrics"

            def scrape() -> int:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    return len(reply.read())

            size = scrape()
            time.sleep(2)  # the tasks' reports settle
            pids = {k: w.proc.pid for k, w in workers.items()}
            print(f"idle window, {args.seconds:g}s...", file=sys.stderr)
            base = {k: tree_cpu_ticks(p) for k, p in pids.items()}
            t0 = time.monotonic()
            time.sleep(args.seconds)
            idle = {k: 100 * (tree_cpu_ticks(p) - base[k]) / TICK / (time.monotonic() - t0) for k, p in pids.items()}
            print(f"scraped window (every {SCRAPE_EVERY:g}s), {args.seconds:g}s...", file=sys.stderr)
            base = {k: tree_cpu_ticks(p) for k, p in pids.items()}
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                scrape()
                time.sleep(max(0.0, min(SCRAPE_EVERY, args.seconds - (time.monotonic() - t0))))
            scraped = {k: 100 * (tree_cpu_ticks(p) - base[k]) / TICK / (time.monotonic() - t0) for k, p in pids.items()}
            n = 200
            before = tree_cpu_ticks(pids["on"])
            for _ in range(n):
                scrape()
            per_scrape_ms = 1000 * (tree_cpu_ticks(pids["on"]) - before) / TICK / n
        finally:
            for w in workers.values():
                w.stop()
            discard_left_tasks(docker.from_env())
    rows.append(row(
        "metrics server, worker idle, not scraped: CPU", [idle["on"] - idle["off"]], unit="% of a core", target="<= 1",
        note=f"worker with /metrics {idle['on']:.2f} %, without {idle['off']:.2f} %, over {args.seconds:g}s",
    ))
    rows.append(row(
        f"metrics server, worker idle, scraped every {SCRAPE_EVERY:g} s: CPU", [scraped["on"] - scraped["off"]], unit="% of a core", target="<= 1",
        note=f"worker with /metrics {scraped['on']:.2f} %, without {scraped['off']:.2f} %, over {args.seconds:g}s; a scrape is {size} bytes",
    ))
    rows.append(row(
        f"one scrape of /metrics, as a share of a core at one every {SCRAPE_EVERY:g} s", [per_scrape_ms / (SCRAPE_EVERY * 1000) * 100], unit="% of a core",
        target="<= 1", note=f"{per_scrape_ms:.2f} ms of CPU per scrape, over {n} back-to-back scrapes",
    ))
    emit(rows, args.json, "=== the metrics server")


if __name__ == "__main__":
    main()
