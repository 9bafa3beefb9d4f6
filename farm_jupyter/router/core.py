"""The router: addresses, then a chain of small steps for each request.

    astream                 one request: the routes in order (the one asked, then the fallbacks)
    └── _route              one route: its cache entry, its breaker, then tries
        └── _tries          retries on the same provider, after the rate limiter lets it in
            └── _attempt    one provider stream under the deadlines, measured

An error's class decides what happens (see `errors`): an availability failure is retried, counted
by the breaker and falls back to the next route, with a notice above the answer; the caller's own
error (a missing model, a bad key, a bad request) is raised at once, one line, and nothing else is
asked. A failure after text was shown restarts the answer with a `Chunk(restart=True)` whose
status says what happened and what comes next. Every response lists its attempts.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from .. import providers as registry
from ..cache import Cache, CacheEntry, cache_key
from ..config import Settings
from ..config.aliases import expand_alias
from ..errors import (
    AllProvidersFailed,
    FarmError,
    ModelNotFound,
    NotConfigured,
    ProviderError,
    RateLimited,
    ReplayMiss,
    UnknownProvider,
    Unsupported,
)
from ..ledger import Ledger
from ..monitor import Monitor, RequestRecord
from ..providers.base import Provider
from ..secrets import redact
from ..types import Attempt, ChatMessage, ChatRequest, ChatResponse, Chunk, GenerationParams, ProviderStatus, Usage
from ..types.capabilities import without
from .call import Call, Route, Try, fit_images, parse_params
from .capable import able, check_options, missing, refused, unsupported
from .deadline import timed
from .failures import as_fallback, cooling_down, failed_attempt, missing_model, not_recorded, restart_note
from .fold import Fold
from .limits import CircuitBreaker, RateLimiter, estimate_tokens, retry_delay
from .pool import Pool

log = logging.getLogger("farm_jupyter")


class Router:
    def __init__(self, settings: Settings, cache: Cache, monitor: Monitor) -> None:
        self.settings = settings
        self.cache = cache
        self.monitor = monitor
        self.default_target: str | None = None  # `%farm use`
        self.providers: dict[str, Provider] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.limiters: dict[str, RateLimiter] = {}
        self.last_status: dict[str, ProviderStatus] = {}
        self.ledger = Ledger(settings, monitor)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests give a fake clock's
        self.last_response: ChatResponse | None = None  # for `%farm why` / `explain()`

    # -- addresses ------------------------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        name = registry.canonical(name)
        found = self.providers.get(name)
        if found is None:
            found = registry.create(name, self.settings)
            if members := found.servers():
                found = Pool(name, self.settings, members)
                # Its servers have their own breakers; the pool's is only there to be shown closed.
                self.breakers[name] = CircuitBreaker(sys.maxsize, 0.0)
            self.providers[name] = found
        return found

    def _is_provider(self, name: str) -> bool:
        return name in self.providers or registry.is_known(name)

    def expand_alias(self, target: str) -> str:
        return expand_alias(self.settings.aliases, target)

    def resolve(self, target: str | None = None, *, fallback: bool = True) -> list[Route]:
        """`provider:model`, `provider`, a bare model or an alias -> the routes to try, in order."""
        target = self.expand_alias((target or self.default_target or "").strip())
        unknown, bare = None, False
        if not target:
            primary = self.settings.default_provider
            model = None
        else:
            head, sep, tail = target.partition(":")
            if sep and self._is_provider(head):
                primary, model = head, tail or None
            elif self._is_provider(target):
                primary, model = target, None
            else:
                primary, model = self.settings.default_provider, target
                unknown, bare = (head if sep else None), True
        if not self._is_provider(primary):
            raise UnknownProvider(
                f"no provider named {primary!r}",
                hint=f"use one of {', '.join(registry.available())}, or register_provider({primary!r}, ...)",
            )
        primary = registry.canonical(primary)
        routes = [Route(primary, model or self._default_model(primary), unknown, bare)]
        if fallback:
            for name in dict.fromkeys(registry.canonical(n) for n in self.settings.chain):
                if name != primary:  # an unknown name fails as an attempt, saying so, when reached
                    routes.append(Route(name, self._default_model(name)))
        return routes

    def able(self, feature: str) -> list[str]:
        """The providers that can do `feature`: the chain's first, then every one known."""
        return able([*self.settings.chain, *registry.available()], feature)

    def require(self, name: str, feature: str) -> Provider:
        """The provider `name` when its row has `feature` (embed, load, fim), else its refusal."""
        provider = self.provider(name)
        if not provider.capabilities.can(feature):
            raise unsupported(registry.canonical(name), feature, self.able)
        return provider

    def routes(self, target: str | None, fallback: bool | None = None) -> list[Route]:
        """The routes a request to `target` takes; `fallback=None` takes the setting (`fallback =
        false` in farm.toml turns it off everywhere)."""
        return self.resolve(target, fallback=self.settings.fallback is not False if fallback is None else fallback)

    def _default_model(self, name: str) -> str:
        try:
            return self.provider(name).default_model
        except FarmError:
            return "default"

    @staticmethod
    def cache_key(provider: Provider, request: ChatRequest, *, server: bool = True) -> str:
        """The entry for this request to this provider; `llama3.1` and `llama3.1:latest` share one."""
        model = provider.normalize_model(request.model)
        where = provider.cache_identity if server else None
        return cache_key(provider.name, model, request.messages, request.params, where)

    def cache_keys(self, provider: Provider, request: ChatRequest) -> list[str]:
        """The keys an answer is looked up under, the one it is stored under first. A recording
        leaves the server's URL out (provider, model and request only), so a notebook recorded
        against a GPU box replays in CI; a recording made before that is read by its URL second."""
        key = self.cache_key(provider, request)
        if self.cache.name not in ("record", "replay"):
            return [key]
        return list(dict.fromkeys([self.cache_key(provider, request, server=False), key]))

    def breaker(self, name: str) -> CircuitBreaker:
        if name not in self.breakers:
            b = self.settings.breaker
            self.breakers[name] = CircuitBreaker(b.failures, b.cooldown)
        return self.breakers[name]

    def limiter(self, name: str) -> RateLimiter | None:
        limit = self.settings.rate_limits.get(name)
        if limit is None:
            return None
        if name not in self.limiters:
            self.limiters[name] = RateLimiter(limit)
        return self.limiters[name]

    # -- the request path -----------------------------------------------------------------------

    async def astream(
        self,
        messages: list[ChatMessage],
        target: str | None = None,
        params: GenerationParams | Mapping[str, Any] | None = None,
        *,
        no_cache: bool = False,
        refresh: bool = False,
        fallback: bool | None = None,
        stream: bool = True,
        routes: list[Route] | None = None,
        key: str | None = None,
        fold: Fold | None = None,
    ) -> AsyncIterator[Chunk]:
        """Stream an answer; the last chunk has `done=True` and the whole `response`.

        `stream=False` says the caller only wants the whole answer: providers may then fetch it in
        one piece; retries, fallback and caching are the same either way. `fallback=None` takes
        the setting. A caller that resolved the target (`routes`) or looked the first key up
        (`replay`) passes them; one that draws the answer, its `fold` (each chunk goes through it here).
        """
        use, read = not no_cache, not (no_cache or refresh)
        call = Call(messages, parse_params(params), stream, use, read, fold=fold or Fold())
        routes = routes or self.routes(target, fallback)
        check_options(self.provider(routes[0].provider), call.params)
        for index, route in enumerate(routes):
            try:
                async for chunk in self._route(call, route, key if index == 0 else None):
                    yield call.fold.take(chunk)
                return
            except ProviderError as exc:
                # A fallback that is not configured, or cannot do what was asked, is skipped, said.
                if exc.availability or (isinstance(exc, NotConfigured | Unsupported) and index > 0):
                    call.failed.append(exc)
                    continue
                said = await self._callers_error(call, route, exc)
                if said is exc:
                    raise
                raise said from exc
            except FarmError as exc:  # an unknown provider in the chain: said when reached
                if index == 0:
                    raise
                call.attempts.append(
                    Attempt(
                        provider=route.provider,
                        model=route.model,
                        ok=False,
                        error=str(exc),
                        error_type=type(exc).__name__,
                    )
                )
        if call.failed and all(isinstance(e, ReplayMiss) for e in call.failed):
            raise call.failed[0]  # the request as the notebook asked it, in one line
        last = call.failed[-1] if call.failed else None
        self.monitor.record_error(routes[0].provider, routes[0].model, last or RuntimeError("no route"), call.elapsed())
        raise AllProvidersFailed(call.attempts, last)

    def replay(
        self, messages: list[ChatMessage], route: Route, params: GenerationParams
    ) -> tuple[ChatResponse | None, str | None]:
        """A memory-cache hit for `route`, answered in the caller's thread (the hop to the runtime
        loop costs more than the whole hit: benchmarks/cache_latency.py), and the key looked up,
        for `astream` to use on a miss; `(None, None)` when there is no memory cache to peek."""
        peek = getattr(self.cache, "peek", None)
        if peek is None or any(m.images for m in messages):  # images: the model's eyes are asked on the loop
            return None, None
        provider = self.provider(route.provider)
        if missing(provider, params, messages) is not None:  # refused on the loop, in one line
            return None, None
        key = self.cache_key(provider, ChatRequest(messages=messages, model=route.model, params=params))
        entry = peek(key)
        if entry is None:
            return None, key
        call = Call(messages, params, stream=False, use_cache=True, read_cache=True)
        return self._hit(call, route, None, entry.response, key), key

    async def _route(self, call: Call, route: Route, key: str | None = None) -> AsyncIterator[Chunk]:
        provider = self.provider(route.provider)
        # Before anything is sent; a replay asks no server, not even what a model can do.
        cannot = await refused(
            provider, route, call.params, call.messages, self.able, ask_model=self.cache.name != "replay"
        )
        if cannot is not None:
            call.attempts.append(failed_attempt(route, cannot))
            raise cannot
        request = ChatRequest(messages=call.messages, model=route.model, params=call.params, stream=call.stream)
        # Each route has its own entry: an answer is cached under the provider that gave it. The key
        # covers the images' bytes, also for a model that gets only their stand-ins.
        keys = [key] if key is not None else self.cache_keys(provider, request)
        key = keys[0]
        # What the provider gets holds only what it does: a schema it does not constrain to is in the prompt.
        if (kept := without(request.params, provider.capabilities.features)) is not request.params:
            request = request.model_copy(update={"params": kept})
        request = await fit_images(call, provider, request)
        notice = call.notice(route)
        if call.read_cache and (entry := await self._cached(call, keys)) is not None:
            if call.shown:
                yield Chunk(restart=True, status=restart_note(call, f"answering with {route} (cached)"))
                call.shown, call.restarted = 0, True
            if notice:
                yield Chunk(notice=notice)
            # A hit replays as a stream; a caller that wants the whole answer gets one piece.
            if entry.response.thinking:
                yield Chunk(thinking=entry.response.thinking)
            for text in entry.chunks if call.stream else ["".join(entry.chunks)]:
                yield Chunk(text=text)
            if entry.response.tool_calls:
                yield Chunk(tool_calls=list(entry.response.tool_calls))
            yield Chunk(done=True, response=self._hit(call, route, notice, entry.response, key))
            return
        if self.cache.name == "replay":  # only the recording answers: a provider is never asked
            missing = not_recorded(route, request.messages, key, self.settings.cache.path)
            self._record_failure(call, route, missing)
            raise missing
        breaker = self.breaker(route.provider)
        if not breaker.allow():
            exc = cooling_down(route, breaker)
            self._record_failure(call, route, exc)
            raise exc
        try:
            async for chunk in self._tries(call, route, provider, request, key, notice):
                yield chunk
        finally:
            # Cancelled, closed early, a caller's error or a bug: a half-open probe is over.
            breaker.release()

    async def _tries(
        self, call: Call, route: Route, provider: Provider, request: ChatRequest, key: str, notice: str | None
    ) -> AsyncIterator[Chunk]:
        """Tries on one provider: each after the rate limiter's say, retried while the failure is
        worth retrying; the last failure is raised for `astream` to judge."""
        breaker = self.breaker(route.provider)
        limiter = self.limiter(route.provider)
        tries = self.settings.retry.max_retries + 1
        retries, waited = 0, 0.0
        held = 0.0  # the budget this try may spend, reserved so concurrent requests see it
        # Counted by the model's own tokenizer when a local model is in memory, else estimated.
        prompt_tokens, answer_tokens = estimate_tokens(
            request, provider.count_tokens(request.messages, request.model, load=False)
        )
        try:
            while True:
                self.ledger.release(held)
                held = self.ledger.hold(str(route), prompt_tokens, answer_tokens)
                booking: list[float] | None = None
                if limiter is not None:
                    cost = prompt_tokens + answer_tokens
                    async for wait, note in limiter.turn(cost, route.provider, self.sleep):
                        waited += wait
                        yield Chunk(status=note)
                    booking = limiter.admit(cost)
                if call.shown:
                    then = (
                        f"retrying {route.provider} ({retries + 1} of {tries})"
                        if retries
                        else f"answering with {route}"
                    )
                    yield Chunk(restart=True, status=restart_note(call, then))
                    call.shown, call.restarted = 0, True
                if notice:
                    yield Chunk(notice=notice)
                attempt = Try(call)
                try:
                    async for chunk in attempt.run(
                        timed(provider.astream(request), self.settings.timeouts, route.provider)
                    ):
                        yield chunk
                except ProviderError as exc:
                    if booking is not None:
                        booking[1] = 0
                    if attempt.shown:
                        call.shown, call.cut = attempt.shown, f"{route.provider} {exc.did}"
                    delay = retry_delay(self.settings, exc, retries) if exc.availability else None
                    if delay is None:
                        if exc.availability and not isinstance(exc, RateLimited):  # busy is not ill
                            breaker.failure(str(exc))
                        self._record_failure(call, route, exc, retries=retries, waited=waited, chunks=attempt.shown)
                        raise
                    self.monitor.record_failure(route.provider, exc.kind)
                    retries += 1
                    waited += delay
                    if not call.shown:  # with text on screen, the restart chunk says it instead
                        yield Chunk(
                            status=f"{route.provider} {exc.did}: retrying in {delay:.2f}s ({retries + 1} of {tries})"
                        )
                    await self.sleep(delay)
                    continue
                breaker.success()
                final = attempt.final
                usage = final.usage or Usage()
                if booking is not None:
                    booking[1] = usage.total_tokens
                call.attempts.append(
                    Attempt(provider=route.provider, model=route.model, ok=True, retries=retries, waited=waited)
                )
                parts = attempt.parts  # the fold's since this try began
                response = self._respond(
                    call,
                    route,
                    notice,
                    text="".join(parts),
                    usage=usage,
                    finish_reason=final.finish_reason,
                    rate=attempt.rate(usage.completion_tokens),
                    provider_total=final.provider_total,
                    thinking=attempt.thinking,
                    tool_calls=attempt.tool_calls,
                    cache_key=key,
                    sent=attempt.sent,
                )
                if call.use_cache:
                    await self._cache_call(call, "set", key, CacheEntry(response=response, chunks=parts))
                if call.warnings:
                    log.warning("; ".join(call.warnings))
                yield Chunk(done=True, usage=usage, finish_reason=final.finish_reason, response=response)
                return
        finally:
            self.ledger.release(held)

    async def forget(
        self, response: ChatResponse, messages: list[ChatMessage], params: GenerationParams | Mapping[str, Any] | None
    ) -> None:
        """Drop the cached entry that gave `response` (an answer its caller refused, say one that
        did not match the schema), so that asking again asks the model again."""
        request = ChatRequest(messages=messages, model=response.model, params=parse_params(params))
        try:
            for key in self.cache_keys(self.provider(response.provider), request):
                await self.cache.delete(key)
        except Exception:  # noqa: BLE001 - a cache that is down has nothing to forget
            log.debug("cache delete failed", exc_info=True)

    def _hit(self, call: Call, route: Route, notice: str | None, hit: ChatResponse, key: str) -> ChatResponse:
        """A cached answer as this request's response: its own attempt and timings."""
        call.attempts.append(Attempt(provider=route.provider, model=route.model, ok=True))
        return self._respond(
            call,
            route,
            notice,
            text=hit.text,
            usage=hit.usage,
            finish_reason=hit.finish_reason,
            cached=True,
            thinking=hit.thinking,
            tool_calls=hit.tool_calls,
            cache_key=key,
        )

    def _respond(self, call: Call, route: Route, notice: str | None, **answer: Any) -> ChatResponse:
        """The one place a response is built (a fresh answer or a cache hit), and recorded."""
        response = call.respond(route, notice, **answer)
        chars = 0 if any(m.images for m in call.messages) else sum(len(m.content) for m in call.messages)
        self.monitor.record(RequestRecord.from_response(response, prompt_chars=chars))
        self.last_response = response
        return response

    async def _callers_error(self, call: Call, route: Route, exc: ProviderError) -> ProviderError:
        """The caller's own mistake, said in one line with what to do; nothing else was asked."""
        self.monitor.record_error(route.provider, route.model, exc, call.elapsed())
        if isinstance(exc, ModelNotFound):
            # A bare name may be another provider's model: each configured provider is asked.
            chain = [registry.canonical(n) for n in self.settings.chain]
            others = [n for n in dict.fromkeys([*chain, *self.providers]) if n != route.provider] if route.bare else []
            names, *found = await asyncio.gather(*(self.learn_models(n) for n in [route.provider, *others]))
            exc = missing_model(route, exc, names, dict(zip(others, found, strict=True)))
        return as_fallback(call, route, exc)

    def _record_failure(
        self, call: Call, route: Route, exc: ProviderError, *, retries: int = 0, waited: float = 0.0, chunks: int = 0
    ) -> None:
        self.monitor.record_failure(route.provider, exc.kind)
        call.attempts.append(failed_attempt(route, exc, retries=retries, waited=waited, chunks=chunks))

    async def _cached(self, call: Call, keys: list[str]) -> CacheEntry | None:
        for key in keys:
            if (entry := await self._cache_call(call, "get", key)) is not None:
                return entry
        return None

    async def _cache_call(self, call: Call, op: str, key: str, *args: object) -> CacheEntry | None:
        """A cache that is down costs a warning, never the answer; a cache that refuses on
        purpose (a replay with no recording of this request) says so with a FarmError."""
        try:
            result: CacheEntry | None = await getattr(self.cache, op)(key, *args)
            return result
        except (asyncio.CancelledError, FarmError):
            raise
        except Exception as exc:  # noqa: BLE001 - any backend failure degrades to a miss
            call.warnings.append(
                f"cache {self.cache.name} unavailable ({type(exc).__name__}: {exc}); answering without it"
            )
            return None

    # -- what providers have, for suggestions ---------------------------------------------------

    async def learn_models(self, name: str) -> list[str]:
        """The names a provider really has, for "did you mean" (best effort, bounded)."""
        try:
            models = await asyncio.wait_for(self.provider(name).list_models(), self.settings.timeouts.connect * 2)
        except Exception:  # noqa: BLE001 - suggestions are a courtesy
            return []
        return [m.name for m in models]

    # -- state for the health board -------------------------------------------------------------

    async def health(self, names: list[str] | None = None) -> list[ProviderStatus]:
        """Each provider's state, as its breaker and rate limiter see it too (the health board)."""
        names = names or list(dict.fromkeys([*self.settings.chain, *self.providers]))
        found = await asyncio.gather(*(self._health(n) for n in names))
        return [status for rows in found for status in rows]

    async def _health(self, name: str) -> list[ProviderStatus]:
        try:
            found = await asyncio.wait_for(self.provider(name).health_rows(), self.settings.timeouts.connect * 2)
        except Exception as exc:  # noqa: BLE001 - reported, not raised (TimeoutError included)
            found = [ProviderStatus(provider=name, state="unhealthy", error=redact(str(exc)) or type(exc).__name__)]
        for status in found:
            self.breaker(name).annotate(status)
            if (limiter := self.limiters.get(name)) is not None and limiter.waiting:
                status.state = "rate_limited"
        self.last_status[name] = found[0]
        return found

    async def aclose(self) -> None:
        for provider in list(self.providers.values()):
            try:
                await provider.aclose()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("closing %r failed", provider, exc_info=True)
        self.providers.clear()
