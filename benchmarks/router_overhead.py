"""Per-request cost of going through farm_jupyter versus calling the same server by hand.

    python benchmarks/router_overhead.py [--runs N] [--json]

Against one loopback Ollama-protocol server, cache off (every request reaches the server):
- raw httpx (sync client, `stream: false`, then the same with the NDJSON stream read line by line),
- the steps in between, to see where the added time goes: async httpx on a loop in this thread,
  async httpx on the runtime's loop (one thread hop per request, or one per line for a stream),
  the Ollama provider alone on the runtime's loop (no router),
- farm_jupyter.chat / farm_jupyter.stream through the router (retries, breaker, monitor on).
The first row is the loopback server's own time (the request's bytes on a socket, read by hand): a
ratio to a slow server flatters, so the targets are microseconds added at p50 (overhead_ab.py states
them next to that time, A/B against earlier commits); the ratios are printed as before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, measure, median, ratio, summary, table, target  # noqa: E402
from _servers import serve, settings_for  # noqa: E402
from _wire import Wire  # noqa: E402

from farm_jupyter.sessions import Session  # noqa: E402
from farm_jupyter.types import ChatMessage, ChatRequest  # noqa: E402

OWN = "the server's own (bytes on a socket, by hand)"
GOAL_US = 150.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with serve("ollama", tokens=20) as server, asyncio.Runner() as here:
        session = Session(settings_for(server, cache={"backend": "none"}))
        runtime = session.aio.runtime
        provider = session._engine.router.provider("ollama")
        client = httpx.Client(base_url=server.url)
        here_client = httpx.AsyncClient(base_url=server.url)  # used on this thread's loop only
        loop_client = runtime.run(_make_client(server.url))  # used on the runtime's loop only
        body = {"model": "llama3.1", "messages": [{"role": "user", "content": "hi"}]}

        def raw_chat() -> str:
            return str(client.post("/api/chat", json={**body, "stream": False}).json()["message"]["content"])

        async def async_chat(c: httpx.AsyncClient) -> str:
            r = await c.post("/api/chat", json={**body, "stream": False})
            return str(r.json()["message"]["content"])

        def raw_stream() -> str:
            parts = []
            with client.stream("POST", "/api/chat", json={**body, "stream": True}) as r:
                for line in r.iter_lines():
                    if line:
                        parts.append(json.loads(line)["message"]["content"])
            return "".join(parts)

        async def async_lines(c: httpx.AsyncClient) -> AsyncIterator[str]:
            async with c.stream("POST", "/api/chat", json={**body, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line:
                        yield json.loads(line)["message"]["content"]

        async def async_stream(c: httpx.AsyncClient) -> str:
            return "".join([part async for part in async_lines(c)])

        request = ChatRequest(messages=[ChatMessage(role="user", content="hi")], model="llama3.1:latest")

        async def provider_text(stream: bool) -> str:
            req = request.model_copy(update={"stream": stream})
            return "".join([c.text async for c in provider.astream(req)])

        def farm_chat() -> str:
            return session.chat("hi", "ollama:llama3.1").text

        def farm_stream() -> str:
            return "".join(c.text for c in session.stream("hi", "ollama:llama3.1"))

        wire = Wire(server.url)
        chat_fns = {
            OWN: lambda: wire.request("/api/chat", {**body, "stream": False}, {}),
            "raw httpx": raw_chat,
            "async httpx, loop in this thread": lambda: here.run(async_chat(here_client)),
            "async httpx on the runtime loop": lambda: runtime.run(async_chat(loop_client)),
            "Ollama provider on the runtime loop": lambda: runtime.run(provider_text(False)),
            "farm_jupyter.chat": farm_chat,
        }
        stream_fns = {
            OWN: lambda: wire.request("/api/chat", {**body, "stream": True}, {}),
            "raw httpx iter_lines": raw_stream,
            "async httpx aiter_lines, loop in this thread": lambda: here.run(async_stream(here_client)),
            "async httpx on the runtime loop, one hop": lambda: runtime.run(async_stream(loop_client)),
            "async httpx on the runtime loop, a hop per line": lambda: "".join(
                runtime.iterate(async_lines(loop_client))
            ),
            "Ollama provider on the runtime loop, a hop per chunk": lambda: "".join(
                c.text for c in runtime.iterate(provider.astream(request))
            ),
            "farm_jupyter.stream": farm_stream,
        }
        answers = {fn() for name, fn in [*chat_fns.items(), *stream_fns.items()] if name != OWN}
        assert len(answers) == 1, answers
        chat_times = measure(chat_fns, args.runs)
        stream_times = measure(stream_fns, args.runs)
        client.close()
        wire.close()
        here.run(here_client.aclose())
        runtime.run(loop_client.aclose())
        session.close()

    targets = [
        added_target("Ollama protocol, chat", chat_times, "farm_jupyter.chat", "raw httpx"),
        added_target("Ollama protocol, stream", stream_times, "farm_jupyter.stream", "raw httpx iter_lines"),
    ]
    text = "\n\n".join(
        [
            table(
                "Per-request overhead, non-streaming (20-token answer, loopback Ollama protocol)",
                chat_times,
                "raw httpx",
            ),
            table("Per-request overhead, streaming (20 chunks)", stream_times, "raw httpx iter_lines"),
        ]
    )
    emit(text, {"chat": summary(chat_times), "stream": summary(stream_times), "targets": targets})


def added_target(what: str, times: dict[str, list[float]], ours: str, raw: str) -> dict[str, object]:
    """Microseconds added at p50 next to the server's own time, the ratio beside them."""
    added = (median(times, ours) - median(times, raw)) * 1e6
    said = f"{added:+.0f} us ({ratio(times, ours, raw):.2f}x; the server's own {median(times, OWN) * 1e6:.0f} us)"
    return target(f"{what}: {ours} adds <= {GOAL_US:.0f} us at p50 to {raw}", said, added <= GOAL_US)


async def _make_client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url)


if __name__ == "__main__":
    main()
