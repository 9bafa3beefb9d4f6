"""The loopback servers in a process of their own, as a real Ollama or vLLM server would be.

In the same process a test server's threads compete with the client for the GIL, and every
thread hop of the client then also waits for the server's thread: the benchmark would measure
the loopback server's Python as much as ours. Run as a separate process, it is only the other
end of a socket.

    with serve("ollama", tokens=20) as server:    # server.url; server.base_url for OpenAI
        ...
    with serve("ollama", loop=True, latency=0.2):  # one asyncio loop (testing/servers/one_loop.py)
        ...

The threaded server watches each waiting client every 5 ms: under hundreds of concurrent
requests that polling is the cost, and `loop=True` serves the same protocol without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_CHILD = """
import json, sys, threading
from farm_jupyter.testing import OllamaServer, OpenAIServer
kind, options = sys.argv[1], json.loads(sys.argv[2])
server = (OllamaServer if kind == "ollama" else OpenAIServer)(**options).start()
print(server.url, flush=True)
sys.stdin.read()  # until the parent closes our stdin
server.stop()
"""


@dataclass(frozen=True)
class Served:
    url: str
    pid: int = 0  # the child process, for its CPU times

    @property
    def base_url(self) -> str:  # what OpenAI(base_url=...) wants
        return self.url + "/v1"


@contextmanager
def serve(kind: str, *, loop: bool = False, **options: Any) -> Iterator[Served]:
    """A loopback OllamaServer or OpenAIServer (same options) in a child process; with `loop`,
    served by one asyncio loop (no `chunk_delay`, no waiting faults)."""
    code = ["-m", "farm_jupyter.testing.servers.one_loop"] if loop else ["-c", _CHILD]
    proc = subprocess.Popen(
        [sys.executable, *code, kind, json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the {kind} server did not start (exit {proc.poll()})")
        yield Served(url, proc.pid)
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def settings_for(ollama: Served | None = None, openai: Served | None = None, **overrides: Any) -> Any:
    """`loopback_settings` (farm_jupyter.testing) for servers run by `serve`: it reads their `.url` only."""
    from farm_jupyter.testing.pytest_plugin import loopback_settings

    return loopback_settings(ollama, openai, **overrides)  # type: ignore[arg-type]
