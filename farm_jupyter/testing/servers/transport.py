"""The HTTP/1.1 plumbing under the loopback servers: a threaded server with keep-alive and a bounded
number of connections, and a handler that writes chunked bodies by hand so a fault can cut or
corrupt a stream at any chunk, the way a real server or proxy failing mid-answer would.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Protocol

MAX_BODY = 32 * 1024 * 1024
JSON_TYPE = "application/json; charset=utf-8"


class Owner(Protocol):
    """What the plumbing serves for: a loopback server (testing/servers/loopback.py) that answers."""

    kind: str  # names the threads
    max_connections: int

    def answer(self, h: Handler) -> None: ...
    def error_body(self, status: int, message: str | None = None) -> Any: ...


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "farm-jupyter-testing"
    sys_version = ""
    timeout = 30.0  # idle keep-alive bound; stop() does not wait for it
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms stalls
    server: Server
    headers_sent = False
    raw_body = b""  # the request's body as it arrived (a multipart upload is not JSON)
    recorded: Any = None  # the RecordedRequest being answered

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        self.headers_sent = False
        try:
            self.server.owner.answer(self)
        except OSError:
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001  (a failing user `reply` callable must not kill the server)
            if self.headers_sent:
                self.drop()
            else:
                body = self.server.owner.error_body(500, f"test server error: {exc!r}")
                self.send_bytes(500, dumps(body))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _dispatch

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > MAX_BODY:
                    raise ValueError("request body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def send_head(
        self,
        status: int,
        content_type: str,
        length: int | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
        else:
            self.send_header("Content-Length", str(length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.headers_sent = True

    def send_bytes(
        self,
        status: int,
        data: bytes,
        content_type: str = JSON_TYPE,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_head(status, content_type, len(data), headers)
        if self.command != "HEAD":
            self.wfile.write(data)

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def gone(self) -> bool:
        """Whether the client has closed its end: the socket reads as ended (or failed)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def drop(self) -> None:
        """Close the connection at once; the client sees an incomplete response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class Server(HTTPServer):
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], owner: Owner) -> None:
        self.owner = owner
        self.stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            full = self.stopping.is_set() or len(self._conns) >= self.owner.max_connections
            if not full:
                thread = threading.Thread(
                    target=self._serve,
                    args=(request, client_address),
                    name=f"farm-{self.owner.kind}-conn",
                    daemon=True,
                )
                self._conns[request] = thread
        if full:
            with contextlib.suppress(OSError):
                body = b'{"error":"too many connections"}'
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            self.shutdown_request(request)
            return
        thread.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:
            pass  # peers vanishing mid-request is the point of several faults
        finally:
            with self._conn_lock:
                self._conns.pop(request, None)
            self.shutdown_request(request)

    def close_connections(self, timeout: float) -> None:
        with self._conn_lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))
