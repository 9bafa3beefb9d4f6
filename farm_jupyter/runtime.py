"""The kernel-resident event loop: one asyncio loop in a daemon thread.

ipykernel runs its own loop and a cell that computes blocks it, so the router cannot live there.
It lives here instead: magics block on a future (Ctrl-C cancels the request, not just the wait),
widget callbacks submit and return, and `await` from a cell wraps the future. The pattern is
IPython's own (`core/magics/script.py`): `run_coroutine_threadsafe` plus `weakref.finalize`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from contextlib import aclosing
from typing import Any, TypeVar

T = TypeVar("T")

_CANCEL_GRACE = 5.0  # seconds a cancelled request gets to close its stream


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return

    async def drain() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await loop.shutdown_asyncgens()

    if thread.is_alive():
        try:
            asyncio.run_coroutine_threadsafe(drain(), loop).result(_CANCEL_GRACE)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CANCEL_GRACE)
    if not thread.is_alive():
        loop.close()


class Runtime:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="farm-runtime", daemon=True)
        self._thread.start()
        self._started.wait()
        self._finalizer = weakref.finalize(self, _shutdown, self.loop, self._thread)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule on the runtime loop and return at once (widget callbacks use this)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Block until done; Ctrl-C cancels the coroutine and waits for it to clean up."""
        if self.in_loop():
            raise RuntimeError("Runtime.run() called from the runtime loop; await instead")
        finished = threading.Event()
        future = self.submit(_signal_when_done(coro, finished))
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            finished.wait(_CANCEL_GRACE)
            raise

    async def wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a runtime coroutine from another loop (a cell's `await`)."""
        if self.in_loop():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator on the runtime loop and yield its items here.

        Closing the returned generator early (break, Ctrl-C, garbage collection) cancels the
        source, so its HTTP stream is closed and its generation stops.
        """
        items: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for item in source:
                    items.put((0, item))
            except BaseException as exc:
                items.put((1, exc))
                raise
            else:
                items.put((2, None))
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()

        finished = threading.Event()
        future = self.submit(_signal_when_done(pump(), finished))
        ended = False
        try:
            while (item := _unpacked(items.get())) is not _END:
                yield item
            ended = True
        finally:
            if ended:  # the pump is past its source's end: let it finish, do not cancel it
                finished.wait(_CANCEL_GRACE)  # (a cancel is a call_soon_threadsafe, a loop wake-up)
            elif not future.done():
                future.cancel()
                finished.wait(_CANCEL_GRACE)

    async def aiterate(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """`iterate` for a caller on another loop (a cell's `async for`)."""
        if self.in_loop():
            async with aclosing(source) as it:  # type: ignore[type-var]
                async for item in it:
                    yield item
            return
        caller = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump() -> None:
            try:
                async with aclosing(source) as it:  # type: ignore[type-var]
                    async for item in it:
                        caller.call_soon_threadsafe(items.put_nowait, (0, item))
            except BaseException as exc:
                caller.call_soon_threadsafe(items.put_nowait, (1, exc))
                raise
            caller.call_soon_threadsafe(items.put_nowait, (2, None))

        finished = threading.Event()
        future = self.submit(_signal_when_done(pump(), finished))
        try:
            while (item := _unpacked(await items.get())) is not _END:
                yield item
        finally:
            if not future.done():
                future.cancel()
                await asyncio.to_thread(finished.wait, _CANCEL_GRACE)

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks still alive on the loop (tests assert this is empty after cancellation)."""
        if not self.alive:
            return []

        async def collect() -> list[asyncio.Task[Any]]:
            me = asyncio.current_task()
            return [t for t in asyncio.all_tasks() if t is not me and not t.done()]

        return self.submit(collect()).result(_CANCEL_GRACE)

    def close(self) -> None:
        self._finalizer()


_END = object()


def _unpacked(message: tuple[int, Any]) -> Any:
    """A pump's message to its reader: (0, item) is the item, (1, exception) raises it, (2, None)
    is _END."""
    kind, value = message
    if kind == 1:
        raise value
    return value if kind == 0 else _END


async def _signal_when_done(coro: Awaitable[T], finished: threading.Event) -> T:
    try:
        return await coro
    finally:
        finished.set()


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, started on first use (and again after a close)."""
    global _runtime
    with _lock:
        if _runtime is None or not _runtime.alive:
            _runtime = Runtime()
        return _runtime


def shutdown_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
