"""Constrained decoding on the local engines: what a schema or a set of tools becomes before an
engine turns it into a grammar, what an engine cannot enforce, and a tool call read back out of
the constrained text.

A schema is made strict first: an object takes only the properties it names unless the schema
says otherwise (`additionalProperties`), so a small model cannot pad the answer with keys of its
own. Tools become one JSON shape, `{"name": <one of the tools>, "arguments": <its parameters>}`;
in "auto" an answer comes in the same envelope under a reserved name (`{"name": "answer",
"arguments": {"text": ...}}`), so that the model's first tokens choose between calling and
answering: a plain-text alternative lost to the text every time on SmolLM2-135M, which never chose
a call; in the envelope it calls for the weather and answers "2 + 3". The keywords an engine cannot enforce are left to the validation and the bounded re-ask
in `steps.py`, and said once in the answer's footer.

Nothing here imports an engine.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest
from ..types import ChatMessage, ChatRequest, ToolCall, ToolSpec

# llama.cpp's converter (llama_cpp.llama_grammar) ignores these without a word; an integer range of
# at most ENUM_RANGE values is enforced by turning it into an enum first.
GBNF_IGNORES = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "uniqueItems",
    "contains",
    "minProperties",
    "maxProperties",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "if",
    "not",
)
# llguidance enforces numeric bounds and array/string lengths; it refuses (raises on) what it cannot do.
LLGUIDANCE_IGNORES = ("multipleOf", "uniqueItems", "contains", "dependentSchemas", "if", "not")
ENUM_RANGE = 256
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def strict(schema: Mapping[str, Any], *, integer_enums: bool = False) -> dict[str, Any]:
    """A copy of `schema` whose objects take no properties they do not name (unless the schema
    says `additionalProperties`); with `integer_enums`, each integer range of at most ENUM_RANGE
    values becomes an enum, which an engine without numeric bounds still enforces."""
    out = copy.deepcopy(dict(schema))
    for node in _nodes(out):
        kinds = node.get("type")
        if (kinds == "object" or "properties" in node) and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if integer_enums and kinds == "integer" and "enum" not in node:
            low, high = _range(node)
            if low is not None and high is not None and 0 <= high - low < ENUM_RANGE:
                node["enum"] = list(range(low, high + 1))
                for key in _BOUNDS:
                    node.pop(key, None)
    return out


def _range(node: Mapping[str, Any]) -> tuple[int | None, int | None]:
    import math

    low = high = None
    if isinstance(node.get("minimum"), int | float):
        low = math.ceil(node["minimum"])
    if isinstance(node.get("exclusiveMinimum"), int | float):
        low = max(low if low is not None else -(1 << 62), math.floor(node["exclusiveMinimum"]) + 1)
    if isinstance(node.get("maximum"), int | float):
        high = math.floor(node["maximum"])
    if isinstance(node.get("exclusiveMaximum"), int | float):
        high = min(high if high is not None else 1 << 62, math.ceil(node["exclusiveMaximum"]) - 1)
    return low, high


def _nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every sub-schema (a dict in a schema position), the root first."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas"):
            for sub in value.values() if isinstance(value, dict) else ():
                yield from _nodes(sub)
        elif key in ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"):
            yield from _nodes(value)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            for sub in value:
                yield from _nodes(sub)


def unenforced(schema: Mapping[str, Any], ignored: tuple[str, ...]) -> list[str]:
    """The keywords of `schema` (made strict first) that an engine ignoring `ignored` leaves to
    the validation, in the order they first appear."""
    found: dict[str, None] = {}
    for node in _nodes(dict(schema)):
        for key in ignored:
            if key in node:
                found[key] = None
        if node.get("format") not in (None, "date", "time", "date-time", "uuid"):
            found[f"format {node['format']}"] = None
    return list(found)


# -- tools -----------------------------------------------------------------------------------------


def call_schema(tools: list[ToolSpec], answer: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON shape of one call to one of `tools` (its name, and arguments per its parameters,
    their `$defs` lifted to the root where a `$ref` points) or, with `answer` (a reserved name and
    the answer's schema), of an answer in the same envelope: "auto" as one grammar, so that even a
    small model's first tokens choose between calling and answering."""
    defs: dict[str, Any] = {}
    shapes = []
    named = [(t.name, strict(t.parameters or {"type": "object"})) for t in tools]
    for name, arguments in [*named, *([answer] if answer else [])]:
        defs |= arguments.pop("$defs", {})
        shapes.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    return {**schema, "$defs": defs} if defs else schema


