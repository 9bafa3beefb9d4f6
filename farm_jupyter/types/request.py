"""What is asked: the generation parameters (a closed set of options per provider) and the request."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from .messages import BaseType, ChatMessage, ToolSpec


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
    "ollama": _SAMPLING
    | {
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "num_ctx",
        "num_keep",
        "repeat_last_n",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "tfs_z",
    },
    "openai": frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "user", "reasoning_effort"}),
    "huggingface": _SAMPLING
    | {
        "min_new_tokens",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "num_beams",
        "length_penalty",
        "epsilon_cutoff",
        "eta_cutoff",
        "suppress_tokens",
        "begin_suppress_tokens",
        "bad_words_ids",
        "renormalize_logits",
        "max_time",
    },
    "llamacpp": frozenset(
        {
            "top_k",
            "min_p",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "grammar",
        }
    ),
}

# Keys people reach for that params never take, with what to do instead.
_REFUSED = {
    **dict.fromkeys(("model", "messages", "prompt", "stream"), "it belongs to the request, not to params"),
    **dict.fromkeys(("num_predict", "max_new_tokens", "max_length", "max_completion_tokens"), "use params.max_tokens"),
    **{k: f"use params.{k}" for k in ("temperature", "top_p", "seed", "stop", "format")},
    "options": "put Ollama's options in params.extra directly (e.g. num_ctx)",
    **dict.fromkeys(
        (
            "trust_remote_code",
            "custom_generate",
            "assistant_model",
            "assistant_tokenizer",
            "generation_config",
            "streamer",
            "stopping_criteria",
            "logits_processor",
            "prefix_allowed_tokens_fn",
            "synced_gpus",
            "watermarking_config",
            "cache_implementation",
            "tokenizer",
        ),
        "it loads or runs code: pass it to the provider in your own code, never in params",
    ),
}


class GenerationParams(BaseType):
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
    # With tools: "auto" (None: answer or call), "required" (a call), "none" (an answer), or a tool's name.
    tool_choice: str | None = None
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


class ChatRequest(BaseType):
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
