"""The first-token and total deadlines of one provider stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from ..config import TimeoutSettings
from ..errors import ProviderTimeout
from ..types import Chunk


async def timed(chunks: AsyncIterator[Chunk], limits: TimeoutSettings, provider: str) -> AsyncIterator[Chunk]:
    """The provider's stream under the first-token and total deadlines.

    The deadline can only cancel the provider's own await (an `__anext__`), never a `yield`.
    One timer serves the whole stream (asyncio.timeout per chunk costs ~3.5 us a chunk).
    """
    loop = asyncio.get_running_loop()
    now = loop.time()
    total_at = now + limits.total
    deadline = Deadline(loop, min(now + limits.first_token, total_at))
    seen_text = False
    try:
        async with aclosing(chunks) as it:  # type: ignore[type-var]  # providers are async generators
            while True:
                try:
                    chunk = await deadline.wait(it)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    which, seconds = (
                        ("the total", limits.total) if seen_text else ("the first-token", limits.first_token)
                    )
                    raise ProviderTimeout(
                        f"{provider} gave no answer within {which} timeout ({seconds:g}s)",
                        provider=provider,
                        hint="raise [timeouts] in farm.toml, or try another model",
                    ) from None
                if (chunk.text or chunk.thinking or chunk.tool_calls) and not seen_text:  # it is answering
                    seen_text = True
                    deadline.move(total_at)
                yield chunk
    finally:
        deadline.cancel()


class Deadline:
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
