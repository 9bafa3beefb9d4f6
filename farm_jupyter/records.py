"""What the monitor records per request and sums up per model: the vocabulary the faces read
(`%farm stats`, the health board, the server's `/stats`), apart from the Monitor that keeps it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from .types import ChatResponse


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the monitor keeps it: the response it got, or why it failed, and when.

    Made on every answer and every cache hit: a slotted dataclass over the response itself,
    nothing copied and nothing validated again."""

    provider: str
    model: str
    total: float
    response: ChatResponse | None = None  # None: it failed, and `error` says why
    error: str | None = None
    at: float = field(default_factory=time.time)

    @classmethod
    def from_response(cls, response: ChatResponse) -> RequestRecord:
        return cls(response.provider, response.model, response.timings.total, response)

    @property
    def ok(self) -> bool:
        return self.response is not None


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
