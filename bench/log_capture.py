"""Capture a container's output to a file with farmhand's log path, against `docker logs -t -f > file`.

Not a test: it prints figures (median, min, max over N interleaved runs, MB/s,
the throughput ratio to `docker logs`, and the capturing process's peak RSS),
measured in the same run, from the same finished container, so both read the
same log the same way through the Docker engine. Usage:
    .venv/bin/python bench/log_capture.py [--size-mib 1024] [--runs 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_json_arg, emit, row, use_test_helpers  # noqa: E402

use_test_helpers()  # the suite's peak-RSS launcher

from support import BUSYBOX, run_measuring_peak_rss  # noqa: E402

LINE = "farmhand log capture line " + "x" * 70  # 97 bytes + newline, like a chatty build

#: The worker's own log path (docker_logs + logpump), alone in a process of its own.
CAPTURE = """
import sys
from pathlib import Path
import docker
from farmhand.docker_logs import OutputStream
from farmhand.logpump import LogPump
from farmhand.masking import StreamMasker
client = docker.from_env()
summary = LogPump(OutputStream(client, sys.argv[1]), Path(sys.argv[2]), 1 << 62, StreamMasker([])).start().wait()
assert summary.complete, "the capture did not finish cleanly"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    add_json_arg(parser)
    args = parser.parse_args()
    size = args.size_mib << 20
    client = docker.from_env(timeout=600)
    print(f"making a container that prints {args.size_mib} MiB...", file=sys.stderr)
    container = client.containers.run(BUSYBOX, ["sh", "-c", f"yes '{LINE}' | head -c {size}"], detach=True)
    try:
        container.wait()
        with tempfile.TemporaryDirectory(prefix="farmhand-bench-", dir="/var/tmp") as tmp_name:
            out = Path(tmp_name) / "captured.log"
            samples: dict[str, list[float]] = {"docker logs -t -f": [], "farmhand capture": []}
            peaks: list[int] = []
            sizes: dict[str, int] = {}
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                start = time.perf_counter()
                with open(out, "wb") as fh:
                    subprocess.run(["docker", "logs", "-t", "-f", container.id], stdout=fh, stderr=subprocess.STDOUT, check=True)
                samples["docker logs -t -f"].append(time.perf_counter() - start)
                sizes["docker logs -t -f"] = out.stat().st_size
                out.unlink()
                start = time.perf_counter()
                code, peak = run_measuring_peak_rss([sys.executable, "-c", CAPTURE, container.id, str(out)], None, None)
                samples["farmhand capture"].append(time.perf_counter() - start)
                assert code == 0, "farmhand's capture failed"
                peaks.append(peak)
                sizes["farmhand capture"] = out.stat().st_size
                out.unlink()
    finally:
        container.remove(force=True)

    if sizes["docker logs -t -f"] != sizes["farmhand capture"]:
        print(f"WARNING: sizes differ: {sizes}", file=sys.stderr)
    mb = {name: sizes[name] / 1e6 for name in samples}
    rates = {name: [mb[name] / t for t in runs] for name, runs in samples.items()}
    rows = [
        row(f"log capture {args.size_mib} MiB", rates["farmhand capture"], unit="MB/s", higher_is_better=True,
            baseline="docker logs -t -f > file", baseline_samples=rates["docker logs -t -f"], target=">= 0.9"),
        row("log capture peak RSS", [p / 1024 for p in peaks], unit="MiB", target="<= 100",
            note="the capturing process (docker_logs + logpump), alone"),
    ]
    emit(rows, args.json)


if __name__ == "__main__":
    main()
