"""Mapping HTTP failures into farm_jupyter.errors: shared by the providers that speak httpx."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx

from ..errors import (
    AuthenticationError,
    BadRequest,
    ModelNotFound,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    StreamInterrupted,
)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # neither seconds nor a date: as if absent
        return None
    return max(0.0, parsed.timestamp() - time.time())


def status_error(
    provider: str,
    status: int,
    detail: str,
    *,
    url: str,
    headers: Mapping[str, str] | None = None,
    not_found_hint: str | None = None,
    auth_hint: str | None = None,
    label: str | None = None,
) -> ProviderError:
    """The error for an HTTP status, with what to do about it."""
    what = f"{label or provider} at {url} answered {status}: {detail}"
    if status == 429:
        wait = retry_after(headers or {})
        return RateLimited(
            what,
            provider=provider,
            status=status,
            retry_after=wait,
            hint="wait and retry, or raise the provider's rate limit",
        )
    if status in (401, 403):
        return AuthenticationError(what, provider=provider, status=status, hint=auth_hint)
    if status == 404:
        return ModelNotFound(what, provider=provider, status=status, hint=not_found_hint)
    if status >= 500:
        return ServerError(what, provider=provider, status=status, hint="the server failed; retry later")
    return BadRequest(what, provider=provider, status=status, hint="check the request's parameters")


@asynccontextmanager
async def mapped_transport_errors(
    provider: str, url: str, down_hint: str, label: str | None = None
) -> AsyncIterator[None]:
    """Turn httpx's transport failures into ProviderUnavailable and its subclasses."""
    label = label or provider
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(
            f"{label} at {url} timed out ({type(exc).__name__})",
            provider=provider,
            hint="the server may be overloaded; retry, or raise the timeout",
        ) from exc
    except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
        raise ProviderUnavailable(f"{label} is not reachable at {url}", provider=provider, hint=down_hint) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise StreamInterrupted(
            f"{label} at {url} closed the connection mid-answer",
            provider=provider,
            hint="retry; if it keeps happening, check the server's log",
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderUnavailable(
            f"{label} at {url} failed: {type(exc).__name__}", provider=provider, hint=down_hint
        ) from exc
