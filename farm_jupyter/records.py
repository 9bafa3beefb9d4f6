"""What the monitor records per request and sums up per model: the vocabulary the faces read
(`%farm stats`, the health board, the server's `/stats`), apart from the Monitor that keeps it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from .types import ChatResponse, Timings, Usage


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the monitor keeps it: its measures (the response's own objects, not its
    text: the monitor keeps thousands), or why it failed; and when.

    Made on every answer and every cache hit: a slotted dataclass, nothing validated again."""

    provider: str
    model: str
    total: float
    cached: bool = False
    smooth: bool = True  # answered at the first try of the model asked: no retry, no fallback
    usage: Usage | None = None  # None: it failed, and `error` says why
    timings: Timings | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)
    prompt_chars: int = 0  # characters of the messages sent: with usage.prompt_tokens, a ratio

    @classmethod
    def from_response(cls, r: ChatResponse, prompt_chars: int = 0) -> RequestRecord:
        smooth = not r.retries and not r.fell_back_from
        return cls(
            r.provider, r.model, r.timings.total, r.cached, smooth, r.usage, r.timings, prompt_chars=prompt_chars
        )

    @property
    def ok(self) -> bool:
        return self.usage is not None


class ModelSummary(BaseModel):
    address: str
    requests: int
    errors: int
    cache_hits: int
    p50: float | None
    p95: float | None
    first_token_p50: float | None
    tokens_per_second: float | None
    tokens_out: int

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0
