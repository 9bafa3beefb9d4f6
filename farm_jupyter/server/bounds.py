"""The one place that bounds an HTTP body before it costs anything.

A route that takes generation input (chat, chat/stream, and any later one such as a completion
route) follows the same steps:

1. its body model calls `count` and `raw_params` from `mode="before"` validators (see
   `schema.ChatBody`), and the handler parses it with `FarmHandler.parse`: strict types (no
   `"yes"` -> True, no `"0.5"` -> 0.5; the kernel API stays lax for numpy integers), counts checked
   while parsing, before the items are built (`messages`, `stop`, `logit_bias`, `tools`), and the
   size and depth of `response_schema` and `tools` (grammars are compiled from them);
2. `check_text` over its text fields, naming the one that made it too long (`system`, `prompt`...);
3. `check_params` for the ranges: `seed` in 0..2^32-1, `max_tokens` within the model's window (the
   `Admitted.window` from `allow.Allowlist.admit`, or `MAX_TOKENS` where it is unknown).

A refusal is `OutOfBounds` (the handlers answer it 400, naming the field that was wrong).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import UnknownProvider
from ..types import ChatMessage, GenerationParams

MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 1024
MAX_TOKENS = 32_768  # where the model's window is unknown
MAX_SEED = 2**32 - 1
MAX_TOOLS = 64
MAX_SHAPE_BYTES = 64 * 1024  # response_schema, tools: as JSON
MAX_SHAPE_DEPTH = 32
MAX_PROVIDERS = 32  # in one query
MAX_PROVIDER_NAME = 64


class OutOfBounds(Exception):
    """A field over a bound. Raised inside a validator it stops the parse at once: it is not a
    ValueError, so pydantic lets it out."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TooManyLoads(Exception):
    """Every one of `max_load_jobs` loads is still running: a new one (route or chat) waits its turn (429)."""


def count(value: Any, limit: int, field: str, what: str) -> Any:
    """For a `mode="before"` validator: a list or object over `limit` items stops the parse."""
    if isinstance(value, (list, dict)) and len(value) > limit:
        raise OutOfBounds(field, f"{len(value)} {what}, over the limit of {limit}: send fewer")
    return value


def raw_params(value: Any) -> Any:
    """The raw `params` object, checked before pydantic builds it (a 450,000-key `logit_bias`
    must not be validated key by key first)."""
    if not isinstance(value, dict):
        return value
    count(value.get("stop"), MAX_STOP, "params.stop", "stop strings")
    extra = value.get("extra")
    if isinstance(extra, dict):
        count(extra.get("logit_bias"), MAX_LOGIT_BIAS, "params.extra.logit_bias", "keys")
    count(value.get("tools"), MAX_TOOLS, "params.tools", "tools")
    for field in ("response_schema", "tools"):
        if value.get(field) is not None:
            shape(value[field], f"params.{field}")
    return value


def shape(value: Any, field: str) -> None:
    """JSON no deeper than MAX_SHAPE_DEPTH and no larger than MAX_SHAPE_BYTES, checked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_SHAPE_DEPTH:
            raise OutOfBounds(field, f"nested deeper than {MAX_SHAPE_DEPTH} levels: flatten it")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    size = len(json.dumps(value))
    if size > MAX_SHAPE_BYTES:
        raise OutOfBounds(field, f"{size} bytes as JSON, over the limit of {MAX_SHAPE_BYTES}: send a smaller one")


def check_params(params: GenerationParams, window: int | None = None) -> None:
    """The ranges of the parsed params (`window`: the model's context, when known)."""
    if params.stop is not None:
        long = next((s for s in params.stop if len(s) > MAX_STOP_CHARS), None)
        if long is not None:
            raise OutOfBounds("params.stop", f"a stop string of {len(long)} characters, over {MAX_STOP_CHARS}")
    if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
        raise OutOfBounds("params.seed", f"{params.seed} is not in 0..{MAX_SEED}")
    limit = window or MAX_TOKENS
    if params.max_tokens is not None and params.max_tokens > limit:
        where = "the model's context window" if window else "the limit"
        raise OutOfBounds("params.max_tokens", f"{params.max_tokens} is over {where} of {limit} tokens")


def check_text(fields: dict[str, int], limit: int) -> None:
    """The characters of all fields together within `limit`; the error names the largest field."""
    total = sum(fields.values())
    if total > limit:
        field = max(fields, key=lambda k: fields[k])
        raise OutOfBounds(field, f"{total} characters, over the limit of {limit}: send less")


def text_sizes(system: str | None, prompt: str | None, messages: list[ChatMessage] | None) -> dict[str, int]:
    sizes = {"system": len(system or ""), "prompt": len(prompt or "")}
    sizes["messages"] = sum(len(m.content) for m in messages or [])
    return sizes


def check_providers(names: list[str], check: Callable[[str], None]) -> list[str]:
    """A query's `provider` values, each once: at most MAX_PROVIDERS, each passed to `check`
    (which raises UnknownProvider for a name that does not exist)."""
    unique = list(dict.fromkeys(names))
    if len(unique) > MAX_PROVIDERS:
        raise OutOfBounds("provider", f"{len(unique)} providers, over the limit of {MAX_PROVIDERS}")
    for name in unique:
        check(name[:MAX_PROVIDER_NAME])  # no provider has a longer name: the error need not echo it all
        if len(name) > MAX_PROVIDER_NAME:
            raise UnknownProvider(f"no provider named {name[:MAX_PROVIDER_NAME]!r}...")
    return unique
