"""The loopback server's own time per request: a request's bytes on a kept-alive socket and the
reply read to its end by hand, no HTTP library (what any client pays at least, plus the loopback hop)."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit


class Wire:
    """A kept-alive socket that sends prebuilt request bytes and reads the reply to its end."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
        try:
            return self._request(path, body, headers)
        except ConnectionError:  # the server closes a connection idle for 30 s, as HTTP clients expect
            self.sock.close()
            self._connect()
            return self._request(path, body, headers)

    def _request(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
        data = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        header, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lower = header.lower()
        if b"transfer-encoding: chunked" in lower:  # the last chunk's CRLF, then the zero-size chunk
            while (end := self.buf.find(b"\r\n0\r\n\r\n")) < 0:
                self._more()
            body_bytes, self.buf = self.buf[: end + 2], self.buf[end + 7 :]
            return body_bytes
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(self.buf) < length:
            self._more()
        body_bytes, self.buf = self.buf[:length], self.buf[length:]
        return body_bytes

    def _more(self) -> None:
        got = self.sock.recv(65536)
        if not got:
            raise ConnectionError("the server closed the connection")
        self.buf += got

    def close(self) -> None:
        self.sock.close()
