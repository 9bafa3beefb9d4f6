"""The provider contract: one primitive, `astream`, and everything else derived from it once."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationError

from ..errors import BadRequest, ConfigError, problems
from ..runtime import get_runtime
from ..types import (
    Capabilities,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Chunk,
    FillRequest,
    GenerationParams,
    ModelInfo,
    ProviderStatus,
    PullProgress,
    Timings,
    ToolCall,
    Usage,
    generation_rate,
)

if TYPE_CHECKING:
    from ..config import Settings


def as_messages(prompt: str | Sequence[ChatMessage | dict[str, Any]]) -> list[ChatMessage]:
    """A prompt string or a list of messages (dicts or ChatMessage) as validated messages."""
    if isinstance(prompt, str):
        return [ChatMessage(role="user", content=prompt)]
    if not isinstance(prompt, Sequence):
        raise TypeError(f"prompt must be a string or a list of messages, not {type(prompt).__name__}")
    messages = []
    for i, m in enumerate(prompt):
        try:
            messages.append(m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m))
        except ValidationError as exc:  # pydantic's report is several lines; say it in one
            where, why, *_ = problems(exc)[0]
            raise ConfigError(
                f"message {i + 1} of the prompt is invalid: {where or 'message'}: {why}",
                hint='write each message as {"role": "user", "content": "text"}',
            ) from None
    return messages


async def collect(name: str, model: str, chunks: AsyncIterator[Chunk]) -> ChatResponse:
    """Fold a provider's stream into a response (the one place `chat` is derived)."""
    start = time.perf_counter()
    first = last = None
    pieces = 0
    parts: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    final = Chunk()
    async for chunk in chunks:
        thinking.append(chunk.thinking)
        calls += chunk.tool_calls or []
        if chunk.text:
            last = time.perf_counter() - start
            first = last if first is None else first
            pieces += 1
            parts.append(chunk.text)
        if chunk.done:
            final = chunk
    usage = final.usage or Usage()
    return ChatResponse(
        text="".join(parts),
        provider=name,
        model=model,
        usage=usage,
        finish_reason=final.finish_reason,
        thinking="".join(thinking) or None,
        tool_calls=calls,
        timings=Timings(
            first_token=first,
            total=time.perf_counter() - start,
            provider_total=final.provider_total,
            rate=generation_rate(
                usage.completion_tokens, generation=final.generation, chunks=pieces, span=(last or 0.0) - (first or 0.0)
            ),
        ),
    )


