"""Structured answers: `chat(..., schema=Person)` returns a validated object in `r.parsed`.

A schema is a pydantic model, any type pydantic can validate (`list[Person]`), or a JSON Schema
(a dict). Its JSON Schema goes to the provider (Ollama `format`, OpenAI `response_format`) and into
the prompt, for models that do not constrain their output; the answer is validated here, and an
answer that does not match is asked again with what was wrong (`steps.py`), a bounded number of
times.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import ConfigError, FarmError, problems
from .types import ChatMessage

_FENCE = re.compile(r"```[\w-]*\s*\n(.*?)\n?```", re.S)


class SchemaMismatch(FarmError):
    """Every answer, re-asks included, failed to match the schema; `.response` is the last one."""

    def __init__(self, message: str, *, hint: str | None = None, response: Any = None) -> None:
        self.response = response
        super().__init__(message, hint=hint)


class Schema:
    """What an answer must be: its JSON Schema for the model, and a validator for the answer."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        if isinstance(spec, Mapping):
            if not spec:
                raise ConfigError("the schema is empty", hint="give a pydantic model or a JSON Schema with a type")
            self.json_schema: dict[str, Any] = dict(spec)
            self.name = str(spec.get("title") or "the schema")
            self._adapter: TypeAdapter[Any] | None = None
        else:
            try:
                self._adapter = TypeAdapter(spec)
                self.json_schema = self._adapter.json_schema()
            except Exception as exc:  # noqa: BLE001 - pydantic's many ways to refuse a type, said once
                raise ConfigError(
                    f"{spec!r} cannot be a schema: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                    hint="give a pydantic model, a type such as list[int], or a JSON Schema dict",
                ) from None
            self.name = getattr(spec, "__name__", None) or str(self.json_schema.get("title") or repr(spec))

    def instruction(self) -> ChatMessage:
        schema = json.dumps(self.json_schema, ensure_ascii=False, sort_keys=True)
        return ChatMessage(
            role="system",
            content=f"Answer with JSON only: one value that matches this JSON Schema, no prose, no code fences.\n{schema}",
        )

    def parse(self, text: str) -> Any:
        """The validated answer; ValueError with a short reason when it is not one."""
        data = _json_of(text)
        if self._adapter is None:
            found = list(_check(data, self.json_schema, self.json_schema, "$"))
            if found:
                raise ValueError("; ".join(found[:3]))
            return data
        try:
            return self._adapter.validate_python(data)
        except ValidationError as exc:
            raise ValueError("; ".join(f"{p.place or 'the answer'}: {p.why}" for p in problems(exc))) from None

    @staticmethod
    def reask(problem: str) -> ChatMessage:
        return ChatMessage(
            role="user",
            content=f"That answer does not match the schema ({problem}). Reply again with only the corrected JSON.",
        )


def _json_of(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        for block in _FENCE.findall(text):  # a model that wrapped its JSON in a fence anyway
            try:
                return json.loads(block)
            except ValueError:
                continue
        raise ValueError(f"the answer is not JSON ({first.msg} at character {first.pos})") from None


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "null": (type(None),),
}


def _check(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], where: str) -> Iterator[str]:
    """A JSON Schema's common keywords (type, properties, required, additionalProperties, items,
    enum, const, anyOf/oneOf/allOf, $ref into $defs, string and number bounds): enough to tell a
    model what was wrong. Yields one line per problem."""
    if "$ref" in schema:
        ref = str(schema["$ref"])
        target: Any = root
        for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else []:
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        yield from _check(value, target or {}, root, where)
        return
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        ok = any(
            isinstance(value, _TYPES.get(k, object)) and not (k in ("integer", "number") and isinstance(value, bool))
            for k in kinds
        )
        if not ok:
            yield f"{where}: expected {' or '.join(kinds)}, got {type(value).__name__}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}: {value!r} is not one of {schema['enum']!r}"
    if "const" in schema and value != schema["const"]:
        yield f"{where}: expected {schema['const']!r}"
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(not list(_check(value, s, root, where)) for s in schema[key]):
            yield f"{where}: matches none of the allowed shapes"
    for sub in schema.get("allOf", []):
        yield from _check(value, sub, root, where)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                yield f"{where}.{name}: missing"
        for name, item in value.items():
            if name in props:
                yield from _check(item, props[name], root, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                yield f"{where}.{name}: not allowed"
    if isinstance(value, list):
        if "items" in schema and isinstance(schema["items"], Mapping):
            for i, item in enumerate(value):
                yield from _check(item, schema["items"], root, f"{where}[{i}]")
        if len(value) < schema.get("minItems", 0):
            yield f"{where}: at least {schema['minItems']} items"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            yield f"{where}: at least {schema['minLength']} characters"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield f"{where}: does not match {schema['pattern']!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{where}: below the minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{where}: above the maximum {schema['maximum']}"
