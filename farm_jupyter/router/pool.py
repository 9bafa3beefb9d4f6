"""Several servers behind one provider name: `[ollama] hosts = [...]`, `[openai] base_urls = [...]`.

A request goes to the least busy server whose breaker lets it in, then the fastest (time to
first token, smoothed). A server that fails before any text is replaced by a sibling within the
same try; one that cuts an answer mid-way raises, and the router's retry lands on a sibling,
because the failed one is now marked. Each server has its own breaker and health row, so one dead
box opens its own breaker and no other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..config import Settings
from ..errors import CoolingDown, ProviderError, RateLimited
from ..providers.base import Provider
from ..secrets import redact
from ..types import Capabilities, ChatRequest, Chunk, FillRequest, ModelInfo, ProviderStatus, PullProgress
from .limits import CircuitBreaker


@dataclass(eq=False)
class Server:
    provider: Provider
    breaker: CircuitBreaker
    in_flight: int = 0
    first_token: float | None = None  # smoothed seconds
    failed_at: float = field(default=-1.0)

    def took(self, seconds: float) -> None:
        self.first_token = seconds if self.first_token is None else 0.8 * self.first_token + 0.2 * seconds


class Pool(Provider):
    """One provider name over several servers, each with its own breaker; the router gives the
    pool a breaker that never opens (see `Router.provider`)."""

    def __init__(self, name: str, settings: Settings, members: list[Provider]) -> None:
        super().__init__(name, settings)
        b = settings.breaker
        self.members = [Server(m, CircuitBreaker(b.failures, b.cooldown)) for m in members]

    @property
    def default_model(self) -> str:
        return self.members[0].provider.default_model

    @property
    def kind(self) -> str:  # type: ignore[override]  # what its servers are
        return self.members[0].provider.kind

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]  # its servers' row
        return self.members[0].provider.capabilities

    async def model_capabilities(self, model: str) -> frozenset[str]:
        return await self.members[0].provider.model_capabilities(model)

    @property
    def url(self) -> str | None:
        return ", ".join(s.provider.url or "?" for s in self.members)

    @property
    def cache_identity(self) -> str | None:  # any server's answer is the pool's answer
        return "pool:" + ",".join(sorted(s.provider.url or "?" for s in self.members))

    def normalize_model(self, model: str) -> str:
        return self.members[0].provider.normalize_model(model)

    def _pick(self, exclude: set[Server]) -> Server | None:
        """Least busy, then fastest, among servers that are up; a half-open one gets its probe."""
        ready = [s for s in self.members if s not in exclude and s.breaker.state == "closed"]
        if ready:
            return min(ready, key=lambda s: (s.in_flight, s.failed_at, s.first_token or 0.0))
        for s in self.members:
            if s not in exclude and s.breaker.allow():
                return s
        return None

    def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        return self._across(lambda provider: provider.astream(request))

    def afill(self, request: FillRequest) -> AsyncIterator[Chunk]:
        return self._across(lambda provider: provider.afill(request))

    async def _across(self, ask: Callable[[Provider], AsyncIterator[Chunk]]) -> AsyncIterator[Chunk]:
        """`ask` the least busy server that is up; on an availability failure before any text, the next."""
        tried: set[Server] = set()
        last: ProviderError | None = None
        while (server := self._pick(tried)) is not None:
            tried.add(server)
            server.in_flight += 1
            start = time.perf_counter()
            shown = False
            try:
                async for chunk in ask(server.provider):
                    if (chunk.text or chunk.thinking) and not shown:  # on screen: a sibling would repeat it
                        shown = True
                        server.took(time.perf_counter() - start)
                    yield chunk
            except ProviderError as exc:
                if not exc.availability:
                    server.breaker.release()
                    raise
                if not isinstance(exc, RateLimited):
                    server.breaker.failure(str(exc))
                server.failed_at = time.monotonic()
                if shown:
                    raise  # text is on screen: the router restarts, and its next try picks a sibling
                last = exc
                continue
            except BaseException:
                server.breaker.release()
                raise
            finally:
                server.in_flight -= 1
            server.breaker.success()
            return
        if last is not None:
            raise last
        raise CoolingDown(
            f"every {self.name} server is cooling down",
            provider=self.name,
            hint="`%farm health` shows each server; they are tried again after the cooldown",
        )

    async def list_models(self) -> list[ModelInfo]:
        seen: dict[str, ModelInfo] = {}
        for result in await asyncio.gather(*(s.provider.list_models() for s in self.members), return_exceptions=True):
            if isinstance(result, list):
                for m in result:
                    seen.setdefault(m.name, m)
        return list(seen.values())

    async def accepts_images(self, model: str) -> bool:  # the servers of a pool serve the same models
        return await self.members[0].provider.accepts_images(model)

    async def health(self) -> ProviderStatus:
        rows = await self.health_rows()
        best = next((r for r in rows if r.healthy), rows[0])
        return best.model_copy(update={"provider": self.name, "url": self.url})

    async def health_rows(self) -> list[ProviderStatus]:
        async def one(server: Server) -> ProviderStatus:
            try:
                status = await server.provider.health()
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                status = ProviderStatus(
                    provider=self.name,
                    state="unhealthy",
                    url=server.provider.url,
                    error=redact(str(exc)) or type(exc).__name__,
                )
            if server.breaker.state == "open":
                status.state = "cooling_down"
                status.cooldown_until = server.breaker.open_until
                status.error = status.error or server.breaker.last_error
            return status

        return list(await asyncio.gather(*(one(s) for s in self.members)))

    async def load_model(self, model: str) -> AsyncIterator[PullProgress]:
        for server in self.members:
            async for progress in server.provider.load_model(model):
                yield progress

    async def unload_model(self, model: str) -> None:
        await asyncio.gather(*(s.provider.unload_model(model) for s in self.members))

    async def aclose(self) -> None:
        for server in self.members:
            await server.provider.aclose()
