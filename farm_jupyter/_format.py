"""Small formatting helpers shared by the magics and the widgets (standard library only, so
`%load_ext` stays light)."""

from __future__ import annotations

from collections.abc import Mapping


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
