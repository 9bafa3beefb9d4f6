"""Under `FARM_CACHE=replay:PATH` every provider is wrapped in ReplayOnly: the router asks the
cache first, as always, and a request that reaches a provider is one the recording does not
hold. It fails with ReplayMiss (no retry, no fallback), naming the request in one line, so a
replayed notebook can never be answered by anything but its recording."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..cache import cache_key
from ..errors import ReplayMiss
from ..types import ChatRequest, Chunk, ModelInfo, ProviderStatus, PullProgress
from .base import Provider


class ReplayOnly(Provider):
    def __init__(self, inner: Provider) -> None:
        super().__init__(inner.name, inner.settings, **inner.options)
        self.inner = inner
        self.kind = inner.kind  # type: ignore[misc]

    @property
    def default_model(self) -> str:
        return self.inner.default_model

    @property
    def url(self) -> str | None:
        return self.inner.url

    @property
    def cache_identity(self) -> str | None:
        return self.inner.cache_identity

    def normalize_model(self, model: str) -> str:
        return self.inner.normalize_model(model)

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        # The router's key for this request (Router.cache_key), so the line names the entry sought.
        same = self.normalize_model(request.model)
        keyed = request if same == request.model else request.model_copy(update={"model": same})
        key = cache_key(self.name, keyed, where=self.cache_identity)
        words = " ".join(request.messages[-1].content.split()) if request.messages else ""
        words = words if len(words) <= 48 else words[:47] + "…"
        path = self.settings.cache.path
        raise ReplayMiss(
            f'no recorded answer for {self.name}:{request.model} "{words}" (key {key[:12]}) in {path}',
            provider=self.name, hint=f"record it again with FARM_CACHE=record:{path}",
        )
        yield Chunk()  # pragma: no cover - makes this an async generator, like every provider's

    async def list_models(self) -> list[ModelInfo]:
        return await self.inner.list_models()

    async def load_model(self, model: str) -> AsyncIterator[PullProgress]:
        async for progress in self.inner.load_model(model):
            yield progress

    async def unload_model(self, model: str) -> None:
        await self.inner.unload_model(model)

    async def health(self) -> ProviderStatus:
        return await self.inner.health()

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        return await self.inner.embed(texts, model)

    async def aclose(self) -> None:
        await self.inner.aclose()
