"""Loopback HTTP servers that speak Ollama's and OpenAI's wire protocols, for offline tests.

    with OllamaServer() as srv:                      # 127.0.0.1, ephemeral port
        srv.add_fault(Fault("status", path="/api/chat", status=503))
        ...                                          # point a client at srv.url
        assert srv.count("/api/chat") == 1

Standard library only: a threading HTTP/1.1 server with keep-alive. Streams are written as
hand-made chunked bodies so that a fault can cut or corrupt them at any chunk, the way a real
server or proxy failing mid-answer would.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import math
import random
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from typing import Self, TypeAlias

__all__ = ["Fault", "OllamaServer", "OpenAIServer", "RecordedRequest", "Said", "example_of"]

FaultKind = Literal["status", "delay", "drop", "malformed", "error_line", "hang", "echo"]
Reply: TypeAlias = str | Callable[[dict[str, Any]], str] | None
Json: TypeAlias = dict[str, Any]
# (kind, payload): "head" frames go out unconditionally; a fault fires before a "content" or "tail" one.
Frame: TypeAlias = tuple[Literal["head", "content", "tail"], bytes]

_KINDS = frozenset({"status", "delay", "drop", "malformed", "error_line", "hang", "echo"})
_STREAM_FAULTS = frozenset({"drop", "malformed", "error_line"})
_HANG_LIMIT = 60.0
_CLOSE_LIMIT = 5.0
_MAX_BODY = 32 * 1024 * 1024
_CHUNK_RE = re.compile(r"\S+\s*|\s+")



TEST_API_KEY = "sk-test-0123456789abcdef"  # what the fixtures give OpenAIServer and the client

@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; `headers` has lower-case keys."""

    method: str
    path: str
    json: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class Fault:
    """A failure to inject into the requests that match `path` (None: any path).

    - status: answer `status` with `body` (the protocol's error shape by default) and Retry-After.
    - delay: wait `delay` seconds before answering; composes with one other fault.
    - drop: after `after` chunks, close the socket without the terminating chunk.
    - malformed: after `after` chunks, send a line that is not JSON, then end the stream.
    - error_line: after `after` chunks, send the protocol's in-stream error, then end the stream.
    - hang: never answer, until the server stops (at most 60 s).
    - echo: answer `status` (say 401) the way a careless server or proxy does: the credential the
      request carried (a Bearer key, an api-key header, a basic-auth password) quoted back whole,
      without its `sk-`-style prefix, url-encoded and in part, in the error body and in the
      WWW-Authenticate and X-Echo-* headers.

    Non-streamed answers get the same faults as whole bodies (half a body, a broken body, a 500).
    A fault applies to the first `times` matching requests (None: all), each with `probability`
    drawn from the server's seeded generator; `hits` counts the applications.
    """

    kind: FaultKind
    path: str | None = None
    times: int | None = 1
    status: int = 500
    body: dict[str, Any] | None = None
    retry_after: float | None = None
    delay: float = 0.0
    after: int = 0
    probability: float = 1.0
    hits: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(_KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {self.probability}")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chunks(text: str) -> list[str]:
    return _CHUNK_RE.findall(text)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; image parts have no text
        return " ".join(str(p["text"]) for p in content if isinstance(p, dict) and "text" in p)
    return "" if content is None else str(content)


def _last_user(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
    return ""


def _images_of(message: Any) -> int:
    """How many images a message carries, in either protocol."""
    if not isinstance(message, dict):
        return 0
    content = message.get("content")
    parts = sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url") if isinstance(content, list) else 0
    return parts + len(message.get("images") or [])


def example_of(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """The smallest value that matches a JSON Schema's common keywords: what a model constrained by
    `format` / `response_format` would at least produce. Defaults, enums and consts are used first."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return None
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return example_of(target, root, depth + 1)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_of(schema[key][0], root, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_of(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example_of(schema.get("items", {}), root, depth + 1) for _ in range(schema.get("minItems", 1))]
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "x" * int(schema.get("minLength", 1))


@dataclass
class Said:
    """What a loopback model answers: text, and maybe reasoning and tool calls
    (`{"name": ..., "arguments": {...}}` each). A `reply` callable may return one, or a dict with
    these keys, or a string."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def _since_user(messages: Any) -> list[dict[str, Any]]:
    """The messages after the last user message (tool results of this turn)."""
    if not isinstance(messages, list):
        return []
    tail: list[dict[str, Any]] = []
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            break
        if isinstance(m, dict):
            tail.insert(0, m)
    return tail


def _words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def _message_words(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return _words(*(_text_of(m.get("content")) for m in messages if isinstance(m, dict)))


def _embedding(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _mask(secret: str) -> str:
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) >= 12 else "..."


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "farm-jupyter-testing"
    sys_version = ""
    timeout = 30.0  # idle keep-alive bound; stop() does not wait for it
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms stalls
    server: _HTTPServer
    headers_sent = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        self.headers_sent = False
        try:
            self.server.owner._handle(self)
        except OSError:
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001  (a failing user `reply` callable must not kill the server)
            if self.headers_sent:
                self.drop()
            else:
                body = self.server.owner._error_body(500, f"test server error: {exc!r}")
                self.send_bytes(500, _dumps(body))

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
                if total > _MAX_BODY:
                    raise ValueError("request body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
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
        content_type: str = "application/json; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_head(status, content_type, len(data), headers)
        if self.command != "HEAD":
            self.wfile.write(data)

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def drop(self) -> None:
        """Close the connection at once; the client sees an incomplete response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(HTTPServer):
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], owner: _LoopbackServer) -> None:
        self.owner = owner
        self.stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

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


class _LoopbackServer:
    kind = "loopback"
    content_type = "application/json; charset=utf-8"

    def __init__(
        self,
        models: Sequence[str],
        *,
        reply: Reply = None,
        tokens: int | None = None,
        chunk_delay: float = 0.0,
        latency: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 512,
    ) -> None:
        self.reply = reply
        self.tokens = tokens
        self.chunk_delay = chunk_delay
        self.latency = latency
        self.max_connections = max_connections
        self._host = host
        self._port = port
        self._models: list[str] = [self._normalise(m) for m in models]
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        # The server's own truth for rate checks: per finished stream, the content chunks it sent
        # and the perf_counter seconds between the first and the last one.
        self.sent: list[tuple[int, float]] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._refused = False

    # lifecycle

    def start(self) -> Self:
        with self._state_lock:
            if not self._started:
                self._bind()
                self._started, self._refused = True, False
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; idempotent."""
        with self._state_lock:
            if self._started:
                self._started, self._refused = False, False
                self._unbind()

    def refuse(self) -> None:
        """Act like a server that went away: close the listener and open connections.

        Connects get ECONNREFUSED until accept() listens again on the same port.
        """
        with self._state_lock:
            if not self._started:
                raise RuntimeError(f"{type(self).__name__} is not started")
            if not self._refused:
                self._refused = True
                self._unbind()

    def accept(self) -> None:
        with self._state_lock:
            if not self._started:
                raise RuntimeError(f"{type(self).__name__} is not started")
            if self._refused:
                self._bind()
                self._refused = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _bind(self) -> None:
        httpd = _HTTPServer((self._host, self._port), self)
        self._port = httpd.server_address[1]
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"farm-{self.kind}-server:{self._port}",
            daemon=True,
        )
        thread.start()
        self._httpd, self._thread = httpd, thread

    def _unbind(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None or thread is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections(_CLOSE_LIMIT)
        thread.join(_CLOSE_LIMIT)

    # public state

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    @property
    def host_port(self) -> str:
        if not self._started:
            raise RuntimeError(f"{type(self).__name__} is not started: call start() or use `with`")
        return f"{self._host}:{self._port}"

    @property
    def models(self) -> list[str]:
        with self._lock:
            return list(self._models)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests seen so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def faults(self) -> list[Fault]:
        return self._faults

    def count(self, path: str | None = None, method: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (path is None or r.path == path) and (method is None or r.method == method.upper())
            )

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def __repr__(self) -> str:
        where = self.url if self._started else "not started"
        return f"{type(self).__name__}({where}, models={self.models!r})"

    # request plumbing

    def _handle(self, h: _Handler) -> None:
        path = unquote(urlsplit(h.path).path)
        try:
            raw = h.read_body()
        except ValueError as exc:
            h.close_connection = True
            h.send_bytes(413 if "large" in str(exc) else 400, _dumps(self._error_body(400, str(exc))))
            return
        payload: Json | None = None
        bad_json = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError as exc:
                bad_json = f"invalid JSON body: {exc}"
            else:
                if isinstance(parsed, dict):
                    payload = parsed
                else:
                    bad_json = "request body must be a JSON object"
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            self._requests.append(RecordedRequest(h.command, path, payload, headers))
        delay, fault = self._pick_faults(path)
        stopping = h.server.stopping
        if delay and stopping.wait(delay):
            return h.drop()
        if fault is not None and fault.kind == "hang":
            stopping.wait(_HANG_LIMIT)
            return h.drop()
        if fault is not None and fault.kind == "echo":
            return self._echo(h, fault, headers)
        if fault is not None and fault.kind == "status":
            extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            body = fault.body if fault.body is not None else self._error_body(fault.status)
            return h.send_bytes(fault.status, _dumps(body), self.content_type, extra)
        if not self._authorised(h, headers):
            return
        if bad_json is not None:
            return self._send(h, 400, self._error_body(400, bad_json))
        self._route(h, h.command, path, payload or {}, fault)

    def _echo(self, h: _Handler, fault: Fault, headers: dict[str, str]) -> None:
        raw = headers.get("authorization") or headers.get("api-key") or headers.get("x-api-key") or ""
        scheme, _, credential = raw.partition(" ")
        if not credential:
            scheme, credential = "", raw
        elif scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                credential = base64.b64decode(credential).decode().partition(":")[2]
        bare = re.sub(r"^[A-Za-z]{2,4}[-_](?:proj-)?", "", credential)
        middle = credential[len(credential) // 4 : len(credential) // 4 + 10]
        encoded = quote(credential, safe="")
        message = (
            f"invalid credentials {credential!r} (token={bare}; encoded={encoded}; "
            f"the key containing ...{middle}... is not valid; you sent: {raw})"
        )
        extra = {
            "WWW-Authenticate": f'Bearer realm="farm-testing", error="invalid_token", '
            f'error_description="token={bare} is not valid"',
            "X-Echo-Authorization": raw,
            "X-Echo-Token": encoded,
        }
        h.send_bytes(fault.status, _dumps(self._error_body(fault.status, message)), self.content_type, extra)

    def _pick_faults(self, path: str) -> tuple[float, Fault | None]:
        delay, chosen = 0.0, None
        with self._lock:
            for fault in self._faults:
                if fault.path is not None and fault.path != path:
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                if fault.kind != "delay" and chosen is not None:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.hits += 1
                if fault.kind == "delay":
                    delay += fault.delay
                else:
                    chosen = fault
        return delay, chosen

    def _authorised(self, h: _Handler, headers: dict[str, str]) -> bool:
        return True

    def _route(self, h: _Handler, method: str, path: str, body: Json, fault: Fault | None) -> None:
        raise NotImplementedError

    def _error_body(self, status: int, message: str | None = None) -> Json:
        raise NotImplementedError

    def _send(self, h: _Handler, status: int, obj: Any, fault: Fault | None = None) -> None:
        """A whole JSON response, with stream faults mapped onto a non-streamed body."""
        data = _dumps(obj)
        if fault is not None and fault.kind == "drop":
            h.send_head(status, self.content_type, len(data))
            h.wfile.write(data[: len(data) // 2])
            return h.drop()
        if fault is not None and fault.kind == "malformed":
            data = b'{"broken": '
        elif fault is not None and fault.kind == "error_line":
            status, data = 500, _dumps(fault.body or self._error_body(500))
        h.send_bytes(status, data, self.content_type)

    def _stream(
        self,
        h: _Handler,
        content_type: str,
        frames: Iterable[Frame],
        fault: Fault | None,
        malformed: bytes,
        error: bytes,
    ) -> None:
        armed = fault if fault is not None and fault.kind in _STREAM_FAULTS else None
        stopping = h.server.stopping
        h.send_head(200, content_type, None)
        sent = 0
        first = last = 0.0
        for kind, data in frames:
            if kind != "head":
                if armed is not None and sent >= armed.after:
                    if armed.kind == "drop":
                        return h.drop()
                    h.write_chunk(malformed if armed.kind == "malformed" else error)
                    return h.end_chunks()
                if kind == "content":
                    if sent and self.chunk_delay > 0 and stopping.wait(self.chunk_delay):
                        return h.drop()
                    sent += 1
            if stopping.is_set():
                return h.drop()
            h.write_chunk(data)
            if kind == "content":
                last = time.perf_counter()
                first = first or last
        h.end_chunks()
        with self._lock:
            self.sent.append((sent, last - first))

    def _model_time(self, h: _Handler) -> bool:
        """Wait `latency` before answering; False when the server stops meanwhile."""
        if self.latency > 0 and h.server.stopping.wait(self.latency):
            h.drop()
            return False
        return True

    def _answer(self, body: Json, prompt: str) -> str:
        return self._said(body, prompt).content

    def _said(self, body: Json, prompt: str) -> Said:
        """The answer to a request: the `reply` given, else what a model would do with the
        request's tools (call the first one, then report its results), schema (the smallest
        matching JSON) or thinking (a line of reasoning); else an echo of the prompt."""
        if self.tokens is not None:
            return Said("".join(f"tok{i} " for i in range(self.tokens)))
        said = self._default(body, prompt)
        if callable(self.reply):
            given: Any = self.reply(body)
            if isinstance(given, Said):
                return given
            if isinstance(given, dict):
                return Said(str(given.get("content", "")), str(given.get("thinking", "")), list(given.get("tool_calls", [])))
            return Said(given, said.thinking)
        if self.reply is not None:
            return Said(self.reply, said.thinking)
        return said

    def _default(self, body: Json, prompt: str) -> Said:
        thinking = f"Thinking about: {prompt}" if self._thinks(body) else ""
        messages = body.get("messages")
        tools = [t.get("function", t) for t in body.get("tools") or [] if isinstance(t, dict)]
        if tools:
            results = [_text_of(m.get("content")) for m in _since_user(messages) if m.get("role") == "tool"]
            if results:
                return Said("Tool results: " + "; ".join(results), thinking)
            first = tools[0]
            return Said("", thinking, [{"name": first.get("name"), "arguments": example_of(first.get("parameters") or {}) or {}}])
        schema = self._schema(body)
        if schema is not None:
            return Said(json.dumps(example_of(schema), separators=(", ", ": ")), thinking)
        images = _images_of(next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)) if isinstance(messages, list) else 0
        seen = f" [{images} image{'s' if images != 1 else ''}]" if images else ""
        return Said(f"Echo: {prompt}{seen}", thinking)

    def _thinks(self, body: Json) -> bool:
        return False

    def _schema(self, body: Json) -> Any:
        return None

    def _normalise(self, name: str) -> str:
        return name


class OllamaServer(_LoopbackServer):
    """An Ollama look-alike: /api/chat, /api/generate (NDJSON), tags, ps, show, pull, embed.

    With `auth=(user, password)` it stands for an Ollama behind a proxy with HTTP basic auth:
    other requests get 401 and a `WWW-Authenticate: Basic` challenge.
    """

    kind = "ollama"

    def __init__(
        self,
        models: Sequence[str] = ("llama3.1:latest", "qwen2.5:0.5b"),
        *,
        reply: Reply = None,
        tokens: int | None = None,
        chunk_delay: float = 0.0,
        latency: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 512,
        auth: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(
            models,
            reply=reply,
            tokens=tokens,
            chunk_delay=chunk_delay,
            latency=latency,
            seed=seed,
            host=host,
            port=port,
            max_connections=max_connections,
        )
        self.auth = auth
        self._loaded: set[str] = set()
        self.evals: list[tuple[int, int]] = []  # (eval_count, eval_duration ns) of each answer, as sent
        self._modified_at = datetime.now(UTC).isoformat()

    @property
    def loaded(self) -> set[str]:
        with self._lock:
            return set(self._loaded)

    def _normalise(self, name: str) -> str:
        name = name.strip()
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    def _lookup(self, name: Any) -> str | None:
        if not isinstance(name, str) or not name.strip():
            return None
        full = self._normalise(name)
        with self._lock:
            return full if full in self._models else None

    def _authorised(self, h: _Handler, headers: dict[str, str]) -> bool:
        if self.auth is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        if headers.get("authorization", "") == expected:
            return True
        h.send_bytes(401, _dumps({"error": "unauthorized"}), self.content_type, {"WWW-Authenticate": 'Basic realm="ollama"'})
        return False

    def _thinks(self, body: Json) -> bool:
        return bool(body.get("think"))

    def _schema(self, body: Json) -> Any:
        found = body.get("format")
        return found if isinstance(found, dict) else None

    def _error_body(self, status: int, message: str | None = None) -> Json:
        if message is None:
            message = {
                404: "404 page not found",
                429: "too many requests",
                503: "server busy, please try again.  maximum pending requests exceeded",
            }.get(status, f"simulated HTTP {status} error")
        return {"error": message}

    def _route(self, h: _Handler, method: str, path: str, body: Json, fault: Fault | None) -> None:
        routes: dict[str, tuple[str, Callable[[_Handler, Json, Fault | None], None]]] = {
            "/api/chat": ("POST", self._chat),
            "/api/generate": ("POST", self._generate),
            "/api/tags": ("GET", self._tags),
            "/api/ps": ("GET", self._ps),
            "/api/show": ("POST", self._show),
            "/api/pull": ("POST", self._pull),
            "/api/delete": ("DELETE", self._delete),
            "/api/embed": ("POST", self._embed),
            "/api/embeddings": ("POST", self._embeddings),
            "/api/version": ("GET", lambda h, b, f: self._send(h, 200, {"version": "0.6.0"}, f)),
        }
        if path == "/" and method in ("GET", "HEAD"):
            return h.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
        if path not in routes:
            return self._send(h, 404, self._error_body(404), fault)
        allowed, handler = routes[path]
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return self._send(h, 405, self._error_body(405, "405 method not allowed"), fault)
        handler(h, body, fault)

    # model metadata

    def _details(self, name: str) -> Json:
        base, _, tag = name.rsplit("/", 1)[-1].partition(":")
        letters = re.match(r"[A-Za-z]+", base)
        family = letters[0].lower() if letters else "llama"
        size = re.search(r"(\d+(?:\.\d+)?)[bB]", tag)
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": f"{float(size[1]):.1f}B" if size else "8.0B",
            "quantization_level": "Q4_K_M",
        }

    def _entry(self, name: str) -> Json:
        details = self._details(name)
        params = float(details["parameter_size"][:-1])
        return {
            "name": name,
            "model": name,
            "modified_at": self._modified_at,
            "size": int(params * 0.6e9),
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": details,
        }

    def _tags(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        self._send(h, 200, {"models": [self._entry(m) for m in self.models]}, fault)

    def _ps(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        with self._lock:
            loaded = [m for m in self._models if m in self._loaded]
        models = []
        for name in loaded:
            entry = self._entry(name)
            del entry["modified_at"]
            entry.update(expires_at=expires, size_vram=entry["size"], context_length=4096)
            models.append(entry)
        self._send(h, 200, {"models": models}, fault)

    def _show(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model") or body.get("name")
        name = self._lookup(asked)
        if name is None:
            return self._send(h, 404, {"error": f"model '{asked}' not found"}, fault)
        details = self._details(name)
        family = details["family"]
        embedding = "embed" in name
        self._send(
            h,
            200,
            {
                "modelfile": f"# Modelfile generated by farm_jupyter.testing\nFROM {name}\n",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {
                    "general.architecture": family,
                    "general.parameter_count": int(float(details["parameter_size"][:-1]) * 1e9),
                    f"{family}.context_length": 8192,
                    f"{family}.embedding_length": 8 if embedding else 4096,
                },
                "capabilities": ["embedding"] if embedding else ["completion", "tools", "thinking", *(
                    ["vision"] if re.search(r"llava|vision|-vl|gemma3|moondream", name) else []
                )],
                "modified_at": self._modified_at,
            },
            fault,
        )

    def _delete(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model") or body.get("name")
        name = self._lookup(asked)
        if name is None:
            return self._send(h, 404, {"error": f"model '{asked}' not found"}, fault)
        with self._lock:
            self._models.remove(name)
            self._loaded.discard(name)
        h.send_bytes(200, b"")

    def _pull(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model") or body.get("name")
        if not isinstance(asked, str) or not asked.strip():
            return self._send(h, 400, self._error_body(400, "model is required"), fault)
        name = self._normalise(asked)
        missing = name.rsplit("/", 1)[-1].startswith("missing")
        error = "pull model manifest: file does not exist"

        def frames() -> Iterator[Frame]:
            yield "content", _dumps({"status": "pulling manifest"}) + b"\n"
            if missing:
                yield "tail", _dumps({"error": error}) + b"\n"
                return
            for layer, total in enumerate((int(self._entry(name)["size"]), 485)):
                digest = hashlib.sha256(f"{name}#{layer}".encode()).hexdigest()
                for completed in (0, total // 2, total):
                    line = {
                        "status": f"pulling {digest[:12]}",
                        "digest": f"sha256:{digest}",
                        "total": total,
                        "completed": completed,
                    }
                    yield "content", _dumps(line) + b"\n"
            yield "content", _dumps({"status": "verifying sha256 digest"}) + b"\n"
            yield "content", _dumps({"status": "writing manifest"}) + b"\n"
            with self._lock:
                if name not in self._models:
                    self._models.append(name)
            yield "tail", _dumps({"status": "success"}) + b"\n"

        if body.get("stream", True) is False:
            if missing:
                return self._send(h, 500, {"error": error}, fault)
            for _ in frames():
                pass
            return self._send(h, 200, {"status": "success"}, fault)
        self._stream(h, "application/x-ndjson", frames(), fault, *self._bad_lines(fault))

    def _bad_lines(self, fault: Fault | None) -> tuple[bytes, bytes]:
        body = fault.body if fault is not None and fault.body is not None else self._error_body(500)
        return b'{"broken": \n', _dumps(body) + b"\n"

    # inference

    def _chat(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        self._infer(h, body, fault, generate=False)

    def _generate(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        self._infer(h, body, fault, generate=True)

    def _infer(self, h: _Handler, body: Json, fault: Fault | None, *, generate: bool) -> None:
        asked = body.get("model")
        if not isinstance(asked, str) or not asked.strip():
            return self._send(h, 400, self._error_body(400, "model is required"), fault)
        name = self._lookup(asked)
        if name is None:
            message = f'model "{asked}" not found, try pulling it first'
            return self._send(h, 404, self._error_body(404, message), fault)

        keep_alive = body.get("keep_alive")
        unload = keep_alive in (0, "0", "0s", "0m", "0h")
        messages = body.get("messages")
        prompt = _text_of(body.get("prompt"))
        if (not prompt) if generate else (not messages):
            with self._lock:
                (self._loaded.discard if unload else self._loaded.add)(name)
            done: Json = {"model": asked, "created_at": _now_iso()}
            done.update({"response": ""} if generate else {"message": {"role": "assistant", "content": ""}})
            done.update(done=True, done_reason="unload" if unload else "load")
            return self._send(h, 200, done, fault)

        started = time.perf_counter_ns()
        if not self._model_time(h):
            return
        with self._lock:
            cold = name not in self._loaded
            self._loaded.add(name)
        said = self._said(body, prompt if generate else _last_user(messages))
        pieces = _chunks(said.content)
        thoughts = _chunks(said.thinking)
        calls = [{"function": {"name": c.get("name"), "arguments": c.get("arguments") or {}}} for c in said.tool_calls]
        reason = "stop"
        limit = _positive_int((body.get("options") or {}).get("num_predict"))
        if limit is not None and limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        prompt_words = _words(prompt, _text_of(body.get("system"))) if generate else _message_words(messages)

        def content(text: str, done: bool, **extra: Any) -> Json:
            line: Json = {"model": asked, "created_at": _now_iso()}
            if generate:
                line.update({"response": text, **extra})
            else:
                line["message"] = {"role": "assistant", "content": text, **extra}
            line["done"] = done
            return line

        def final(text: str, eval_started: int) -> Json:
            now = time.perf_counter_ns()
            load = 12_000_000 if cold else 150_000
            prompt_eval = 50_000 * max(prompt_words, 1)
            line = content(text, True)
            line.update(
                done_reason=reason,
                total_duration=now - started + load + prompt_eval,
                load_duration=load,
                prompt_eval_count=prompt_words,
                prompt_eval_duration=prompt_eval,
                eval_count=len(pieces),
                eval_duration=max(now - eval_started, 1),
            )
            self.evals.append((len(pieces), line["eval_duration"]))
            if unload:
                with self._lock:
                    self._loaded.discard(name)
            return line

        if body.get("stream", True) is False:
            # A whole answer takes as long to generate as a streamed one, and says so.
            eval_started = time.perf_counter_ns()
            if self.chunk_delay > 0 and h.server.stopping.wait(self.chunk_delay * max(len(pieces) - 1, 0)):
                return h.drop()
            whole = final("".join(pieces), eval_started)
            if not generate:
                if thoughts:
                    whole["message"]["thinking"] = "".join(thoughts)
                if calls:
                    whole["message"]["tool_calls"] = calls
            return self._send(h, 200, whole, fault)

        def frames() -> Iterator[Frame]:
            eval_started = time.perf_counter_ns()
            for thought in thoughts:  # reasoning first, in its own field, as Ollama streams it
                yield "content", _dumps(content("", False, thinking=thought)) + b"\n"
            for piece in pieces:
                yield "content", _dumps(content(piece, False)) + b"\n"
            if calls:  # Ollama sends a turn's tool calls whole, in one line before the last
                yield "content", _dumps(content("", False, tool_calls=calls)) + b"\n"
            yield "tail", _dumps(final("", eval_started)) + b"\n"

        self._stream(h, "application/x-ndjson", frames(), fault, *self._bad_lines(fault))

    def _embed(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model")
        name = self._lookup(asked)
        if name is None:
            message = f'model "{asked}" not found, try pulling it first'
            return self._send(h, 404, self._error_body(404, message), fault)
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else [str(t) for t in raw or []]
        if not self._model_time(h):
            return
        with self._lock:
            self._loaded.add(name)
        words = _words(*texts)
        result = {
            "model": asked,
            "embeddings": [_embedding(t) for t in texts],
            "total_duration": 1_000_000 + 10_000 * words,
            "load_duration": 150_000,
            "prompt_eval_count": words,
        }
        self._send(h, 200, result, fault)

    def _embeddings(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model")
        name = self._lookup(asked)
        if name is None:
            message = f'model "{asked}" not found, try pulling it first'
            return self._send(h, 404, self._error_body(404, message), fault)
        if not self._model_time(h):
            return
        self._send(h, 200, {"embedding": _embedding(_text_of(body.get("prompt")))}, fault)


class OpenAIServer(_LoopbackServer):
    """An OpenAI look-alike under /v1: chat completions (SSE), models, embeddings, Bearer auth."""

    kind = "openai"
    content_type = "application/json"

    def __init__(
        self,
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4o"),
        *,
        api_key: str | None = "sk-test",
        reply: Reply = None,
        tokens: int | None = None,
        chunk_delay: float = 0.0,
        latency: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 512,
    ) -> None:
        super().__init__(
            models,
            reply=reply,
            tokens=tokens,
            chunk_delay=chunk_delay,
            latency=latency,
            seed=seed,
            host=host,
            port=port,
            max_connections=max_connections,
        )
        self.api_key = api_key
        self._ids = itertools.count(1)

    def _thinks(self, body: Json) -> bool:
        return bool(body.get("reasoning_effort"))

    def _schema(self, body: Json) -> Any:
        found = body.get("response_format") or {}
        return (found.get("json_schema") or {}).get("schema") if found.get("type") == "json_schema" else None

    @property
    def base_url(self) -> str:
        """`url + "/v1"`, what `OpenAI(base_url=...)` wants."""
        return f"{self.url}/v1"

    def __repr__(self) -> str:
        where = self.url if self._started else "not started"
        key = None if self.api_key is None else _mask(self.api_key)
        return f"OpenAIServer({where}, models={self.models!r}, api_key={key!r})"

    def _error_body(self, status: int, message: str | None = None) -> Json:
        kinds: dict[int, tuple[str, str | None, str]] = {
            400: ("invalid_request_error", None, "Bad request."),
            401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
            403: ("insufficient_permissions", None, "You are not allowed to do this."),
            404: ("invalid_request_error", None, "Not found."),
            429: (
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                "Rate limit reached for requests (simulated by farm_jupyter.testing).",
            ),
            500: ("server_error", None, "The server had an error while processing your request."),
            503: ("server_error", None, "The engine is currently overloaded, please try again later."),
        }
        type_, code, default = kinds.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}.")
        )
        return {"error": {"message": message or default, "type": type_, "param": None, "code": code}}

    def _authorised(self, h: _Handler, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() == "bearer" and given == self.api_key:
            return True
        if not given:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            body = self._error_body(401, message)
            body["error"]["code"] = None
        else:
            body = self._error_body(401, f"Incorrect API key provided: {_mask(given)}.")
        h.send_bytes(401, _dumps(body), self.content_type)
        return False

    def _route(self, h: _Handler, method: str, path: str, body: Json, fault: Fault | None) -> None:
        if method == "GET" and path == "/v1/models":
            return self._send(h, 200, {"object": "list", "data": [self._model(m) for m in self.models]}, fault)
        if method == "GET" and path.startswith("/v1/models/"):
            name = path[len("/v1/models/") :]
            if name in self.models:
                return self._send(h, 200, self._model(name), fault)
            return self._send(h, 404, self._not_found(name), fault)
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(h, body, fault)
        if method == "POST" and path == "/v1/embeddings":
            return self._embeddings(h, body, fault)
        self._send(h, 404, self._error_body(404, f"Invalid URL ({method} {path})"), fault)

    @staticmethod
    def _model(name: str) -> Json:
        owner = "openai" if name.startswith(("gpt-", "text-", "o1", "o3", "o4")) else "system"
        return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": owner}

    def _not_found(self, name: Any) -> Json:
        body = self._error_body(404, f"The model `{name}` does not exist or you do not have access to it.")
        body["error"]["code"] = "model_not_found"
        return body

    def _check_model(self, h: _Handler, body: Json, fault: Fault | None) -> str | None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send(h, 400, self._error_body(400, "you must provide a model parameter"), fault)
            return None
        if model not in self.models:
            self._send(h, 404, self._not_found(model), fault)
            return None
        return model

    def _chat(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        model = self._check_model(h, body, fault)
        if model is None:
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._send(h, 400, self._error_body(400, "Missing required parameter: 'messages'."), fault)
        if not self._model_time(h):
            return
        said = self._said(body, _last_user(messages))
        pieces = _chunks(said.content)
        thoughts = _chunks(said.thinking)
        calls: list[Json] = [
            {"id": f"call_farm{next(self._ids):06d}", "type": "function",
             "function": {"name": c.get("name"), "arguments": json.dumps(c.get("arguments") or {})}}
            for c in said.tool_calls
        ]
        reason = "tool_calls" if calls else "stop"
        limit = _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
        if limit is not None and limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        prompt_tokens = _message_words(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        ident, created = f"chatcmpl-farm{next(self._ids):012d}", int(time.time())

        if not body.get("stream"):
            return self._send(
                h,
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_farm",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(pieces) if pieces or not calls else None,
                                "refusal": None,
                                **({"reasoning_content": "".join(thoughts)} if thoughts else {}),
                                **({"tool_calls": calls} if calls else {}),
                            },
                            "finish_reason": reason,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                },
                fault,
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(delta: Json | None, finish: str | None = None, last: bool = False) -> bytes:
            chunk: Json = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_farm",
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                chunk["usage"] = usage if last else None
            return b"data: " + _dumps(chunk) + b"\n\n"

        def frames() -> Iterator[Frame]:
            yield "head", event({"role": "assistant", "content": "", "refusal": None})
            for thought in thoughts:  # DeepSeek's and vLLM's field for reasoning
                yield "content", event({"content": None, "reasoning_content": thought})
            for piece in pieces:
                yield "content", event({"content": piece})
            for index, call in enumerate(calls):  # as OpenAI streams them: the name, then the arguments in pieces
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                yield "content", event({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                        "function": {"name": call["function"]["name"], "arguments": ""}}]})
                for part in (arguments[:half], arguments[half:]):
                    yield "content", event({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            yield "tail", event({}, reason)
            if include_usage:
                yield "tail", event(None, last=True)
            yield "tail", b"data: [DONE]\n\n"

        error = fault.body if fault is not None and fault.body is not None else self._error_body(500)
        self._stream(
            h,
            "text/event-stream; charset=utf-8",
            frames(),
            fault,
            b'data: {"broken": \n\n',
            b"data: " + _dumps(error) + b"\n\n",
        )

    def _embeddings(self, h: _Handler, body: Json, fault: Fault | None) -> None:
        model = self._check_model(h, body, fault)
        if model is None:
            return
        raw = body.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            texts = [" ".join(map(str, raw))]  # one pre-tokenised input
        elif isinstance(raw, list) and raw:
            texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in raw]
        else:
            return self._send(h, 400, self._error_body(400, "'input' must be a string or a non-empty array."), fault)
        if not self._model_time(h):
            return
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector: Any = _embedding(text)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = _words(*texts)
        result = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self._send(h, 200, result, fault)
