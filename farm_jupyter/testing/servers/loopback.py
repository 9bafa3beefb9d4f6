"""What both loopback servers share: start, stop and refuse; the record of requests; the faults
applied before a protocol sees a request; and the whole-body and chunked-stream writers that the
faults cut or corrupt. A protocol subclass routes requests and says how its errors and lines look.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict
from urllib.parse import unquote, urlsplit

from .answers import Said, example_of, filled, images_of, since_user, text_of
from .faults import FOREIGN_PAGE, HANG_LIMIT, STREAM_FAULTS, Fault, echoed, pick
from .transport import JSON_TYPE, Handler, Server, dumps

if TYPE_CHECKING:
    from typing import Self, TypeAlias

Reply: TypeAlias = str | Callable[[dict[str, Any]], str] | None
Json: TypeAlias = dict[str, Any]
# (kind, payload): "head" frames go out unconditionally; a fault fires before a "content" or "tail" one.
Frame: TypeAlias = tuple[Literal["head", "content", "tail"], bytes]

_CLOSE_LIMIT = 5.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; `headers` has lower-case keys, `body` the bytes as
    they arrived (what `farm.explain` must match byte for byte)."""

    method: str
    path: str
    json: dict[str, Any] | None
    headers: dict[str, str]
    body: bytes = b""


class Options(TypedDict, total=False):
    """The keywords every loopback server takes, so that a protocol adds only its own."""

    reply: Reply
    tokens: int | None
    chunk_delay: float
    latency: float
    seed: int
    host: str
    port: int
    max_connections: int


