"""The typed contract of the server extension's routes: request and response models, their JSON
Schema, and (in `typescript`) the TypeScript declarations and client generated from that schema.

    farm-jupyter schema [FOLDER]     # farm_jupyter.schema.json, farm_jupyter.d.ts, farm_jupyter_client.ts

The models that the kernel already speaks (ChatMessage, GenerationParams, ChatResponse, ModelInfo,
ProviderStatus, GPUStats, PullProgress) come from `types.py`; this module adds only what exists
because there is HTTP in between: request bodies, envelopes, stream events and the error body.
`ROUTES` lists every route with its types, and is the single source for the schema's
`x-routes` table, the TypeScript `Routes` interface, the client's methods and the server's URL
table (each handler says which path it serves; `handlers.url_specs` checks they agree).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

from ..records import ModelSummary
from ..types import (
    Attempt,
    ChatMessage,
    ChatResponse,
    GenerationParams,
    GPUStats,
    ModelInfo,
    ProviderStatus,
    PullProgress,
)
from . import bounds
from .typescript import client, typescript

__all__ = [
    "API_PREFIX",
    "ROUTES",
    "ChatBody",
    "CompletionBody",
    "CompletionDone",
    "CompletionState",
    "check_model_name",
    "ErrorBody",
    "HealthResponse",
    "LoadStarted",
    "LoadStatus",
    "ModelsResponse",
    "StatsResponse",
    "StreamRestart",
    "StreamStatus",
    "StreamText",
    "UnloadResponse",
    "json_schema",
    "route_path",
    "schema_json",
    "write_schema",
]

API_PREFIX = "farm-jupyter/api/"  # under the Jupyter server's base_url
SCHEMA_FILE = "farm_jupyter.schema.json"
TYPESCRIPT_FILE = "farm_jupyter.d.ts"
CLIENT_FILE = "farm_jupyter_client.ts"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


_NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
MAX_NAME = 256


def check_model_name(name: str) -> str:
    """A model name or address as a URL path and a provider may safely take it: letters, digits
    and `._:/@+-`, starting with a letter or digit, no empty, `.` or `..` path segment."""
    if len(name) > MAX_NAME:
        raise ValueError(f"a model name is at most {MAX_NAME} characters")
    if not _NAME_CHARS.fullmatch(name) or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(
            "a model name is letters, digits and ._:/@+- (no '..' or empty path parts), like ollama:llama3.1"
        )
    return name


# -- requests ---------------------------------------------------------------------------------


class ChatBody(_Body):
    """The body of `POST chat` and `POST chat/stream`: a `prompt` or a list of `messages`."""

    prompt: str | None = Field(default=None, description="The question, as one user message.")
    messages: list[ChatMessage] | None = Field(
        default=None,
        validate_default=True,
        description="The whole conversation instead of a prompt; the last user message is the question.",
    )
    model: str | None = Field(
        default=None,
        description='"provider:model", a provider, a model or an alias; the environment\'s default when absent.',
    )
    system: str | None = Field(default=None, description="A system message put before the others.")
    params: GenerationParams = Field(default_factory=GenerationParams)
    no_cache: bool = Field(default=False, description="Neither read nor write the response cache.")
    refresh: bool = Field(default=False, description="Skip a cached answer, and store the new one.")
    fallback: bool = Field(default=True, description="Try the environment's fallback providers on failure.")

    @field_validator("messages", mode="before")
    @classmethod
    def _count_messages(cls, value: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_messages")
        return value if limit is None else bounds.count(value, limit, "messages", "messages")

    @field_validator("params", mode="before")
    @classmethod
    def _bound_params(cls, value: Any) -> Any:
        return bounds.raw_params(value)

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the prompt is empty")
        return value

    @field_validator("messages")
    @classmethod
    def _prompt_or_messages(cls, value: list[ChatMessage] | None, info: ValidationInfo) -> list[ChatMessage] | None:
        if "prompt" not in info.data:  # the prompt itself was invalid: that error says enough
            return value
        prompt = info.data["prompt"]
        if value is None and prompt is None:
            raise ValueError("give a `prompt` or a list of `messages`")
        if value is not None and prompt is not None:
            raise ValueError("give a `prompt` or `messages`, not both")
        if value is not None and not any(m.role == "user" and m.content.strip() for m in value):
            raise ValueError("no user message with text")
        return value

    def to_messages(self) -> list[ChatMessage]:
        messages = (
            list(self.messages) if self.messages is not None else [ChatMessage(role="user", content=self.prompt or "")]
        )
        if self.system:
            messages.insert(0, ChatMessage(role="system", content=self.system))
        return messages


MAX_FILL_CHARS = 20_000  # the text before or after the cursor, and each cell above
MAX_FILL_CELLS = 50


class CompletionBody(_Body):
    """The body of `POST complete`: the text around the cursor and the cells above it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prefix: str = Field(max_length=MAX_FILL_CHARS, description="The cell's text before the cursor.")
    suffix: str = Field(default="", max_length=MAX_FILL_CHARS, description="The cell's text after the cursor.")
    cells: list[Annotated[str, Field(max_length=MAX_FILL_CHARS)]] = Field(
        default_factory=list, max_length=MAX_FILL_CELLS, description="The code cells above, oldest first."
    )
    model: Annotated[str, AfterValidator(check_model_name)] | None = Field(
        default=None, description="The Lab's model setting; the server's `[completion] model` when absent."
    )
    language: str = Field(default="python", pattern=r"^[A-Za-z0-9_+#.-]{1,32}$")


