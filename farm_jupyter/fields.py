"""`{name}` fields filled from a namespace, like `str.format`, without eval: one formatter for
`%%farm_chat`'s prompt (the notebook's names) and for `context=` (`farm_jupyter.context.fill`).

A field is a name followed by attribute and index lookups (`d['k']` and `d["k"]` look up the
string k), with an optional `!r`/`!s` conversion and a format spec; attributes starting with `_`
are never looked up. With a describer (`context.Collector`), a field without a format spec is the
object's description for a model. Every problem is one `FieldError` that quotes the field as the
user wrote it (`{"a": 1}`, not the `{"a"}` that str.format's parser leaves of it).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class FieldError(ValueError):
    """One field that cannot be filled; the message says which and what to do."""


@dataclass(frozen=True)
class Source:
    """Where a formatter's names come from, as its messages say it: `origin` names the place,
    `absent` what to do about a missing name (`{name}` is replaced), `escape` is a last resort
    added to the brace hints (`%%farm_chat --raw`)."""

    origin: str = "the notebook"
    absent: str = "{name} is not defined in the notebook; define it"
    escape: str | None = None


class FieldFormatter(string.Formatter):
    """`str.format` field lookup over `namespace`: names, `.attr`, `[key]`; no eval.

    `what` names the text being filled ("prompt", "system text (-s)"), `source` where its names
    come from. `parse` finds each field's source
    span with the same brace counting as CPython's parser; a stack keeps the outer field's text
    while a nested one (`{x:{w}}`) runs.
    """

    def __init__(
        self,
        namespace: Mapping[str, Any],
        what: str = "prompt",
        describe: Callable[[Any, str | None], str] | None = None,
        source: Source | None = None,
    ) -> None:
        self.namespace, self.what, self.describe = namespace, what, describe
        self.source = source or Source()
        self._written: list[str] = []
        self._names: list[str] = []

    def parse(self, format_string: str) -> Iterator[tuple[str, str | None, str | None, str | None]]:  # type: ignore[override]
        spans = iter(_field_texts(format_string))
        for literal, field, spec, conversion in super().parse(format_string):
            if field is not None:
                self._written.append(next(spans, "{" + field + "}"))
            yield literal, field, spec, conversion

    @property
    def written(self) -> str:
        return self._written[-1] if self._written else "{}"

    def _error(self, problem: str) -> FieldError:
        return FieldError(f"{self.what} uses {self.written}{problem}")

    def _braces(self, literal: str) -> str:
        return f"write {literal} for literal braces" + (f", {self.source.escape}" if self.source.escape else "")

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        literal = "{" + self.written + "}"
        try:
            first, rest = _formatter_field_name_split(field_name)
        except ValueError as exc:
            raise self._error(f", which is not a name: {exc}; {self._braces(literal)}") from None
        if isinstance(first, int) or first == "":
            raise self._error(f" with no name; {self._braces(literal)}")
        if not first.isidentifier():
            raise self._error(f", which is not a name from {self.source.origin}; {self._braces(literal)}")
        if first not in self.namespace:
            absent = self.source.absent.format(name=first)
            raise self._error(f", but {absent} or write {literal} for literal braces")
        obj = self.namespace[first]
        path = first
        for is_attr, key in rest:
            if is_attr:
                if not key or key.startswith("_"):
                    raise self._error(
                        f": attributes starting with '_' are not looked up; write {literal} for literal braces"
                    )
                try:
                    obj = getattr(obj, key)
                except Exception as exc:  # noqa: BLE001 - any lookup failure is the user's to fix
                    raise self._error(f", but {path} has no attribute {key!r} ({type(exc).__name__})") from None
                path += "." + key
            else:
                key = _index_key(key, obj)
                try:
                    obj = obj[key]
                except Exception as exc:  # noqa: BLE001
                    raise self._error(f", but {path} has no item {key!r} ({type(exc).__name__})") from None
                path += f"[{key!r}]"
        self._names.append(path)  # the describer names the object as written: `df.price`, not `df`
        return obj, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        try:
            return super().convert_field(value, conversion)
        except Exception as exc:  # noqa: BLE001
            raise self._error(f", which failed: {type(exc).__name__}: {exc}") from None

    def format_field(self, value: Any, format_spec: str) -> Any:
        try:
            if self.describe is not None and not format_spec:
                return self.describe(value, self._names[-1] if self._names else None)
            return super().format_field(value, format_spec)
        except Exception as exc:  # noqa: BLE001
            raise self._error(f", which failed: {type(exc).__name__}: {exc}") from None
        finally:
            if self._written:  # the field is done: an enclosing one is current again
                self._written.pop()


def _field_texts(template: str) -> list[str]:
    """Each top-level `{...}` field of `template` as written, in order; `{{` and `}}` skipped.

    The scan of CPython's format parser (`parse_field` in unicode_format.h): the name runs to
    `}`, `:` or `!`, skipping `[...]`; `!` takes one character; a format spec ends at the `}`
    that balances its `{`. Where that parser fails, this stops; `str.format` reports the problem.
    """
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c in "{}" and template[i + 1 : i + 2] == c:
            i += 2
            continue
        if c != "{":
            i += 1
            continue
        end = _field_end(template, i + 1)
        if end is None:
            break
        out.append(template[i:end])
        i = end
    return out


def _field_end(t: str, i: int) -> int | None:
    """Where the field whose name starts at `i` ends (just past its `}`); None if malformed."""
    n = len(t)
    c = ""
    while i < n:
        c, i = t[i], i + 1
        if c == "[":
            while i < n and t[i] != "]":
                i += 1
        elif c == "}":
            return i
        elif c in ":!":
            break
        elif c == "{":
            return None
    else:
        return None
    if c == "!":
        if i + 1 >= n:
            return None
        c, i = t[i + 1], i + 2  # the conversion character, then `}` or `:`
        if c == "}":
            return i
        if c != ":":
            return None
    depth = 1
    while i < n:
        c, i = t[i], i + 1
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


_QUOTED = re.compile(r"""(['"])(.*)\1""", re.S)


def _index_key(key: Any, obj: Any) -> Any:
    """`d['k']` and `d["k"]` look up the string k (str.format would look up "'k'" with its
    quotes); `d[0]` an int (str.format's own rule); `items[-1]` an int where obj is no mapping."""
    if not isinstance(key, str):
        return key
    quoted = _QUOTED.fullmatch(key)
    if quoted:
        return quoted.group(2)
    if re.fullmatch(r"-\d+", key) and not isinstance(obj, Mapping):
        return int(key)
    return key


def _formatter_field_name_split(field_name: str) -> tuple[Any, Iterator[tuple[bool, Any]]]:
    import _string

    first, rest = _string.formatter_field_name_split(field_name)
    return first, iter(list(rest))  # parse all of it now, so a malformed key fails here
