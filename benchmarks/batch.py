"""Batch: 1,000 prompts through `farm.map` against a server that takes 200 ms per answer.

    python benchmarks/batch.py [--prompts N] [--latency S] [--concurrency C] [--runs R] [--with-anchors] [--json]

The ideal wall time is prompts x latency / concurrency (6.25 s for the defaults): every slot
busy all the time. `farm.map` (cache off, progress bar off) is measured against that, and beside
it in the same run: the raw openai SDK (`AsyncOpenAI` under an `asyncio.Semaphore`, what a user
would write by hand: the floor this server and machine allow) and LiteLLM's `batch_completion`
(a thread pool, `max_workers` = concurrency) on the same loopback OpenAI-protocol server, in its
own venv (`--with-anchors`).
Target: farm.map within 1.15x of the ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, fmt, summary, target  # noqa: E402
from _servers import serve, settings_for  # noqa: E402
from anchors import NOT_RUN, python_for  # noqa: E402

from farm_jupyter.sessions import Session  # noqa: E402
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY  # noqa: E402

LITELLM = """
import json, os, sys, time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm
url, key, n, workers, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
messages = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
times = []
for _ in range(runs):
    start = time.perf_counter()
    out = litellm.batch_completion(model="openai/gpt-4o-mini", messages=messages, api_base=url, api_key=key,
                                   max_workers=workers)
    times.append(time.perf_counter() - start)
    assert sum(1 for r in out if getattr(r, "choices", None)) == n, "litellm lost rows"
print(json.dumps(times))
"""


async def _raw(url: str, n: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=TEST_API_KEY, max_retries=0)
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - start
    await client.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--with-anchors", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ideal = args.prompts * args.latency / args.concurrency
    times: dict[str, list[float]] = {}
    missing: dict[str, str] = {}
    with serve("openai", api_key=TEST_API_KEY, tokens=5, latency=args.latency) as oai:
        session = Session(settings_for(None, oai, cache={"backend": "none"}, fallback=[]))
        prompts = [f"q{i}" for i in range(args.prompts)]
        times["raw AsyncOpenAI + Semaphore"] = []
        times["farm.map (OpenAI protocol)"] = []
        for _ in range(args.runs):  # interleaved, so that machine noise hits both alike
            times["raw AsyncOpenAI + Semaphore"].append(asyncio.run(_raw(oai.url, args.prompts, args.concurrency)))
            start = time.perf_counter()
            rows = session.map(prompts, model="openai", concurrency=args.concurrency, progress=False)
            times["farm.map (OpenAI protocol)"].append(time.perf_counter() - start)
            assert session.last_batch is rows and len(rows) == args.prompts and rows.error.isna().all()
        session.close()
        python = python_for("litellm") if args.with_anchors else None
        if python is None:
            missing["litellm.batch_completion"] = NOT_RUN
        else:
            out = subprocess.run(
                [
                    str(python),
                    "-c",
                    LITELLM,
                    oai.url + "/v1",
                    TEST_API_KEY,
                    str(args.prompts),
                    str(args.concurrency),
                    str(args.runs),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            times["litellm.batch_completion"] = json.loads(out.stdout.strip().splitlines()[-1])

    lines = [
        f"### Batch: {args.prompts} prompts, {args.latency * 1e3:.0f} ms per answer, concurrency {args.concurrency}",
        "",
        "| variant | median | min | max | vs ideal | vs raw SDK |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ideal ({args.prompts} x {args.latency}s / {args.concurrency}) | {fmt(ideal)} | | | 1.000x | |",
    ]
    raw = sorted(times["raw AsyncOpenAI + Semaphore"])[args.runs // 2]
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        lines.append(
            f"| {name} | {fmt(med)} | {fmt(min(ts))} | {fmt(max(ts))} | {med / ideal:.3f}x | {med / raw:.3f}x |"
        )
    for name, why in missing.items():
        lines.append(f"| {name} | {why} | | | | |")
    farm = sorted(times["farm.map (OpenAI protocol)"])[args.runs // 2] / ideal
    targets = [target("farm.map within 1.15x of the ideal wall time", f"{farm:.3f}x", farm <= 1.15)]
    emit("\n".join(lines), {"times": summary(times), "targets": targets})


if __name__ == "__main__":
    main()
