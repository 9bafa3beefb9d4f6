"""One answer in several requests: tool calls run in the kernel, answers re-asked until they match
the schema.

    ask -> answer with tool calls -> run them here -> ask with their results -> ... -> answer
                                                        -> does not match the schema -> re-ask

Each request goes through the router (cache, retries, fallback) on the runtime loop; what
happens between two requests (a tool, a validator) runs in the thread that iterates the stream,
the caller's, because it is the user's code. The steps are bounded (`max_steps` tool rounds,
`max_reasks` re-asks) and each request's attempts are kept, labelled, in the final response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import naming_the_budget
from .errors import ConfigError, FarmError
from .objects import Budget
from .router.call import parse_params
from .router.fold import Fold
from .structured import Schema, SchemaMismatch
from .tools import Tool, run_call, tools_of
from .types import ChatMessage, ChatResponse, Chunk, GenerationParams, ToolRun, Usage

if TYPE_CHECKING:
    from .router import Router
    from .runtime import Runtime

Ask = Callable[[list[ChatMessage], GenerationParams], AsyncIterator[Chunk]]


@dataclass(frozen=True)
class Extras:
    """What a request may carry besides a prompt and generation params (see `Session.stream`)."""

    context: Mapping[str, Any] | None = None
    images: Sequence[Any] = ()
    context_budget: int | Budget | None = None  # a Budget: a face described the objects itself
    schema: Any = None
    tools: Sequence[Callable[..., Any]] | None = None
    max_steps: int = 5
    max_reasks: int = 2
    keep_thinking: bool = False


def plan(
    router: Router,
    runtime: Runtime,
    messages: list[ChatMessage],
    model: str | None,
    params: Mapping[str, Any],
    extras: Extras,
    *,
    no_cache: bool,
    refresh: bool,
    fallback: bool | None,
    stream: bool,
    on_final: Callable[[ChatResponse], None] | None,
    fold: Fold | None = None,
) -> Steps:
    """The steps of one answer with a schema or tools: each request through `router`, all of them
    folded into `fold` (the stream's), as are the steps' own chunks."""
    fold = fold or Fold()
    found = tools_of(extras.tools or [])
    shape = Schema(extras.schema) if extras.schema is not None else None
    generation = parse_params(params).model_copy(
        update={
            "response_schema": shape.json_schema if shape else None,
            "tools": [t.spec for t in found.values()] or None,
        }
    )
    if shape is not None:  # said in the prompt too, for a model that does not constrain its output
        messages = [*messages[:-1], shape.instruction(), messages[-1]]

    def ask(msgs: list[ChatMessage], p: GenerationParams) -> AsyncIterator[Chunk]:
        chunks = router.astream(
            msgs, model, p, no_cache=no_cache, refresh=refresh, fallback=fallback, stream=stream, fold=fold
        )
        if isinstance(extras.context_budget, Budget):  # objects were described: a context-window error names it
            return naming_the_budget(chunks, extras.context_budget, msgs)
        return chunks

    def forget(response: ChatResponse, msgs: list[ChatMessage], p: GenerationParams) -> None:
        done = runtime.submit(router.forget(response, msgs, p))
        if not runtime.in_loop():  # farm.map runs steps on the loop itself: no waiting there
            done.result()

    return Steps(
        messages,
        generation,
        ask,
        tools=found,
        schema=shape,
        max_steps=extras.max_steps,
        max_reasks=extras.max_reasks,
        forget=None if no_cache else forget,
        on_final=on_final,
        fold=fold,
    )


class Steps:
    def __init__(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        ask: Ask,
        *,
        tools: dict[str, Tool] | None = None,
        schema: Schema | None = None,
        max_steps: int = 5,
        max_reasks: int = 2,
        forget: Callable[[ChatResponse, list[ChatMessage], GenerationParams], Any] | None = None,
        on_final: Callable[[ChatResponse], None] | None = None,
        fold: Fold | None = None,
    ) -> None:
        if max_steps < 0 or max_reasks < 0:
            raise ConfigError(
                f"max_steps={max_steps} and max_reasks={max_reasks} must be 0 or more",
                hint="max_steps=0 offers the tools but runs none; max_reasks=0 never asks again",
            )
        self.messages = list(messages)
        self.params = params
        self.ask = ask
        self.tools = tools or {}
        self.schema = schema
        self.max_steps = max_steps
        self.max_reasks = max_reasks
        self.forget = forget
        self.on_final = on_final
        self.fold = fold or Fold()  # what `ask` feeds as each request's chunks leave the router; the steps' own too
        self.runs: list[ToolRun] = []
        self.responses: list[ChatResponse] = []
        self.reasks = 0
        self.rounds = 0
        self.notes: list[str] = []
        self.start = time.perf_counter()
        self.first_token: float | None = None
        self.label: str | None = None  # what the next request is for, on its attempts
        self._last: ChatResponse | None = None

    # -- driving, from the caller's thread ---------------------------------------------------------

    def run(
        self, iterate: Callable[[AsyncIterator[Chunk]], Iterator[Chunk]], run_async: Callable[[Any], Any]
    ) -> Iterator[Chunk]:
        """Sync: each request iterated with `iterate` (the runtime's), the steps between them here."""
        while True:
            for chunk in iterate(self.ask(self.messages, self.params)):
                if self._shown(chunk):
                    yield chunk
            done = yield from self._after(self._answer(), run_async)
            if done is not None:
                yield Chunk(done=True, usage=done.usage, finish_reason=done.finish_reason, response=done)
                return

    async def arun(
        self,
        aiterate: Callable[[AsyncIterator[Chunk]], AsyncIterator[Chunk]],
        run_async: Callable[[Any], Any],
        *,
        offload: bool = False,
    ) -> AsyncIterator[Chunk]:
        """Async twin of `run`: a cell's `await`; the steps between requests run on the cell's thread,
        or, with `offload` (iterated on the runtime loop itself, as farm.map does), in a worker
        thread: the user's code never stalls the loop."""
        while True:
            async for chunk in aiterate(self.ask(self.messages, self.params)):
                if self._shown(chunk):
                    yield chunk
            pending: list[Chunk] = []
            steps = self._after(self._answer(), run_async)
            done = await asyncio.to_thread(_drain, steps, pending) if offload else _drain(steps, pending)
            for chunk in pending:
                yield chunk
            if done is not None:
                yield Chunk(done=True, usage=done.usage, finish_reason=done.finish_reason, response=done)
                return

    def _shown(self, chunk: Chunk) -> bool:
        """Whether the caller sees `chunk`: the response that closes a request is kept for the steps."""
        if chunk.response is not None:
            self._last = chunk.response
            return False
        if chunk.text and self.first_token is None:
            self.first_token = time.perf_counter() - self.start
        return True

    def _answer(self) -> ChatResponse:
        """The response that closed the request just iterated."""
        response, self._last = self._last, None
        if response is None:
            raise FarmError("a step of this answer ended without a response", hint="ask again")
        return response

    # -- between two requests ---------------------------------------------------------------------

    def _after(
        self, response: ChatResponse, run_async: Callable[[Any], Any]
    ) -> Generator[Chunk, None, ChatResponse | None]:
        """Decide what comes next; returns the final response, or None to ask again."""
        if self.label is not None:
            for a in response.attempts:
                a.step = self.label
        self.responses.append(response)
        if response.tool_calls and self.tools:
            if self.rounds >= self.max_steps:
                names = ", ".join(c.name for c in response.tool_calls)
                self.notes.append(f"stopped at the tool step limit ({self.max_steps}): {names} not run")
                return self._done(self._final(response, None))
            self.rounds += 1
            self.messages.append(ChatMessage(role="assistant", content=response.text, tool_calls=response.tool_calls))
            for call in response.tool_calls:
                run, message = run_call(self.tools, call, self.rounds, run_async)
                self.runs.append(run)
                self.messages.append(message)
                yield self.fold.take(Chunk(tool_run=run))
            self.label = f"tool results {self.rounds}"
            if self.params.tool_choice not in (None, "auto", "none"):  # a call was required: it was made
                self.params = self.params.model_copy(update={"tool_choice": None})
            return None
        parsed = None
        if self.schema is not None:
            try:
                parsed = self.schema.parse(response.text)
            except ValueError as exc:
                if self.forget is not None:  # a rerun must ask again, not replay what was refused
                    self.forget(response, list(self.messages), self.params)
                if response.finish_reason == "length":  # asked again, it would be cut at the same place
                    limit = f"max_tokens={self.params.max_tokens}" if self.params.max_tokens else "max_tokens"
                    raise SchemaMismatch(
                        f"the answer to {self.schema.name} was cut at {limit} before it was whole",
                        hint="raise max_tokens",
                        response=self._final(response, None),
                    ) from None
                if self.reasks >= self.max_reasks:
                    raise SchemaMismatch(
                        f"the answer did not match {self.schema.name} after {self.reasks + 1} tries: {exc}",
                        hint="simplify the schema, allow more re-asks (max_reasks=), or try another model",
                        response=self._final(response, None),
                    ) from None
                self.reasks += 1
                yield self.fold.take(
                    Chunk(
                        restart=True,
                        status=f"the answer did not match {self.schema.name} ({exc}): asking again "
                        f"({self.reasks + 1} of {self.max_reasks + 1})",
                    )
                )
                self.messages += [ChatMessage(role="assistant", content=response.text), Schema.reask(str(exc))]
                self.label = f"re-ask {self.reasks}"
                return None
        return self._done(self._final(response, parsed))

    def _done(self, final: ChatResponse) -> ChatResponse:
        if self.on_final is not None:
            self.on_final(final)
        return final

    def _final(self, last: ChatResponse, parsed: Any) -> ChatResponse:
        usage = Usage(
            prompt_tokens=sum(r.usage.prompt_tokens for r in self.responses),
            completion_tokens=sum(r.usage.completion_tokens for r in self.responses),
        )
        thinking = "\n\n".join(r.thinking for r in self.responses if r.thinking) or None
        timings = last.timings.model_copy(
            update={
                "total": time.perf_counter() - self.start,
                "first_token": self.first_token,
                "waited": sum(r.timings.waited for r in self.responses),
            }
        )
        return last.model_copy(
            update={
                "usage": usage,
                "timings": timings,
                "thinking": thinking,
                "attempts": [a for r in self.responses for a in r.attempts],
                "tool_runs": list(self.runs),
                "reasks": self.reasks,
                "notes": [*last.notes, *self.notes],
                "parsed": parsed,
                "cached": all(r.cached for r in self.responses),
                "restarted": any(r.restarted for r in self.responses),
            }
        )


def _drain(steps: Generator[Chunk, None, ChatResponse | None], into: list[Chunk]) -> ChatResponse | None:
    """Run the steps between two requests to their end: their chunks into `into`, their result back."""
    while True:
        try:
            into.append(next(steps))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
