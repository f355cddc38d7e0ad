"""`make bench`: every bench script in turn, one table of all figures, and the same as JSON.

Each script runs in its own process with `--json`, so a failing one costs its
own rows only (it is reported, and the run goes on). The numbers never fail
anything. Usage:
    .venv/bin/python bench/run_all.py [--json bench/results/latest.json] [--quick] [--only dispatch,upload]

--quick shrinks every figure (fewer runs, 128 MiB instead of 1 GiB, 10 s idle,
200 farm tasks) to check the scripts themselves in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent

#: script -> (full arguments, --quick arguments)
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "run_task": ([], ["--runs", "3"]),
    "dispatch": ([], ["--runs", "3", "--throughput-runs", "1", "--idle-seconds", "10"]),
    "farm": ([], ["--tasks", "200"]),
    "upload": ([], ["--size-mib", "128", "--runs", "1"]),
    "log_capture": ([], ["--size-mib", "128", "--runs", "1"]),
    "metrics": ([], ["--seconds", "15"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma separated: " + ",".join(SCRIPTS))
    args = parser.parse_args()
    rows, failed, timings = [], [], {}
    with tempfile.TemporaryDirectory(prefix="farmhand-bench-json-") as tmp:
        for name in args.only.split(","):
            full, quick = SCRIPTS[name]
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full), "--json", str(out)]
            print(f"\n=== bench/{name}.py", flush=True)
            start = time.monotonic()
            code = subprocess.run(cmd).returncode
            timings[name] = round(time.monotonic() - start, 1)
            if code != 0 or not out.exists():
                failed.append(name)
                print(f"bench/{name}.py failed (exit {code}); its figures are missing", file=sys.stderr)
                continue
            for r in json.loads(out.read_text()):
                rows.append({"script": name, **r})
    print(f"\n=== all figures ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print(table(rows))
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(), "loadavg_at_end": os.getloadavg()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip(),
        "quick": args.quick,
        "seconds": timings,
        "failed": failed,
        "rows": rows,
    }
    write_json(args.json, report)
    print(f"\nwrote {args.json}" + (f"; failed: {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