class LoopbackServer:
    kind = "loopback"
    content_type = JSON_TYPE
    stream_type: str

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
        self._disconnects: list[RecordedRequest] = []
        # Set by an AsyncServer (servers/one_loop.py): the model's `latency` is handed to it to await.
        self.defer: Callable[[float], None] | None = None
        self._httpd: Server | None = None
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
        httpd = Server((self._host, self._port), self)
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
    def disconnects(self) -> list[RecordedRequest]:
        """The requests whose client went away before the answer was over, oldest first: seen
        while the model was still thinking (`latency`) or between two chunks."""
        with self._lock:
            return list(self._disconnects)

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
            self._disconnects.clear()
            self._faults.clear()

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def __repr__(self) -> str:
        where = self.url if self._started else "not started"
        return f"{type(self).__name__}({where}, models={self.models!r})"

    # request plumbing

    def answer(self, h: Handler) -> None:
        path = unquote(urlsplit(h.path).path)
        try:
            raw = h.read_body()
        except ValueError as exc:
            h.close_connection = True
            h.send_bytes(413 if "large" in str(exc) else 400, dumps(self.error_body(400, str(exc))))
            return
        payload: Json | None = None
        bad_json = None
        h.raw_body = raw
        if raw and not h.headers.get("Content-Type", "").startswith("multipart/"):
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
        h.recorded = RecordedRequest(h.command, path, payload, headers, raw)
        with self._lock:
            self._requests.append(h.recorded)
        with self._lock:
            delay, fault = pick(self._faults, path, self._rng)
        stopping = h.server.stopping
        if delay and stopping.wait(delay):
            return h.drop()
        if fault is not None and fault.kind == "hang":
            stopping.wait(HANG_LIMIT)
            return h.drop()
        if fault is not None and fault.kind == "echo":
            message, extra = echoed(headers)
            body = self.error_body(fault.status, message)
            return h.send_bytes(fault.status, dumps(body), self.content_type, extra)
        if fault is not None and fault.kind == "foreign":
            text = FOREIGN_PAGE if fault.text is None else fault.text
            kind = "text/html" if text.lstrip().startswith("<") else "text/plain"
            return h.send_bytes(fault.status, text.encode(), f"{kind}; charset=utf-8")
        if fault is not None and fault.kind == "status":
            extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            body = fault.body if fault.body is not None else self.error_body(fault.status)
            return h.send_bytes(fault.status, dumps(body), self.content_type, extra)
        if not self._authorised(h, headers):
            return
        if bad_json is not None:
            return self._send(h, 400, self.error_body(400, bad_json))
        self._route(h, h.command, path, payload or {}, fault)

    def _authorised(self, h: Handler, headers: dict[str, str]) -> bool:
        return True

    def _route(self, h: Handler, method: str, path: str, body: Json, fault: Fault | None) -> None:
        raise NotImplementedError

    def error_body(self, status: int, message: str | None = None) -> Json:
        raise NotImplementedError

    def _line(self, data: bytes) -> bytes:
        """One line of a stream around a JSON payload, in the protocol's framing."""
        raise NotImplementedError

    def _send(self, h: Handler, status: int, obj: Any, fault: Fault | None = None) -> None:
        """A whole JSON response, with stream faults mapped onto a non-streamed body."""
        data = dumps(obj)
        if fault is not None and fault.kind == "drop":
            h.send_head(status, self.content_type, len(data))
            h.wfile.write(data[: len(data) // 2])
            return h.drop()
        if fault is not None and fault.kind == "malformed":
            data = b'{"broken": '
        elif fault is not None and fault.kind == "error_line":
            status, data = 500, dumps(fault.body or self.error_body(500))
        h.send_bytes(status, data, self.content_type)

    def _stream(self, h: Handler, frames: Iterable[Frame], fault: Fault | None) -> None:
        """A chunked stream of `frames`; a stream fault cuts it, or ends it with a broken line or the
        protocol's in-stream error, once `after` content frames have gone out."""
        armed = fault if fault is not None and fault.kind in STREAM_FAULTS else None
        stopping = h.server.stopping
        h.send_head(200, self.stream_type, None)
        sent = 0
        first = last = 0.0
        for kind, data in frames:
            if kind != "head":
                if armed is not None and sent >= armed.after:
                    if armed.kind == "drop":
                        return h.drop()
                    if armed.kind == "malformed":
                        h.write_chunk(self._line(b'{"broken": '))
                    else:
                        error = armed.body if armed.body is not None else self.error_body(500)
                        h.write_chunk(self._line(dumps(error)))
                    return h.end_chunks()
                if kind == "content":
                    if sent and self.chunk_delay > 0 and not self._pause(h, self.chunk_delay):
                        return None
                    sent += 1
            if stopping.is_set():
                return h.drop()
            try:
                h.write_chunk(data)
            except OSError:
                self._gone(h)
                raise
            if kind == "content":
                last = time.perf_counter()
                first = first or last
        h.end_chunks()
        with self._lock:
            self.sent.append((sent, last - first))

    def _model_time(self, h: Handler) -> bool:
        """Wait `latency` before answering; False when the server stops or the client goes meanwhile."""
        if self.defer is not None:
            self.defer(self.latency)
            return True
        return self.latency <= 0 or self._pause(h, self.latency)

    def _pause(self, h: Handler, seconds: float) -> bool:
        """Wait `seconds`, watching the client: False (the connection dropped) when the server
        stops or the client goes away meanwhile; a client that went is recorded in `disconnects`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if h.server.stopping.wait(min(left, 0.005)):
                h.drop()
                return False
            if h.gone():
                self._gone(h)
                h.drop()
                return False
        return True

    def _gone(self, h: Handler) -> None:
        with self._lock:
            self._disconnects.append(h.recorded)

    # answers

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
                return Said(
                    str(given.get("content", "")), str(given.get("thinking", "")), list(given.get("tool_calls", []))
                )
            return Said(given, said.thinking)
        if self.reply is not None:
            return Said(self.reply, said.thinking)
        return said

    def _filled(self, body: Json, prefix: str, suffix: str) -> Said:
        """The answer to a fill-in-the-middle request: `tokens` or `reply` when given, else `filled`."""
        if self.tokens is not None or self.reply is not None:
            return self._said(body, prefix)
        return Said(filled(prefix, suffix))

    def _default(self, body: Json, prompt: str) -> Said:
        thinking = f"Thinking about: {prompt}" if self._thinks(body) else ""
        messages = body.get("messages")
        tools = [t.get("function", t) for t in body.get("tools") or [] if isinstance(t, dict)]
        if tools:
            results = [text_of(m.get("content")) for m in since_user(messages) if m.get("role") == "tool"]
            if results:
                return Said("Tool results: " + "; ".join(results), thinking)
            first = tools[0]
            call = {"name": first.get("name"), "arguments": example_of(first.get("parameters") or {}) or {}}
            return Said("", thinking, [call])
        schema = self._schema(body)
        if schema is not None:
            return Said(json.dumps(example_of(schema), separators=(", ", ": ")), thinking)
        user = (
            next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
            if isinstance(messages, list)
            else None
        )
        images = images_of(user)
        seen = f" [{images} image{'s' if images != 1 else ''}]" if images else ""
        return Said(f"Echo: {prompt}{seen}", thinking)

    def _thinks(self, body: Json) -> bool:
        return False

    def _schema(self, body: Json) -> Any:
        return None

    def _normalise(self, name: str) -> str:
        return name
