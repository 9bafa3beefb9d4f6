"""Following streams from the kernel's thread: several ChatStreams folded at once on the runtime
loop, their changes handed to the thread that draws them.

A magic blocks its cell on `follow(...)`: each item is the index of a stream that has changed
(read the stream itself for what), or None when nothing came for `tick` seconds, so that the
face can flush what it has coalesced. A stream that fails has its `error` set and counts as
finished; the others go on. Closing the generator (a `break`, Ctrl-C) cancels every stream and
waits for them to close their requests.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Generator, Sequence
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stream import ChatStream

CANCEL_GRACE = 5.0  # seconds a cancelled stream gets to close its request


def follow(streams: Sequence[ChatStream], tick: float) -> Generator[int | None, None, None]:
    """Iterate `streams` together; yield the index of each change, or None after `tick` idle seconds.

    A stream that runs the user's code between requests (tools, a schema) is iterated here, in
    the caller's thread, where that code belongs; it goes alone (a comparison refuses them).
    """
    if any(s.runs_here for s in streams):
        if len(streams) != 1:
            raise ValueError("a stream with tools or a schema is followed alone")
        yield from _here(streams[0])
    else:
        yield from _on_loop(streams, tick)


def _here(stream: ChatStream) -> Generator[int | None, None, None]:
    chunks = iter(stream)
    try:
        for _ in chunks:
            yield 0
    except Exception:  # noqa: BLE001 - folded into stream.error, which the face reads
        return
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _on_loop(streams: Sequence[ChatStream], tick: float) -> Generator[int | None, None, None]:
    if not streams:
        return
    items: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()

    async def one(i: int, stream: ChatStream) -> None:
        with suppress(Exception):  # folded into stream.error, which the face reads
            async with aclosing(stream.__aiter__()) as chunks:  # type: ignore[type-var]
                async for _ in chunks:
                    items.put((i, False))
        items.put((i, True))

    async def main() -> None:
        try:
            await asyncio.gather(*(one(i, s) for i, s in enumerate(streams)))
        finally:
            finished.set()

    finished = threading.Event()
    future = streams[0].runtime.submit(main())  # the streams of one session share its loop
    try:
        remaining = len(streams)
        while remaining:
            try:
                i, ended = items.get(timeout=tick)
            except queue.Empty:
                yield None
                continue
            remaining -= ended
            yield i
    finally:
        if not future.done():
            future.cancel()
            finished.wait(CANCEL_GRACE)