def tool_choice(tools: list[ToolSpec], choice: str | None) -> tuple[list[ToolSpec], bool]:
    """(the tools the grammar may call, whether an answer is allowed too) for a choice: None or
    "auto" (either), "required" (a call), "none" (an answer), or a tool's name."""
    if choice in (None, "auto"):
        return tools, True
    if choice == "none":
        return [], True
    if choice == "required":
        return tools, False
    return [t for t in tools if t.name == choice], False


def envelope_name(tools: list[ToolSpec]) -> str:
    names = {t.name for t in tools}
    return next(n for n in ("answer", "final_answer", "farm_answer") if n not in names)


def tools_message(tools: list[ToolSpec], envelope: str | None) -> str:
    """What the model is told about its tools, in a system message: a model whose chat template
    knows no tools (SmolLM2) still reads them, and the grammar keeps its reply well formed."""
    described = json.dumps(
        [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
        ensure_ascii=False,
    )
    how = 'Reply with only JSON: {"name": <function name>, "arguments": {<its arguments>}} to call a function'
    if envelope:
        how += f', or {{"name": "{envelope}", "arguments": {{"text": <your answer>}}}} to answer without calling one'
    return f"You can call these functions:\n{described}\n{how}."


def local_messages(messages: list[ChatMessage], tools: list[ToolSpec], envelope: str | None) -> list[ChatMessage]:
    """The conversation as a local chat template reads it: the tools in the system message, a
    call as the JSON the model wrote, a tool's result as a user turn that says whose it is."""
    out: list[ChatMessage] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            said = [json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) for c in m.tool_calls]
            out.append(ChatMessage(role="assistant", content="\n".join(said)))
        elif m.role == "tool":
            out.append(ChatMessage(role="user", content=f"The function {m.tool_name or 'call'} returned: {m.content}"))
        else:
            out.append(ChatMessage(role=m.role, content=m.content))
    if tools:
        text = tools_message(tools, envelope)
        if out and out[0].role == "system":
            out[0] = ChatMessage(role="system", content=f"{out[0].content}\n\n{text}")
        else:
            out.insert(0, ChatMessage(role="system", content=text))
    return out


# -- what one request is constrained to ------------------------------------------------------------

# Never empty: under llguidance SmolLM2 closed the string at once (`"text": ""`) for "2 plus 3?".
_TEXT_ANSWER = {"type": "object", "properties": {"text": {"type": "string", "minLength": 1}}, "required": ["text"]}


@dataclass(frozen=True)
class Constraint:
    """What a local engine constrains one answer to: JSON matching `schema`, which is the answer
    itself, or (with `tools`) a call to one of them, or in "auto" an answer wrapped in the same
    envelope under the name `envelope` (its text, or, with a schema too, its JSON)."""

    schema: dict[str, Any] | None
    tools: tuple[str, ...] = ()
    envelope: str | None = None
    wrapped_json: bool = False  # the envelope holds the schema's JSON, not {"text": ...}
    messages: list[ChatMessage] = field(default_factory=list)


def constraint(
    request: ChatRequest, provider: str, *, integer_enums: bool = False, answer_only: bool = False
) -> Constraint:
    """The constraint of `request` (none when it has no schema and no tools) and the messages
    to send, the tools described in them; with `answer_only`, the envelope's answer alone (see
    `repeated`). A tool_choice naming no given tool is the caller's error."""
    p = request.params
    offered = list(p.tools or [])
    tools, answer_allowed = tool_choice(offered, p.tool_choice) if offered else ([], True)
    if offered and not tools and p.tool_choice != "none":
        names = ", ".join(t.name for t in offered)
        raise BadRequest(
            f"tool_choice={p.tool_choice!r} names no tool given", provider=provider, hint=f"the tools are {names}"
        )
    answer = strict(p.response_schema, integer_enums=integer_enums) if p.response_schema is not None else None
    envelope = envelope_name(tools) if tools and answer_allowed else None
    messages = local_messages(request.messages, tools, envelope) if offered else list(request.messages)
    if not tools:
        return Constraint(answer, messages=messages)
    wrapped = (envelope, answer if answer is not None else strict(_TEXT_ANSWER)) if envelope else None
    call = call_schema([] if answer_only and wrapped else tools, wrapped)
    if integer_enums:
        call = strict(call, integer_enums=True)
    return Constraint(call, tuple(t.name for t in tools), envelope, answer is not None, messages)


# -- reading a constrained answer as it grows --------------------------------------------------------

_ENVELOPE = r'\s*\{\s*"name"\s*:\s*"%s"\s*,\s*"arguments"\s*:\s*'
_ENVELOPE_TEXT = _ENVELOPE + r'\{\s*"text"\s*:\s*"'


