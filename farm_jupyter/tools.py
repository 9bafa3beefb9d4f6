"""Kernel functions as tools: `chat(..., tools=[get_weather])`.

A function is described to the model from its signature (pydantic's JSON Schema of its
arguments) and its docstring (the first paragraph, and each argument's line under `Args:` or
`:param x:`). When the model calls it, the arguments are validated against the signature, the
function runs in the caller's thread (the kernel's: it may touch the notebook's objects), and its
result, or the exception it raised, goes back to the model as text. Only the functions given can
be called: a name the model makes up gets an error back, never a lookup.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError, validate_call

from .context import Collector
from .errors import ConfigError, problems
from .secrets import redact
from .types import ChatMessage, ToolCall, ToolRun, ToolSpec

RESULT_BUDGET = 1000  # tokens of a tool's result sent back (a DataFrame is described, not dumped)
_ARG_LINE = re.compile(r"^\s*(?::param\s+)?(\*{0,2}\w+)(?:\s*\([^)]*\))?\s*:\s*(.+)$")


def _doc(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The summary paragraph and each argument's description from a docstring."""
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    section = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            section = True
            continue
        if section and stripped and not line.startswith((" ", "\t")) and stripped.endswith(":"):
            section = False  # Returns:, Raises:
        found = _ARG_LINE.match(line)
        if found and (section or stripped.startswith(":param")):
            args[found.group(1).lstrip("*")] = found.group(2).strip()
    if summary.startswith(":param"):
        summary = ""
    return summary, args


class Tool:
    """One function the model may call."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise ConfigError(f"{fn!r} is not a function", hint="pass tools=[a_function, ...]")
        name = getattr(fn, "__name__", "")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", name or ""):
            raise ConfigError(f"{fn!r} has no usable name for a tool", hint="use a def with a plain name, not a lambda")
        self.fn = fn
        self.name = name
        summary, described = _doc(fn)
        try:
            parameters = TypeAdapter(fn).json_schema()  # type: ignore[arg-type]  # pydantic describes a callable's arguments
            self.validated = validate_call(fn)  # the call with its arguments checked
        except Exception as exc:  # noqa: BLE001 - pydantic refuses some signatures; say which
            raise ConfigError(
                f"tool {name} cannot be described: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                hint="annotate its arguments with plain types (str, int, float, bool, list, dict, pydantic models)",
            ) from None
        for arg, text in described.items():
            prop = parameters.get("properties", {}).get(arg)
            if isinstance(prop, dict):
                prop.setdefault("description", text)
                prop.pop("title", None)
        for prop in parameters.get("properties", {}).values():
            if isinstance(prop, dict):
                prop.pop("title", None)
        parameters.pop("title", None)
        self.spec = ToolSpec(name=name, description=summary or f"the notebook function {name}", parameters=parameters)
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"


def tools_of(fns: Sequence[Callable[..., Any] | Tool]) -> dict[str, Tool]:
    found: dict[str, Tool] = {}
    for fn in fns:
        tool = fn if isinstance(fn, Tool) else Tool(fn)
        if tool.name in found:
            raise ConfigError(f"two tools are named {tool.name}", hint="give each function its own name")
        found[tool.name] = tool
    return found


def result_text(value: Any) -> str:
    """A tool's result as the model reads it: JSON for plain data, a description for the rest."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=_not_json)[: RESULT_BUDGET * 4]
    except _NotJson:
        return Collector(RESULT_BUDGET)(value)


class _NotJson(Exception):
    pass


def _not_json(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # a pydantic object
        return value.model_dump(mode="json")
    raise _NotJson


def run_call(
    tools: dict[str, Tool], call: ToolCall, step: int, run_async: Callable[[Any], Any]
) -> tuple[ToolRun, ChatMessage]:
    """Run one call in this thread; the run as shown, and the tool message for the model."""
    start = time.perf_counter()
    error: str | None = None
    result = ""
    tool = tools.get(call.name)
    if tool is None:
        error = f"there is no tool named {call.name!r}; the tools are {', '.join(tools) or 'none'}"
    elif "__raw__" in call.arguments:
        error = f"the arguments were not a JSON object: {str(call.arguments['__raw__'])[:200]!r}"
    else:
        try:
            value = tool.validated(**call.arguments)
            if tool.is_async:
                value = run_async(value)
            result = result_text(value)
        except ValidationError as exc:
            said = "; ".join(f"{p.place or 'arguments'}: {p.why}" for p in problems(exc))
            error = f"invalid arguments: {said}"
        except Exception as exc:  # noqa: BLE001 - the model is told what its call raised
            error = redact(f"{type(exc).__name__}: {exc}")  # it goes to a model, perhaps a remote one
    run = ToolRun(
        step=step,
        name=call.name,
        arguments=call.arguments,
        result=result,
        error=error,
        seconds=time.perf_counter() - start,
    )
    content = f"Error: {error}" if error else result
    return run, ChatMessage(role="tool", content=content, tool_call_id=call.id, tool_name=call.name)
