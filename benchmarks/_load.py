"""A load generator in a process of its own: bursts of concurrent HTTP/1.1 requests on kept-alive
connections, written and read by hand on one asyncio loop.

httpx costs about a millisecond of Python a request; in a burst of 200 that is most of the ideal
answer time, spent in the measuring process, on the same two cores as the servers it measures.
Here a request is a prebuilt byte string and a response is a status line, headers and a
Content-Length (or chunked) body: tens of microseconds.

    python benchmarks/_load.py '<targets JSON>'
    stdin:  {"target": "straight", "tag": "round 0"}      one burst a line
    stdout: {"wall": s, "latencies": [s, ...], "statuses": [200, ...]}

A target is {"host", "port", "connections", "head", "body"}: `head` is the request line and
headers up to (not including) Content-Length; `body` holds `@PROMPT@`, replaced in each request
by "<tag> request <i>" so that no two requests are the same.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


class Target:
    def __init__(self, host: str, port: int, connections: int, head: str, body: str) -> None:
        self.host, self.port, self.head, self.body = host, port, head, body
        self.size = connections
        self.pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect(self) -> None:
        """Open every connection before any burst: a burst measures answers, not handshakes."""
        self.pool = list(
            await asyncio.gather(*(asyncio.open_connection(self.host, self.port) for _ in range(self.size)))
        )

    def request(self, prompt: str) -> bytes:
        body = self.body.replace("@PROMPT@", prompt).encode()
        return f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def burst(self, tag: str) -> dict[str, Any]:
        requests = [self.request(f"{tag} request {i}") for i in range(self.size)]
        latencies = [0.0] * self.size
        statuses = [0] * self.size

        async def one(i: int) -> None:
            reader, writer = self.pool[i]
            start = time.perf_counter()
            writer.write(requests[i])
            statuses[i] = await read_response(reader)
            latencies[i] = time.perf_counter() - start

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(self.size)))
        return {"wall": time.perf_counter() - start, "latencies": latencies, "statuses": statuses}


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            await reader.readexactly(size + 2)
        await reader.readline()
    elif length:
        await reader.readexactly(length)
    return status


async def main(config: dict[str, Any]) -> None:
    targets = {name: Target(**spec) for name, spec in config.items()}
    for target in targets.values():
        await target.connect()
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        result = await targets[command["target"]].burst(command["tag"])
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
