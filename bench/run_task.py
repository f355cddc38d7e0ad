"""Time a trivial task through farmhand's engine against `docker run --rm` of the same image.

Not a test: it prints figures (median, min, max over N runs, and the ratio),
measured in the same run on the same image. Usage:
    .venv/bin/python bench/run_task.py [--runs 15] [--networks none,bridge] [--json OUT.json]

The engine runs in this process (no broker): bench/dispatch.py measures the
same through `farmhand worker` and a broker. `network: none` skips the
task network; `bridge` (the task default) includes it, against docker's
default bridge: created and removed per task as `farmhand run-task` does,
and taken from a pool as `farmhand worker` does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_json_arg, emit, row, timed  # noqa: E402
from farmhand.config import load_config  # noqa: E402
from farmhand.docker_client import connect  # noqa: E402
from farmhand.engine import Engine  # noqa: E402
from farmhand.network_pool import NetworkPool  # noqa: E402

IMAGE = "farmhand-test/busybox:latest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--networks", default="none,bridge")
    add_json_arg(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.yml"
        cfg_path.write_text(json.dumps({"working_dir": tmp, "images": {"allowed": [IMAGE]}}))
        config = load_config(cfg_path, environ={})
        client = connect(config)
        # One engine alone (farmhand run-task) creates its task network and removes it; a worker keeps them.
        pool = NetworkPool(client, owner=f"bench-{os.getpid()}", keep=1)
        for net in args.networks.split(","):
            task = {"image": IMAGE, "pull": "never", "command": ["echo", "hello"], "max_run_time": 60, "network": net}

            def farmhand_once() -> None:
                result = Engine(config, client).run(dict(task))
                assert result.state == "succeeded", result.message

            def pooled_once() -> None:
                result = Engine(config, client, networks=pool).run(dict(task))
                assert result.state == "succeeded", result.message

            def docker_once() -> None:
                subprocess.run(["docker", "run", "--rm", "--network", net, IMAGE, "echo", "hello"], check=True, capture_output=True)

            farmhand_once(), pooled_once(), docker_once()  # warm every path
            samples: dict[str, list[float]] = {"docker": [], "farmhand": [], "pooled": []}
            for _ in range(args.runs):  # interleaved, so drift hits all alike
                samples["docker"].append(timed(docker_once))
                samples["farmhand"].append(timed(farmhand_once))
                if net == "bridge":
                    samples["pooled"].append(timed(pooled_once))
            rows.append(row(f"trivial task, engine in-process, network {net}", samples["farmhand"],
                            baseline=f"docker run --rm --network {net}", baseline_samples=samples["docker"], target="<= 1.10"))
            if net == "bridge":
                rows.append(row("trivial task, engine in-process, network bridge, pooled as in farmhand worker", samples["pooled"],
                                baseline="docker run --rm --network bridge", baseline_samples=samples["docker"], target="<= 1.10"))
        pool.close()
    emit(rows, args.json)


if __name__ == "__main__":
    main()
