"""What comes back: usage, timings measured here, each attempt, the response and its chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from .messages import BaseType, ChatMessage, ToolCall, ToolRun


class Usage(BaseType):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(BaseType):
    """Seconds, measured by us around the provider call (not the provider's own claims)."""

    first_token: float | None = None
    total: float = 0.0
    waited: float = 0.0  # rate-limit and retry back-off, included in total
    provider_total: float | None = None  # what the provider says it spent (Ollama's durations)
    # Completion tokens per second of the answering attempt's own generation (see `generation_rate`); None
    # when it cannot be measured (one piece, a cache hit): no figure rather than a wrong one.
    rate: float | None = None


def generation_rate(
    tokens: int, *, generation: float | None = None, chunks: int = 0, span: float = 0.0
) -> float | None:
    """Tokens per second of one attempt: the provider's own generation time when it gives one
    (Ollama's eval_count / eval_duration), else the tokens that came after the first chunk over
    the time from the first chunk to the last, as measured here."""
    if tokens <= 0:
        return None
    if generation:
        return tokens / generation
    if chunks < 2 or span <= 0:
        return None
    return tokens * (chunks - 1) / chunks / span


class Attempt(BaseType):
    """One try at one provider: the response lists them all, failed ones first."""

    provider: str
    model: str
    ok: bool
    error: str | None = None
    error_type: str | None = None
    retries: int = 0
    waited: float = 0.0
    chunks_before_failure: int = 0
    # Why this request was made, when it is not the first of its answer: "tool results 1", "re-ask 1".
    step: str | None = None


class ChatResponse(BaseType):
    text: str
    provider: str
    model: str
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    finish_reason: str | None = None
    cached: bool = False
    restarted: bool = False  # a stream failed after showing text and was restarted elsewhere
    stopped: bool = False  # cancelled by the user; text is what had arrived
    attempts: list[Attempt] = Field(default_factory=list)
    # One line to show above the answer when it comes from another model than the one asked
    # (`ollama was not reachable: answered by openai:gpt-4o-mini`); None when it is the one asked.
    notice: str | None = None
    thinking: str | None = None  # the model's reasoning, apart: never part of `text`
    tool_calls: list[ToolCall] = Field(default_factory=list)  # what the model asked to call
    tool_runs: list[ToolRun] = Field(default_factory=list)  # the calls run in the kernel, in order
    reasks: int = 0  # answers that did not match the schema and were asked again
    notes: list[str] = Field(default_factory=list)  # e.g. images sent as text to a text-only model
    # The answer validated against the schema asked for (a pydantic object, or JSON data); not
    # serialised: a cached answer is validated again, by the caller's own model.
    parsed: Any = Field(default=None, exclude=True)
    params: dict[str, Any] = Field(default_factory=dict)  # the generation parameters asked (set ones)
    # Provenance, not kept in a cache entry: the entry's key, and the request body exactly as the
    # server received it (secrets masked; a local engine's templated prompt). None for a cache hit.
    cache_key: str | None = Field(default=None, exclude=True)
    sent: str | None = Field(default=None, exclude=True)
    # The messages sent for this answer, as sent (llm's `response.prompt.messages`): a conversation
    # commits its question from here. Not serialised: a cache or the HTTP API keeps the answer only.
    messages: list[ChatMessage] = Field(default_factory=list, exclude=True)

    @property
    def address(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def fell_back_from(self) -> list[str]:
        return [f"{a.provider}:{a.model}" for a in self.attempts if not a.ok]

    @property
    def tokens_per_second(self) -> float | None:
        return None if self.cached else self.timings.rate

    @property
    def retries(self) -> int:
        return sum(a.retries for a in self.attempts)

    def footer(self, *, address: bool = True, first_token: bool = False) -> str:
        """The one line shown under an answer: where it came from and what it cost.

        `first_token` adds the time to first token (widgets and comparisons show it); `address`
        leaves out `provider:model` where a column heading already says it.
        """
        parts = [self.address] if address else []
        if first_token and self.timings.first_token is not None and not self.cached:
            parts.append(f"TTFT {self.timings.first_token:.2f}s")
        parts.append(f"{'total ' if first_token else ''}{self.timings.total:.2f}s")
        if self.usage.completion_tokens:
            parts.append(f"{self.usage.completion_tokens} tokens")
        tps = self.tokens_per_second
        if tps and not self.cached:
            parts.append(f"{tps:.1f} tok/s")
        if self.cached:
            parts.append("cached")
        if self.retries:
            parts.append(f"{self.retries} retr{'y' if self.retries == 1 else 'ies'}")
        if self.timings.waited >= 0.05:
            parts.append(f"waited {self.timings.waited:.1f}s")
        if self.fell_back_from:
            parts.append("fell back from " + ", ".join(self.fell_back_from))
        if self.tool_runs:
            steps = len({r.step for r in self.tool_runs})
            calls = len(self.tool_runs)
            parts.append(f"{calls} tool call{'s' if calls != 1 else ''} in {steps} step{'s' if steps != 1 else ''}")
        if self.reasks:
            parts.append(f"{self.reasks} re-ask{'s' if self.reasks != 1 else ''}")
        parts += self.notes
        if self.restarted:
            parts.append("restarted")
        if self.stopped:
            parts.append("stopped")
        return " · ".join(parts)

    def __str__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return f"{self.text}\n\n*{self.footer()}*"


@dataclass(slots=True)
class Chunk:
    """One piece of a stream.

    `text` is the new text (`thinking` the new reasoning, kept apart). `restart` says the text shown so far is void (the answer is being
    restarted, on the same provider or another). `status` is a passing note for the caller (a
    rate-limit wait, a retry). `notice` is a line that stays above the answer: it comes from
    another model than the one asked (a fallback). The last chunk has `done=True` and carries
    the whole `response`.
    """

    text: str = ""
    done: bool = False
    restart: bool = False
    status: str | None = None
    notice: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    provider_total: float | None = None
    generation: float | None = None  # seconds the provider says it spent on the completion tokens
    response: ChatResponse | None = None
    thinking: str = ""  # new reasoning text, shown apart and never part of the answer
    tool_calls: list[ToolCall] | None = None  # the model asks for these (a provider's last chunks)
    tool_run: ToolRun | None = None  # a tool call that has just run in the kernel (session layer)
    sent: str | None = None  # what went to the backend, as it went (`ChatResponse.sent`); not shown
