"""Inline completion: what the Jupyter server's `POST complete` route adds to a keystroke's ghost text.

A real `jupyter server` with the extension; a loopback Ollama in a process of its own whose first
token takes 100 ms (`latency=0.1`) and that answers fill-in-the-middle. Each round asks, side by
side, the upstream directly (`/api/generate` with `suffix`, what an editor talking to Ollama would
do) and the route (the Lab's path: token check, body bounds, masking, rate window, the Session's
breaker and deadlines on the runtime loop, SSE), each until its first text arrives; the added
overhead is the route's time minus the direct one, per round. Every round's prefix is new, so the
in-memory cache does not answer; then the same context again measures a cache hit (to its `done`).
The Lab's own debounce (`[completion] debounce_ms`) comes before both and is not counted.

    python benchmarks/completion.py [--rounds 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, fmt, table, target, targets_table  # noqa: E402
from _servers import serve  # noqa: E402
from server_memory import start_jupyter  # noqa: E402

CODER = "qwen2.5-coder:0.5b"
CELLS = ["import math", "radius = 2.5"]
GOAL = 0.030  # seconds of added overhead at p95


def _first_text(lines: Iterator[str], sse: bool) -> None:
    """Read until the first piece of text (an SSE `data:` text event, or an NDJSON line with some)."""
    for line in lines:
        if sse and line.startswith("data:") and '"text"' in line:
            return
        if not sse and line.strip() and json.loads(line).get("response"):
            return
    raise RuntimeError("the stream ended without text")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    times: dict[str, list[float]] = {"upstream directly": [], "POST complete": [], "POST complete, cache hit": []}
    with (
        serve("ollama", models=["llama3.1:latest", CODER], latency=0.1) as ollama,
        tempfile.TemporaryDirectory() as tmp,
    ):
        (Path(tmp) / "farm.toml").write_text(f'[completion]\nmodel = "ollama:{CODER}"\nrpm = 100000\n')
        jupyter, api, token = start_jupyter(Path(tmp), ollama.url)
        headers = {"Authorization": f"token {token}"}
        try:
            with httpx.Client(trust_env=False, timeout=30) as client:

                def direct(prefix: str) -> float:
                    body = {"model": CODER, "prompt": "\n\n".join([*CELLS, prefix]), "suffix": ")", "stream": True}
                    start = time.perf_counter()
                    with client.stream("POST", f"{ollama.url}/api/generate", json=body) as response:
                        lines = response.iter_lines()
                        _first_text(lines, sse=False)
                        took = time.perf_counter() - start
                        for _ in lines:  # to the end, so the connection is kept for the next round
                            pass
                    return took

                def routed(prefix: str) -> float:
                    body = {"prefix": prefix, "suffix": ")", "cells": CELLS}
                    start = time.perf_counter()
                    with client.stream("POST", api + "complete", json=body, headers=headers) as response:
                        response.raise_for_status()
                        lines = response.iter_lines()
                        _first_text(lines, sse=True)
                        took = time.perf_counter() - start
                        for _ in lines:  # to the end, so the connection is kept for the next round
                            pass
                    return took

                def hit(prefix: str) -> float:
                    body = {"prefix": prefix, "suffix": ")", "cells": CELLS}
                    start = time.perf_counter()
                    response = client.post(api + "complete", json=body, headers=headers)
                    assert '"cached":true' in response.text, response.text
                    return time.perf_counter() - start

                for i in range(5):  # warm-up: connections, the runtime loop, the model's first /api/show
                    direct(f"warm{i} = math.")
                    routed(f"warm{i} = math.")
                for i in range(args.rounds):
                    prefix = f"area_{i} = math.pi * radius ** 2 + round("
                    times["upstream directly"].append(direct(prefix))
                    times["POST complete"].append(routed(prefix))
                    times["POST complete, cache hit"].append(hit(prefix))
        finally:
            jupyter.terminate()
            jupyter.wait(15)

    added = [r - d for r, d in zip(times["POST complete"], times["upstream directly"], strict=True)]
    p50, p95 = statistics.median(added), percentile(added, 0.95)
    hits = times["POST complete, cache hit"]
    notes = [
        f"added by the route, per round: p50 {fmt(p50)}, p95 {fmt(p95)} ({args.rounds} rounds, first token at 100 ms)",
        f"cache hit (the whole answer, to its done event): p50 {fmt(statistics.median(hits))}, p95 {fmt(percentile(hits, 0.95))}",
        "Notebook Intelligence and jupyter-ai's completer: not measured (jupyter-ai v3 has no inline completer; "
        "installing jupyter-ai 2.x or Notebook Intelligence into an anchor venv has not been tried yet)",
    ]
    text = "\n\n".join(
        [
            table("Keystroke to first ghost text (after the debounce)", times, "upstream directly", notes=notes),
            targets_table([target("route overhead p95 < 30 ms", fmt(p95), p95 < GOAL)]),
        ]
    )
    data: dict[str, Any] = {
        "added_p50": p50,
        "added_p95": p95,
        "cache_hit_p50": statistics.median(hits),
        "cache_hit_p95": percentile(hits, 0.95),
        "targets": [target("route overhead p95 < 30 ms", fmt(p95), p95 < GOAL)],
    }
    emit(text, data)


if __name__ == "__main__":
    main()
