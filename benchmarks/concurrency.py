"""Concurrency: 8 and 64 requests at once to a server that takes 200 ms per answer.

    python benchmarks/concurrency.py [--runs N] [--latency S] [--json]

The loopback server waits `--latency` seconds before each answer (a model's time). One request
is the baseline; N requests that really run at once take about as long as one. Paths:
- `asyncio.gather(session.aio.chat(...) x N)` from a caller's own loop (a notebook cell's `await`),
  on the Ollama and the OpenAI protocol;
- the compare path: `%%farm_chat --compare` with the same model N times (the magic's own
  concurrent streams on the runtime loop), rendered into a captured display.
Cache off, so that every request reaches the server. Target: 8 at once < 1.3x one request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, measure, ratio, summary, table, target  # noqa: E402
from _notebook import MAGICS_TODO, farm_chat, have_magics, shell_for  # noqa: E402
from _servers import serve, settings_for  # noqa: E402

from farm_jupyter.sessions import Session  # noqa: E402
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY  # noqa: E402

COUNTS = (8, 64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    missing: dict[str, str] = {}
    with (
        serve("ollama", tokens=20, latency=args.latency) as ollama,
        serve("openai", api_key=TEST_API_KEY, tokens=20, latency=args.latency) as oai,
        asyncio.Runner() as cell,
    ):
        session = Session(settings_for(ollama, oai, cache={"backend": "none"}, fallback=[]))

        def gather(n: int, target: str) -> Callable[[], Any]:
            async def many() -> None:
                answers = await asyncio.gather(*(session.aio.chat(f"q{i}", target) for i in range(n)))
                assert all(a.usage.completion_tokens == 20 for a in answers)

            return lambda: cell.run(many())

        fns: dict[str, Callable[[], Any]] = {"one request (session.chat)": lambda: session.chat("q", "ollama:llama3.1")}
        for n in COUNTS:
            fns[f"{n} x achat, asyncio.gather (Ollama)"] = gather(n, "ollama:llama3.1")
            fns[f"{n} x achat, asyncio.gather (OpenAI)"] = gather(n, "openai:gpt-4o-mini")
        ip = shell_for(session) if have_magics() else None
        for n in COUNTS:
            name = f"%%farm_chat --compare, {n} columns"
            if ip is not None:
                line = "--no-cache --compare " + ",".join(["ollama:llama3.1"] * n)
                fns[name] = lambda line=line: farm_chat(ip, line, "q")
            else:
                missing[name] = MAGICS_TODO
        times = measure(fns, args.runs, warmup=1)
        session.close()

    base = "one request (session.chat)"
    r8 = ratio(times, "8 x achat, asyncio.gather (Ollama)", base)
    targets = [target("8 concurrent requests (achat) < 1.3x one request", f"{r8:.2f}x", r8 < 1.3)]
    compare = "%%farm_chat --compare, 8 columns"
    if compare in times:
        rc = ratio(times, compare, base)
        targets.append(target("8 concurrent requests (--compare) < 1.3x one request", f"{rc:.2f}x", rc < 1.3))
    else:
        targets.append(target("8 concurrent requests (--compare) < 1.3x one request", MAGICS_TODO, None))
    text = table(
        f"Concurrent requests, {args.latency * 1e3:.0f} ms per answer (loopback, cache off, {args.runs} runs)",
        times,
        base,
        missing=missing,
        notes=["ratio 1.0x: all N answered in the time of one; N x 1.0: one after another."],
    )
    emit(text, {"times": summary(times), "targets": targets})


if __name__ == "__main__":
    main()
