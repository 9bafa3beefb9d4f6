"""OpenAI and any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, Ollama's /v1) via the SDK.

The SDK is imported on first use (it costs ~0.4 s) and its own retries are off: the router owns
retries, so a failure is seen once, here, and mapped.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from .. import secrets
from ..config import mask, shown_url
from ..errors import (
    ConfigError,
    MissingDependency,
    NotConfigured,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    ServerError,
    StreamInterrupted,
)
from ..types import ChatMessage, ChatRequest, Chunk, FillRequest, ModelInfo, ProviderStatus, ToolCall, Usage
from ..types.capabilities import Capabilities
from ._http import body_shape, error_detail, foreign, json_object, status_error, wrong_server
from .base import Provider

if TYPE_CHECKING:
    from openai import AsyncOpenAI

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Model names that take images, for servers that do not say (the OpenAI API has no such field);
# the `vision` option of a provider says it outright.
_VISION = re.compile(
    r"gpt-4o|gpt-4\.1|gpt-4-turbo|gpt-4-vision|gpt-5|^o[134]\b|^o[134]-|vision|-vl\b|-vl-|llava|pixtral|gemma-?3|claude|gemini",
    re.I,
)


def _message(m: ChatMessage) -> dict[str, Any]:
    """One message in the chat completions shape: images as `image_url` data URLs, tool calls with
    JSON-string arguments, a tool result answering its call id."""
    out: dict[str, Any] = {"role": m.role}
    if m.images:
        out["content"] = [{"type": "text", "text": m.content}] + [
            {"type": "image_url", "image_url": {"url": f"data:{i.media_type};base64,{i.data}"}} for i in m.images
        ]
    else:
        out["content"] = m.content
    if m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    if m.thinking:
        out["reasoning_content"] = m.thinking
    return out


def _sent(raw: Any) -> str:
    """The request body as it went out, from the SDK's raw response (secrets masked)."""
    return secrets.redact(raw.http_request.content.decode("utf-8", "replace"))


