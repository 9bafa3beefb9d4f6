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
            self._validator = _validator(self.json_schema)
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
            from referencing.exceptions import Unresolvable

            try:
                found = [f"{e.json_path}: {_short(e.message)}" for e in self._validator.iter_errors(data)]
            except Unresolvable as exc:  # a `#/...` that leads nowhere: no answer could ever match
                raise ConfigError(
                    f"the schema's $ref {'#' + _short(str(exc.ref), 80).lstrip('#')!r} leads nowhere in it",
                    hint="name a part of the schema itself ('#/$defs/Name')",
                ) from None
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


def _validator(schema: dict[str, Any]) -> Any:
    """jsonschema's validator of the schema's own draft (2020-12 when it names none), over an
    empty registry: only the schema's own `#...` references are followed, never a URL (jsonschema
    fetches one by default). A schema that is not valid JSON Schema, or points elsewhere, is the
    caller's mistake, said in one line. Imported here: jsonschema takes longer than `%load_ext` may."""
    from jsonschema import Draft202012Validator, SchemaError
    from jsonschema.validators import validator_for
    from referencing import Registry

    elsewhere = next((ref for ref in _refs(schema) if not ref.startswith("#")), None)
    if elsewhere is not None:
        raise ConfigError(
            f"the schema's $ref {_short(elsewhere, 80)!r} is not inside it: no schema is fetched",
            hint="put what it names under $defs and write $ref: '#/$defs/Name'",
        )
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "its top"
        raise ConfigError(
            f"the schema is not a valid JSON Schema (at {where}: {_short(exc.message)})",
            hint="fix the schema, or give a pydantic model",
        ) from None
    return cls(schema, registry=Registry())


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _short(message: str, limit: int = 160) -> str:
    """jsonschema's message on one line, cut: it quotes the whole value, which may be long."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
