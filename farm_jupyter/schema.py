"""The typed contract of the server extension's routes: request and response models, their JSON
Schema, and TypeScript declarations generated from that schema.

    farm-jupyter schema [FOLDER]     # writes farm_jupyter.schema.json and farm_jupyter.d.ts

The models that the kernel already speaks (ChatMessage, GenerationParams, ChatResponse, ModelInfo,
ProviderStatus, GPUStats, PullProgress) come from `types.py`; this module adds only what exists
because there is HTTP in between: request bodies, envelopes, stream events and the error body.
`ROUTES` lists every route with its types, and is the single source for the schema's
`x-routes` table, the TypeScript `Routes` interface and the server's URL table.

The TypeScript converter is deliberately small: it handles what our schema uses (objects with
required/optional properties, arrays, `enum`/`const`, `anyOf`/`oneOf`, nullable, `$ref` into
`$defs`, `additionalProperties` maps) and raises on any other keyword that would change a type,
rather than widen it to `any`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

from .monitor import ModelSummary
from .types import (
    Attempt,
    ChatMessage,
    ChatResponse,
    GenerationParams,
    GPUStats,
    ModelInfo,
    ProviderStatus,
    PullProgress,
)

__all__ = [
    "API_PREFIX",
    "ROUTES",
    "ChatBody",
    "ErrorBody",
    "HealthResponse",
    "LoadStarted",
    "LoadStatus",
    "ModelsResponse",
    "SchemaError",
    "StatsResponse",
    "StreamRestart",
    "StreamStatus",
    "StreamText",
    "UnloadResponse",
    "json_schema",
    "schema_json",
    "typescript",
    "write_schema",
]

API_PREFIX = "farm-jupyter/api/"  # under the Jupyter server's base_url
SCHEMA_FILE = "farm_jupyter.schema.json"
TYPESCRIPT_FILE = "farm_jupyter.d.ts"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        messages = list(self.messages) if self.messages is not None else [ChatMessage(role="user", content=self.prompt or "")]
        if self.system:
            messages.insert(0, ChatMessage(role="system", content=self.system))
        return messages


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
    unloaded: bool


class StatsResponse(_Body):
    models: list[ModelSummary] = Field(description="Per `provider:model`, as `%farm stats` shows them.")
    in_flight: int = Field(description="Chat requests this server is answering right now.")
    cache: str = Field(description="The cache backend: memory, disk, redis or none.")


class StreamText(_Body):
    """A `data:` line of `POST chat/stream`: new text."""

    text: str


class StreamRestart(_Body):
    """A `data:` line of `POST chat/stream`: the text so far is void (restarted on a fallback)."""

    restart: Literal[True] = True


class StreamStatus(_Body):
    """A `data:` line of `POST chat/stream`: a note (a retry, a rate-limit wait), not answer text."""

    status: str


# -- the route table --------------------------------------------------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


_PROVIDER_QUERY = {
    "type": "object",
    "properties": {"provider": {"type": "string", "description": "Only this provider."}},
    "additionalProperties": False,
}

ROUTES: list[dict[str, Any]] = [
    {"method": "POST", "path": "chat", "request": _ref("ChatBody"), "response": _ref("ChatResponse")},
    {
        "method": "POST",
        "path": "chat/stream",
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
    {"method": "GET", "path": "models", "query": _PROVIDER_QUERY, "response": _ref("ModelsResponse")},
    {"method": "GET", "path": "health", "query": _PROVIDER_QUERY, "response": _ref("HealthResponse")},
    {"method": "POST", "path": "models/{name}/load", "response": _ref("LoadStarted"), "status": 202},
    {"method": "GET", "path": "models/{name}/load", "response": _ref("LoadStatus")},
    {"method": "POST", "path": "models/{name}/unload", "response": _ref("UnloadResponse")},
    {"method": "GET", "path": "stats", "response": _ref("StatsResponse")},
    {"method": "GET", "path": "gpu", "response": _ref("GPUStats")},
]

_REQUESTS: list[type[BaseModel]] = [ChatBody]
_RESPONSES: list[type[BaseModel]] = [
    ChatResponse,
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
        "$comment": "Generated from farm_jupyter/schema.py by `farm-jupyter schema`; do not edit.",
        "description": f"Routes under {{base_url}}{API_PREFIX} of a Jupyter server with the farm_jupyter.server extension.",
        "x-routes": ROUTES,
        "$defs": {name: defs["$defs"][name] for name in names},
    }


def schema_json() -> str:
    """`json_schema()` as the text of the checked-in file."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# -- JSON Schema -> TypeScript ----------------------------------------------------------------

# Keywords that only annotate or constrain values: they never change the TypeScript type.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "format", "deprecated", "readOnly", "writeOnly",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
})
_SCALARS = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean", "null": "null"}
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")


class SchemaError(ValueError):
    """The schema uses something the TypeScript converter does not translate."""


def _literal(value: Any) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value, ensure_ascii=False)
    raise SchemaError(f"cannot write {value!r} as a TypeScript literal type")


def _union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    if "unknown" in unique:
        return "unknown"
    return " | ".join(unique) if unique else "never"


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else json.dumps(name)


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    lines = text.replace("*/", "*\\/").strip().splitlines()
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in lines), f"{indent} */"]


