"""Small formatting helpers shared by the magics and the widgets (standard library only, so
`%load_ext` stays light)."""

from __future__ import annotations


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
