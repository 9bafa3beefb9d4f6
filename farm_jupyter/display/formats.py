"""Numbers and text as the faces show them (standard library only, so `%load_ext` stays light)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def human_bytes(n: int | float | None) -> str:
    """Decimal units, as Ollama and model hubs report sizes: 4_920_000_000 -> '4.9 GB'."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def describe_failures(kinds: Mapping[str, int]) -> str:
    """`unreachable 2 · timeout 1`: one provider's failures, the most frequent class first."""
    ordered = sorted(((n, kind) for kind, n in kinds.items() if n), key=lambda nk: (-nk[0], nk[1]))
    return " · ".join(f"{kind} {n}" for n, kind in ordered)


def cell(value: Any) -> str:
    """A table cell: blank for None, yes/no, three significant digits, one line."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("\n", " ")


def size(n: int | None) -> str:
    """A size in a table: blank when unknown or zero."""
    return human_bytes(n) if n else ""


def seconds(value: float | None) -> str:
    """`1.23s` in a table, blank when unknown."""
    return "" if value is None else f"{value:.2f}s"


def duration(s: float | None) -> str:
    """`230 ms` or `1.23 s` on a widget, `–` when unknown."""
    if s is None:
        return "–"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def short(text: str, width: int = 60) -> str:
    """One line of at most `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def clock(at: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at if at is not None else time.time()))


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f}"