class _Converter:
    def __init__(self, defs: Mapping[str, Any]) -> None:
        self.defs = defs

    def type_of(self, schema: Any, indent: str = "") -> str:
        """The TypeScript type for one schema node (inline)."""
        if schema is True or schema == {}:
            return "unknown"
        if schema is False:
            return "never"
        if not isinstance(schema, Mapping):
            raise SchemaError(f"a schema must be an object or a boolean, not {schema!r}")
        unknown = set(schema) - _ANNOTATIONS - {
            "$ref", "type", "enum", "const", "anyOf", "oneOf", "allOf", "items", "properties",
            "required", "additionalProperties", "discriminator",
        }
        if unknown:
            raise SchemaError(f"unsupported JSON Schema keyword(s): {', '.join(sorted(unknown))}")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            return _union([_literal(v) for v in schema["enum"]])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return _union([self.type_of(s, indent) for s in schema[key]])
        if "allOf" in schema:
            parts = [self.type_of(s, indent) for s in schema["allOf"]]
            return " & ".join(f"({p})" if "|" in p else p for p in parts)
        kind = schema.get("type")
        if isinstance(kind, list):
            return _union([self.type_of({**schema, "type": k}, indent) for k in kind])
        if kind == "array":
            item = self.type_of(schema.get("items", {}), indent)
            return f"({item})[]" if re.search(r"[|&]", item) else f"{item}[]"
        if kind == "object" or "properties" in schema or "additionalProperties" in schema:
            return self._object(schema, indent)
        if kind in _SCALARS:
            return _SCALARS[kind]
        if kind is None:
            return "unknown"
        raise SchemaError(f"unsupported JSON Schema type {kind!r}")

    def _ref(self, ref: str) -> str:
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix):] not in self.defs:
            raise SchemaError(f"unresolvable $ref {ref!r}: only {prefix}<Name> into $defs is supported")
        return ref[len(prefix):]

    def _object(self, schema: Mapping[str, Any], indent: str) -> str:
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True if not props else False)
        if not props:
            if extra is False:
                return "Record<string, never>"
            return f"Record<string, {self.type_of(extra, indent)}>"
        return "{\n" + "\n".join(self.members(schema, indent + "  ")) + f"\n{indent}}}"

    def members(self, schema: Mapping[str, Any], indent: str) -> list[str]:
        props: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        lines: list[str] = []
        for name, prop in props.items():
            lines += _comment(prop.get("description") if isinstance(prop, Mapping) else None, indent)
            optional = "" if name in required else "?"
            lines.append(f"{indent}{_key(name)}{optional}: {self.type_of(prop, indent)};")
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            # TypeScript wants every named property's type to fit the index signature too
            # (and `undefined`, for an optional one).
            types = [self.type_of(extra, indent), *(self.type_of(p, indent) for p in props.values())]
            if set(props) - required:
                types.append("undefined")
            lines.append(f"{indent}[key: string]: {_union(types)};")
        return lines

    def declaration(self, name: str, schema: Mapping[str, Any]) -> list[str]:
        lines = _comment(schema.get("description"), "")
        combined = any(k in schema for k in ("anyOf", "oneOf", "allOf", "$ref", "enum", "const"))
        if schema.get("properties") and not combined:
            return [*lines, f"export interface {name} {{", *self.members(schema, "  "), "}"]
        return [*lines, f"export type {name} = {self.type_of(schema)};"]


def typescript(schema: Mapping[str, Any] | None = None) -> str:
    """TypeScript declarations for `schema` (default: `json_schema()`): one per `$defs` entry,
    plus a `Routes` interface when the schema has an `x-routes` table."""
    schema = json_schema() if schema is None else schema
    defs: Mapping[str, Any] = schema.get("$defs", {})
    conv = _Converter(defs)
    out = [
        "// Generated from farm_jupyter/schema.py by `farm-jupyter schema`; do not edit.",
        *(f"// {line}" for line in str(schema.get("description", "")).splitlines() if line),
        "",
    ]
    for name in sorted(defs):
        out += conv.declaration(name, defs[name])
        out.append("")
    routes = schema.get("x-routes")
    if routes:
        out += [
            "/** Every route, keyed by method and path (relative to `{base_url}farm-jupyter/api/`). */",
            "export interface Routes {",
        ]
        for route in routes:
            key = f"{route['method']} {route['path']}"
            fields = []
            for part in ("query", "request", "response", "events"):
                if part in route:
                    fields.append(f"{part}: {conv.type_of(route[part], '    ')};")
            status = route.get("status", 200)
            fields.append(f"status: {status};")
            out.append(f"  {json.dumps(key)}: {{")
            out += [f"    {f}" for f in fields]
            out.append("  };")
        out += ["}", ""]
    return "\n".join(out)


def write_schema(folder: str | Path = "schema") -> list[Path]:
    """Write `farm_jupyter.schema.json` and `farm_jupyter.d.ts` into `folder`; returns their paths."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((SCHEMA_FILE, schema_json()), (TYPESCRIPT_FILE, typescript())):
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
