"""What keeps one provider from being hammered: a circuit breaker and a rate limiter, both per
provider, both plain data driven by the router's clock (`time.monotonic` unless a test gives one)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..config import RateLimit, Settings
from ..errors import ProviderError, RateLimited
from ..types import ChatRequest, ProviderStatus

Clock = Callable[[], float]


@dataclass
class CircuitBreaker:
    """Closed until `threshold` availability failures in a row; then open for `cooldown` s;
    then one probe. Only availability failures count: a caller's mistake says nothing about
    the provider's health."""

    threshold: int
    cooldown: float
    clock: Clock = time.time
    failures: int = 0
    open_until: float = 0.0  # on `clock`; time.time() by default, for people
    probing: bool = False
    last_error: str | None = None

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if self.clock() < self.open_until else "half_open"

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

    def annotate(self, status: ProviderStatus) -> None:
        """An open breaker is the state a health row shows, whatever the provider said."""
        if self.state == "open":
            status.state = "cooling_down"
            status.cooldown_until = self.open_until
            status.error = status.error or self.last_error

    def failure(self, error: str) -> None:
        self.failures += 1
        self.probing = False
        self.last_error = error
        if self.failures >= self.threshold:
            self.open_until = self.clock() + self.cooldown

    def release(self) -> None:
        """An attempt that ended without a verdict (cancelled, a caller's error): a half-open
        probe is over, or the breaker would wait for it forever."""
        self.probing = False


@dataclass
class RateLimiter:
    """Requests and tokens per minute over a sliding window; callers wait, they don't fail."""

    limit: RateLimit
    clock: Clock = time.monotonic
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)  # [admitted at, tokens]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: bool = False

    def delay(self, cost: int) -> float:
        now = self.clock()
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

    async def turn(
        self, cost: int, who: str, sleep: Callable[[float], Awaitable[None]]
    ) -> AsyncIterator[tuple[float, str]]:
        """Wait for a request's turn, saying so, under the lock, so that concurrent requests see
        each other; the caller admits it right after."""
        async with self.lock:
            try:
                while (wait := self.delay(cost)) > 0:
                    self.waiting = True
                    yield wait, f"waiting {wait:.1f}s for {who}'s rate limit"
                    await sleep(wait)
            finally:  # a wait cancelled or closed early is over too: the board must not say "waiting"
                self.waiting = False

    def admit(self, cost: int) -> list[float]:
        """Count a request's tokens from its admission (an estimate), so concurrent requests see
        each other; the caller corrects the entry to the real usage, or to 0 on failure."""
        now = self.clock()
        self.requests.append(now)
        entry = [now, float(cost)]
        self.tokens.append(entry)
        return entry


def estimate_tokens(request: ChatRequest, counted: int | None = None) -> tuple[int, int]:
    """The tokens a request may cost before it is answered: its prompt's (`counted` by the model's
    own tokenizer when the provider has one in memory, else about four characters a token) and at
    most its answer's (`max_tokens`, else 256). The one estimate: the ledger's budget and the rate
    limiter both take it."""
    chars = sum(len(m.content) for m in request.messages)
    return (counted if counted is not None else chars // 4), request.params.max_tokens or 256


def retry_delay(settings: Settings, exc: ProviderError, retries: int) -> float | None:
    """Seconds to wait before trying the same provider again, or None: move on."""
    policy = settings.retry
    if not exc.retryable or retries >= policy.max_retries or nothing_listens(exc, settings):
        return None
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return exc.retry_after if exc.retry_after <= policy.max_retry_after else None
    base = min(policy.backoff * (2**retries), policy.backoff_max)
    return base * (0.5 + random.random() / 2)


def nothing_listens(exc: ProviderError, settings: Settings) -> bool:
    """A refused connection while nothing is configured (Ollama's default port on this machine,
    the embedded model next): the answer is certain at once, so it is not asked again, and the
    first answer on a fresh machine does not wait out a retry ladder (issue 23)."""
    if settings.embedded_fallback is None:
        return False
    cause: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore wraps OSError wraps the refusal
        if cause is None or isinstance(cause, ConnectionRefusedError):
            break
        cause = cause.__cause__ or cause.__context__
    return isinstance(cause, ConnectionRefusedError)
