"""Cache hit latency for the memory, disk and Redis backends.

    python benchmarks/cache_latency.py [--runs N] [--tokens N] [--json]

For each backend, on a hit (the answer cached by a first, streamed request to a loopback Ollama
server, so a hit replays `--tokens` stored chunks, as when a notebook is run again):
- `get()`: the backend's own lookup, awaited on the runtime loop (timed there: no thread hop);
- router lookup + replay: `Router.astream` consumed on the runtime loop: the cache key, the
  lookup, the replay of the stored chunks and the response (what every hit costs inside);
- `Session.chat` / `Session.stream`: the same hit as a user calls it, from this thread. A memory
  hit is answered in this thread (`Router.replay`); a disk or Redis hit, and every stream, crosses
  from the runtime loop. Next to them, the thread hop alone, which a call to the loop pays (the
  router lives on the runtime's loop, in its own thread). `Session.chat` is timed apart from the
  other two: right after a hop the loop's thread is still waking up and competes for the GIL.
Redis runs only when `redis-server` is on PATH (started here on a free loopback port, no disk).
Targets, on `Session.chat` hits: memory < 50 us, disk < 1 ms, Redis < 1 ms.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ameasure, emit, fmt, measure, summary, table, target  # noqa: E402
from _servers import Served, serve, settings_for  # noqa: E402

from farm_jupyter.sessions import Session  # noqa: E402
from farm_jupyter.types import ChatMessage, ChatRequest, GenerationParams  # noqa: E402

TARGETS = {"memory": 50e-6, "disk": 1e-3, "redis": 1e-3}


@contextmanager
def redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start within 10 s") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def backend_times(name: str, cache: dict[str, object], server: Served, runs: int) -> dict[str, list[float]]:
    session = Session(settings_for(server, cache=cache))
    first = session.stream("hi", "ollama:llama3.1").result()  # the miss that fills the cache
    hit = session.chat("hi", "ollama:llama3.1")
    assert hit.cached and hit.text == first.text, (name, hit)
    route = session._engine.router.resolve("ollama:llama3.1", fallback=False)[0]
    messages = [ChatMessage(role="user", content="hi")]
    request = ChatRequest(messages=messages, model=route.model, params=GenerationParams(), stream=False)
    key = session._engine.router.cache_key(session._engine.router.provider(route.provider), request)

    async def get() -> None:
        assert await session._engine.cache.get(key) is not None

    async def replay() -> None:
        async for chunk in session._engine.router.astream(messages, "ollama:llama3.1", {}, stream=False):
            if chunk.response is not None:
                assert chunk.response.cached

    async def nothing() -> None:
        return None

    in_loop = session.aio.runtime.run(
        ameasure({f"{name}: get()": get, f"{name}: router lookup + replay": replay}, runs)
    )
    # Session.chat is timed on its own: right after a hop the runtime's thread is still waking
    # (it takes the GIL back to go to sleep), which would charge the hop to whatever runs next.
    alone = measure({f"{name}: Session.chat hit": lambda: session.chat("hi", "ollama:llama3.1")}, runs)
    via_loop = measure(
        {
            f"{name}: thread hop alone (runtime.run of an empty coroutine)": lambda: session.aio.runtime.run(nothing()),
            f"{name}: Session.stream hit": lambda: list(session.stream("hi", "ollama:llama3.1")),
        },
        runs,
    )
    via_chat = {**alone, **via_loop}
    session.close()
    return {**in_loop, **via_chat}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=200, help="length of the cached answer, in chunks")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    times: dict[str, list[float]] = {}
    missing: dict[str, str] = {}
    with (
        serve("ollama", tokens=args.tokens) as server,
        tempfile.TemporaryDirectory() as folder,
        redis_server() as redis_url,
    ):
        times |= backend_times("memory", {"backend": "memory"}, server, args.runs)
        times |= backend_times(
            "disk", {"backend": "disk", "path": str(Path(folder) / "cache.sqlite")}, server, args.runs
        )
        if redis_url is not None:
            times |= backend_times("redis", {"backend": "redis", "redis_url": redis_url}, server, args.runs)
        else:
            for row in (
                "get()",
                "router lookup + replay",
                "thread hop alone (runtime.run of an empty coroutine)",
                "Session.chat hit",
                "Session.stream hit",
            ):
                missing[f"redis: {row}"] = "skipped: redis-server is not on PATH"

    targets = []
    for backend, limit in TARGETS.items():
        row = f"{backend}: Session.chat hit"
        name = f"{backend} hit through Session.chat < {fmt(limit)}"
        if row not in times:
            targets.append(target(name, "skipped: no redis-server", None))
            continue
        med = statistics.median(times[row])
        inside = statistics.median(times[f"{backend}: router lookup + replay"])
        hop = statistics.median(times[f"{backend}: thread hop alone (runtime.run of an empty coroutine)"])
        targets.append(
            target(name, f"{fmt(med)} (inside the loop {fmt(inside)}; the thread hop alone {fmt(hop)})", med < limit)
        )
    text = table(
        f"Cache hit latency ({args.tokens}-chunk answer, {args.runs} hits each)",
        times,
        "memory: get()",
        missing=missing,
        notes=[
            "get() and router lookup + replay are timed on the runtime loop; Session.chat/stream from the calling thread.",
            "ratios are to the in-memory get(), the cheapest possible hit.",
        ],
    )
    emit(text, {"times": summary(times), "targets": targets})


if __name__ == "__main__":
    main()
