"""The router: address resolution, retries, circuit breakers, rate limits, fallback, caching.

It sits between the session and the providers and works on streams only: a non-streaming chat is
a stream collected. A failure before any text falls back silently; a failure after text was shown
falls back too, and the stream says so with a `Chunk(restart=True)` so the display replaces the
partial text instead of appending a second answer to it. Every response lists its attempts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from . import providers as registry
from .cache import Cache, CacheEntry, cache_key
from .config import RateLimit, Settings
from .errors import (
    AllProvidersFailed,
    ConfigError,
    FarmError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    UnknownProvider,
)
from .monitor import Monitor, RequestRecord
from .providers.base import Provider
from .types import (
    Attempt,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Chunk,
    GenerationParams,
    ProviderStatus,
    Timings,
    Usage,
)

log = logging.getLogger("farm_jupyter")


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass
class CircuitBreaker:
    """Closed until `threshold` failures in a row; then open for `cooldown` s; then one probe."""

    threshold: int
    cooldown: float
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    last_error: str | None = None

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if time.time() < self.open_until else "half_open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.probing = False
        self.last_error = None

    def failure(self, error: str) -> None:
        self.failures += 1
        self.probing = False
        self.last_error = error
        if self.failures >= self.threshold:
            self.open_until = time.time() + self.cooldown


@dataclass
class RateLimiter:
    """Requests and tokens per minute over a sliding window; callers wait, they don't fail."""

    limit: RateLimit
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)  # [admitted at, tokens]
    lock: asyncio.Lock | None = None
    waiting_until: float = 0.0

    def delay(self, now: float, cost: int) -> float:
        while self.requests and now - self.requests[0] >= 60:
            self.requests.popleft()
        while self.tokens and now - self.tokens[0][0] >= 60:
            self.tokens.popleft()
        wait = 0.0
        if self.limit.rpm and len(self.requests) >= self.limit.rpm:
            wait = max(wait, 60 - (now - self.requests[-self.limit.rpm]))
        if self.limit.tpm and self.tokens:
            used = sum(n for _, n in self.tokens)
            if used + cost > self.limit.tpm:
                # Wait until enough of the oldest entries have left the window.
                freed, frees_at = 0.0, self.tokens[-1][0]
                for at, n in self.tokens:
                    freed += n
                    if used - freed + cost <= self.limit.tpm:
                        frees_at = at
                        break
                wait = max(wait, 60 - (now - frees_at))
        return wait

    def book(self, estimate: int) -> list[float]:
        """Count a request's tokens from its admission (an estimate), so concurrent requests see
        each other; the caller corrects the entry to the real usage, or to 0 on failure."""
        entry = [time.monotonic(), float(estimate)]
        self.tokens.append(entry)
        return entry


