"""What the router says when something goes wrong: each failure class's one line.

The classes themselves (and whether each is the provider's trouble or the caller's mistake) are in
`farm_jupyter.errors`; here they are worded for the route they happened on, with what to do.
"""

from __future__ import annotations

import difflib
import time

from ..errors import CoolingDown, ModelNotFound, ProviderError, ReplayMiss
from ..types import Attempt, ChatMessage
from .call import Call, Route
from .limits import CircuitBreaker


def failed_attempt(
    route: Route, exc: ProviderError, *, retries: int = 0, waited: float = 0.0, chunks: int = 0
) -> Attempt:
    return Attempt(
        provider=route.provider,
        model=route.model,
        ok=False,
        error=str(exc),
        error_type=type(exc).__name__,
        retries=retries,
        waited=waited,
        chunks_before_failure=chunks,
    )


def restart_note(call: Call, then: str) -> str:
    """`ollama cut the answer after 3 chunks: retrying ollama (2 of 3)`."""
    return f"{call.cut} after {call.shown} chunk{'s' if call.shown != 1 else ''}: {then}"


def cooling_down(route: Route, breaker: CircuitBreaker) -> CoolingDown:
    until = time.strftime("%H:%M:%S", time.localtime(breaker.open_until))
    return CoolingDown(
        f"{route.provider} is cooling down until {until} after: {breaker.last_error}",
        provider=route.provider,
        hint="it is tried again then; `%farm health` shows it",
    )


def not_recorded(route: Route, messages: list[ChatMessage], key: str, path: object) -> ReplayMiss:
    words = " ".join(messages[-1].content.split()) if messages else ""
    words = words if len(words) <= 48 else words[:47] + "…"
    return ReplayMiss(
        f'no recorded answer for {route} "{words}" (key {key[:12]}) in {path}',
        provider=route.provider,
        hint=f"record it again with FARM_CACHE=record:{path}",
    )


def as_fallback(call: Call, route: Route, exc: ProviderError) -> ProviderError:
    """A caller's error met on a fallback route says why that route was reached at all."""
    if not call.failed:
        return exc
    why = ", ".join(f"{e.provider} {e.did}" for e in call.failed)
    return type(exc)(f"{why}, and the fallback {route}: {exc}", provider=exc.provider, status=exc.status)


def missing_model(
    route: Route, exc: ModelNotFound, names: list[str], elsewhere: dict[str, list[str]] | None = None
) -> ModelNotFound:
    """`ollama has no model "llama3": did you mean llama3.1:latest?`, from the names it really has.
    A bare name (`elsewhere`: what the other providers have) found at another provider is
    `did you mean openai:gpt-4o-mini?`; with no close match anywhere, some of what it has."""
    asked = route.model.removesuffix(":latest")
    found = [f"{p}:{n}" for p, have in (elsewhere or {}).items() for n in have if n.removesuffix(":latest") == asked]
    near = found or difflib.get_close_matches(route.model, names, n=3, cutoff=0.5)
    if not near:  # `llama3` for `llama3.1:latest`: a prefix is a good guess too
        near = [n for n in names if n.startswith(route.model.split(":")[0])][:3]
    if not near:
        near = [
            f"{p}:{n}" for p, have in (elsewhere or {}).items() for n in difflib.get_close_matches(route.model, have, 2)
        ][:3]
    said = f'no provider "{route.unknown_provider}"; ' if route.unknown_provider else ""
    if near:
        hints = [f"did you mean {' or '.join(near)}?"]
    elif names:
        more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
        hints = [f"{route.provider} has {', '.join(names[:_LISTED])}{more}"]
    else:
        hints = []
    if exc.hint and not found:  # pulling it is no advice when another provider has it
        hints.append(exc.hint)
    # An HTTP 404 says little ("model not found, try pulling it"): say it plainly. A local
    # engine's own words say more (a file that is there but is no model): keep them.
    what = (
        str(exc).removesuffix(f": {exc.hint}")
        if exc.status is None
        else f'{route.provider} has no model "{route.model}"'
    )
    return ModelNotFound(f"{said}{what}", provider=route.provider, status=exc.status, hint="; ".join(hints) or None)


_LISTED = 5  # names listed when none is close
