"""Ollama over its HTTP API (httpx): NDJSON streams, model management, embeddings."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .. import secrets
from ..config import shown_url
from ..errors import ModelNotFound, ProviderError, ServerError, StreamInterrupted
from ..types import (
    ChatMessage,
    ChatRequest,
    Chunk,
    FillRequest,
    ModelInfo,
    ProviderStatus,
    PullProgress,
    ToolCall,
    Usage,
)
from ..types.capabilities import Capabilities
from ._http import (
    body_shape,
    error_detail,
    foreign,
    json_object,
    mapped_transport_errors,
    status_error,
    wrong_server,
)
from .base import Provider

POOLS = 8  # connection pools to one Ollama, at most (see `_lease`)
KEEP_ALIVE = 32  # idle connections kept by all of them together
# Every line of Ollama's streams has one of these (chat, generate, pull): the first one that has
# none comes from another server.
_LINE_KEYS = frozenset({"message", "response", "done", "status"})


def _tagged(model: str) -> str:
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def _options(request: ChatRequest) -> dict[str, Any]:
    p = request.params
    options: dict[str, Any] = {
        "temperature": p.temperature,
        "num_predict": p.max_tokens,
        "top_p": p.top_p,
        "stop": p.stop,
        "seed": p.seed,
    }
    options = {k: v for k, v in options.items() if v is not None}
    options.update(p.options_for("ollama"))  # closed and checked: none of them is one of the above
    return options


def _message(m: ChatMessage) -> dict[str, Any]:
    """One message in /api/chat's shape: images as bare base64, tool calls with object arguments."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.images:
        out["images"] = [i.data for i in m.images]
    if m.tool_calls:
        out["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
    if m.role == "tool" and m.tool_name:
        out["tool_name"] = m.tool_name
    if m.thinking:
        out["thinking"] = m.thinking
    return out


def _tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    calls = []
    for i, raw in enumerate(message.get("tool_calls") or []):
        function = raw.get("function") or {}
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):  # some servers send a JSON string, as OpenAI does
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                arguments = {"__raw__": arguments}
        calls.append(ToolCall(id=raw.get("id") or f"call_{i}", name=str(function.get("name", "")), arguments=arguments))
    return calls


def _pieces(message: dict[str, Any]) -> list[Chunk]:
    """What one /api/chat message holds: reasoning, text and tool calls, each as its own chunk."""
    out = []
    if thinking := message.get("thinking"):
        out.append(Chunk(thinking=thinking))
    if text := message.get("content"):
        out.append(Chunk(text=text))
    if message.get("tool_calls"):
        out.append(Chunk(tool_calls=_tool_calls(message)))
    return out


