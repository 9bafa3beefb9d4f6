"""Mapping HTTP failures into farm_jupyter.errors: shared by the providers that speak httpx."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

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
    WrongServer,
)

# Statuses any server in front of an API may answer in its own words (a proxy's login page, its
# rate limit, its 502 page): said for what they are, not taken as a sign of the wrong server.
_ANY_SERVER = frozenset({401, 403, 407, 429})


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


def json_object(text: str) -> dict[str, Any] | None:
    """The body as a JSON object, or None (not JSON, or JSON of another shape)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def body_shape(content_type: str, text: str, api: str = "its API") -> str:
    """What a body that is not the API's is, in words: an HTML page is never shown (it can be long
    and `%farm health` would show it whole)."""
    if not text.strip():
        return "an empty body"
    if "html" in content_type.lower() or text.lstrip().startswith("<"):
        return "an HTML page"
    try:
        json.loads(text)
    except ValueError:
        return "plain text"
    return f"JSON, but not {api}'s"


def error_detail(content_type: str, text: str) -> str:
    """A foreign error body as a message may quote it: plain text (bounded), or its shape."""
    shape = body_shape(content_type, text)
    return text.strip()[:300] if shape == "plain text" else shape


def foreign(status: int, api_error: bool) -> bool:
    """Whether an answer without the API's own error shape comes from a server that is not the API:
    a 404 page where `/api/chat` should be. Auth, rate limits and 5xx may come from a proxy."""
    return not api_error and status < 500 and status not in _ANY_SERVER


def wrong_server(provider: str, api: str, url: str, what: str, hint: str) -> WrongServer:
    """`not an Ollama server at URL: POST /api/chat answered 404 with an HTML page`."""
    return WrongServer(f"not an {api} server at {url}: {what}", provider=provider, hint=hint)


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
