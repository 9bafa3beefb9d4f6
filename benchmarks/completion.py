"""Inline completion: what the Jupyter server's `POST complete` route adds to a keystroke's ghost text.

A real `jupyter server` with the extension; a loopback Ollama in a process of its own whose first
token takes 100 ms (`latency=0.1`) and that answers fill-in-the-middle. Each round asks, side by
side, the upstream directly (`/api/generate` with `suffix`, what an editor talking to Ollama would
do) and the route (the Lab's path: token check, body bounds, masking, rate window, the Session's
breaker and deadlines on the runtime loop, SSE), each until its first text arrives; the added
overhead is the route's time minus the direct one, per round. Every round's prefix is new, so the
in-memory cache does not answer; then the same context again measures a cache hit (to its `done`).
The Lab's own debounce (`[completion] debounce_ms`) comes before both and is not counted.

With --with-anchors, the same rounds also ask Notebook Intelligence (`notebook-intelligence`, in
its own venv, benchmarks/anchors.py): its Jupyter server extension, configured with its Ollama
inline-completion model (`qwen2.5-coder`) against the same loopback Ollama (`OLLAMA_HOST`), over
its websocket (`/notebook-intelligence/copilot`, an `inline-completion-request`). It asks Ollama
without streaming (`ollama.generate`, a raw FIM prompt) and sends the ghost text whole, so its
upstream time is the whole answer to that same request, sent directly; what its route adds is its
time minus that, per round. jupyter-ai 3.x has no inline completer (3.2.0 is a metapackage of
chat, personas, tools and MCP packages), so it is not measured.

    python benchmarks/completion.py [--rounds 60] [--with-anchors] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, fmt, table, target, targets_table  # noqa: E402
from _servers import serve  # noqa: E402
from anchors import NOT_RUN, installed_versions, python_for  # noqa: E402
from server_memory import start_jupyter  # noqa: E402

CODER = "qwen2.5-coder:0.5b"
NBI_MODEL = "qwen2.5-coder"  # one of the five Ollama inline models Notebook Intelligence offers
NBI_OPTIONS = {  # what its OllamaInlineCompletionModel sends (notebook_intelligence 6.2.0)
    "num_predict": 128,
    "temperature": 0,
    "stop": ["<|end▁of▁sentence|>", "<｜end▁of▁sentence｜>", "<|EOT|>", "<EOT>", "\\n", "</s>", "<|eot_id|>"],
}
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


@contextmanager
def notebook_intelligence(python: Path, ollama_url: str) -> Iterator[Callable[[str, str], float]]:
    """Its Jupyter server, configured as its settings panel would write it, and a function that asks
    its websocket for one inline completion and returns the seconds until the completion arrived."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    home = Path(tempfile.mkdtemp(prefix="nbi-"))
    (home / ".jupyter" / "nbi").mkdir(parents=True)
    config = {
        "chat_model": {"provider": "ollama", "model": "llama3.1:latest"},
        "inline_completion_model": {"provider": "ollama", "model": NBI_MODEL},
    }
    (home / ".jupyter" / "nbi" / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "OLLAMA_", "OPENAI_", "JUPYTER_"))}
    env.pop("PYTHONPATH", None)  # its venv's packages, not ours
    env |= {"HOME": str(home), "OLLAMA_HOST": ollama_url, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env |= {f"JUPYTER_{k}_DIR": str(home / k.lower()) for k in ("CONFIG", "DATA", "RUNTIME")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = os.urandom(8).hex()
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [str(python), "-m", "jupyter_server", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={home}",
         f"--IdentityProvider.token={token}"],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    loop = asyncio.new_event_loop()
    try:
        base = f"127.0.0.1:{port}/notebook-intelligence"
        deadline = time.monotonic() + 90
        while True:
            try:
                state = httpx.get(f"http://{base}/capabilities", params={"token": token}, trust_env=False).json()
                break
            except (httpx.HTTPError, ValueError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Notebook Intelligence did not start: {(home / 'server.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        if state.get("inline_completion_model", {}).get("model") != NBI_MODEL:
            raise RuntimeError(
                f"Notebook Intelligence did not take its inline model: {state.get('inline_completion_model')}"
            )
        request = HTTPRequest(f"ws://{base}/copilot", headers={"Authorization": f"token {token}"})

        async def connect() -> Any:  # tornado makes its future on the running loop
            return await websocket_connect(request)

        ws = loop.run_until_complete(connect())
        count = 0

        async def ask(prefix: str, suffix: str) -> float:
            nonlocal count
            count += 1
            data = {"chatId": "bench", "prefix": prefix, "suffix": suffix, "language": "python", "filename": "a.ipynb"}
            start = time.perf_counter()
            await ws.write_message(json.dumps({"id": f"m{count}", "type": "inline-completion-request", "data": data}))
            took = None
            while True:
                message = json.loads(await ws.read_message() or "{}")
                if message.get("id") != f"m{count}":
                    continue  # a status broadcast
                if message["type"] == "stream-message" and took is None:
                    if not message["data"].get("completions"):
                        raise RuntimeError(f"Notebook Intelligence answered no completion: {message}")
                    took = time.perf_counter() - start
                if message["type"] == "stream-end":
                    if took is None:
                        raise RuntimeError(
                            f"Notebook Intelligence ended without a completion: {(home / 'server.log').read_text()[-2000:]}"
                        )
                    return took

        yield lambda prefix, suffix: loop.run_until_complete(ask(prefix, suffix))
        ws.close()
    finally:
        proc.terminate()
        proc.wait(15)
        loop.close()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--with-anchors", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ours, nbi_direct, nbi = "POST complete", "upstream directly, NBI's request (whole answer)", "Notebook Intelligence"
    times: dict[str, list[float]] = {"upstream directly": [], ours: [], "POST complete, cache hit": []}
    missing: dict[str, str] = {}
    nbi_why = NOT_RUN
    with (
        serve("ollama", models=["llama3.1:latest", CODER, f"{NBI_MODEL}:latest"], latency=0.1) as ollama,
        tempfile.TemporaryDirectory() as tmp,
        ExitStack() as anchors,
    ):
        (Path(tmp) / "farm.toml").write_text(f'[completion]\nmodel = "ollama:{CODER}"\nrpm = 100000\n')
        jupyter, api, token = start_jupyter(Path(tmp), ollama.url)
        headers = {"Authorization": f"token {token}"}
        ask_nbi: Callable[[str, str], float] | None = None
        if args.with_anchors:
            python = python_for("notebook-intelligence")
            assert python is not None
            try:
                ask_nbi = anchors.enter_context(notebook_intelligence(python, ollama.url))
            except RuntimeError as exc:  # said in the table, with the version, rather than hidden
                nbi_why = f"could not be run ({installed_versions('notebook-intelligence')}): {exc}"
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

                def nbi_upstream(prefix: str) -> float:
                    """The request NBI's Ollama inline model makes for this cursor, sent directly."""
                    prompt = f"<|fim_prefix|>{prefix}<|fim_suffix|>)<|fim_middle|>"
                    body = {"model": NBI_MODEL, "prompt": prompt, "raw": True, "options": NBI_OPTIONS, "stream": False}
                    start = time.perf_counter()
                    response = client.post(f"{ollama.url}/api/generate", json=body)
                    response.raise_for_status()
                    assert response.json()["response"], response.text
                    return time.perf_counter() - start

                def each(prefix: str) -> dict[str, Callable[[], float]]:
                    asked = {
                        "upstream directly": lambda: direct(prefix),
                        ours: lambda: routed(prefix),
                        "POST complete, cache hit": lambda: hit(prefix),
                    }
                    if ask_nbi is not None:
                        # its frontend sends the cells above as part of the prefix
                        whole = "\n\n".join([*CELLS, prefix])
                        asked |= {nbi_direct: lambda: nbi_upstream(whole), nbi: lambda: ask_nbi(whole, ")")}
                    return asked

                if ask_nbi is not None:
                    times |= {nbi_direct: [], nbi: []}
                for i in range(5):  # warm-up: connections, the runtime loop, the model's first /api/show
                    for name, fn in each(f"warm{i} = math.").items():
                        if "cache hit" not in name:
                            fn()
                for i in range(args.rounds):
                    for name, fn in each(f"area_{i} = math.pi * radius ** 2 + round(").items():
                        times[name].append(fn())
        finally:
            jupyter.terminate()
            jupyter.wait(15)

    if ask_nbi is None:
        missing[nbi] = nbi_why

    def added(name: str, upstream: str) -> list[float]:
        return [r - d for r, d in zip(times[name], times[upstream], strict=True)]

    ours_added = added(ours, "upstream directly")
    p50, p95 = statistics.median(ours_added), percentile(ours_added, 0.95)
    hits = times["POST complete, cache hit"]
    extra: dict[str, dict[str, str]] = {"added p50": {ours: fmt(p50)}, "added p95": {ours: fmt(p95)}}
    data: dict[str, Any] = {
        "added_p50": p50,
        "added_p95": p95,
        "cache_hit_p50": statistics.median(hits),
        "cache_hit_p95": percentile(hits, 0.95),
    }
    notes = [
        f"added by the route, per round: p50 {fmt(p50)}, p95 {fmt(p95)} ({args.rounds} rounds, first token at 100 ms)",
        f"cache hit (the whole answer, to its done event): p50 {fmt(statistics.median(hits))}, p95 {fmt(percentile(hits, 0.95))}",
    ]
    if ask_nbi is not None:
        nbi_added = added(nbi, nbi_direct)
        extra["added p50"][nbi] = fmt(statistics.median(nbi_added))
        extra["added p95"][nbi] = fmt(percentile(nbi_added, 0.95))
        data |= {"nbi_added_p50": statistics.median(nbi_added), "nbi_added_p95": percentile(nbi_added, 0.95)}
        data["nbi_versions"] = installed_versions("notebook-intelligence")
        notes.append(
            f"Notebook Intelligence {installed_versions('notebook-intelligence')}: its websocket until the completion "
            f"arrives; it does not stream, so its upstream time is the whole answer to its own request (raw FIM "
            f"prompt, stream false), sent directly in the same round; added per round: p50 "
            f"{extra['added p50'][nbi]}, p95 {extra['added p95'][nbi]}"
        )
    else:
        notes.append(f"Notebook Intelligence: {nbi_why}")
    notes.append("jupyter-ai: 3.x has no inline completer (3.2.0 is a metapackage: chat, personas, tools, MCP)")
    goal = target("route overhead p95 < 30 ms", fmt(p95), p95 < GOAL)
    data["targets"] = [goal]
    text = "\n\n".join(
        [
            table(
                "Keystroke to first ghost text (after the debounce)",
                times,
                "upstream directly",
                baselines={nbi: nbi_direct},
                missing=missing,
                extra=extra,
                notes=notes,
            ),
            targets_table([goal]),
        ]
    )
    emit(text, data)


if __name__ == "__main__":
    main()