def _arguments(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {"__raw__": raw}  # said back to the model as the tool's error
    return value if isinstance(value, dict) else {"__raw__": raw}


def _reasoning(delta: Any) -> str:
    """DeepSeek's and vLLM's `reasoning_content` (or `reasoning`): extra fields the SDK keeps."""
    extra = getattr(delta, "model_extra", None) or {}
    return str(extra.get("reasoning_content") or extra.get("reasoning") or "")


class OpenAIProvider(Provider):
    kind = "openai"
    capabilities = Capabilities.of(
        *("stream", "schema", "tools", "think", "images", "stop", "seed", "temperature", "max_tokens"),
        *("embed", "fallback", "fim"),  # fim: /v1/completions with `suffix`
        per_model=("images",),  # by the model's name, or the `vision` option
    )

    def __init__(self, name: str, settings: Any, **options: Any) -> None:
        super().__init__(name, settings, **options)
        key = options.get("api_key", settings.openai.api_key)
        self._api_key: str | None = key.get_secret_value() if hasattr(key, "get_secret_value") else key
        self._base, user, password = settings.openai.endpoint(options.get("base_url"), DEFAULT_BASE_URL)
        secrets.register(self._api_key)
        self._basic = (user or "", password or "") if (user or password) else None
        self._base_url: str = shown_url(self._base, user, password)  # what messages show: no password
        self._client: AsyncOpenAI | None = None

    @property
    def url(self) -> str:
        return self._base_url

    def servers(self) -> list[Provider]:
        return self.one_per("base_url", self.settings.openai.base_urls)

    def __repr__(self) -> str:
        return f"<OpenAIProvider {self.name!r} {self._base_url} key={mask(self._api_key)}>"

    def _check_configured(self) -> None:
        if not self._api_key and self._base == DEFAULT_BASE_URL:
            raise NotConfigured(
                "OpenAI needs an API key",
                provider=self.name,
                hint="set OPENAI_API_KEY, or OPENAI_BASE_URL for a local OpenAI-compatible server",
            )

    @property
    def client(self) -> AsyncOpenAI:
        if self._client is None:
            self._check_configured()
            headers = {}
            if self._basic is not None:
                if self._api_key:  # both travel in the one Authorization header
                    raise ConfigError(
                        f"{self.name}: {self._base_url} has a user:password and an API key is set too",
                        hint="remove the user:password from OPENAI_BASE_URL, or unset OPENAI_API_KEY",
                    )
                headers["Authorization"] = "Basic " + base64.b64encode(":".join(self._basic).encode()).decode()
            try:
                import openai
            except ImportError as exc:
                raise MissingDependency("openai", "openai") from exc
            secrets.install_log_filter()  # the SDK's own loggers exist now
            timeouts = self.settings.timeouts
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key or "not-needed",
                base_url=self._base,
                organization=self.settings.openai.organization,
                max_retries=0,
                timeout=openai.Timeout(timeouts.total, connect=timeouts.connect),
                default_headers=headers or None,
            )
        return self._client

    @asynccontextmanager
    async def _errors(self, model: str) -> AsyncIterator[None]:
        if self._client is None:
            self._check_configured()  # before the SDK's ~0.4 s of imports, for nothing
        if "openai" not in sys.modules:  # ~0.4 s of imports, in a worker: never on the runtime loop
            await asyncio.to_thread(importlib.import_module, "openai")
        import openai

        try:
            yield
        except ProviderError:
            raise
        except openai.APITimeoutError as exc:
            hint = "the server may be overloaded; retry, or raise the timeout"
            raise ProviderTimeout(f"{self.name} at {self._base_url} timed out", provider=self.name, hint=hint) from exc
        except openai.APIConnectionError as exc:
            hint = "check OPENAI_BASE_URL and that the server is running"
            raise ProviderUnavailable(
                f"{self.name} is not reachable at {self._base_url}", provider=self.name, hint=hint
            ) from exc
        except openai.APIStatusError as exc:
            kind, text = exc.response.headers.get("content-type", ""), exc.response.text
            data = json_object(text)
            own = data is not None and ("error" in data or data.get("object") == "error")
            if foreign(exc.status_code, own):
                what = f"{exc.response.request.method} {exc.response.request.url.path} answered {exc.status_code}"
                shape = body_shape(kind, text, "OpenAI")
                hint = "check OPENAI_BASE_URL (or [openai] base_url): it usually ends in /v1"
                raise wrong_server(
                    self.name, "OpenAI-compatible", self._base_url, f"{what} with {shape}", hint
                ) from exc
            raise status_error(
                self.name,
                exc.status_code,
                self._detail(exc) if own else error_detail(kind, text),
                url=self._base_url,
                headers=exc.response.headers,
                not_found_hint=f"check the model name; `%farm models {self.name}` lists them",
                auth_hint="check OPENAI_API_KEY",
            ) from exc
        except openai.APIError as exc:  # an error event inside the stream
            raise ServerError(
                f"{self.name} at {self._base_url} failed mid-stream: {self._detail(exc)}",
                provider=self.name,
            ) from exc
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
                raise StreamInterrupted(
                    f"{self.name} at {self._base_url} closed the connection mid-answer",
                    provider=self.name,
                    hint="retry; if it keeps happening, check the server's log",
                ) from exc
            if isinstance(exc, ValueError):  # a line the SDK could not decode
                raise StreamInterrupted(
                    f"{self.name} at {self._base_url} sent a malformed event", provider=self.name
                ) from exc
            raise

    def _detail(self, exc: Any) -> str:
        body = getattr(exc, "body", None)
        if isinstance(body, dict):
            body = body.get("error", body)
            message = body.get("message") if isinstance(body, dict) else body
        else:
            message = getattr(exc, "message", str(exc))
        return secrets.redact(str(message)[:300])

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat completions body for `request`, as a Batch API line carries it."""
        return self._kwargs(request)

    def mapped_errors(self, model: str = "") -> Any:
        """The SDK's exceptions as FarmErrors, for calls made with `client` outside this class."""
        return self._errors(model)

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        p = request.params
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [_message(m) for m in request.messages],
        }
        optional = {
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
            "top_p": p.top_p,
            "stop": p.stop,
            "seed": p.seed,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if p.format == "json":
            kwargs["response_format"] = {"type": "json_object"}
        if p.response_schema is not None:
            name = re.sub(r"[^A-Za-z0-9_-]", "_", str(p.response_schema.get("title") or "answer"))[:64]
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": p.response_schema},
            }
        if p.tools:
            kwargs["tools"] = [{"type": "function", "function": t.model_dump()} for t in p.tools]
        if isinstance(p.think, str):
            kwargs["reasoning_effort"] = p.think
        kwargs.update(p.options_for("openai"))  # named SDK parameters, checked in GenerationParams
        return kwargs

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        if not request.stream:
            async with self._errors(request.model):
                raw = await self.client.chat.completions.with_raw_response.create(**self._kwargs(request))
                result = raw.parse()
            yield Chunk(sent=_sent(raw))
            choice = result.choices[0]
            if thinking := _reasoning(choice.message):
                yield Chunk(thinking=thinking)
            if choice.message.content:
                yield Chunk(text=choice.message.content)
            if choice.message.tool_calls:
                yield Chunk(
                    tool_calls=[
                        ToolCall(id=c.id, name=c.function.name, arguments=_arguments(c.function.arguments))
                        for c in choice.message.tool_calls
                    ]
                )
            usage = result.usage
            yield Chunk(
                done=True,
                usage=Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
                if usage
                else None,
                finish_reason=choice.finish_reason,
            )
            return
        usage = Usage()
        finish = None
        started = False
        calls: dict[int, dict[str, Any]] = {}  # streamed tool calls, by index, as their pieces come
        try:
            async with self._errors(request.model):
                raw = await self.client.chat.completions.with_raw_response.create(
                    **self._kwargs(request), stream=True, stream_options={"include_usage": True}
                )
                stream = raw.parse()
                yield Chunk(sent=_sent(raw))
                try:
                    async for event in stream:
                        started = True
                        if event.usage is not None:
                            usage = Usage(
                                prompt_tokens=event.usage.prompt_tokens or 0,
                                completion_tokens=event.usage.completion_tokens or 0,
                            )
                        for choice in event.choices:
                            if choice.finish_reason:
                                finish = choice.finish_reason
                            if not choice.delta:
                                continue
                            if thinking := _reasoning(choice.delta):
                                yield Chunk(thinking=thinking)
                            if choice.delta.content:
                                yield Chunk(text=choice.delta.content)
                            for piece in choice.delta.tool_calls or []:
                                call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                                call["id"] = piece.id or call["id"]
                                if piece.function is not None:
                                    call["name"] += piece.function.name or ""
                                    call["arguments"] += piece.function.arguments or ""
                finally:
                    await stream.close()
        except ProviderUnavailable as exc:
            # The SDK reports a connection cut mid-body as a connection error; it is a broken stream.
            if started and not isinstance(exc, StreamInterrupted):
                raise StreamInterrupted(
                    f"{self.name} at {self._base_url} closed the connection mid-answer",
                    provider=self.name,
                    hint="retry; if it keeps happening, check the server's log",
                ) from exc
            raise
        if finish is None:
            raise StreamInterrupted(
                f"{self.name} at {self._base_url} ended the stream without a finish reason",
                provider=self.name,
            )
        if calls:
            yield Chunk(
                tool_calls=[
                    ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=_arguments(c["arguments"]))
                    for i, c in sorted(calls.items())
                ]
            )
        yield Chunk(done=True, usage=usage, finish_reason=finish)

    async def afill(self, request: FillRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        """`/v1/completions` with `suffix` (fill-in-the-middle; which servers take it varies)."""
        kwargs: dict[str, Any] = {
            "model": request.model,
            "prompt": request.fim_prompt,
            "suffix": request.suffix,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            kwargs["stop"] = request.stop
        finish = None
        async with self._errors(request.model):
            stream = await self.client.completions.create(**kwargs, stream=True)
            try:
                async for event in stream:
                    for choice in event.choices:
                        finish = choice.finish_reason or finish
                        if choice.text:
                            yield Chunk(text=choice.text)
            finally:
                await stream.close()
        yield Chunk(done=True, usage=Usage(), finish_reason=finish)

    async def accepts_images(self, model: str) -> bool:
        vision = self.options.get("vision")
        return bool(vision) if vision is not None else bool(_VISION.search(model))

    async def list_models(self) -> list[ModelInfo]:
        async with self._errors(""):
            page = await self.client.models.list()
        return [ModelInfo(name=m.id, provider=self.name, family=getattr(m, "owned_by", None)) async for m in page]

    async def health(self) -> ProviderStatus:
        start = time.perf_counter()
        try:
            models = await self.list_models()
        except Exception as exc:  # noqa: BLE001 - health reports any failure as a state
            return ProviderStatus(
                provider=self.name, state="unhealthy", url=self._base_url, error=secrets.redact(str(exc))
            )
        return ProviderStatus(
            provider=self.name,
            state="healthy",
            url=self._base_url,
            latency=time.perf_counter() - start,
            models_loaded=[m.name for m in models][:20],
        )

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        model = model or str(self.options.get("embedding_model", "text-embedding-3-small"))
        async with self._errors(model):
            result = await self.client.embeddings.create(model=model, input=texts)
        return [list(d.embedding) for d in sorted(result.data, key=lambda d: d.index)]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