# -- responses --------------------------------------------------------------------------------


class ErrorBody(_Body):
    """Every error response (4xx, 5xx) and the `error` event of a stream."""

    error: str = Field(description="One line: what failed and what to do.")
    field: str | None = Field(default=None, description='The body field at fault, dotted ("params.temperature").')
    type: str | None = Field(default=None, description="The farm_jupyter error class, for 502s.")
    attempts: list[Attempt] | None = Field(default=None, description="What each provider said, when all failed.")


class ModelsResponse(_Body):
    models: list[ModelInfo]


class HealthResponse(_Body):
    providers: list[ProviderStatus]
    cache: str = Field(description='The cache backend, or "off: <why>" when it would not open (answers go uncached).')


LoadState = Literal["running", "done", "error"]


class LoadStatus(_Body):
    """The latest state of a background `POST models/{name}/load`."""

    model: str = Field(description="The name as given in the URL.")
    address: str = Field(description='The resolved "provider:model".')
    state: LoadState
    progress: PullProgress | None = Field(default=None, description="The latest progress line, if any.")
    error: str | None = None
    started_at: float = Field(description="time.time() seconds")
    finished_at: float | None = None


class LoadStarted(LoadStatus):
    """The 202 answer of `POST models/{name}/load`."""

    progress_url: str = Field(description="GET it for the latest LoadStatus.")


class UnloadResponse(_Body):
    model: str
    address: str
    unloaded: bool = Field(description="Whether it was loaded (and so was unloaded now); false for one never loaded.")


class StatsResponse(_Body):
    models: list[ModelSummary] = Field(description="Per `provider:model`, as `%farm stats` shows them.")
    in_flight: int = Field(description="Chat requests this server is answering right now.")
    cache: str = Field(description='The cache backend (memory, disk, redis, none), or "off: <why>".')


class StreamText(_Body):
    """A `data:` line of `POST chat/stream`: new text."""

    text: str


class StreamRestart(_Body):
    """A `data:` line of `POST chat/stream`: the text so far is void (restarted on a fallback)."""

    restart: Literal[True] = True


class StreamStatus(_Body):
    """A `data:` line of `POST chat/stream`: a note (a retry, a rate-limit wait), not answer text."""

    status: str


class CompletionState(_Body):
    """`GET complete`: whether inline completion is on here, with which model, and why not."""

    enabled: bool
    model: str = Field(description="The \"provider:model\" that completes (the Lab's setting, else farm.toml's).")
    locality: Literal["local", "loopback", "remote"] = Field(description="Where cell text goes as you type.")
    reason: str | None = Field(description="Why it is off, in one line with what to do; null when on.")
    debounce_ms: int
    max_tokens: int


class CompletionDone(_Body):
    """The `done` event of `POST complete`: the whole completion, and who gave it."""

    text: str
    model: str = Field(description='The "provider:model" that answered (a fallback may differ from the one asked).')
    cached: bool


# -- the route table --------------------------------------------------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


_ONE_PROVIDER = {
    "type": "object",
    "properties": {"provider": {"type": "string", "description": "Only this provider."}},
    "additionalProperties": False,
}
_PROVIDERS = {
    "type": "object",
    "properties": {
        "provider": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "Only these providers (repeat the parameter for several).",
        }
    },
    "additionalProperties": False,
}
_NO_QUERY: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}

