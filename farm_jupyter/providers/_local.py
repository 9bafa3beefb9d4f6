"""What the local engines (transformers, llama.cpp) share: a generating thread that hands its
items to the runtime loop, and a bounded wait for that thread when the request ends."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

JOIN_TIMEOUT = 10.0  # seconds a cancelled generation gets to finish its current step


class Channel:
    """Items from the generate thread to the runtime loop, without a thread hop per read.

    The loop is woken only while the reader waits: when it lags behind, items pile up and are
    taken in one batch, so fast tokens cost no extra wake-ups. The thread's last item is
    ("done", value) or ("error", exception); before it, ("text", str) items.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[str, Any]] = deque()
        self.ready = asyncio.Event()
        self.waiting = False

    def push(self, kind: str, value: Any) -> None:  # called from the generate thread
        self.items.append((kind, value))  # append before reading `waiting`: see take()
        if self.waiting:
            self.waiting = False
            try:
                self.loop.call_soon_threadsafe(self.ready.set)
            except RuntimeError:
                pass  # the loop is closed: nobody is listening any more

    async def take(self, timeout: float) -> list[tuple[str, Any]]:
        while not self.items:
            self.ready.clear()
            self.waiting = True  # set before the second look, so a push in between wakes us
            if self.items:
                break
            try:
                async with asyncio.timeout(timeout):
                    await self.ready.wait()
            finally:
                self.waiting = False
        self.waiting = False
        batch = []
        while self.items:
            batch.append(self.items.popleft())
        return batch


async def join(thread: threading.Thread, channel: Channel, ended: bool) -> None:
    """Wait (bounded) for the generate thread: its last act is to push "done" or "error"."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not ended and thread.is_alive():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return  # a step that outlasts the deadline; the thread is a daemon and ends after it
        try:
            batch = await channel.take(remaining)
        except TimeoutError:
            return
        ended = any(kind != "text" for kind, _ in batch)
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.0005)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
