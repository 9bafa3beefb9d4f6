"""ChatStream: a stream of Chunks and its one fold into text, thinking, tool runs, notice and response.

Every face (cells, widgets, the HTTP server, the API) reads a ChatStream; none folds chunks itself.
A face iterates it (or lets `follow` iterate several at once) and draws what it has folded:
`text`, `thinking`, `tool_runs`, `notice`, `status`, `restarts`, `response`, `error`.

The fold (`router.fold.Fold`) is fed where the chunks are made, once: a Session's stream hands it
to the router (and to a schema's or tools' steps), which folds each chunk as it leaves and keeps
the answer's text for the response and the cache entry from it. A stream over any other source
folds here, as it iterates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from ..errors import FarmError
from ..router.fold import CUT, Fold
from ..steps import Steps
from ..types import ChatResponse, Chunk, ToolRun, Usage

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["CUT", "ChatStream"]


class ChatStream:
    """A lazy, replayable stream: nothing runs until iterated; `.response` forces it.

    Iterating yields Chunks (`restart` ones included, so a display can start over); `.text` is
    the answer so far, without text voided by a restart. `on_done(fn)` calls `fn(stream)` once
    the stream has its response or its error (llm's Response.on_done).

    `fold`: the Fold the source feeds itself (a Session's router or steps); without one, the
    stream folds what it iterates into its own.
    """

    def __init__(
        self,
        runtime: Runtime,
        source: AsyncIterator[Chunk] | Steps,
        address: str = "",
        fold: Fold | None = None,
    ) -> None:
        self.runtime = runtime  # the loop the source runs on
        self.address = address  # the provider:model asked, as the router resolved it
        self._source: AsyncIterator[Chunk] | Steps | None = source
        self._fold = fold or Fold()
        self._folds_here = fold is None
        self._seen: list[Chunk] = []
        self._callbacks: list[Callable[[ChatStream], None]] = []
        self.response: ChatResponse | None = None
        self.error: Exception | None = None  # why the stream failed, once it has

    @property
    def text(self) -> str:
        return self.response.text if self.response else self._fold.text

    @property
    def notice(self) -> str | None:
        """The fallback line, as soon as the stream says it; none once it failed (the fallback it
        announced did not answer either)."""
        if self.error is not None:
            return None
        return (self.response.notice if self.response else None) or self._fold.notice

    @property
    def status(self) -> str | None:
        """A passing note (a retry, a restart): cleared when text comes."""
        return self._fold.status

    @property
    def restarts(self) -> int:
        """Times the text shown so far was voided."""
        return self._fold.restarts

    @property
    def tool_runs(self) -> list[ToolRun]:
        """Tool calls run so far, as they finish."""
        return self._fold.tool_runs

    @property
    def runs_here(self) -> bool:
        """Does iterating run the user's code between requests (tools, a schema's validation)? A
        face then iterates in the kernel's thread, not on the runtime loop."""
        return isinstance(self._source, Steps)

    @property
    def thinking(self) -> str:
        """The model's reasoning so far, apart from the answer."""
        return self._fold.thinking

    @property
    def usage(self) -> Usage | None:
        return self.response.usage if self.response else None

    @property
    def done(self) -> bool:
        return self.response is not None or self.error is not None

    def on_done(self, fn: Callable[[ChatStream], None]) -> None:
        """Call `fn(self)` when the stream has its response or its error (now, if it has)."""
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def _take(self, chunk: Chunk) -> None:
        self._seen.append(chunk)
        if self._folds_here:
            self._fold.take(chunk)
        if chunk.response is not None:
            self.response = chunk.response
            self._finish()

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        self._finish()

    def _finish(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def _claim(self) -> AsyncIterator[Chunk] | Steps | None:
        source, self._source = self._source, None
        return source

    def __iter__(self) -> Iterator[Chunk]:
        source = self._claim()
        if source is None:
            yield from list(self._seen)
            return
        runtime = self.runtime
        chunks = source.run(runtime.iterate, runtime.run) if isinstance(source, Steps) else runtime.iterate(source)
        try:
            for chunk in chunks:
                self._take(chunk)
                yield chunk
        except Exception as exc:
            self._fail(exc)
            raise

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        source = self._claim()
        if source is None:
            for chunk in list(self._seen):
                yield chunk
            return
        runtime = self.runtime
        chunks = (
            source.arun(runtime.aiterate, runtime.run, offload=runtime.in_loop())
            if isinstance(source, Steps)
            else runtime.aiterate(source)
        )
        try:
            # Closed here, not left to the garbage collector: a caller that stops early (a client
            # gone from the server) has the request cancelled by the time it has closed this.
            async with aclosing(chunks) as it:  # type: ignore[type-var]
                async for chunk in it:
                    self._take(chunk)
                    yield chunk
        except Exception as exc:
            self._fail(exc)
            raise

    async def _collect(self, source: AsyncIterator[Chunk]) -> None:
        """Run on the runtime loop by `result()`: one thread hop in all, not one per chunk (each
        hop wakes the waiting thread, 20-100 us)."""
        try:
            async with aclosing(source) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    self._take(chunk)
        except Exception as exc:
            self._fail(exc)
            raise

    def result(self) -> ChatResponse:
        if isinstance(self._source, Steps):  # its steps between requests run in this thread
            for _ in self:
                pass
            return self._finished()
        source = self._claim()
        if source is not None:
            self.runtime.run(self._collect(source))  # type: ignore[arg-type]
        return self._finished()

    async def aresult(self) -> ChatResponse:
        if isinstance(self._source, Steps):
            async for _ in self:
                pass
            return self._finished()
        source = self._claim()
        if source is not None:
            await self.runtime.wrap(self._collect(source))  # type: ignore[arg-type]
        return self._finished()

    def _finished(self) -> ChatResponse:
        if self.response is None:  # an earlier iteration stopped early or failed
            raise FarmError("this stream ended before its answer was complete", hint="ask again for a new stream")
        return self.response

    def __repr__(self) -> str:
        state = "done" if self.response else ("running" if self._source is None else "not started")
        return f"<ChatStream {state}, {len(self.text)} chars>"
