"""One side of overhead_ab.py: times requests with whichever farm_jupyter is on PYTHONPATH.

    PYTHONPATH=<a checkout> python benchmarks/_ab_child.py '<json: the servers' URLs and the key>'

Reads a number N from stdin per round, answers with one JSON line: for each protocol and mode,
N interleaved runs of
- `floor`: the request's bytes written to a kept-alive socket and the reply read to its end by
  hand (no HTTP library): what the loopback server itself takes, plus the loopback hop;
- `raw`: the client a user would write by hand (httpx for Ollama, the sync openai SDK);
- `hop`: the design's floor: the async client (httpx.AsyncClient, AsyncOpenAI) on the runtime loop,
  reached from this thread as a Session's sync call is (one hop there and back; a stream, a hop
  per line or event), with nothing of ours around it;
- `ours`: `Session.chat` / `Session.stream` (cache off, no fallback).
Each is timed on the wall clock and in this process's CPU time (all its threads; the servers are
other processes): the CPU figure is our own work, which a slow server cannot hide and a busy
machine moves less.
The raw row and ours send the same request (the same body, and on the OpenAI stream the usage
event ours asks for), so the server does the same work for both. Only names that every compared
commit has are used (Session, chat, stream, loopback_settings).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
from _common import raw_ollama_pieces, raw_openai_pieces
from _wire import Wire

from farm_jupyter.runtime import get_runtime
from farm_jupyter.sessions import Session
from farm_jupyter.testing.pytest_plugin import loopback_settings

HI: Any = [{"role": "user", "content": "hi"}]


class Url:
    def __init__(self, url: str) -> None:
        self.url = url


def variants(ollama: str, oai: str, key: str) -> dict[str, dict[str, Callable[[], Any]]]:
    session = Session(loopback_settings(Url(ollama), Url(oai), cache={"backend": "none"}, fallback=[]))
    http = httpx.Client(base_url=ollama)
    sdk = openai.OpenAI(base_url=oai + "/v1", api_key=key, max_retries=0)
    wire_o, wire_a = Wire(ollama), Wire(oai)
    auth = {"Authorization": f"Bearer {key}"}
    o_body = {"model": "llama3.1", "messages": HI}
    a_body = {"model": "gpt-4o-mini", "messages": HI}
    usage = {"include_usage": True}

    runtime = get_runtime()  # the Session's loop: every compared commit has this function

    async def clients() -> tuple[httpx.AsyncClient, openai.AsyncOpenAI]:  # made, and used, on that loop
        return httpx.AsyncClient(base_url=ollama), openai.AsyncOpenAI(base_url=oai + "/v1", api_key=key, max_retries=0)

    ahttp, asdk = runtime.run(clients())

    async def ollama_hop_chat() -> str:
        r = await ahttp.post("/api/chat", json={**o_body, "stream": False})
        return str(r.json()["message"]["content"])

    async def ollama_hop_lines() -> Any:
        async with ahttp.stream("POST", "/api/chat", json={**o_body, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line:
                    yield json.loads(line)["message"]["content"]

    async def openai_hop_chat() -> str:
        return (await asdk.chat.completions.create(model="gpt-4o-mini", messages=HI)).choices[0].message.content or ""

    async def openai_hop_events() -> Any:
        events = await asdk.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True, stream_options=usage)
        async for e in events:
            if e.choices:
                yield e.choices[0].delta.content or ""

    def ollama_raw_stream() -> str:
        parts = []
        with http.stream("POST", "/api/chat", json={**o_body, "stream": True}) as r:
            for line in r.iter_lines():
                if line:
                    parts.append(json.loads(line)["message"]["content"])
        return "".join(parts)

    def openai_raw_stream() -> str:
        events = sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True, stream_options=usage)
        return "".join(e.choices[0].delta.content or "" for e in events if e.choices)

    return {
        "ollama chat": {
            "floor": lambda: wire_o.request("/api/chat", {**o_body, "stream": False}, {}),
            "raw": lambda: http.post("/api/chat", json={**o_body, "stream": False}).json()["message"]["content"],
            "hop": lambda: runtime.run(ollama_hop_chat()),
            "ours": lambda: session.chat("hi", "ollama:llama3.1").text,
        },
        "ollama stream": {
            "floor": lambda: wire_o.request("/api/chat", {**o_body, "stream": True}, {}),
            "raw": ollama_raw_stream,
            "hop": lambda: "".join(runtime.iterate(ollama_hop_lines())),
            "ours": lambda: "".join(c.text for c in session.stream("hi", "ollama:llama3.1")),
        },
        "openai chat": {
            "floor": lambda: wire_a.request("/v1/chat/completions", a_body, auth),
            "raw": lambda: sdk.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content,
            "hop": lambda: runtime.run(openai_hop_chat()),
            "ours": lambda: session.chat("hi", "openai:gpt-4o-mini").text,
        },
        "openai stream": {
            "floor": lambda: wire_a.request(
                "/v1/chat/completions", {**a_body, "stream": True, "stream_options": usage}, auth
            ),
            "raw": openai_raw_stream,
            "hop": lambda: "".join(runtime.iterate(openai_hop_events())),
            "ours": lambda: "".join(c.text for c in session.stream("hi", "openai:gpt-4o-mini")),
        },
    }


def relay(ollama: str, oai: str, key: str) -> dict[str, dict[str, Callable[[], Any]]]:
    """A long answer (the relay servers' token count): raw and ours, for the rate."""
    session = Session(loopback_settings(Url(ollama), Url(oai), cache={"backend": "none"}, fallback=[]))
    http = httpx.Client(base_url=ollama)
    sdk = openai.OpenAI(base_url=oai + "/v1", api_key=key, max_retries=0)

    return {
        "ollama relay": {
            "raw": lambda: raw_ollama_pieces(http, HI),
            "ours": lambda: sum(1 for c in session.stream("hi", "ollama") if c.text),
        },
        "openai relay": {
            "raw": lambda: raw_openai_pieces(sdk, HI),
            "ours": lambda: sum(1 for c in session.stream("hi", "openai") if c.text),
        },
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    groups = variants(config["ollama"], config["openai"], config["key"])
    if config.get("relay_ollama"):
        groups |= relay(config["relay_ollama"], config["relay_openai"], config["key"])
    for group in groups.values():  # warm-up: connections open, first-use imports done
        for fn in group.values():
            for _ in range(5):
                fn()
    import farm_jupyter

    print("ready", farm_jupyter.__file__, flush=True)
    for line in sys.stdin:
        runs, relay_runs = (int(x) for x in line.split())
        out: dict[str, dict[str, list[float]]] = {}
        for name, group in groups.items():
            times: dict[str, list[float]] = {v: [] for v in group} | {f"{v} cpu": [] for v in group}
            for _ in range(relay_runs if name.endswith("relay") else runs):
                for v, fn in group.items():
                    cpu, start = time.process_time(), time.perf_counter()
                    fn()
                    times[v].append(time.perf_counter() - start)
                    times[f"{v} cpu"].append(time.process_time() - cpu)  # every thread of this process
            out[name] = times
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