class Reader:
    """The text of a constrained answer as it grows, handed to `push(kind, value)`: an answer
    streams as it comes (a schema's JSON as it grows; an "auto" answer's text out of its envelope,
    unescaped); a tool call is held until it is whole, then read into `call` by `end`."""

    def __init__(self, push: Callable[[str, Any], None], shape: Constraint) -> None:
        self.push, self.shape = push, shape
        self.raw = ""
        self.shown = 0  # characters of the envelope's text already pushed
        opening = _ENVELOPE if shape.wrapped_json else _ENVELOPE_TEXT
        self.opening = re.compile(opening % re.escape(shape.envelope)) if shape.envelope else None
        self.start: int | None = None  # where the envelope's text (or JSON) begins in `raw`
        self.call: ToolCall | None = None  # the call, once `end` has read it

    def add(self, text: str) -> None:
        if not text:
            return
        if not self.shape.tools:
            self.push("text", text)
            return
        self.raw += text
        if self.opening is not None:
            if self.start is None and (found := self.opening.match(self.raw)):
                self.start = found.end()
            if self.start is not None and self.shape.wrapped_json:  # no whitespace: the last `}` is the envelope's
                self._show(self.raw[self.start : -1])
            elif self.start is not None:
                self._show(_partial_string(self.raw[self.start :]))

    def _show(self, decoded: str) -> None:
        if len(decoded) > self.shown:
            self.push("text", decoded[self.shown :])
            self.shown = len(decoded)

    def end(self, finish: str) -> str:
        """Hand on what was held (a call into `call`); the finish reason ("tool_calls" for a call)."""
        if not self.shape.tools:
            return finish
        try:
            data = json.loads(self.raw)
        except ValueError:  # cut by max_tokens: what there is goes back as text, marked cut
            if self.start is None:
                self.push("text", self.raw)
            elif self.shape.wrapped_json:
                self._show(self.raw[self.start :])
            return finish
        name = data.get("name") if isinstance(data, dict) else None
        arguments = data.get("arguments") if isinstance(data, dict) else None
        if name in self.shape.tools and isinstance(arguments, dict):
            self.call = ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name, arguments=arguments)
            return "tool_calls"
        if self.shape.wrapped_json and self.start is not None:
            self._show(self.raw[self.start : self.raw.rindex("}")])
        elif self.shape.wrapped_json:
            self.push("text", json.dumps(arguments, ensure_ascii=False))
        elif isinstance(arguments, dict) and isinstance(arguments.get("text"), str):
            self._show(arguments["text"])
        else:
            self.push("text", self.raw)
        return finish


def _partial_string(raw: str) -> str:
    """The decoded part of a JSON string's body that has arrived (up to its closing quote)."""
    i, end = 0, len(raw)
    while i < len(raw):
        if raw[i] == "\\":
            need = 6 if raw[i + 1 : i + 2] == "u" else 2
            # A high surrogate waits for its pair: decoded alone, it would be shown as half a character.
            held = 6 if need == 6 and raw[i + 2 : i + 3] in "dD" and raw[i + 3 : i + 4] in "89abAB" else 0
            if i + need + held > len(raw):
                end = i
                break
            i += need
            continue
        if raw[i] == '"':
            end = i
            break
        i += 1
    try:
        return str(json.loads(f'"{raw[:end]}"'))
    except ValueError:
        return ""


def repeated(call: ToolCall, messages: list[ChatMessage]) -> bool:
    """Is `call` one the model made in its last turn, whose result it has just been given? A small
    model tends to call again word for word instead of answering (SmolLM2-135M did so in 4 of 5
    round trips measured): the engine then asks it for the answer alone."""
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    if last is None or messages[-1].role != "tool":
        return False
    return any(c.name == call.name and c.arguments == call.arguments for c in last.tool_calls)


# -- a repeat penalty that spares JSON ---------------------------------------------------------------

STRUCTURE = frozenset(' \t\r\n"{}[],:')  # what a JSON answer must repeat: never penalised


class Penalty:
    """A repeat penalty over the answer's own tokens, as llama.cpp's (a logit over 0 divided by
    `penalty`, under 0 multiplied), but never on the prompt's (an extraction copies from it) nor
    on JSON's punctuation and whitespace, which a structured answer must repeat (llama.cpp's
    `repeat_penalty` would push it off its `"` and `,`)."""

    def __init__(self, spared: Any, penalty: float) -> None:
        self.spared, self.penalty = spared, penalty
        self.start: int | None = None

    def __call__(self, ids: Any, scores: Any) -> Any:
        import numpy as np

        if self.start is None:
            self.start = len(ids)  # the first call sees the prompt alone
        said = np.unique(np.asarray(ids[self.start :], dtype=np.int64))
        said = said[~self.spared[said]]
        if len(said):
            logits = scores[said]
            scores[said] = np.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return scores
