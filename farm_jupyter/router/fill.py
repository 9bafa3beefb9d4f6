"""Fill-in-the-middle through the router: the breaker, the deadlines and the fallback apply.

A completion as you type is asked again at the next keystroke, so it is not retried (the next
keystroke is the retry), not put in the session's cache (the server keeps its own, in memory) and
not part of any conversation. A caller that stops reading (a new keystroke aborted it) closes the
stream here: a half-open probe is released, and that is never counted as the provider's failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..errors import AllProvidersFailed, ProviderError
from ..types import Attempt, Chunk, FillRequest
from .deadline import timed
from .failures import cooling_down, failed_attempt

if TYPE_CHECKING:
    from .core import Router


async def fill(router: Router, request: FillRequest, target: str | None, *, fallback: bool) -> AsyncIterator[Chunk]:
    """The text for the cursor: first a `Chunk(status="provider:model")` naming who answers, then
    its text, then a `done` chunk. A caller's error (a missing model) is raised at once."""
    attempts: list[Attempt] = []
    last: ProviderError | None = None
    for route in router.resolve(target, fallback=fallback):
        breaker = router.breaker(route.provider)
        if not breaker.allow():
            last = cooling_down(route, breaker)
            attempts.append(failed_attempt(route, last))
            continue
        provider = router.provider(route.provider)
        shown = 0
        try:
            yield Chunk(status=str(route))
            asked = request.model_copy(update={"model": route.model})
            async for chunk in timed(provider.afill(asked), router.settings.timeouts, route.provider):
                shown += bool(chunk.text)
                yield chunk
            breaker.success()
            return
        except ProviderError as exc:
            if not exc.availability:
                raise
            breaker.failure(str(exc))
            router.monitor.record_failure(route.provider, exc.kind)
            attempts.append(failed_attempt(route, exc, chunks=shown))
            if shown:  # the ghost text already shows part of it: the next keystroke asks again
                raise
            last = exc
            continue
        finally:
            breaker.release()  # cancelled or closed early (a new keystroke): over, and not a failure
    raise AllProvidersFailed(attempts, last)
