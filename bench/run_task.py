"""Time a trivial task through farmhand's engine against `docker run --rm` of the same image.

Not a test: it prints figures (median, min, max over N runs, and the ratio),
measured in the same run on the same image. Usage:
    .venv/bin/python bench/run_task.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from farmhand.config import load_config
from farmhand.engine import Engine, connect_docker

IMAGE = "farmhand-test/busybox:latest"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.yml"
        cfg_path.write_text(json.dumps({"working_dir": tmp}))
        config = load_config(cfg_path, environ={})
        client = connect_docker(config)
        task = {"image": IMAGE, "pull": "never", "command": ["echo", "hello"], "max_run_time": 60}

        def farmhand_once() -> None:
            result = Engine(config, client).run(dict(task))
            assert result.state == "succeeded", result.message

        def docker_once() -> None:
            subprocess.run(["docker", "run", "--rm", IMAGE, "echo", "hello"], check=True, capture_output=True)

        farmhand_once(), docker_once()  # warm both paths
        rows = {"docker run --rm": [], "farmhand engine": []}
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            rows["docker run --rm"].append(timed(docker_once))
            rows["farmhand engine"].append(timed(farmhand_once))
    base = statistics.median(rows["docker run --rm"])
    print(f"{'trivial task':<18} {'median s':>9} {'min s':>7} {'max s':>7} {'ratio':>6}")
    for name, samples in rows.items():
        med = statistics.median(samples)
        print(f"{name:<18} {med:9.3f} {min(samples):7.3f} {max(samples):7.3f} {med / base:6.2f}x")


if __name__ == "__main__":
    main()