# `name` is the client's method; `{name}` in a path is a model name (URL-escaped by the client).
ROUTES: list[dict[str, Any]] = [
    {
        "name": "chat",
        "method": "POST",
        "path": "chat",
        "query": _NO_QUERY,
        "request": _ref("ChatBody"),
        "response": _ref("ChatResponse"),
    },
    {
        "name": "streamChat",
        "method": "POST",
        "path": "chat/stream",
        "query": _NO_QUERY,
        "request": _ref("ChatBody"),
        "response": {"type": "string", "description": "text/event-stream; see `events`"},
        "events": {
            "type": "object",
            "properties": {
                "message": {"anyOf": [_ref("StreamText"), _ref("StreamRestart"), _ref("StreamStatus")]},
                "done": _ref("ChatResponse"),
                "error": _ref("ErrorBody"),
            },
            "required": ["message", "done", "error"],
            "additionalProperties": False,
        },
    },
    {
        "name": "completionState",
        "method": "GET",
        "path": "complete",
        "query": {
            "type": "object",
            "properties": {"model": {"type": "string", "description": "The Lab's model setting, checked here."}},
            "additionalProperties": False,
        },
        "response": _ref("CompletionState"),
    },
    {
        "name": "complete",
        "method": "POST",
        "path": "complete",
        "request": _ref("CompletionBody"),
        "response": {"type": "string", "description": "text/event-stream; see `events`"},
        "events": {
            "type": "object",
            "properties": {
                "message": _ref("StreamText"),
                "done": _ref("CompletionDone"),
                "error": _ref("ErrorBody"),
            },
            "required": ["message", "done", "error"],
            "additionalProperties": False,
        },
    },
    {"name": "models", "method": "GET", "path": "models", "query": _ONE_PROVIDER, "response": _ref("ModelsResponse")},
    {"name": "health", "method": "GET", "path": "health", "query": _PROVIDERS, "response": _ref("HealthResponse")},
    {
        "name": "load",
        "method": "POST",
        "path": "models/{name}/load",
        "query": _NO_QUERY,
        "response": _ref("LoadStarted"),
        "status": 202,
    },
    {
        "name": "loadStatus",
        "method": "GET",
        "path": "models/{name}/load",
        "query": _NO_QUERY,
        "response": _ref("LoadStatus"),
    },
    {
        "name": "unload",
        "method": "POST",
        "path": "models/{name}/unload",
        "query": _NO_QUERY,
        "response": _ref("UnloadResponse"),
    },
    {"name": "stats", "method": "GET", "path": "stats", "query": _NO_QUERY, "response": _ref("StatsResponse")},
    {"name": "gpu", "method": "GET", "path": "gpu", "query": _NO_QUERY, "response": _ref("GPUStats")},
]


def route_path(route: dict[str, Any], **params: str) -> str:
    """A route's path with its `{name}` parts filled in (already escaped by the caller)."""
    path: str = route["path"]
    for key, value in params.items():
        path = path.replace("{" + key + "}", value)
    return path


_REQUESTS: list[type[BaseModel]] = [ChatBody, CompletionBody]
_RESPONSES: list[type[BaseModel]] = [
    ChatResponse,
    CompletionDone,
    CompletionState,
    ErrorBody,
    GPUStats,
    HealthResponse,
    LoadStarted,
    LoadStatus,
    ModelsResponse,
    StatsResponse,
    StreamRestart,
    StreamStatus,
    StreamText,
    UnloadResponse,
]


class _Generator(GenerateJsonSchema):
    """Responses always carry every field (the server never drops defaults), so in serialisation
    mode a field with a default is still required: the TypeScript reader need not test for it."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return not field.get("serialization_exclude")
        return super().field_is_required(field, total)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of every request and response, with the route table."""
    pairs = [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _RESPONSES]
    _, defs = models_json_schema(pairs, ref_template="#/$defs/{model}", schema_generator=_Generator)  # type: ignore[arg-type]
    names = sorted(defs.get("$defs", {}))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "farm_jupyter server API",
        "$comment": "Generated from farm_jupyter/server/schema.py by `farm-jupyter schema`; do not edit.",
        "description": f"Routes under {{base_url}}{API_PREFIX} of a Jupyter server with the farm_jupyter.server extension.",
        "x-prefix": API_PREFIX,
        "x-routes": ROUTES,
        "$defs": {name: defs["$defs"][name] for name in names},
    }


def schema_json() -> str:
    """`json_schema()` as the text of the checked-in file."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(folder: str | Path = "schema") -> list[Path]:
    """Write the JSON Schema, the TypeScript declarations and the TypeScript client into `folder`;
    returns their paths."""
    schema = json_schema()
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        (SCHEMA_FILE, schema_json()),
        (TYPESCRIPT_FILE, typescript(schema)),
        (CLIENT_FILE, client(schema)),
    ):
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
