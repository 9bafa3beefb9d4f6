"""What the monitor records per request and sums up per model: the vocabulary the faces read
(`%farm stats`, the health board, the server's `/stats`), apart from the Monitor that keeps it."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from .types import ChatResponse


class RequestRecord(BaseModel):
    at: float = Field(default_factory=time.time)
    provider: str
    model: str
    ok: bool
    error: str | None = None
    first_token: float | None = None
    total: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_per_second: float | None = None
    cached: bool = False
    retries: int = 0
    fallbacks: int = 0
    waited: float = 0.0

    @classmethod
    def from_response(cls, response: ChatResponse) -> RequestRecord:
        # Every value comes from a validated response: not validated again (on each cache hit too).
        return cls.model_construct(
            provider=response.provider,
            model=response.model,
            ok=True,
            first_token=response.timings.first_token,
            total=response.timings.total,
            tokens_in=response.usage.prompt_tokens,
            tokens_out=response.usage.completion_tokens,
            tokens_per_second=response.tokens_per_second,
            cached=response.cached,
            retries=sum(a.retries for a in response.attempts),
            fallbacks=sum(1 for a in response.attempts if not a.ok),
            waited=response.timings.waited,
        )


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
