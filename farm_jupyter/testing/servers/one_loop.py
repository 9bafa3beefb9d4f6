"""A loopback protocol (Ollama's or OpenAI's) served by one asyncio loop, for load.

    python -m farm_jupyter.testing.servers.one_loop ollama '{"latency": 0.2}'   # prints its URL
    ...                                                                     # until stdin closes

The threaded servers give each connection a thread that watches its client every 5 ms while the
model "thinks" (`latency`): right for faults and disconnects, but 200 connections waiting at
once cost the machine more than the answers do, and a benchmark then measures the loopback
server. Here the same protocol object answers on one loop: the request is parsed, the protocol
writes its whole response into a buffer (the bytes the threaded server would send), and the
`latency` it asked for is awaited before the buffer goes out. What the protocol owes is the
same; only the waiting is cheaper.

Not here: `chunk_delay` (a stream goes out whole) and faults that wait (`delay`, `hang`), which
would hold the one loop; the request log and the other faults work as in the threaded server.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import sys
import threading
from typing import Any

from .loopback import LoopbackServer
from .ollama_api import OllamaServer
from .openai_api import OpenAIServer
from .transport import Handler

__all__ = ["AsyncServer", "main"]

_HEAD_LIMIT = 64 * 1024


class _Connection:
    """The socket as the protocol sees it: `drop()` shuts it down, `gone()` is never asked."""

    dropped = False

    def shutdown(self, how: int) -> None:
        self.dropped = True


class _Plumbing:
    """The `h.server` a protocol handler reads: its owner and a stop event that never fires."""

    def __init__(self, owner: LoopbackServer) -> None:
        self.owner = owner
        self.stopping = threading.Event()


class AsyncServer:
    """`protocol` (a loopback server, not started) answering on this loop at `host:port`."""

    def __init__(self, protocol: LoopbackServer, host: str = "127.0.0.1", port: int = 0) -> None:
        if protocol.chunk_delay > 0:
            raise ValueError("AsyncServer sends a stream whole: use the threaded server for chunk_delay")
        self.protocol = protocol
        self._plumbing = _Plumbing(protocol)
        self._owed = 0.0
        protocol.defer = self._owe
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, backlog=1024)
        self._port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _owe(self, seconds: float) -> None:
        """The protocol's "the model thinks now": owed, awaited before the answer goes out."""
        self._owed += seconds

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # the loop is closing: a connection ends quietly (asyncio logs a cancelled one)
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            return False
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split()
        headers = http.client.parse_headers(io.BytesIO(rest))
        if headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = await _chunked(reader)
            del headers["Transfer-Encoding"]
            headers["Content-Length"] = str(len(body))
        else:
            body = await reader.readexactly(int(headers.get("Content-Length") or 0))
        connection, out = _Connection(), io.BytesIO()
        h = self._handler(method, target, version, headers, body, connection, out)
        self._owed = 0.0
        self.protocol.answer(h)  # synchronous, on the loop: one request's Python at a time
        if self._owed:
            await asyncio.sleep(self._owed)
        writer.write(out.getvalue())
        await writer.drain()
        keep = not h.close_connection and not connection.dropped
        return keep and headers.get("Connection", "").lower() != "close"

    def _handler(
        self,
        method: str,
        target: str,
        version: str,
        headers: Any,
        body: bytes,
        connection: _Connection,
        out: io.BytesIO,
    ) -> Handler:
        h = Handler.__new__(Handler)  # the threaded server's handler, over buffers instead of a socket
        h.command, h.path, h.request_version = method, target, version
        h.requestline = f"{method} {target} {version}"
        h.headers = headers
        h.rfile, h.wfile = io.BytesIO(body), out
        h.server = self._plumbing  # type: ignore[assignment]
        h.connection = connection  # type: ignore[assignment]
        h.client_address = ("127.0.0.1", 0)
        h.close_connection = False
        return h


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
        parts.append(await reader.readexactly(size))
        await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass
    return b"".join(parts)


async def _run(kind: str, options: dict[str, Any]) -> None:
    protocol = (OllamaServer if kind == "ollama" else OpenAIServer)(**options)
    server = AsyncServer(protocol)
    print(await server.start(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await server.aclose()


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m farm_jupyter.testing.servers.one_loop ollama|openai [OPTIONS_JSON]")
    asyncio.run(_run(argv[0], json.loads(argv[1]) if len(argv) > 1 else {}))


if __name__ == "__main__":
    main(sys.argv[1:])
