"""Per-request cost on the OpenAI protocol (and the Ollama one for the anchors), cache off.

    python benchmarks/request_overhead.py [--runs N] [--with-anchors] [--json]

Against the loopback OpenAIServer (20-token answers): the raw openai SDK (sync `OpenAI`,
max_retries=0) is the baseline; then AsyncOpenAI on a loop in this thread and on the runtime's
loop, the OpenAI provider alone, `farm_jupyter.chat` / `farm_jupyter.stream`, and the
`%%farm_chat` magic. With --with-anchors, `litellm.completion` (openai/, ollama/ and ollama_chat/
prefixes with api_base) and jupyter-ai's `%%ai` (its openai-chat-custom provider, which takes a
base URL) run in their own venvs, each against the raw client of that venv, interleaved.
The first row of each OpenAI table is the loopback server's own time (the request's bytes on a
socket, by hand); the raw SDK stream asks for the usage event as ours does, so the server does the
same work for both. Target: microseconds added at p50 (<= 150 us), the ratio beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, measure, summary, table  # noqa: E402
from _notebook import MAGICS_TODO, farm_chat, final_text, have_magics, shell_for  # noqa: E402
from _servers import Served, serve, settings_for  # noqa: E402
from _wire import Wire  # noqa: E402
from anchors import NOT_RUN, python_for  # noqa: E402
from router_overhead import OWN, added_target  # noqa: E402

from farm_jupyter.sessions import Session  # noqa: E402
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY  # noqa: E402
from farm_jupyter.types import ChatMessage, ChatRequest  # noqa: E402

MESSAGES: Any = [{"role": "user", "content": "hi"}]
ANCHOR_ROWS = {  # table -> rows an anchor adds: (row, its baseline in the anchor's venv)
    "openai_chat": {
        "litellm.completion openai/": "raw openai SDK (litellm venv)",
        "%%ai (jupyter-ai-magics)": "raw openai SDK (jupyter-ai venv)",
    },
    "openai_stream": {"litellm.completion openai/ stream": "raw openai SDK stream (litellm venv)"},
    "ollama_chat": {
        "litellm.completion ollama/": "raw httpx (litellm venv)",
        "litellm.completion ollama_chat/": "raw httpx (litellm venv)",
    },
    "ollama_stream": {
        "litellm.completion ollama/ stream": "raw httpx iter_lines (litellm venv)",
        "litellm.completion ollama_chat/ stream": "raw httpx iter_lines (litellm venv)",
    },
}
BASELINE = {
    "openai_chat": "raw openai SDK",
    "openai_stream": "raw openai SDK stream",
    "ollama_chat": "raw httpx",
    "ollama_stream": "raw httpx iter_lines",
}
TITLES = {
    "openai_chat": "OpenAI protocol, non-streaming (20-token answer, loopback OpenAIServer, cache off)",
    "openai_stream": "OpenAI protocol, streaming (20 SSE events)",
    "ollama_chat": "Ollama protocol, non-streaming, with the anchors (20-token answer)",
    "ollama_stream": "Ollama protocol, streaming, with the anchors (20 NDJSON lines)",
}


def ours(openai_server: Served, ollama_server: Served, runs: int) -> dict[str, dict[str, list[float]]]:
    session = Session(settings_for(ollama_server, openai_server, cache={"backend": "none"}, fallback=[]))
    runtime = session.aio.runtime
    provider = session._engine.router.provider("openai")
    sync = openai.OpenAI(base_url=openai_server.base_url, api_key=TEST_API_KEY, max_retries=0)
    http = httpx.Client(base_url=ollama_server.url)

    async def make() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=openai_server.base_url, api_key=TEST_API_KEY, max_retries=0)

    here = asyncio.Runner()
    here_client = here.run(make())  # each AsyncOpenAI stays on the loop that made it
    loop_client = runtime.run(make())

    def raw_chat() -> str:
        return sync.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content or ""

    usage: Any = {"include_usage": True}  # as ours asks: the server sends the same events to both

    def raw_stream() -> str:
        events = sync.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=usage)
        return "".join(e.choices[0].delta.content or "" for e in events if e.choices)

    async def async_chat(c: openai.AsyncOpenAI) -> str:
        return (await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)).choices[
            0
        ].message.content or ""

    async def async_events(c: openai.AsyncOpenAI) -> AsyncIterator[str]:
        events = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async for e in events:
            if e.choices and e.choices[0].delta.content:
                yield e.choices[0].delta.content

    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")], model="gpt-4o-mini")

    async def provider_text(stream: bool) -> str:
        req = request.model_copy(update={"stream": stream})
        return "".join([c.text async for c in provider.astream(req)])

    def ollama_raw_chat() -> str:
        return str(
            http.post("/api/chat", json={"model": "llama3.1", "messages": MESSAGES, "stream": False}).json()["message"][
                "content"
            ]
        )

    def ollama_raw_stream() -> str:
        parts = []
        with http.stream("POST", "/api/chat", json={"model": "llama3.1", "messages": MESSAGES, "stream": True}) as r:
            for line in r.iter_lines():
                if line:
                    parts.append(json.loads(line)["message"]["content"])
        return "".join(parts)

    wire = Wire(openai_server.url)
    auth = {"Authorization": f"Bearer {TEST_API_KEY}"}
    body: Any = {"model": "gpt-4o-mini", "messages": MESSAGES}
    fns: dict[str, dict[str, Callable[[], Any]]] = {
        "openai_chat": {
            OWN: lambda: wire.request("/v1/chat/completions", body, auth),
            "raw openai SDK": raw_chat,
            "AsyncOpenAI, loop in this thread": lambda: here.run(async_chat(here_client)),
            "AsyncOpenAI on the runtime loop": lambda: runtime.run(async_chat(loop_client)),
            "OpenAI provider on the runtime loop": lambda: runtime.run(provider_text(False)),
            "farm_jupyter.chat": lambda: session.chat("hi", "openai:gpt-4o-mini").text,
        },
        "openai_stream": {
            OWN: lambda: wire.request("/v1/chat/completions", {**body, "stream": True, "stream_options": usage}, auth),
            "raw openai SDK stream": raw_stream,
            "AsyncOpenAI on the runtime loop, a hop per event": lambda: "".join(
                runtime.iterate(async_events(loop_client))
            ),
            "OpenAI provider on the runtime loop, a hop per chunk": lambda: "".join(
                c.text for c in runtime.iterate(provider.astream(request))
            ),
            "farm_jupyter.stream": lambda: "".join(c.text for c in session.stream("hi", "openai:gpt-4o-mini")),
        },
        "ollama_chat": {
            "raw httpx": ollama_raw_chat,
            "farm_jupyter.chat": lambda: session.chat("hi", "ollama:llama3.1").text,
        },
        "ollama_stream": {
            "raw httpx iter_lines": ollama_raw_stream,
            "farm_jupyter.stream": lambda: "".join(c.text for c in session.stream("hi", "ollama:llama3.1")),
        },
    }
    if have_magics():
        ip = shell_for(session)
        # --new: every run is a one-turn conversation, like the other rows (no growing history).
        fns["openai_chat"]["%%farm_chat --no-stream (magic)"] = lambda: final_text(
            farm_chat(ip, "--new --no-stream --no-cache -m openai:gpt-4o-mini")
        )
    answers = {
        fn().strip().splitlines()[0].strip() for group in fns.values() for name, fn in group.items() if name != OWN
    }
    assert len(answers) == 1, answers
    results = {name: measure(group, runs) for name, group in fns.items()}
    here.run(here_client.close())
    here.close()
    runtime.run(loop_client.close())
    sync.close()
    http.close()
    wire.close()
    session.close()
    return results


def anchor(name: str, openai_server: Served, ollama_server: Served, runs: int) -> dict[str, dict[str, list[float]]]:
    python = python_for(name)
    assert python is not None
    env = {**os.environ, "IPYTHONDIR": str(HERE / ".cache" / "ipython")}
    out = subprocess.run(
        [
            str(python),
            str(HERE / "_anchor_requests.py"),
            name,
            "--openai",
            openai_server.url,
            "--ollama",
            ollama_server.url,
            "--key",
            TEST_API_KEY,
            "--runs",
            str(runs),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if out.returncode:
        raise RuntimeError(f"{name} anchor failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--anchor-runs", type=int, default=50)
    parser.add_argument("--with-anchors", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with serve("openai", api_key=TEST_API_KEY, tokens=20) as openai_server, serve("ollama", tokens=20) as ollama_server:
        results = ours(openai_server, ollama_server, args.runs)
        if args.with_anchors:
            for name in ("litellm", "jupyter-ai"):
                for table_name, times in anchor(name, openai_server, ollama_server, args.anchor_runs).items():
                    results[table_name].update(times)

    texts = []
    for name, times in results.items():
        baselines = {row: base for row, base in ANCHOR_ROWS[name].items() if row in times}
        missing = {row: NOT_RUN for row in ANCHOR_ROWS[name] if row not in times}
        notes = []
        if name == "openai_chat":
            if not have_magics():
                missing["%%farm_chat --no-stream (magic)"] = MAGICS_TODO
            notes.append(
                "%%ai runs jupyter-ai's openai-chat-custom provider with "
                '`-m {"openai_api_base": ...}` and OPENAI_API_KEY; it builds a new LangChain '
                "model (and client) per cell, and always waits for the whole answer."
            )
            notes.append("the magics' rows include rendering the answer (markdown, footer) into a captured display.")
        if name == "openai_stream":
            missing["%%ai (jupyter-ai-magics)"] = "n/a: %%ai does not stream (it calls provider.generate)"
        if name.startswith("ollama"):
            notes.append(
                "litellm's ollama/ prefix posts to /api/generate, ollama_chat/ to /api/chat (what we and the raw row use)."
            )
        texts.append(
            table(TITLES[name], times, BASELINE[name], baselines=baselines, missing=missing, notes=notes or None)
        )

    targets = [
        added_target("OpenAI protocol, chat", results["openai_chat"], "farm_jupyter.chat", "raw openai SDK"),
        added_target(
            "OpenAI protocol, stream", results["openai_stream"], "farm_jupyter.stream", "raw openai SDK stream"
        ),
    ]
    emit("\n\n".join(texts), {name: summary(times) for name, times in results.items()} | {"targets": targets})


if __name__ == "__main__":
    main()
