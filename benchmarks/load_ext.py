"""What `%load_ext farm_jupyter` costs: a fresh process with it versus a bare IPython start.

    python benchmarks/load_ext.py [--runs 10] [--json]

Each run is a new interpreter (`python -c ...`) that builds an InteractiveShell, and for the
"load_ext" variant then runs `%load_ext farm_jupyter`. The variants are interleaved after one
warm-up of each, so disk cache and machine noise hit both alike. Reported: wall time of the
whole process as the parent sees it, the in-process time of the `%load_ext` call alone, and
peak RSS of the child (`ru_maxrss`). Target: under 0.15 s added.

Children run with bytecode caches, as an installed package does: PYTHONDONTWRITEBYTECODE is
dropped from their environment (the warm-up writes the caches; `__pycache__` is git-ignored).
Pass `--no-bytecode` to measure the cold-compile case instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.15  # seconds added by %load_ext

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
t1 = time.perf_counter()
if {load}:
    ip.run_line_magic("load_ext", "farm_jupyter")
    assert ip.find_cell_magic("farm_chat") is not None
t2 = time.perf_counter()
heavy = [m for m in ("pydantic", "httpx", "openai", "torch", "transformers") if m in sys.modules]
print(json.dumps({{"shell": t1 - t0, "load_ext": t2 - t1, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "heavy": heavy}}))
"""


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(load: bool) -> dict[str, Any]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(load=load)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
        env=ENV,
    )
    wall = time.perf_counter() - start
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    data["wall"] = wall
    return data


def measure(runs: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"bare IPython": [], "+ %load_ext farm_jupyter": []}
    run_once(False)
    run_once(True)  # warm-up: bytecode caches, page cache
    for _ in range(runs):
        results["bare IPython"].append(run_once(False))
        results["+ %load_ext farm_jupyter"].append(run_once(True))
    return results


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    loaded = results["+ %load_ext farm_jupyter"]
    summary: dict[str, Any] = {
        name: {
            "wall": stats([r["wall"] for r in rs]),
            "load_ext": stats([r["load_ext"] for r in rs]),
            "rss_mb": stats([r["rss_kb"] / 1024 for r in rs]),
            "runs": len(rs),
        }
        for name, rs in results.items()
    }
    added = summary["+ %load_ext farm_jupyter"]["wall"]["median"] - summary["bare IPython"]["wall"]["median"]
    summary["added_wall_s"] = added
    summary["added_load_ext_s"] = summary["+ %load_ext farm_jupyter"]["load_ext"]["median"]
    summary["ratio"] = summary["+ %load_ext farm_jupyter"]["wall"]["median"] / summary["bare IPython"]["wall"]["median"]
    summary["added_rss_mb"] = (
        summary["+ %load_ext farm_jupyter"]["rss_mb"]["median"] - summary["bare IPython"]["rss_mb"]["median"]
    )
    summary["heavy_imports"] = sorted({m for r in loaded for m in r["heavy"]})
    summary["target_s"] = TARGET
    summary["ok"] = added < TARGET and summary["added_load_ext_s"] < TARGET
    return summary


def table(summary: dict[str, Any]) -> str:
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    lines = [
        "### `%load_ext farm_jupyter` in a fresh process",
        "",
        "| variant | wall median | wall min | wall max | `%load_ext` call (median) | peak RSS (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("bare IPython", "+ %load_ext farm_jupyter"):
        s = summary[name]
        call = "-" if name == "bare IPython" else ms(s["load_ext"]["median"])
        lines.append(
            f"| {name} | {ms(s['wall']['median'])} | {ms(s['wall']['min'])} | {ms(s['wall']['max'])} | {call} | "
            f"{s['rss_mb']['median']:.1f} MB |"
        )
    verdict = "met" if summary["ok"] else "MISSED"
    lines += [
        "",
        f"Added: {ms(summary['added_wall_s'])} wall ({summary['ratio']:.3f}x), "
        f"{ms(summary['added_load_ext_s'])} in the `%load_ext` call, {summary['added_rss_mb']:+.1f} MB RSS; "
        f"target < {TARGET * 1000:.0f} ms: {verdict}. Heavy modules imported by the load: "
        f"{', '.join(summary['heavy_imports']) or 'none'}. {summary['bare IPython']['runs']} runs each, interleaved.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--no-bytecode", action="store_true", help="compile every module from source (no .pyc)")
    args = parser.parse_args()
    if args.no_bytecode:
        ENV["PYTHONDONTWRITEBYTECODE"] = "1"
        ENV["PYTHONPYCACHEPREFIX"] = "/nonexistent-farm-bench"  # ignore caches written before
    summary = report(measure(args.runs))
    print(json.dumps(summary) if args.json else table(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
