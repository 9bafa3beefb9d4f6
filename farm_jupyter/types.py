"""The request/response vocabulary shared by every layer.

Everything a user sees or the cache stores is a pydantic model, so it validates on the way in and
serialises on the way out. `Chunk` is the exception: one is made per token on the hot path, so it
is a slotted dataclass, not a validated model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

Role = Literal["system", "user", "assistant", "tool"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ImagePart(_Model):
    """An image for a vision model: base64 bytes, and the one line a text-only model gets instead."""

    data: str  # base64, no `data:` prefix
    media_type: str = "image/png"
    alt: str = "[an image]"


class ToolCall(_Model):
    """A model asking to call one of the tools it was given."""

    id: str | None = None  # OpenAI's call id, sent back with the result; Ollama has none
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(_Model):
    """A tool as described to a model: what both protocols call a function."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolRun(_Model):
    """One tool call run in the kernel: what was asked, what came back, how long it took."""

    step: int
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: str = ""
    error: str | None = None  # the exception, as the model was told it
    seconds: float = 0.0

    def line(self) -> str:
        """`get_weather(city='Paris') -> 21 (0.01s)`, for outputs."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        said = f"raised {self.error}" if self.error else f"-> {self.result}"
        if len(said) > 200:
            said = said[:199] + "…"
        return f"{self.name}({args}) {said} ({self.seconds:.2f}s)"


# Fields a message has only in some protocols' turns: left out of its dump when empty, so a plain
# message serialises as {role, content} for every provider, chat template and custom function.
_OPTIONAL_MESSAGE_FIELDS = ("images", "tool_calls", "tool_call_id", "tool_name", "thinking")


class ChatMessage(_Model):
    role: Role
    content: str
    images: list[ImagePart] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool result: the call it answers (OpenAI)
    tool_name: str | None = None  # a tool result: the tool's name (Ollama says it so)
    thinking: str | None = None  # an assistant turn's reasoning, kept only when asked

    @field_validator("content", mode="before")
    @classmethod
    def _content_is_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"message content must be a string, not {type(value).__name__}")
        return value

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key in _OPTIONAL_MESSAGE_FIELDS:
                if key in data and not data[key]:
                    del data[key]
        return data


class GenerationOptions(TypedDict, total=False):
    """The provider-specific generation options `GenerationParams.extra` may hold: a closed set.

    Each provider takes the ones in `PROVIDER_OPTIONS[its kind]` and leaves the others (they are
    there for a fallback provider); no key can change the model, the messages or streaming, and no
    key loads or runs code (HuggingFace's `trust_remote_code`, `custom_generate`, ...).
    """

    # Finite numbers only: JSON has no infinity, so an `inf` would fail on its way to the provider.
    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[misc]

    # Sampling, shared by several backends under the same name.
    top_k: Annotated[int, Field(ge=0)]
    min_p: Annotated[float, Field(ge=0.0, le=1.0)]
    typical_p: Annotated[float, Field(gt=0.0, le=1.0)]
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)]
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)]
    repeat_penalty: Annotated[float, Field(ge=0.0)]
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]]
    # Ollama's `options`.
    num_ctx: Annotated[int, Field(gt=0, le=1 << 20)]
    num_keep: Annotated[int, Field(ge=-1)]
    repeat_last_n: Annotated[int, Field(ge=-1)]
    mirostat: Literal[0, 1, 2]
    mirostat_tau: Annotated[float, Field(ge=0.0)]
    mirostat_eta: Annotated[float, Field(ge=0.0)]
    penalize_newline: bool
    tfs_z: Annotated[float, Field(ge=0.0)]
    # OpenAI's chat completion parameters.
    user: Annotated[str, Field(max_length=256)]
    reasoning_effort: Literal["minimal", "low", "medium", "high"]
    # HuggingFace `generate` keyword arguments that only shape the search.
    min_new_tokens: Annotated[int, Field(ge=0)]
    repetition_penalty: Annotated[float, Field(gt=0.0)]
    no_repeat_ngram_size: Annotated[int, Field(ge=0)]
    num_beams: Annotated[int, Field(ge=1, le=16)]
    length_penalty: float
    epsilon_cutoff: Annotated[float, Field(ge=0.0, lt=1.0)]
    eta_cutoff: Annotated[float, Field(ge=0.0, lt=1.0)]
    suppress_tokens: list[Annotated[int, Field(ge=0)]]
    begin_suppress_tokens: list[Annotated[int, Field(ge=0)]]
    bad_words_ids: list[list[Annotated[int, Field(ge=0)]]]
    renormalize_logits: bool
    max_time: Annotated[float, Field(gt=0.0, le=3600.0)]
    # llama.cpp
    grammar: Annotated[str, Field(max_length=100_000)]


_SAMPLING = frozenset({"top_k", "min_p", "typical_p"})
# Which options each built-in provider passes on; a custom provider gets them all as keywords.
PROVIDER_OPTIONS: dict[str, frozenset[str]] = {
    "ollama": _SAMPLING | {
        "presence_penalty", "frequency_penalty", "repeat_penalty", "num_ctx", "num_keep", "repeat_last_n",
        "mirostat", "mirostat_tau", "mirostat_eta", "penalize_newline", "tfs_z",
    },
    "openai": frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "user", "reasoning_effort"}),
    "huggingface": _SAMPLING | {
        "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "num_beams", "length_penalty",
        "epsilon_cutoff", "eta_cutoff", "suppress_tokens", "begin_suppress_tokens", "bad_words_ids",
        "renormalize_logits", "max_time",
    },
    "llamacpp": frozenset({
        "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "logit_bias", "grammar",
    }),
}

# Keys people reach for that params never take, with what to do instead.
_REFUSED = {
    **dict.fromkeys(("model", "messages", "prompt", "stream"), "it belongs to the request, not to params"),
    **dict.fromkeys(("num_predict", "max_new_tokens", "max_length", "max_completion_tokens"), "use params.max_tokens"),
    **{k: f"use params.{k}" for k in ("temperature", "top_p", "seed", "stop", "format")},
    "options": "put Ollama's options in params.extra directly (e.g. num_ctx)",
    **dict.fromkeys(
        ("trust_remote_code", "custom_generate", "assistant_model", "assistant_tokenizer", "generation_config",
         "streamer", "stopping_criteria", "logits_processor", "prefix_allowed_tokens_fn", "synced_gpus",
         "watermarking_config", "cache_implementation", "tokenizer"),
        "it loads or runs code: pass it to the provider in your own code, never in params",
    ),
}


class GenerationParams(_Model):
    """Everything besides the messages that changes an answer (and so belongs in a cache key).

    `extra` is closed: only `GenerationOptions` keys, each checked for type and range.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None
    format: Literal["json"] | None = None
    extra: GenerationOptions = Field(
        default_factory=lambda: GenerationOptions(),
        description="Provider-specific options; each provider takes its own and leaves the rest.",
    )

    # A JSON Schema the answer must match (Ollama `format`, OpenAI `response_format` json_schema).
    response_schema: dict[str, Any] | None = None
    tools: list[ToolSpec] | None = None
    # Ask for the model's reasoning apart from the answer: True, or a level for models that take one.
    think: bool | Literal["low", "medium", "high"] | None = None

    @field_validator("extra", mode="before")
    @classmethod
    def _refuse_overrides(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if key in _REFUSED:
                    raise ValueError(f"{key!r} is not a generation option: {_REFUSED[key]}")
        return value

    def not_taken_by(self, kind: str) -> tuple[list[str], list[str]]:
        """(the `extra` keys a provider of this kind does not take, the ones it takes); a custom
        provider takes them all."""
        taken = PROVIDER_OPTIONS.get(kind)
        if taken is None:
            return [], sorted(GenerationOptions.__annotations__)
        return sorted(set(self.extra) - taken), sorted(taken)

    def options_for(self, kind: str) -> dict[str, Any]:
        """The `extra` options a provider of this kind passes on (all of them for a custom one)."""
        taken = PROVIDER_OPTIONS.get(kind)
        return {k: v for k, v in self.extra.items() if taken is None or k in taken}


class ChatRequest(_Model):
    """One request to one provider: the router fills in `model` for each route it tries."""

    messages: list[ChatMessage]
    model: str
    params: GenerationParams = Field(default_factory=GenerationParams)
    # A hint, not part of the answer: a caller that waits for the whole answer lets the provider
    # send it in one piece (one JSON body instead of an NDJSON/SSE stream of tokens).
    stream: bool = True

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("a chat needs at least one message")
        return value


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(_Model):
    """Seconds, measured by us around the provider call (not the provider's own claims)."""

    first_token: float | None = None
    total: float = 0.0
    waited: float = 0.0  # rate-limit and retry back-off, included in total
    provider_total: float | None = None  # what the provider says it spent (Ollama's durations)
    # Completion tokens per second of the answering attempt's own generation (see `generation_rate`); None
    # when it cannot be measured (one piece, a cache hit): no figure rather than a wrong one.
    rate: float | None = None


def generation_rate(tokens: int, *, generation: float | None = None, chunks: int = 0, span: float = 0.0) -> float | None:
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


class Attempt(_Model):
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


class ChatResponse(_Model):
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


class ModelInfo(_Model):
    name: str
    provider: str
    size: int | None = None  # bytes
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    loaded: bool = False
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.provider}:{self.name}"


class PullProgress(_Model):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


HealthState = Literal["healthy", "unhealthy", "cooling_down", "rate_limited", "unknown"]


class ProviderStatus(_Model):
    provider: str
    state: HealthState = "unknown"
    url: str | None = None  # masked: never carries a secret
    latency: float | None = None
    models_loaded: list[str] = Field(default_factory=list)
    error: str | None = None
    version: str | None = None
    cooldown_until: float | None = None  # time.time() seconds
    checked_at: float = Field(default_factory=time.time)

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


class GPUProcess(_Model):
    pid: int
    memory_used: int  # bytes
    name: str | None = None


class GPUDevice(_Model):
    index: int
    name: str
    memory_used: int
    memory_total: int
    utilization: float | None = None  # percent
    temperature: float | None = None  # celsius
    power: float | None = None  # watts
    processes: list[GPUProcess] = Field(default_factory=list)

    @property
    def memory_free(self) -> int:
        return self.memory_total - self.memory_used


class GPUStats(_Model):
    source: Literal["nvml", "torch", "none"]
    devices: list[GPUDevice] = Field(default_factory=list)
    cpu_percent: float | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    reason: str | None = None  # why there is no GPU, in words

    @property
    def has_gpu(self) -> bool:
        return bool(self.devices)