def _estimate_tokens(request: ChatRequest) -> int:
    chars = sum(len(m.content) for m in request.messages)
    return chars // 4 + (request.params.max_tokens or 256)


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

    # -- addresses ------------------------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        name = registry.canonical(name)
        found = self.providers.get(name)
        if found is None:
            found = self.providers[name] = registry.create(name, self.settings)
        return found

    def _is_provider(self, name: str) -> bool:
        return name in self.providers or registry.is_known(name)

    def expand_alias(self, target: str) -> str:
        seen: list[str] = []
        while target in self.settings.aliases:
            if target in seen:
                raise ConfigError(f"alias loop: {' -> '.join([*seen, target])}")
            seen.append(target)
            target = self.settings.aliases[target]
        return target

    def resolve(self, target: str | None = None, *, fallback: bool = True) -> list[Route]:
        """`provider:model`, `provider`, a bare model or an alias -> the routes to try, in order."""
        target = self.expand_alias((target or self.default_target or "").strip())
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
        if not self._is_provider(primary):
            raise UnknownProvider(
                f"no provider named {primary!r}",
                hint=f"use one of {', '.join(registry.available())}, or register_provider({primary!r}, ...)",
            )
        primary = registry.canonical(primary)
        routes = [Route(primary, model or self._default_model(primary))]
        if fallback:
            for name in dict.fromkeys(registry.canonical(n) for n in self.settings.chain):
                if name != primary:  # an unknown name fails as an attempt, saying so, when reached
                    routes.append(Route(name, self._default_model(name)))
        return routes

    def _default_model(self, name: str) -> str:
        try:
            return self.provider(name).default_model
        except FarmError:
            return "default"

    @staticmethod
    def cache_key(provider: Provider, request: ChatRequest) -> str:
        """The entry for this request to this provider; `llama3.1` and `llama3.1:latest` share one."""
        same = provider.normalize_model(request.model)
        keyed = request if same == request.model else request.model_copy(update={"model": same})
        return cache_key(provider.name, keyed, where=provider.cache_identity)

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
        fallback: bool = True,
        stream: bool = True,
    ) -> AsyncIterator[Chunk]:
        """Stream an answer; the last chunk has `done=True` and the whole `response`.

        `stream=False` says the caller only wants the whole answer: providers may then fetch it in
        one piece; retries, fallback and caching are the same either way.
        """
        start = time.perf_counter()
        try:
            gen = params if isinstance(params, GenerationParams) else GenerationParams(**(params or {}))
        except ValidationError as exc:  # pydantic's report is several lines; say it in one
            err = exc.errors()[0]
            raise ConfigError(
                f"invalid generation parameter {'.'.join(map(str, err['loc']))}={err.get('input')!r}: {err['msg']}",
                hint="see help(farm_jupyter.types.GenerationParams)",
            ) from None
        routes = self.resolve(target, fallback=fallback)
        warnings: list[str] = []
        attempts: list[Attempt] = []
        shown = False  # text of a failed attempt is on the caller's screen
        restarted = False
        first_token: float | None = None
        last: BaseException | None = None
        for route in routes:
            try:
                provider = self.provider(route.provider)
            except FarmError as exc:
                attempts.append(Attempt(provider=route.provider, model=route.model, ok=False,
                                        error=str(exc), error_type=type(exc).__name__))
                last = exc
                continue
            request = ChatRequest(messages=messages, model=route.model, params=gen, stream=stream)
            # Each route has its own entry: an answer is cached under the provider that gave it.
            key = self.cache_key(provider, request)
            if not no_cache and not refresh:
                entry = await self._cache_call("get", key, warnings=warnings)
                if entry is not None:
                    if shown:
                        yield Chunk(restart=True)
                    # A hit replays as a stream; a caller that wants the whole answer gets one piece.
                    for text in entry.chunks if stream else ["".join(entry.chunks)]:
                        yield Chunk(text=text)
                    elapsed = time.perf_counter() - start
                    attempts.append(Attempt(provider=route.provider, model=route.model, ok=True))
                    response = entry.response.model_copy(update={
                        "cached": True, "restarted": shown, "attempts": attempts,
                        "timings": Timings(first_token=first_token or elapsed, total=elapsed,
                                           waited=sum(a.waited for a in attempts)),
                    })
                    self.monitor.record(RequestRecord.from_response(response))
                    yield Chunk(done=True, response=response)
                    return
            breaker = self.breaker(route.provider)
            if not breaker.allow():
                until = time.strftime("%H:%M:%S", time.localtime(breaker.open_until))
                attempts.append(Attempt(
                    provider=route.provider, model=route.model, ok=False, error_type="CoolingDown",
                    error=f"cooling down until {until} after: {breaker.last_error}",
                ))
                continue
            retries = 0
            waited = 0.0
            try:
                while True:
                    limiter = self.limiter(route.provider)
                    booking: list[float] | None = None
                    if limiter is not None:
                        admitted: list[list[float]] = []
                        async for wait, note in self._wait_turn(limiter, route, request, admitted):
                            waited += wait
                            yield Chunk(status=note)
                        booking = admitted[0]
                    if shown:
                        yield Chunk(restart=True)
                        shown, restarted = False, True
                    parts: list[str] = []
                    final: Chunk | None = None
                    try:
                        async for chunk in self._timed(provider.astream(request)):
                            if chunk.done:
                                final = chunk
                                break
                            if chunk.text:
                                if first_token is None:
                                    first_token = time.perf_counter() - start
                                parts.append(chunk.text)
                                shown = True
                                yield chunk
                    except ProviderError as exc:
                        last = exc
                        if booking is not None:
                            booking[1] = 0
                        delay = self._retry_delay(exc, retries)
                        if delay is not None:
                            retries += 1
                            waited += delay
                            yield Chunk(status=f"retrying {route} in {delay:.2f}s after: {exc}")
                            await asyncio.sleep(delay)
                            continue
                        # One failure per attempt, and a rate limit is not a sign of ill health.
                        if exc.retryable and not isinstance(exc, RateLimited):
                            breaker.failure(str(exc))
                        else:
                            breaker.probing = False
                        attempts.append(Attempt(
                            provider=route.provider, model=route.model, ok=False, error=str(exc),
                            error_type=type(exc).__name__, retries=retries, waited=waited,
                            chunks_before_failure=len(parts),
                        ))
                        if not exc.fallback:
                            self.monitor.record_error(route.provider, route.model, exc, time.perf_counter() - start)
                            raise
                        break
                    breaker.success()
                    assert final is not None
                    usage = final.usage or Usage()
                    if booking is not None:
                        booking[1] = usage.total_tokens
                    attempts.append(Attempt(provider=route.provider, model=route.model, ok=True,
                                            retries=retries, waited=waited))
                    response = ChatResponse(
                        text="".join(parts),
                        provider=route.provider,
                        model=route.model,
                        usage=usage,
                        finish_reason=final.finish_reason,
                        restarted=restarted,
                        attempts=attempts,
                        timings=Timings(
                            first_token=first_token,
                            total=time.perf_counter() - start,
                            waited=sum(a.waited for a in attempts),
                            provider_total=final.provider_total,
                        ),
                    )
                    if not no_cache:
                        await self._cache_call("set", key, CacheEntry(response=response, chunks=parts), warnings=warnings)
                    self.monitor.record(RequestRecord.from_response(response))
                    if warnings:
                        log.warning("; ".join(warnings))
                    yield Chunk(done=True, usage=usage, finish_reason=final.finish_reason, response=response)
                    return
            except BaseException:
                # Cancelled, closed early by the caller (GeneratorExit at a yield), a user error
                # or a bug: whichever, a half-open probe is over, or the breaker would wait forever.
                breaker.probing = False
                raise
        self.monitor.record_error(routes[0].provider, routes[0].model, last or RuntimeError("no route"),
                                  time.perf_counter() - start)
        raise AllProvidersFailed(attempts, last)

    async def _timed(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """The provider's stream under the first-token and total deadlines.

        The deadline can only cancel the provider's own await (an `__anext__`), never a `yield`.
        One timer serves the whole stream (asyncio.timeout per chunk costs ~3.5 us a chunk).
        """
        t = self.settings.timeouts
        loop = asyncio.get_running_loop()
        now = loop.time()
        total_at = now + t.total
        deadline = _Deadline(loop, min(now + t.first_token, total_at))
        seen_text = False
        try:
            async with aclosing(chunks) as it:  # type: ignore[type-var]  # providers are async generators
                while True:
                    try:
                        chunk = await deadline.wait(it)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        which = "the total" if seen_text else "the first-token"
                        raise ProviderTimeout(
                            f"no answer within {which} timeout", provider="router",
                            hint="raise timeouts in farm.toml, or try another model",
                        ) from None
                    if chunk.text and not seen_text:
                        seen_text = True
                        deadline.move(total_at)
                    yield chunk
        finally:
            deadline.cancel()

    def _retry_delay(self, exc: ProviderError, retries: int) -> float | None:
        r = self.settings.retry
        if not exc.retryable or retries >= r.max_retries:
            return None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= r.max_retry_after else None
        base = min(r.backoff * (2**retries), r.backoff_max)
        return base * (0.5 + random.random() / 2)

    async def _wait_turn(
        self, limiter: RateLimiter, route: Route, request: ChatRequest, admitted: list[list[float]]
    ) -> AsyncIterator[tuple[float, str]]:
        """Wait for the request's turn, saying so; then admit it (its token booking goes into
        `admitted`), under the lock, so that concurrent requests see each other."""
        if limiter.lock is None:
            limiter.lock = asyncio.Lock()
        cost = _estimate_tokens(request)
        async with limiter.lock:
            while (wait := limiter.delay(time.monotonic(), cost)) > 0:
                limiter.waiting_until = time.time() + wait
                yield wait, f"waiting {wait:.1f}s for {route.provider}'s rate limit"
                await asyncio.sleep(wait)
            limiter.waiting_until = 0.0
            limiter.requests.append(time.monotonic())
            admitted.append(limiter.book(cost))

    async def _cache_call(self, op: str, key: str, *args: object, warnings: list[str]) -> CacheEntry | None:
        """A cache that is down costs a warning, never the answer."""
        try:
            result: CacheEntry | None = await getattr(self.cache, op)(key, *args)
            return result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any backend failure degrades to a miss
            warnings.append(f"cache {self.cache.name} unavailable ({type(exc).__name__}: {exc}); answering without it")
            return None

    # -- state for the health board -------------------------------------------------------------

    async def health(self, names: list[str] | None = None) -> list[ProviderStatus]:
        names = names or list(dict.fromkeys([*self.settings.chain, *self.providers]))

        async def one(name: str) -> ProviderStatus:
            try:
                status = await asyncio.wait_for(self.provider(name).health(), self.settings.timeouts.connect * 2)
            except Exception as exc:  # noqa: BLE001 - reported, not raised (TimeoutError included)
                status = ProviderStatus(provider=name, state="unhealthy", error=str(exc) or type(exc).__name__)
            breaker = self.breaker(name)
            if breaker.state == "open":
                status.state = "cooling_down"
                status.cooldown_until = breaker.open_until
                status.error = status.error or breaker.last_error
            limiter = self.limiters.get(name)
            if limiter is not None and limiter.waiting_until > time.time():
                status.state = "rate_limited"
            self.last_status[name] = status
            return status

        return list(await asyncio.gather(*(one(n) for n in names)))

    async def aclose(self) -> None:
        for provider in list(self.providers.values()):
            try:
                await provider.aclose()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("closing %r failed", provider, exc_info=True)
        self.providers.clear()


class _Deadline:
    """A deadline for the awaits of one stream: one timer, which cancels the task only while
    it awaits the stream's next item (as asyncio.timeout does: cancel, then uncancel)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self._task: asyncio.Task[object] | None = None  # set while awaiting the next item
        self._fired = False
        self._expired = False
        self._handle = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._fired = True
            self._task.cancel()

    def move(self, when: float) -> None:
        self._handle.cancel()
        if not self._expired:
            self._handle = self._loop.call_at(when, self._expire)

    def cancel(self) -> None:
        self._handle.cancel()

    async def wait(self, it: AsyncIterator[Chunk]) -> Chunk:
        """`await anext(it)`, or TimeoutError once the deadline has passed."""
        if self._expired:
            raise TimeoutError
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._task = task
        try:
            return await anext(it)
        except asyncio.CancelledError:
            if self._fired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._task = None