class Provider(ABC):
    """A backend that can stream a chat. Subclasses implement `astream`; the rest is optional.

    A provider talks to one backend over its own protocol and maps that backend's exceptions
    into `farm_jupyter.errors` at its boundary. It does no retries, fallback or caching: the
    router above it does.
    """

    kind: ClassVar[str] = "custom"
    # What it can do (farm_jupyter.types.capabilities): what is not declared is refused before
    # anything is sent. A subclass declares its own row; this one declares nothing.
    capabilities: Capabilities = Capabilities()

    def __init__(self, name: str, settings: Settings, **options: Any) -> None:
        self.name = name
        self.settings = settings
        self.options = options

    # -- the primitive -------------------------------------------------------------------------

    @abstractmethod
    def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Yield text chunks, then one `Chunk(done=True, usage=..., finish_reason=...)`."""

    # -- identity --------------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        return str(self.options.get("default_model") or self.settings.default_model_of(self.kind) or "default")

    @property
    def url(self) -> str | None:
        """Where the backend is, for humans; never carries a secret."""
        return None

    @property
    def cache_identity(self) -> str | None:
        """What, besides the provider's name, tells its answers apart in a shared cache: the
        server it talks to. Never a secret."""
        return self.url

    def normalize_model(self, model: str) -> str:
        return model

    def __repr__(self) -> str:
        url = f" {self.url}" if self.url else ""
        return f"<{type(self).__name__} {self.name!r}{url}>"

    # -- derived once ----------------------------------------------------------------------------

    def _request(
        self, prompt: str | Sequence[ChatMessage | dict[str, Any]], model: str | None, params: dict[str, Any]
    ) -> ChatRequest:
        return ChatRequest(
            messages=as_messages(prompt),
            model=model or self.default_model,
            params=GenerationParams(**params),
        )

    async def achat(self, request: ChatRequest) -> ChatResponse:
        return await collect(self.name, request.model, self.astream(request))

    def agenerate_stream(self, prompt: str, model: str | None = None, **params: Any) -> AsyncIterator[Chunk]:
        return self.astream(self._request(prompt, model, params))

    async def agenerate(self, prompt: str, model: str | None = None, **params: Any) -> ChatResponse:
        return await collect(self.name, model or self.default_model, self.agenerate_stream(prompt, model, **params))

    def chat(self, request: ChatRequest) -> ChatResponse:
        return get_runtime().run(self.achat(request))

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        return get_runtime().iterate(self.astream(request))

    def generate(self, prompt: str, model: str | None = None, **params: Any) -> ChatResponse:
        return get_runtime().run(self.agenerate(prompt, model, **params))

    def generate_stream(self, prompt: str, model: str | None = None, **params: Any) -> Iterator[Chunk]:
        return get_runtime().iterate(self.agenerate_stream(prompt, model, **params))

    def afill(self, request: FillRequest) -> AsyncIterator[Chunk]:
        """Text for the cursor between `request.prefix` and `suffix`. Here as a chat prompt, for a
        model without fill-in-the-middle tokens; a provider with a FIM endpoint overrides it."""
        params = GenerationParams(
            max_tokens=request.max_tokens, temperature=request.temperature, stop=request.stop or None
        )
        return self.astream(ChatRequest(messages=request.chat_messages(), model=request.model, params=params))

    # -- optional capabilities -------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name=self.default_model, provider=self.name, loaded=True)]

    async def model_capabilities(self, model: str) -> frozenset[str]:
        """The features `model` has, for a provider whose row depends on the model
        (`capabilities.per_model`); the row itself by default."""
        return self.capabilities.features

    async def accepts_images(self, model: str) -> bool:
        """Can this model see images? If not, the router sends each image's one-line stand-in."""
        vision = self.options.get("vision")
        return bool(vision) if vision is not None else "images" in self.capabilities.features

    async def load_model(self, model: str) -> AsyncIterator[PullProgress]:
        """Make a model ready (Ollama pulls it); yields progress. The default has nothing to do."""
        yield PullProgress(status="success")

    async def unload_model(self, model: str) -> None:
        return None

    async def health(self) -> ProviderStatus:
        start = time.perf_counter()
        models = await self.list_models()
        return ProviderStatus(
            provider=self.name,
            state="healthy",
            url=self.url,
            latency=time.perf_counter() - start,
            models_loaded=[m.name for m in models if m.loaded],
        )

    def servers(self) -> list[Provider]:
        """One provider per configured server when several are (`hosts`, `base_urls`), else []."""
        return []

    def one_per(self, option: str, values: list[str]) -> list[Provider]:
        """`servers()` for a provider that takes its server as `option`: this provider once per
        value, with the same options otherwise; none for a single server."""
        return (
            [type(self)(self.name, self.settings, **{**self.options, option: v}) for v in values]
            if len(values) > 1
            else []
        )

    async def health_rows(self) -> list[ProviderStatus]:
        """One row per server (a pool has several)."""
        return [await self.health()]

    def count_tokens(
        self, prompt: str | Sequence[ChatMessage], model: str | None = None, *, load: bool = True
    ) -> int | None:
        """The exact number of tokens `prompt` (a text, or messages through the chat template) is
        for `model`, by its own tokenizer; None where this provider has none (a server's count
        comes back in its usage), or with `load=False` while the model is not in memory."""
        return None

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        raise BadRequest(f"{self.name} does not support embeddings", provider=self.name)

    async def aclose(self) -> None:
        return None
