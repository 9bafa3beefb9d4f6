"""The Jupyter server extension under a burst, and what its bounds cost (issue 22).

    python benchmarks/server_load.py [--requests 200] [--rounds 3] [--json]

Three processes: a loopback Ollama that takes 200 ms an answer (`latency`), a real `jupyter
server` with the extension pointed at it, and this one, the load generator. Each round sends the
same burst of `--requests` concurrent non-streamed chats twice, interleaved: straight to the
upstream (`/api/chat`, what an ideal proxy would add nothing to) and through the server
(`POST chat`, no cache). Reported: the wall time of the burst and the p95 of its requests' latency,
each side by side with the straight run of the same round. Target (issue 22): within 1.3x.

Then the bodies of the issue's probe, each refused before it costs: 2,000 stop strings, a
450,000-key logit_bias, 100,000 messages, `health` with 900 provider names, a model path outside
the allowlist: the time to the 400/404 answer, median of `--rounds` tries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import httpx  # noqa: E402
from _common import emit, fmt, target  # noqa: E402
from _servers import serve  # noqa: E402
from server_memory import start_jupyter  # noqa: E402

LATENCY = 0.2  # seconds the upstream takes for each answer


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def burst(send: Any, n: int, tag: str) -> tuple[float, list[float], list[int]]:
    """`n` concurrent calls of `send(i)`: the wall time, each one's latency, their statuses."""
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        response = await send(f"{tag} request {i}")
        latencies.append(time.perf_counter() - start)
        statuses.append(response.status_code)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start, latencies, statuses


async def load(ollama_url: str, api: str, token: str, n: int, rounds: int) -> dict[str, dict[str, list[Any]]]:
    limits = httpx.Limits(max_connections=n * 2, max_keepalive_connections=n * 2)
    out: dict[str, dict[str, list[Any]]] = {
        name: {"wall": [], "latency": [], "statuses": []} for name in ("straight", "server")
    }
    async with (
        httpx.AsyncClient(base_url=ollama_url, limits=limits, timeout=120, trust_env=False) as upstream,
        httpx.AsyncClient(
            base_url=api, headers={"Authorization": f"token {token}"}, limits=limits, timeout=120, trust_env=False
        ) as server,
    ):

        def straight(prompt: str) -> Any:
            body = {"model": "llama3.1", "messages": [{"role": "user", "content": prompt}], "stream": False}
            return upstream.post("/api/chat", json=body)

        def through(prompt: str) -> Any:
            return server.post("chat", json={"prompt": prompt, "model": "ollama:llama3.1", "no_cache": True})

        await through("warm up")  # the first request builds the server's Session
        for r in range(rounds):
            for name, send in (("straight", straight), ("server", through)):
                wall, latencies, statuses = await burst(send, n, f"round {r} {name}")
                out[name]["wall"].append(wall)
                out[name]["latency"].append(p95(latencies))
                out[name]["statuses"] += statuses
    return out


PROBES: dict[str, tuple[str, str, Any]] = {
    "2,000 stop strings": ("POST", "chat", {"prompt": "hi", "params": {"stop": [f"s{i}" for i in range(2000)]}}),
    "450,000-key logit_bias": (
        "POST",
        "chat",
        {"prompt": "hi", "params": {"extra": {"logit_bias": {str(i): 1 for i in range(450_000)}}}},
    ),
    "100,000 messages": ("POST", "chat", {"messages": [{"role": "user", "content": "x"}] * 100_000}),
    "health with 900 provider names": ("GET", "health?" + "&".join(f"provider=p{i}" for i in range(900)), None),
    "a model path outside the allowlist": ("POST", "chat", {"prompt": "hi", "model": "hf:/etc/passwd"}),
}


def probes(api: str, token: str, rounds: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}, timeout=120, trust_env=False) as c:
        for name, (method, path, body) in PROBES.items():
            content = None if body is None else json.dumps(body).encode()
            times, statuses = [], set()
            for _ in range(rounds):
                start = time.perf_counter()
                response = c.request(method, path, content=content, headers={"Content-Type": "application/json"})
                times.append(time.perf_counter() - start)
                statuses.add(response.status_code)
            results[name] = {
                "median": statistics.median(times),
                "statuses": sorted(statuses),
                "bytes": len(content or b""),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, serve("ollama", latency=LATENCY) as ollama:
        jupyter, api, token = start_jupyter(Path(tmp), ollama.url)
        try:
            figures = asyncio.run(load(ollama.url, api, token, args.requests, args.rounds))
            refused = probes(api, token, args.rounds)
        finally:
            jupyter.terminate()
            jupyter.wait(15)

    straight, server = figures["straight"], figures["server"]
    lines = [
        f"### {args.requests} concurrent chats, upstream {LATENCY * 1e3:.0f} ms an answer ({args.rounds} rounds)",
        "",
        "| path | wall: median | min | max | p95 latency: median | vs straight (wall, p95) | wall vs ideal | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    wall_ratio = statistics.median(server["wall"]) / statistics.median(straight["wall"])
    p95_ratio = statistics.median(server["latency"]) / statistics.median(straight["latency"])
    for name, row in figures.items():
        ratios = "-" if name == "straight" else f"{wall_ratio:.2f}x, {p95_ratio:.2f}x"
        lines.append(
            f"| {name} | {fmt(statistics.median(row['wall']))} | {fmt(min(row['wall']))} | {fmt(max(row['wall']))} | "
            f"{fmt(statistics.median(row['latency']))} | {ratios} | {statistics.median(row['wall']) / LATENCY:.1f}x | "
            f"{', '.join(map(str, sorted(set(row['statuses']))))} |"
        )
    lines += [
        "",
        f"- ideal: every request answered in {LATENCY * 1e3:.0f} ms, all at once. The loopback upstream is"
        " Python threads: straight, it takes the whole burst at once; the server's connection pool paces it.",
        "",
        "### Bodies of the issue's probe, refused before they cost",
        "",
        "| request | body | answer | time to answer (median) |",
        "|---|---:|---|---:|",
    ]
    for name, row in refused.items():
        lines.append(f"| {name} | {row['bytes']:,} B | {', '.join(map(str, row['statuses']))} | {fmt(row['median'])} |")
    targets = [
        target("burst wall time through the server within 1.3x of straight", f"{wall_ratio:.2f}x", wall_ratio <= 1.3),
        target("burst p95 latency through the server within 1.3x of straight", f"{p95_ratio:.2f}x", p95_ratio <= 1.3),
    ]
    emit("\n".join(lines), {"figures": figures, "refused": refused, "targets": targets})


if __name__ == "__main__":
    main()
