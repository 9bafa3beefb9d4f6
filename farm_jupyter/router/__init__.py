"""The router: address resolution, then cache, breaker, rate limit, retries and fallback."""

from __future__ import annotations

from .core import Route, Router
from .limits import CircuitBreaker, RateLimiter

__all__ = ["CircuitBreaker", "RateLimiter", "Route", "Router"]
