"""What the local engines (transformers, llama.cpp) share: a generating thread that hands its
items to the runtime loop, the loop that turns them into chunks, and a bounded wait for that
thread when the request ends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any, ClassVar, Generic, TypeVar

from .. import secrets
from ..errors import FarmError, ProviderTimeout
from ..types import ChatRequest, Chunk
from .base import Provider

JOIN_TIMEOUT = 10.0  # seconds a cancelled generation gets to finish its current step
M = TypeVar("M")


class Channel:
    """Items from the generate thread to the runtime loop, without a thread hop per read.

    The loop is woken only while the reader waits: when it lags behind, items pile up and are
    taken in one batch, so fast tokens cost no extra wake-ups. The thread's last item is
    ("done", (Usage, finish_reason)) or ("error", exception); before it, ("text", str) items,
    ("calls", [ToolCall]) for a tool call read out of a constrained answer, ("note", str) for
    what the engine could not enforce (said in the answer's footer), and ("sent", str) for what
    the engine ran (`ran`), the local twin of a server's request body.
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


async def ensure(models: Mapping[str, M], load: Callable[[str], M], name: str) -> M:
    """The model `name` from `models`, or `load(name)` in a worker thread: loading blocks for seconds."""
    loaded = models.get(name)
    if loaded is None:
        loaded = await asyncio.to_thread(load, name)
    return loaded


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
        ended = any(kind in ("done", "error") for kind, _ in batch)
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.0005)


async def stream(
    target: Callable[..., None],
    args: tuple[Any, ...],
    *,
    name: str,
    timeout: float,
    stalled: Callable[[], FarmError],
    failed: Callable[[BaseException, bool], FarmError],
) -> AsyncGenerator[Chunk, None]:
    """Run `target(*args, channel, stop)` in a daemon thread and yield what it pushes as chunks.

    `stop` is set when the request ends for any reason (done, failed, cancelled, closed early),
    and the thread gets a bounded wait to notice it. Nothing for `timeout` seconds raises
    `stalled()`; an exception from the thread is raised as it is when it is a FarmError, else as
    `failed(exc, shown)`, `shown` saying whether any text was yielded before it.
    """
    channel = Channel(asyncio.get_running_loop())
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(*args, channel, stop), name=name, daemon=True)
    del args  # the thread holds the model while it runs; unload must be able to free it after
    error: BaseException | None = None
    shown = ended = False
    thread.start()
    try:
        while error is None:
            try:
                batch = await channel.take(timeout)
            except TimeoutError:
                raise stalled() from None
            text = "".join(v for k, v in batch if k == "text")
            if text:
                shown = True
                yield Chunk(text=text)
            for kind, value in batch:
                if kind == "calls":
                    yield Chunk(tool_calls=value)
                elif kind == "note":
                    yield Chunk(status=value)
                elif kind == "sent":
                    yield Chunk(sent=value)
                elif kind == "error":
                    error, ended = value, True
                elif kind == "done":
                    ended = True
                    usage, finish = value
                    yield Chunk(done=True, usage=usage, finish_reason=finish)
                    return
    finally:
        stop.set()
        await join(thread, channel, ended)
    assert error is not None
    if isinstance(error, FarmError):
        raise error
    raise failed(error, shown) from error


def ran(prompt: str, params: Mapping[str, Any]) -> str:
    """What a local engine ran, for `%farm why` (`ChatResponse.sent`): the sampling parameters it
    used as one JSON line, then the prompt as the model read it, the chat template applied and its
    special tokens written out (secrets masked, as a server's request body is)."""
    return secrets.redact(json.dumps(dict(params), ensure_ascii=False, default=str) + "\n" + prompt)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class LocalProvider(Provider, Generic[M]):
    """A provider whose models run in this process: loaded on first use (in a worker thread),
    generating in a daemon thread of their own that hands its pieces to `stream`.

    A subclass loads (`_load`), generates (`_generate`, the thread's body) and names its failures
    (`_failed`); a request is asked the same way for every engine.
    """

    stalled: ClassVar[str]  # what to do when a model produced nothing for stream_timeout seconds

    def __init__(self, name: str, settings: Any, **options: Any) -> None:
        super().__init__(name, settings, **options)
        self._models: dict[str, M] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, key: str) -> threading.Lock:
        """One lock a model: two requests for it load it once; other models load meanwhile."""
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @property
    @abstractmethod
    def stream_timeout(self) -> float: ...

    @abstractmethod
    def _load(self, name: str) -> M: ...

    @abstractmethod
    def _generate(self, loaded: M, request: ChatRequest, channel: Channel, stop: threading.Event) -> None: ...

    @abstractmethod
    def _failed(self, exc: BaseException, model: str, shown: bool) -> FarmError: ...

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        loaded = await ensure(self._models, self._load, request.model)
        timeout, model = self.stream_timeout, request.model
        chunks = stream(
            self._generate,
            (loaded, request),
            name=f"farm-{self.kind}-generate-{model}",
            timeout=timeout,
            stalled=lambda: ProviderTimeout(
                f"{self.kind} model {model} produced nothing for {timeout:.0f}s", provider=self.name, hint=self.stalled
            ),
            failed=lambda error, shown: self._failed(error, model, shown),
        )
        del loaded  # the thread holds it while it runs; unload must be able to free it after
        async with aclosing(chunks) as it:
            async for chunk in it:
                yield chunk