class OllamaProvider(Provider):
    kind = "ollama"
    capabilities = Capabilities.of(
        *("stream", "schema", "tools", "think", "images", "stop", "seed", "temperature", "max_tokens"),
        *("embed", "load", "fallback", "fim"),
        per_model=("tools", "think", "images", "fim"),  # as /api/show's `capabilities` says, per model
    )

    def __init__(self, name: str, settings: Any, **options: Any) -> None:
        super().__init__(name, settings, **options)
        self._base, user, password = settings.ollama.endpoint(options.get("host"))
        self._auth = httpx.BasicAuth(user or "", password or "") if (user or password) else None
        self._host: str = shown_url(self._base, user, password)  # what messages show: no password
        self._clients: list[httpx.AsyncClient] = []
        self._busy: list[int] = []  # requests in flight on each of `_clients`
        self._ssl: ssl.SSLContext | None = None  # one for every pool: each costs ~20 ms to make
        self._abilities: dict[str, list[str] | None] = {}  # /api/show's `capabilities`, per model

    @property
    def url(self) -> str:
        return self._host

    def normalize_model(self, model: str) -> str:
        return _tagged(model)

    @contextlib.asynccontextmanager
    async def _lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """The least busy of `POOLS` clients for one request; the first while none is busy, so
        requests one after another keep reusing one kept-alive connection.

        httpcore's pool walks all its connections whenever a request starts or ends, so a burst
        costs it the square of the connections in one pool: with 200 requests in flight that
        walk was a sixth of the Jupyter server's CPU (benchmarks/server_load.py). Eight pools
        walk an eighth each; together they keep as many idle connections as one pool kept
        before (each idle one is polled on every walk)."""
        busy = self._busy
        turn = min(range(len(busy)), key=busy.__getitem__, default=None)
        if turn is None or (busy[turn] and len(busy) < POOLS):  # a pool is made when one is needed
            self._clients.append(self._client())
            busy.append(0)
            turn = len(busy) - 1
        busy[turn] += 1
        try:
            yield self._clients[turn]
        finally:
            busy[turn] -= 1

    def _client(self) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        timeouts = self.settings.timeouts
        return httpx.AsyncClient(
            base_url=self._base,
            auth=self._auth,
            verify=self._ssl,
            timeout=httpx.Timeout(timeouts.total, connect=timeouts.connect),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=KEEP_ALIVE // POOLS),
        )

    def servers(self) -> list[Provider]:
        return self.one_per("host", self.settings.ollama.hosts)

    def _errors(self) -> Any:
        return mapped_transport_errors(
            self.name,
            self._host,
            f"start it with `ollama serve` or `%farm ollama start` (OLLAMA_HOST={self._host})",
            label="Ollama",
        )

    async def _raise_for_status(self, response: httpx.Response, model: str) -> None:
        kind = response.headers.get("content-type", "")
        if response.status_code < 400 and "html" not in kind:
            return
        await response.aread()
        data = json_object(response.text)
        error = data.get("error") if data is not None else None
        if response.status_code < 400 or foreign(response.status_code, error is not None):
            raise self._foreign(response, body_shape(kind, response.text, "Ollama"))
        raise status_error(
            self.name,
            response.status_code,
            str(error)[:300] if error is not None else error_detail(kind, response.text),
            url=self._host,
            headers=response.headers,
            not_found_hint=f"pull it with `%farm pull {model}`",
            label="Ollama",
        )

    def _foreign(self, response: httpx.Response, shape: str) -> ProviderError:
        asked = f"{response.request.method} {response.request.url.path}"
        return wrong_server(
            self.name,
            "Ollama",
            self._host,
            f"{asked} answered {response.status_code} with {shape}",
            "point OLLAMA_HOST (or [ollama] host) at `ollama serve` (port 11434 unless set otherwise)",
        )

    def _json(self, response: httpx.Response) -> Any:
        """A whole JSON body; a broken one is a broken answer (retried, then fallen back from)."""
        try:
            return response.json()
        except ValueError as exc:
            raise self._malformed("body", response.text) from exc

    def _malformed(self, what: str, text: str) -> StreamInterrupted:
        hint = "retry; check the server's version and log"
        return StreamInterrupted(
            f"Ollama at {self._host} sent a malformed {what}: {text[:80]!r}", provider=self.name, hint=hint
        )

    async def _ndjson(
        self, path: str, body: dict[str, Any], model: str, sent: list[str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """POST and yield each JSON line; an `{"error": ...}` line is an error, not data. `sent`
        gets the request body as it went out."""
        async with self._errors(), self._lease() as client:
            async with client.stream("POST", path, json=body) as response:
                await self._raise_for_status(response, model)
                if sent is not None:
                    sent.append(secrets.redact(response.request.content.decode("utf-8", "replace")))
                first = True
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        data = json.loads(line)
                    except ValueError as exc:
                        raise self._malformed("line", line) from exc
                    if isinstance(data, dict) and "error" in data:
                        error = str(data["error"])
                        cls = ModelNotFound if "not found" in error or "does not exist" in error else ServerError
                        raise cls(f"Ollama at {self._host} failed: {error}", provider=self.name)
                    if first and not (isinstance(data, dict) and _LINE_KEYS & data.keys()):
                        raise self._foreign(response, "JSON, but not Ollama's")
                    first = False
                    yield data

    def _final(self, data: dict[str, Any]) -> Chunk:
        return Chunk(
            done=True,
            usage=Usage(
                prompt_tokens=data.get("prompt_eval_count") or 0,
                completion_tokens=data.get("eval_count") or 0,
            ),
            finish_reason=data.get("done_reason"),
            provider_total=(data["total_duration"] / 1e9) if data.get("total_duration") else None,
            generation=(data["eval_duration"] / 1e9) if data.get("eval_duration") else None,
        )

    def _body(self, request: ChatRequest, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "stream": True, **fields}
        if options := _options(request):
            body["options"] = options
        if request.params.format:
            body["format"] = request.params.format
        if request.params.response_schema is not None:
            body["format"] = request.params.response_schema
        if request.params.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump()} for t in request.params.tools]
        if request.params.think is not None:
            body["think"] = request.params.think
        keep_alive = self.options.get("keep_alive") or self.settings.ollama.keep_alive
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return body

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        body = self._body(request, messages=[_message(m) for m in request.messages])
        if not request.stream:
            body["stream"] = False
            async with self._errors(), self._lease() as client:
                response = await client.post("/api/chat", json=body)
            await self._raise_for_status(response, request.model)
            yield Chunk(sent=secrets.redact(response.request.content.decode("utf-8", "replace")))
            data = self._json(response)
            if "error" in data:
                raise ServerError(f"Ollama at {self._host} failed: {data['error']}", provider=self.name)
            if "done" not in data:
                raise self._foreign(response, "JSON, but not Ollama's")
            for chunk in _pieces(data.get("message") or {}):
                yield chunk
            yield self._final(data)
            return
        # The final line is yielded once the body has ended: a response closed unread closes its
        # connection, and every streamed request would then pay for a new one.
        final: Chunk | None = None
        sent: list[str] = []
        async for data in self._ndjson("/api/chat", body, request.model, sent):
            if sent:
                yield Chunk(sent=sent.pop())
            if final is None:
                for chunk in _pieces(data.get("message") or {}):
                    yield chunk
                if data.get("done"):
                    final = self._final(data)
        if final is None:
            raise StreamInterrupted(
                f"Ollama at {self._host} ended the stream without its final line", provider=self.name
            )
        yield final

    async def _shown_abilities(self, model: str) -> list[str] | None:
        """Ollama says what a model can do: its `capabilities` (asked once per model); None when
        it cannot say (the chat itself will say what is wrong)."""
        model = _tagged(model)
        if model not in self._abilities:
            try:
                shown = await self.show(model)
            except ProviderError:
                return None
            found = shown.get("capabilities")
            self._abilities[model] = [str(c) for c in found] if isinstance(found, list) else None
        return self._abilities[model]

    async def accepts_images(self, model: str) -> bool:
        return "vision" in (await self._shown_abilities(model) or [])

    async def model_capabilities(self, model: str) -> frozenset[str]:
        """The row narrowed by /api/show: `tools`, `thinking`, `vision`, `insert` (fill-in-the-middle)."""
        row = self.capabilities.features
        said = await self._shown_abilities(model)
        if said is None:  # an older Ollama that does not say: the row, and the chat says the rest
            return row
        words = {"tools": "tools", "think": "thinking", "images": "vision", "fim": "insert"}
        return row - {f for f in self.capabilities.per_model if words.get(f, f) not in said}

    async def _can(self, model: str, ability: str) -> bool:
        return ability in (await self._shown_abilities(model) or [])

    async def afill(self, request: FillRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        # A model whose template takes a suffix says `insert`; the others get the chat prompt.
        if not await self._can(request.model, "insert"):
            async for chunk in super().afill(request):
                yield chunk
            return
        options: dict[str, Any] = {"num_predict": request.max_tokens, "temperature": request.temperature}
        if request.stop:
            options["stop"] = request.stop
        body = {"model": request.model, "prompt": request.fim_prompt, "suffix": request.suffix, "stream": True}
        async for chunk in self._generated({**body, "options": options}, request.model):
            yield chunk

    async def agenerate_stream(self, prompt: str, model: str | None = None, **params: Any) -> AsyncIterator[Chunk]:  # type: ignore[override]
        # Ollama has a native completion endpoint; raw prompts skip the chat template there.
        request = self._request(prompt, model, params)
        async for chunk in self._generated(self._body(request, prompt=prompt), request.model):
            yield chunk

    async def _generated(self, body: dict[str, Any], model: str) -> AsyncIterator[Chunk]:
        """/api/generate's lines as chunks; the final one once the body has ended, as in astream."""
        final: Chunk | None = None
        async for data in self._ndjson("/api/generate", body, model):
            if final is None and data.get("done"):
                final = self._final(data)
            elif final is None and (text := data.get("response") or ""):
                yield Chunk(text=text)
        if final is None:
            raise StreamInterrupted(
                f"Ollama at {self._host} ended the stream without its final line", provider=self.name
            )
        yield final

    async def _get(self, path: str, needs: str) -> Any:
        """A JSON object from Ollama that has `needs`; anything else is another server's answer."""
        async with self._errors(), self._lease() as client:
            response = await client.get(path, timeout=self.settings.timeouts.connect * 2)
        await self._raise_for_status(response, "")
        data = json_object(response.text)
        if data is None or needs not in data:
            raise self._foreign(response, body_shape(response.headers.get("content-type", ""), response.text, "Ollama"))
        return data

    async def list_models(self) -> list[ModelInfo]:
        tags = (await self._get("/api/tags", "models")).get("models", [])
        loaded = {
            _tagged(m.get("name") or m.get("model", ""))
            for m in (await self._get("/api/ps", "models")).get("models", [])
        }
        models = []
        for m in tags:
            name = m.get("name") or m.get("model")
            details = m.get("details") or {}
            models.append(
                ModelInfo(
                    name=name,
                    provider=self.name,
                    size=m.get("size"),
                    family=details.get("family"),
                    parameter_size=details.get("parameter_size"),
                    quantization=details.get("quantization_level"),
                    loaded=_tagged(name) in loaded,
                    details=details,
                )
            )
        return models

    async def show(self, model: str) -> dict[str, Any]:
        async with self._errors(), self._lease() as client:
            response = await client.post("/api/show", json={"model": model})
        await self._raise_for_status(response, model)
        return dict(self._json(response))

    async def load_model(self, model: str) -> AsyncIterator[PullProgress]:
        """Pull the model (progress as Ollama reports it), then load it into memory."""
        async for data in self._ndjson("/api/pull", {"model": model, "stream": True}, model):
            yield PullProgress(
                status=data.get("status", ""),
                digest=data.get("digest"),
                total=data.get("total"),
                completed=data.get("completed"),
            )
        async for _ in self._ndjson("/api/generate", {"model": model, "prompt": "", "stream": True}, model):
            pass
        yield PullProgress(status="loaded")

    async def unload_model(self, model: str) -> None:
        body = {"model": model, "messages": [], "keep_alive": 0, "stream": True}
        async for _ in self._ndjson("/api/chat", body, model):
            pass

    async def health(self) -> ProviderStatus:
        start = time.perf_counter()
        try:
            version = (await self._get("/api/version", "version")).get("version")
            loaded = [m.get("name", "") for m in (await self._get("/api/ps", "models")).get("models", [])]
        except Exception as exc:  # noqa: BLE001 - health reports any failure as a state
            return ProviderStatus(provider=self.name, state="unhealthy", url=self._host, error=secrets.redact(str(exc)))
        return ProviderStatus(
            provider=self.name,
            state="healthy",
            url=self._host,
            version=version,
            latency=time.perf_counter() - start,
            models_loaded=loaded,
        )

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        model = model or self.default_model
        async with self._errors(), self._lease() as client:
            response = await client.post("/api/embed", json={"model": model, "input": texts})
        await self._raise_for_status(response, model)
        return [list(map(float, e)) for e in self._json(response)["embeddings"]]

    async def aclose(self) -> None:
        clients, self._clients, self._busy = self._clients, [], []
        for client in clients:
            await client.aclose()
