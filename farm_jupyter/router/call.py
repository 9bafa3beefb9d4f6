"""One request's state as it goes through the router: its route, what it has seen so far, and
each attempt at a provider, measured."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, ProviderError, problems
from ..providers.base import Provider
from ..types.messages import ChatMessage, ToolCall
from ..types.request import ChatRequest, GenerationParams
from ..types.responses import Attempt, ChatResponse, Chunk, Timings, Usage, generation_rate
from .fold import Fold


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str
    # Set when the address looked like `x:y` with no provider `x`: said again if the model is missing.
    unknown_provider: str | None = None
    # A model asked for without its provider (`-m gpt-4o-mini`): if missing, the others are asked too.
    bare: bool = False

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass
class Call:
    """What one request has seen so far, across its routes and tries."""

    messages: list[ChatMessage]
    params: GenerationParams
    stream: bool
    use_cache: bool
    read_cache: bool
    start: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    failed: list[ProviderError] = field(default_factory=list)  # one per failed route, in order
    warnings: list[str] = field(default_factory=list)
    shown: int = 0  # text chunks of a failed try still on the caller's screen
    cut: str = ""  # what ended that try: "ollama cut the answer"
    restarted: bool = False
    first_token: float | None = None
    notes: list[str] = field(default_factory=list)  # said in the footer: images sent as text
    fold: Fold = field(default_factory=Fold)  # the answer's one fold: `astream` feeds it as chunks leave

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def respond(
        self,
        route: Route,
        notice: str | None,
        *,
        text: str,
        usage: Usage,
        finish_reason: str | None,
        cached: bool = False,
        rate: float | None = None,
        provider_total: float | None = None,
        thinking: str | None = None,
        tool_calls: list[ToolCall] | None = None,
        cache_key: str | None = None,
        sent: str | None = None,
    ) -> ChatResponse:
        """The answer as the caller gets it: what was said, by whom, every attempt, and timings
        measured here (a cache hit's first token is its whole time)."""
        elapsed = self.elapsed()
        return ChatResponse(
            text=text,
            provider=route.provider,
            model=route.model,
            usage=usage,
            finish_reason=finish_reason,
            cached=cached,
            restarted=self.restarted,
            attempts=self.attempts,
            notice=notice,
            thinking=thinking,
            tool_calls=tool_calls or [],
            notes=list(self.notes),
            params=self.params.model_dump(mode="json", exclude_defaults=True),
            cache_key=cache_key,
            sent=sent,
            messages=self.messages,
            timings=Timings(
                first_token=self.first_token or (elapsed if cached else None),
                total=elapsed,
                waited=sum(a.waited for a in self.attempts),
                provider_total=provider_total,
                rate=rate,
            ),
        )

    def notice(self, route: Route) -> str | None:
        """`ollama was not reachable: answered by openai:gpt-4o-mini`, once a route has failed."""
        if not self.failed:
            return None
        why = ", ".join(e.said for e in self.failed)
        return f"{why}: answered by {route}"


class Try:
    """One provider stream, passed through and measured: how much it showed, its final chunk, and
    when its first and last text arrived (for its own tokens per second, not the whole request's).
    Its text is not collected here: it is the call's fold from where this try began (`text`)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        fold = call.fold
        self.start, self.thinking_start = len(fold.parts), len(fold.thoughts)  # a restart came before
        self.chunks = 0  # text chunks
        self.thoughts = 0  # reasoning chunks, which a restart must void as well
        self.tool_calls: list[ToolCall] = []
        self.final = Chunk(done=True)
        self.first = self.last = 0.0
        self.sent: str | None = None  # the body the provider sent, when it says

    @property
    def shown(self) -> int:
        """Chunks the caller has on screen: reasoning too, which a restart must void as well."""
        return self.chunks + self.thoughts

    @property
    def parts(self) -> list[str]:
        """The text chunks this try gave, as folded (a new list: the cache entry keeps it)."""
        return self.call.fold.parts[self.start :]

    @property
    def thinking(self) -> str | None:
        return "".join(self.call.fold.thoughts[self.thinking_start :]) or None

    async def run(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        # Closed here at the final chunk: left suspended, the provider's stream would be closed by
        # the garbage collector through asyncio's finalizer hook, a call_soon_threadsafe (a write to
        # the loop's self-pipe, a task, a loop turn) per request.
        async with aclosing(chunks) as it:  # type: ignore[type-var]  # providers are async generators
            async for chunk in it:
                if chunk.done:
                    self.final = chunk
                    return
                if chunk.sent is not None:
                    self.sent = chunk.sent
                    continue
                if chunk.status:  # the provider's own word on this answer (a schema keyword it cannot enforce)
                    if chunk.status not in self.call.notes:
                        self.call.notes.append(chunk.status)
                    yield chunk
                if chunk.thinking or chunk.tool_calls:
                    self.thoughts += bool(chunk.thinking)
                    self.tool_calls += chunk.tool_calls or []
                    yield chunk
                if chunk.text:
                    now = time.perf_counter()
                    if not self.chunks:
                        self.first = now
                        if self.call.first_token is None:
                            self.call.first_token = now - self.call.start
                    self.last = now
                    self.chunks += 1
                    yield chunk

    def rate(self, tokens: int) -> float | None:
        return generation_rate(
            tokens, generation=self.final.generation, chunks=self.chunks, span=self.last - self.first
        )


def parse_params(params: GenerationParams | Mapping[str, Any] | None) -> GenerationParams:
    try:
        return params if isinstance(params, GenerationParams) else GenerationParams(**(params or {}))
    except ValidationError as exc:  # pydantic's report is several lines; say it in one
        where, why, value, _ = problems(exc)[0]
        raise ConfigError(
            f"invalid generation parameter {where}={value!r}: {why}",
            hint="see help(farm_jupyter.types.GenerationParams)",
        ) from None


async def fit_images(call: Call, provider: Provider, request: ChatRequest) -> ChatRequest:
    """A model that cannot see images gets each one's one-line stand-in (already in the text
    where the image was named) instead of its bytes; the footer says so."""
    call.notes.clear()
    if not any(m.images for m in request.messages) or await provider.accepts_images(request.model):
        return request
    # Said for the question's own images; earlier turns' go as their stand-ins without a word.
    count = len(request.messages[-1].images)
    if count:
        call.notes.append(f"{count} image{'s' if count != 1 else ''} sent as text ({request.model} takes no images)")
    messages = [m.model_copy(update={"images": []}) if m.images else m for m in request.messages]
    return request.model_copy(update={"messages": messages})
