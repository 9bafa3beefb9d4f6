"""AsyncSession: the Session's acts as coroutines and async iterators (`session.aio`).

For the Jupyter server extension and for a cell that `await`s: each coroutine runs its work on the
runtime loop and may be awaited from any loop, the runtime's own included (the server runs a
handler's work there, so that a client going away cancels it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from ..config import is_loopback
from ..objects import Budget
from ..providers.base import Provider
from ..records import RequestRecord
from ..router.fill import fill
from ..runtime import Runtime
from ..types import ChatResponse, Chunk, FillRequest, GPUStats, ModelInfo, ProviderStatus, PullProgress, Usage
from .engine import Engine, Prompt
from .stream import ChatStream

if TYPE_CHECKING:
    from ..errors import FarmError
    from ..types import GenerationParams


class AsyncSession:
    """`await session.aio.chat(...)`, `async for chunk in session.aio.stream(...)`: the Session's
    names, async; `runtime` is the loop they run on, `watch` follows each request as it ends."""

    def __init__(self, engine: Engine, stream: Callable[..., ChatStream]) -> None:
        self._engine = engine
        self._stream = stream  # the Session's: one list of keywords

    @property
    def runtime(self) -> Runtime:
        """The loop in a daemon thread where requests run (widgets schedule their tasks there)."""
        return self._engine.runtime

    def stream(self, prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatStream:
        """`Session.stream`'s stream, iterated with `async for` (it may be, from any loop)."""
        return self._stream(prompt, model, **kwargs)

    async def chat(self, prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
        return await self._stream(prompt, model, _whole=True, **kwargs).aresult()

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        return await self.runtime.wrap(self._engine.embed(texts, model))

    @overload
    async def models(self, provider: str | None = None, *, by_provider: Literal[False] = False) -> list[ModelInfo]: ...
    @overload
    async def models(
        self, provider: str | None = None, *, by_provider: Literal[True]
    ) -> dict[str, list[ModelInfo] | FarmError]: ...
    async def models(
        self, provider: str | None = None, *, by_provider: bool = False
    ) -> list[ModelInfo] | dict[str, list[ModelInfo] | FarmError]:
        if by_provider:
            return await self.runtime.wrap(self._engine.model_lists(provider))
        return await self.runtime.wrap(self._engine.models(provider))

    def load(self, model: str, *, reload: bool = False) -> AsyncIterator[PullProgress] | None:
        """The progress of pulling and loading, iterated on any loop; None: nothing to load."""
        steps = self._engine.load(model, reload=reload)
        return None if steps is None else self.runtime.aiterate(steps)

    async def unload(self, model: str) -> bool:
        return await self.runtime.wrap(self._engine.unload(model))

    async def health(self, providers: list[str] | None = None) -> list[ProviderStatus]:
        return await self.runtime.wrap(self._engine.router.health(providers))

    async def gpu(self) -> GPUStats:
        from ..gpu import gpu_stats  # NVML, or torch: on first use only

        return await asyncio.to_thread(gpu_stats)  # NVML calls block: off every loop

    async def usage(self, of: str = "tokens") -> Any:
        if of == "cache":
            return await self.runtime.wrap(self._engine.cache_info())
        return self._engine.report(of)

    def resolve(self, target: str | None, *, strict: bool = False, params: GenerationParams | None = None) -> str:
        """As `Session.resolve` (it asks no one, so it is not a coroutine)."""
        return self._engine.resolve(target, strict=strict, params=params)

    def budget(self, target: str | None, tokens: int | None = None) -> Budget:
        """What each object described in a prompt to `target` may take, estimated at the characters
        a token stood for in that model's last usage (asks no one, so it is not a coroutine)."""
        return self._engine.budget(target, tokens)

    def complete(self, request: FillRequest, target: str | None, *, fallback: bool = True) -> AsyncIterator[Chunk]:
        """Text for a cursor (fill-in-the-middle), iterated on any loop: the breaker, the deadlines
        and the fallback apply; no retry and not the session's cache (router/fill.py). For the
        Jupyter server's completion route: never the kernel's."""
        return self.runtime.aiterate(fill(self._engine.router, request, target, fallback=fallback))

    def locality(self, provider: str) -> Literal["local", "loopback", "remote"]:
        """Whether text sent to `provider` stays here: `local` (it runs in this process),
        `loopback` (every server it uses is on this machine) or `remote`. A custom provider is
        remote: nothing says where it sends text."""
        found = self._engine.router.provider(provider)
        if found.kind in ("huggingface", "llamacpp"):
            return "local"
        members = getattr(found, "members", None)
        urls = [m.provider.url for m in members] if members else [found.url]
        if found.kind != "custom" and all(url and is_loopback(url) for url in urls):
            return "loopback"
        return "remote"

    def provider(self, target: str | None) -> tuple[str, Provider]:
        """The `provider:model` a target stands for, and the provider that serves it (the first
        server of a pool), for a job that speaks that provider's own API (the Batch API)."""
        route = self._engine.router.resolve(target, fallback=False)[0]
        found = self._engine.router.provider(route.provider)
        members = getattr(found, "members", None)
        return str(route), members[0].provider if members else found

    def account_batch(self, address: str, usages: Sequence[Usage]) -> float:
        """Add a Batch API job's answered rows to the usage and the budget's spend, at the batch
        price; returns what they cost."""
        return self._engine.router.ledger.add_batch(address, usages)

    def watch(self, listener: Callable[[RequestRecord], None]) -> Callable[[], None]:
        """Call `listener(record)` as each request ends (on the runtime loop); returns the call
        that stops it."""
        return self._engine.monitor.subscribe(listener)

    async def check_cache(self) -> str:
        """`cache_state` after asking the backend (a Redis that went away is `off: <why>`)."""
        return await self.runtime.wrap(self._engine.cache.check())

    @property
    def cache_state(self) -> str:
        """The cache backend's name, or `off: <why>` when it would not open (asks no one)."""
        return self._engine.cache_state
