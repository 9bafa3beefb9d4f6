"""What a conversation is made of: messages, the images and tool calls they carry, tool runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

Role = Literal["system", "user", "assistant", "tool"]


class BaseType(BaseModel):
    """The vocabulary's base: an unknown field is refused, not dropped."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class ImagePart(BaseType):
    """An image for a vision model: base64 bytes, and the one line a text-only model gets instead."""

    data: str  # base64, no `data:` prefix
    media_type: str = "image/png"
    alt: str = "[an image]"


class ToolCall(BaseType):
    """A model asking to call one of the tools it was given."""

    id: str | None = None  # OpenAI's call id, sent back with the result; Ollama has none
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(BaseType):
    """A tool as described to a model: what both protocols call a function."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolRun(BaseType):
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


class ChatMessage(BaseType):
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
