"""What a loopback model makes of a request, whatever the protocol: the prompt it reads, the answer
it gives, the words it counts and the vectors it embeds. Deterministic, so tests can assert on it.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

_CHUNK_RE = re.compile(r"\S+\s*|\s+")


@dataclass
class Said:
    """What a loopback model answers: text, and maybe reasoning and tool calls
    (`{"name": ..., "arguments": {...}}` each). A `reply` callable may return one, or a dict with
    these keys, or a string."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def example_of(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """The smallest value that matches a JSON Schema's common keywords: what a model constrained by
    `format` / `response_format` would at least produce. Defaults, enums and consts are used first."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return None
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return example_of(target, root, depth + 1)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_of(schema[key][0], root, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_of(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example_of(schema.get("items", {}), root, depth + 1) for _ in range(schema.get("minItems", 1))]
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "x" * int(schema.get("minLength", 1))


def filled(prefix: str, suffix: str) -> str:
    """What the loopback model puts at a cursor (fill-in-the-middle): a few words that name the
    text around it, so a test can tell what it was sent and see it stream."""
    before = prefix.rstrip().rsplit("\n", 1)[-1][-16:]
    after = suffix.lstrip().split("\n", 1)[0][:16]
    return f"fill_{len(prefix)}  # after {before!r} before {after!r}"


def chunks(text: str) -> list[str]:
    """The pieces a stream sends: a word with the space after it, one token each."""
    return _CHUNK_RE.findall(text)


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; image parts have no text
        return " ".join(str(p["text"]) for p in content if isinstance(p, dict) and "text" in p)
    return "" if content is None else str(content)


def last_user(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return text_of(message.get("content"))
    return ""


def images_of(message: Any) -> int:
    """How many images a message carries, in either protocol."""
    if not isinstance(message, dict):
        return 0
    content = message.get("content")
    parts = (
        sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
        if isinstance(content, list)
        else 0
    )
    return parts + len(message.get("images") or [])


def since_user(messages: Any) -> list[dict[str, Any]]:
    """The messages after the last user message (tool results of this turn)."""
    if not isinstance(messages, list):
        return []
    tail: list[dict[str, Any]] = []
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            break
        if isinstance(m, dict):
            tail.insert(0, m)
    return tail


def words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def message_words(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return words(*(text_of(m.get("content")) for m in messages if isinstance(m, dict)))


def embedding(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
