"""Shared helpers for the benchmarks: timing loops, markdown tables, targets, JSON output."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
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


async def ameasure(fns: dict[str, Callable[[], Awaitable[Any]]], runs: int, warmup: int = 3) -> dict[str, list[float]]:
    """`measure` for coroutine functions, timed on the loop that runs this (no thread hop)."""
    for fn in fns.values():
        for _ in range(warmup):
            await fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - start)
    return times


def fmt(seconds: float) -> str:
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def median(times: Mapping[str, list[float]], name: str) -> float:
    return statistics.median(times[name])


def ratio(times: Mapping[str, list[float]], name: str, baseline: str) -> float:
    return median(times, name) / median(times, baseline)


def table(
    title: str,
    times: Mapping[str, list[float]],
    baseline: str,
    unit: Callable[[float], str] = fmt,
    *,
    baselines: Mapping[str, str] | None = None,
    missing: Mapping[str, str] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
    notes: list[str] | None = None,
) -> str:
    """A markdown table: median, min, max, ratio and difference to the baseline's median.

    `baselines` gives some rows their own baseline (an anchor measured in its own venv);
    `missing` adds rows that were not measured, with the reason; `extra` adds columns
    ({column: {row: text}}); `notes` are printed under the table.
    """
    baselines = baselines or {}
    extra = extra or {}
    lines = [
        f"### {title}",
        "",
        "| variant | median | min | max | vs baseline | added |" + "".join(f" {c} |" for c in extra),
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(extra),
    ]
    for name, ts in times.items():
        is_base = name == baseline or name in baselines.values()
        base_name = name if is_base else baselines.get(name, baseline)
        base = statistics.median(times[base_name])
        med = statistics.median(ts)
        label = f"{name} (baseline)" if is_base else name
        if base_name != baseline and not is_base:
            label += f" [vs {base_name}]"
        cells = "".join(f" {extra[c].get(name, '')} |" for c in extra)
        lines.append(
            f"| {label} | {unit(med)} | {unit(min(ts))} | {unit(max(ts))} | "
            f"{med / base:.3f}x | {unit(med - base) if not is_base else '-'} |{cells}"
        )
    for name, reason in (missing or {}).items():
        lines.append(f"| {name} | {reason} | | | | |" + " |" * len(extra))
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def summary(times: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "runs": len(ts)}
        for name, ts in times.items()
    }


def target(name: str, measured: str, met: bool | None) -> dict[str, Any]:
    """One row of the targets table; `met=None` when it could not be measured."""
    return {"target": name, "measured": measured, "met": met}


def targets_table(rows: list[dict[str, Any]], title: str = "Targets") -> str:
    lines = [f"### {title}", "", "| target | measured | met? |", "|---|---|:---:|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {row['measured']} | {met} |")
    return "\n".join(lines)


def emit(text: str, data: dict[str, Any]) -> None:
    """Print the tables, or (with --json, for run_all.py) the figures plus the tables as JSON."""
    if "--json" in sys.argv:
        print(json.dumps({**data, "markdown": text}))
    else:
        print(text)


def raw_ollama_pieces(http: Any, messages: list[dict[str, str]]) -> int:
    """A streamed Ollama chat read by hand (an httpx.Client's iter_lines): the lines that carry text."""
    n = 0
    with http.stream("POST", "/api/chat", json={"model": "llama3.1", "messages": messages, "stream": True}) as r:
        for line in r.iter_lines():
            if line and json.loads(line)["message"]["content"]:
                n += 1
    return n


def raw_openai_pieces(sdk: Any, messages: list[dict[str, str]]) -> int:
    """A streamed chat through the raw openai SDK, asking for the usage event as farm_jupyter does:
    the events that carry text."""
    events = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    return sum(1 for e in events if e.choices and e.choices[0].delta.content)
