"""The Jupyter server extension under a burst, and what its bounds cost (issue 22).

    python benchmarks/server_load.py [--requests 200] [--rounds 5] [--against DIR] [--json]

Four processes, so that each is only the other end of a socket to the others:
- the upstream, a loopback Ollama that takes 200 ms an answer (`LATENCY`), served by one asyncio
  loop (`farm_jupyter.testing.servers.one_loop`): it answers 200 at once near the ideal, where the
  threaded loopback server's polling made the straight path itself 13x the ideal;
- a real `jupyter server` with the extension pointed at it;
- the load generator (`_load.py`): `--requests` connections to each side, opened before the
  first burst, and each burst one request on each, written and read by hand;
- this one, which orders the bursts and reads the others' CPU times around each.
Rounds are interleaved: straight to the upstream (`/api/chat`, what an ideal proxy would add
nothing to), then through the server (`POST chat`, no cache), then the floor (Jupyter's own `GET
api/status` on the same server: its handler stack without farm code or upstream), then straight
again... after one warm-up round that is not counted. Reported: each burst's wall time and the p95 of its requests'
latency, the ratio of each round's through burst to its straight one (median and spread), the CPU
seconds each process spent per request, and the load average. Target (issue 22): within 1.3x.
With `--against DIR`, a second Jupyter server runs the farm_jupyter of another checkout (its
PYTHONPATH) in the same run, its bursts interleaved with ours: a change measured side by side,
on the same machine at the same moment. The servers' order alternates from round to round.

Where the server's time goes (py-spy at 200 Hz over three bursts, 2026-12-07, 2 shared CPUs):
about 45% in httpx/httpcore sending the 200 requests upstream and reading their NDJSON answers,
20% in tornado, 2% in Jupyter's auth, 9% in the router, 6% in the runtime loop's own turns and
4% in our handlers. Jupyter's floor is about 0.6 ms a request and a chat about 3 ms (it was 4.5
ms before providers/ollama.py spread a burst over eight pools). For 1.3x of straight the whole
burst must cost the server about 0.2 s of one CPU, 1 ms a request: not reachable through httpx
and a second event loop in a thread on this design.

Then the bodies of the issue's probe, each refused before it costs: 2,000 stop strings, a
450,000-key logit_bias, 100,000 messages, `health` with 900 provider names, a model path outside
the allowlist: the time to the 400/404 answer, median of `--rounds` tries.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import httpx  # noqa: E402
import psutil  # noqa: E402
from _common import emit, fmt, target, targets_table  # noqa: E402
from _servers import serve  # noqa: E402
from server_memory import start_jupyter  # noqa: E402

LATENCY = 0.2  # seconds the upstream takes for each answer


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _targets(ollama_url: str, api: str, token: str, n: int) -> dict[str, dict[str, Any]]:
    upstream, server = urlsplit(ollama_url), urlsplit(api)
    straight = {"model": "llama3.1", "messages": [{"role": "user", "content": "@PROMPT@"}], "stream": False}
    through = {"prompt": "@PROMPT@", "model": "ollama:llama3.1", "no_cache": True}
    json_type = "Content-Type: application/json\r\n"
    return {
        "straight": {
            "host": upstream.hostname,
            "port": upstream.port,
            "connections": n,
            "head": f"POST /api/chat HTTP/1.1\r\nHost: {upstream.netloc}\r\n{json_type}",
            "body": json.dumps(straight),
        },
        "through": {
            "host": server.hostname,
            "port": server.port,
            "connections": n,
            "head": f"POST {server.path}chat HTTP/1.1\r\nHost: {server.netloc}\r\n"
            f"Authorization: token {token}\r\n{json_type}",
            "body": json.dumps(through),
        },
        "floor": {  # Jupyter's own GET api/status: its handler stack (auth, tornado) and no farm code
            "host": server.hostname,
            "port": server.port,
            "connections": n,
            "head": f"GET {server.path.removesuffix('farm-jupyter/api/')}api/status HTTP/1.1\r\n"
            f"Host: {server.netloc}\r\nAuthorization: token {token}\r\n",
            "body": "",
        },
    }


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def load(ollama: Any, servers: dict[str, Any], n: int, rounds: int) -> dict[str, Any]:
    """`rounds` interleaved rounds of bursts (after one warm-up round) from the generator process.
    `servers`: {"through": (proc, api, token)[, "against": ...]}."""
    targets: dict[str, Any] = {}
    for name, (_, api, token) in servers.items():
        with httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}, timeout=120, trust_env=False) as c:
            c.post("chat", json={"prompt": "warm up", "model": "ollama:llama3.1", "no_cache": True})  # its Session
        made = _targets(ollama.url, api, token, n)
        targets.update(made if name == "through" else {name: made["through"]})
    generator = subprocess.Popen(
        [sys.executable, str(HERE / "_load.py"), json.dumps(targets)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert generator.stdin is not None and generator.stdout is not None
    procs = {
        "server": psutil.Process(servers["through"][0].pid),
        "upstream": psutil.Process(ollama.pid),
        "generator": psutil.Process(generator.pid),
    }
    if "against" in servers:
        procs["against"] = psutil.Process(servers["against"][0].pid)
    paths = [p for p in targets if p != "straight"]
    out: dict[str, Any] = {
        name: {"wall": [], "p95": [], "statuses": [], "cpu": {p: [] for p in procs}} for name in targets
    }
    try:
        if not json.loads(generator.stdout.readline()).get("ready"):
            raise RuntimeError("the load generator did not start")
        for r in range(-1, rounds):
            for name in ["straight", *(paths if r % 2 == 0 else reversed(paths))]:
                before = {p: _cpu(proc) for p, proc in procs.items()}
                generator.stdin.write(json.dumps({"target": name, "tag": f"round {r} {name}"}) + "\n")
                generator.stdin.flush()
                result = json.loads(generator.stdout.readline())
                time.sleep(0.05)  # the server's after-answer work (logs, monitor) lands in this burst's CPU
                spent = {p: (_cpu(proc) - before[p]) / n for p, proc in procs.items()}
                if r < 0:
                    continue
                row = out[name]
                row["wall"].append(result["wall"])
                row["p95"].append(p95(result["latencies"]))
                row["statuses"] += result["statuses"]
                for p, seconds in spent.items():
                    row["cpu"][p].append(seconds)
    finally:
        generator.stdin.close()
        generator.wait(30)
    return out


def _spread(values: list[float], unit: Any = fmt) -> str:
    return f"{unit(statistics.median(values))} ({unit(min(values))}-{unit(max(values))})"


def _x(value: float) -> str:
    return f"{value:.2f}x"


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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", help="another checkout's root: a second server runs its farm_jupyter")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, serve("ollama", loop=True, latency=LATENCY) as ollama:
        servers = {"through": start_jupyter(Path(tmp), ollama.url)}
        try:
            if args.against:
                (Path(tmp) / "against").mkdir()
                ours = os.environ.get("PYTHONPATH")
                os.environ["PYTHONPATH"] = str(Path(args.against).resolve())
                try:
                    servers["against"] = start_jupyter(Path(tmp) / "against", ollama.url)
                finally:
                    if ours is None:
                        del os.environ["PYTHONPATH"]
                    else:
                        os.environ["PYTHONPATH"] = ours
            figures = load(ollama, servers, args.requests, args.rounds)
            refused = probes(*servers["through"][1:], args.rounds)
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(15)
    load_after = os.getloadavg()

    straight, through = figures["straight"], figures["through"]
    wall_ratios = [t / s for t, s in zip(through["wall"], straight["wall"], strict=True)]
    p95_ratios = [t / s for t, s in zip(through["p95"], straight["p95"], strict=True)]
    wall_ratio, p95_ratio = statistics.median(wall_ratios), statistics.median(p95_ratios)
    lines = [
        f"### {args.requests} concurrent chats, upstream {LATENCY * 1e3:.0f} ms an answer "
        f"({args.rounds} interleaved rounds after a warm-up)",
        "",
        "| path | wall: median (min-max) | p95 latency: median (min-max) | wall vs ideal |"
        " CPU a request: server | upstream | load generator | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in figures.items():
        cpu = row["cpu"]
        server = "-" if name == "straight" else _spread(cpu["against" if name == "against" else "server"])
        label = f"against ({args.against})" if name == "against" else name
        lines.append(
            f"| {label} | {_spread(row['wall'])} | {_spread(row['p95'])} | "
            f"{'-' if name == 'floor' else _x(statistics.median(row['wall']) / LATENCY)} | {server} | "
            f"{_spread(cpu['upstream'])} | {_spread(cpu['generator'])} | "
            f"{', '.join(map(str, sorted(set(row['statuses']))))} |"
        )
    lines += [
        "",
        f"- through / straight, round by round: wall {_spread(wall_ratios, _x)}, p95 {_spread(p95_ratios, _x)}.",
        *(
            [
                "- through / against, round by round: wall "
                + _spread([t / a for t, a in zip(through["wall"], figures["against"]["wall"], strict=True)], _x)
                + ", server CPU "
                + _spread(
                    [
                        t / a if a else float("nan")
                        for t, a in zip(through["cpu"]["server"], figures["against"]["cpu"]["against"], strict=True)
                    ],
                    _x,
                )
                + "."
            ]
            if "against" in figures
            else []
        ),
        "- floor: Jupyter's own `GET api/status` on the same server and connections, no farm code and no"
        " upstream: what its handler stack costs a request. CPU times are read in 10 ms ticks (50 us a request).",
        f"- ideal: every request answered in {LATENCY * 1e3:.0f} ms, all at once. The upstream is one"
        " asyncio loop in its own process; the load generator another, with its connections open before"
        " the first burst.",
        f"- load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in load_before)} before,"
        f" {' '.join(f'{v:.2f}' for v in load_after)} after, on {os.cpu_count()} CPUs.",
        "",
        "### Bodies of the issue's probe, refused before they cost",
        "",
        "| request | body | answer | time to answer (median) |",
        "|---|---:|---|---:|",
    ]
    for name, row in refused.items():
        lines.append(f"| {name} | {row['bytes']:,} B | {', '.join(map(str, row['statuses']))} | {fmt(row['median'])} |")
    targets = [
        target("burst wall time through the server within 1.3x of straight", _x(wall_ratio), wall_ratio <= 1.3),
        target("burst p95 latency through the server within 1.3x of straight", _x(p95_ratio), p95_ratio <= 1.3),
    ]
    data = {"figures": figures, "refused": refused, "targets": targets, "load": [load_before, load_after]}
    emit("\n".join([*lines, "", targets_table(targets)]), data)


if __name__ == "__main__":
    main()
