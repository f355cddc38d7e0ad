"""What every bench script shares: samples to rows, one table format, JSON out.

A row is one figure measured against its baseline in the same run:

    {"figure", "baseline", "unit",
     "farmhand": {"median", "min", "max", "n"}, "baseline_stats": {...} | None,
     "ratio", "target", "met", "note"}

``ratio`` is oriented so that the target reads naturally: for times it is
farmhand / baseline (target "<= 1.10"), for rates farmhand / baseline
(target ">= 0.9"). Figures without a baseline (idle RSS, lost tasks) have
``ratio`` None and ``met`` decided on the farmhand median. ``met`` is None
where there is no target. Numbers never fail anything: they are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
INTEGRATION = REPO / "tests" / "integration"  # the test suite's brokers, sshd and worker launchers


def use_test_helpers() -> None:
    """Make the test suite's helpers importable: tests/integration (support, dispatch_support, sshd) and
    tests/ (decompressing), as the suite's own conftest does."""
    for folder in (INTEGRATION, INTEGRATION.parent):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stats(samples: Iterable[float]) -> dict[str, float] | None:
    values = list(samples)
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _met(value: float | None, target: str | None) -> bool | None:
    """``target`` is "<= X" or ">= X" (or None, or free text: then None)."""
    if target is None or value is None:
        return None
    op, _, num = target.partition(" ")
    try:
        limit = float(num.rstrip("x%").split()[0])
    except (ValueError, IndexError):
        return None
    if op == "<=":
        return value <= limit
    if op == ">=":
        return value >= limit
    if op == "==":
        return value == limit
    return None


def row(
    figure: str,
    farmhand: Iterable[float],
    *,
    baseline: str = "",
    baseline_samples: Iterable[float] | None = None,
    unit: str = "s",
    higher_is_better: bool = False,
    target: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One figure. With baseline samples, ``ratio`` = farmhand median / baseline median and ``target`` applies to it;
    without, ``target`` applies to the farmhand median (e.g. "<= 60" MiB)."""
    f = stats(farmhand)
    b = stats(baseline_samples) if baseline_samples is not None else None
    ratio = f["median"] / b["median"] if f and b and b["median"] else None
    checked = ratio if b is not None else (f["median"] if f else None)
    return {
        "figure": figure,
        "baseline": baseline or "—",
        "unit": unit,
        "higher_is_better": higher_is_better,
        "farmhand": f,
        "baseline_stats": b,
        "ratio": ratio,
        "target": target,
        "met": _met(checked, target),
        "note": note,
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == int(v) and abs(v) >= 1:
        return f"{v:.0f}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _triple(s: dict[str, float] | None) -> str:
    return "-" if s is None else f"{_fmt(s['median'])} ({_fmt(s['min'])}–{_fmt(s['max'])})"


def table(rows: list[dict[str, Any]]) -> str:
    """One plain-text table: figure, unit, farmhand median (min–max), baseline, ratio, target, met."""
    head = ["figure", "unit", "farmhand med (min–max)", "baseline", "baseline med (min–max)", "ratio", "target", "met"]
    body = []
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        body.append([
            r["figure"], r["unit"], _triple(r["farmhand"]), r["baseline"], _triple(r["baseline_stats"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"] or "-", met,
        ])
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r['figure']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + (["notes:"] + notes if notes else []))


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON (bench/run_all.py collects them)")


def emit(rows: list[dict[str, Any]], json_path: Path | None, title: str = "") -> None:
    if title:
        print(title)
    print(table(rows), flush=True)
    if json_path:
        write_json(json_path, rows)


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
