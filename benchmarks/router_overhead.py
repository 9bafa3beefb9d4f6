"""Per-request cost of going through farm_jupyter versus calling the same server by hand.

    python benchmarks/router_overhead.py [--runs N] [--json]

Against one loopback Ollama-protocol server, cache off (every request reaches the server):
- raw httpx (sync client, `stream: false`, then the same with the NDJSON stream read line by line),
- farm_jupyter.chat / farm_jupyter.stream through the router (retries, breaker, monitor on).
The ratio to the raw client is the router's overhead; the target is under 1.10x.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, measure, summary, table  # noqa: E402

from farm_jupyter.session import Session  # noqa: E402
from farm_jupyter.testing import OllamaServer  # noqa: E402
from farm_jupyter.testing.pytest_plugin import loopback_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with OllamaServer(tokens=20) as server:
        session = Session(loopback_settings(server, cache={"backend": "none"}))
        client = httpx.Client(base_url=server.url)
        body = {"model": "llama3.1", "messages": [{"role": "user", "content": "hi"}]}

        def raw_chat() -> str:
            return str(client.post("/api/chat", json={**body, "stream": False}).json()["message"]["content"])

        def raw_stream() -> str:
            parts = []
            with client.stream("POST", "/api/chat", json={**body, "stream": True}) as r:
                for line in r.iter_lines():
                    if line:
                        data = json.loads(line)
                        parts.append(data["message"]["content"])
            return "".join(parts)

        def farm_chat() -> str:
            return session.chat("hi", "ollama:llama3.1").text

        def farm_stream() -> str:
            return "".join(c.text for c in session.stream("hi", "ollama:llama3.1"))

        assert raw_chat() == farm_chat() == raw_stream() == farm_stream()
        chat_times = measure({"raw httpx": raw_chat, "farm_jupyter.chat": farm_chat}, args.runs)
        stream_times = measure({"raw httpx iter_lines": raw_stream, "farm_jupyter.stream": farm_stream}, args.runs)
        client.close()
        session.close()

    text = "\n\n".join([
        table("Per-request overhead, non-streaming (20-token answer, loopback Ollama protocol)", chat_times, "raw httpx"),
        table("Per-request overhead, streaming (20 chunks)", stream_times, "raw httpx iter_lines"),
    ])
    emit(text, {"chat": summary(chat_times), "stream": summary(stream_times)})


if __name__ == "__main__":
    main()
