"""Data objects told in text, within a budget of tokens: pandas, polars and numpy, containers,
bytes, and anything whose `repr` fails (`farm_jupyter.context` picks the describer).

Every description starts with a line that says what the object is (its type, its name in the
prompt, its shape or length, its columns) and that line is always kept; what follows is cut to the
budget, with a note that says how much was cut and how the tokens were counted. A `Budget` counts
exactly with a tokenizer's `count` where one is given (a local model's: the local-first issue's),
else estimates characters / `chars_per_token` (4, or what the model's last reported usage said).

pandas, polars and numpy are never imported here to ask what an object is: the object's class says
where it comes from, and the object itself does the work (`df.head().to_string()`).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4  # the estimate when nothing better is known
NAME_MOST = 60  # characters of a field's name kept in the first line


@dataclass(frozen=True)
class Budget:
    """How many tokens one object's description may take, and how they are counted: exactly by
    `count` (a provider's `count_tokens`) when given, else estimated as characters divided by
    `chars_per_token`, learnt from `source` ("openai:gpt-4o-mini's last usage") or the default 4.
    A description that is cut says which (`... cut to the 200-token budget, estimated at 4 ...`)."""

    tokens: int
    chars_per_token: float = CHARS_PER_TOKEN
    source: str = ""
    count: Callable[[str], int] | None = None

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"a context budget of {self.tokens} tokens is too small")
        if not self.chars_per_token > 0:
            raise ValueError(f"chars_per_token must be positive, got {self.chars_per_token}")

    @property
    def chars(self) -> int:
        """The most characters the estimate allows (a bound for searches when counting exactly)."""
        return max(1, int(self.tokens * self.chars_per_token))

    def size(self, text: str) -> float:
        """The tokens `text` takes: counted, or estimated."""
        return self.count(text) if self.count is not None else len(text) / self.chars_per_token

    def fits(self, text: str) -> bool:
        if self.count is not None:
            return self.count(text) <= self.tokens
        return len(text) <= self.chars

    @property
    def how(self) -> str:
        """How the budget was measured, as the cut note says it: never a count that was not made."""
        if self.count is not None:
            return "counted"
        ratio = f"{self.chars_per_token:.2g} characters a token"
        return f"estimated from {self.source}: {ratio}" if self.source else f"estimated at {ratio}"


def _largest(ok: Callable[[int], bool], high: int) -> int | None:
    """The largest n in [0, high] with ok(n) (ok is monotone: true up to some n); None if none."""
    if high < 0 or not ok(0):
        return None
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        if ok(mid):
            low = mid
        else:
            high = mid - 1
    return low


def fit(first: str, rest: str, budget: Budget, *, keep: str = "head") -> str:
    """`first` (what the object is, always kept) and as much of `rest` as the budget holds: its head,
    or its tail (`keep="tail"`: the end of a traceback says what went wrong), with a note."""
    whole = "\n".join(part for part in (first, rest) if part)
    if not rest or budget.fits(whole):
        return whole

    def cut(n: int) -> str:
        kept = rest[:n] if keep == "head" else rest[len(rest) - n :]
        note = f"... ({len(rest) - n} more characters cut: {budget.tokens}-token budget, {budget.how})"
        parts = [first, kept, note] if keep == "head" else [first, note, kept]
        return "\n".join(part for part in parts if part)

    # A token is at least a character, so more than `chars` characters need a tokenizer that
    # packs several in each: search up to 32 a token there.
    bound = budget.chars if budget.count is None else budget.tokens * 32
    n = _largest(lambda n: budget.fits(cut(n)), min(len(rest) - 1, bound))
    if n is None:  # not even the note fits: what the object is, or the head of its own text
        return first or rest[: budget.chars]
    return cut(n)


def named(name: str | None, what: str) -> str:
    if not name:
        return what
    shown = name if len(name) <= NAME_MOST else name[: NAME_MOST - 3] + "..."
    return f"{what} `{shown}`"


def safe_repr(obj: Any, how: Callable[[Any], Any] = repr) -> str:
    """`repr(obj)` (or `how(obj)`: `str`), or a line that says it failed: a broken `__repr__`
    never breaks a cell."""
    try:
        text = how(obj)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's repr is said, not raised
        text = exc
    if isinstance(text, str):
        return text
    if how is not repr:  # str() failed: repr may still work
        return safe_repr(obj)
    why = f"raised {type(text).__name__}" if isinstance(text, Exception) else "returned no text"
    return f"<{type(obj).__name__} object: its repr {why}>"


# -- pandas -------------------------------------------------------------------------------------


def _columns(pairs: list[str], what: str = "columns (dtype)") -> str:
    if not pairs:
        return "no columns"
    more = f", ... and {len(pairs) - 50} more columns" if len(pairs) > 50 else ""
    return f"{what}: " + ", ".join(pairs[:50]) + more


def frame(df: Any, budget: Budget, name: str | None) -> str:
    rows, cols = df.shape
    first = f"{named(name, 'pandas DataFrame')}: {rows} rows x {cols} columns"
    columns = _columns([f"{c} ({t})" for c, t in df.dtypes.items()])
    return _rows(df, first, columns, rows, budget, lambda part: part.to_string(max_colwidth=60))


def series(s: Any, budget: Budget, name: str | None) -> str:
    label = name or (s.name if isinstance(s.name, str) else None)
    first = f"{named(label, 'pandas Series')}: {len(s)} rows, dtype {s.dtype}"
    if s.name is not None and s.name != label:
        first += f", name {safe_repr(s.name)[:NAME_MOST]}"
    # Series.to_string has no max_colwidth: as a one-column frame, long values are cut alike.
    return _rows(s, first, "", len(s), budget, lambda part: part.to_frame().to_string(max_colwidth=60))


def index(idx: Any, budget: Budget, name: str | None) -> str:
    kind = type(idx).__name__
    first = f"{named(name, f'pandas {kind}')}: {len(idx)} entries, dtype {idx.dtype}"
    names = [n for n in getattr(idx, "names", []) if n is not None]
    if names:
        first += ", names " + ", ".join(safe_repr(n)[:NAME_MOST] for n in names)
    return fit(first, _listing(list(idx[:200]), len(idx)), budget)


def _rows(data: Any, first: str, header: str, total: int, budget: Budget, table: Callable[[Any], str]) -> str:
    """The first line, the header, then as many first rows as the budget holds (found by halving)."""
    head = "\n".join(part for part in (first, header) if part)

    def with_rows(n: int) -> str:
        label = "all rows" if n >= total else f"first {n} of {total} rows ({budget.tokens}-token budget, {budget.how})"
        return f"{head}\n{label}:\n{table(data.head(n))}"

    best = head if total else f"{head}\n(no rows)"
    n = _largest(lambda n: n == 0 or budget.fits(with_rows(n)), min(total, 200))
    if n:
        best = with_rows(n)
    return fit(first, best[len(first) + 1 :], budget)


# -- polars -------------------------------------------------------------------------------------


def polars_frame(df: Any, budget: Budget, name: str | None) -> str:
    rows, cols = df.shape
    first = f"{named(name, 'polars DataFrame')}: {rows} rows x {cols} columns"
    columns = _columns([f"{c} ({t})" for c, t in df.schema.items()])
    return _rows(df, first, columns, rows, budget, str)


def polars_series(s: Any, budget: Budget, name: str | None) -> str:
    first = f"{named(name or s.name, 'polars Series')}: {len(s)} rows, dtype {s.dtype}"
    return _rows(s, first, "", len(s), budget, lambda part: _listing(part.to_list(), len(part)))


# -- numpy --------------------------------------------------------------------------------------


def array(a: Any, budget: Budget, name: str | None) -> str:
    first = f"{named(name, 'numpy array')}: shape {tuple(a.shape)}, dtype {a.dtype}"
    lines = []
    if a.size:
        import numpy as np  # the array exists, so numpy is already imported

        if a.dtype.kind in "biuf":
            with np.errstate(all="ignore"):  # a float16's std may overflow: it says inf, no warning
                lines.append(f"min {a.min():.6g}, max {a.max():.6g}, mean {a.mean():.6g}, std {a.std():.6g}")
        try:
            values = np.array2string(a, threshold=40, edgeitems=3, precision=4)
        except Exception as exc:  # noqa: BLE001 - an object array's element with a broken repr
            values = f"(not shown: {type(exc).__name__} while printing the values)"
        lines.append("values: " + values)
    return fit(first, "\n".join(lines), budget)


# -- the standard library -----------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 4, 120, 120, 60
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 50


def _listing(values: list[Any], total: int) -> str:
    shown = _REPR.repr(values)
    return shown if total <= len(values) else f"{shown} (first {len(values)} of {total})"


def container(obj: Any, budget: Budget, name: str | None) -> str:
    kind = type(obj).__name__
    unit = "key" if hasattr(obj, "keys") else "item"
    first = f"{named(name, kind)}: {len(obj)} {unit}{'' if len(obj) == 1 else 's'}"
    return fit(first, _REPR.repr(obj), budget)


def raw_bytes(data: bytes | bytearray | memoryview, budget: Budget, name: str | None) -> str:
    kind = type(data).__name__
    first = f"{named(name, kind)}: {len(data)} bytes"
    return fit(first, repr(bytes(data[: budget.chars])), budget)


def other(obj: Any, budget: Budget, name: str | None) -> str:
    """Anything else: its `str()`, or, where that fails, what it is and that it failed."""
    text = safe_repr(obj, str)
    if budget.fits(text):
        return text
    return fit(f"{named(name, type(obj).__name__)} ({len(text)} characters as text)", text, budget)
