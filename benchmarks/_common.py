"""Shared helpers for the benchmarks: timing loops and markdown tables."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def measure(fns: dict[str, Callable[[], Any]], runs: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time each function `runs` times, interleaved so that machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def table(title: str, times: dict[str, list[float]], baseline: str, unit: Callable[[float], str] = fmt) -> str:
    base = statistics.median(times[baseline])
    lines = [
        f"### {title}",
        "",
        "| variant | median | min | max | vs baseline | added |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(
            f"| {name}{' (baseline)' if name == baseline else ''} | {unit(med)} | {unit(min(ts))} | "
            f"{unit(max(ts))} | {med / base:.3f}x | {unit(med - base) if name != baseline else '-'} |"
        )
    return "\n".join(lines)


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "runs": len(ts)}
        for name, ts in times.items()
    }


def emit(text: str, data: dict[str, Any]) -> None:
    """Print the table, or the raw figures as JSON with --json (for run_all.py)."""
    if "--json" in sys.argv:
        print(json.dumps(data))
    else:
        print(text)
