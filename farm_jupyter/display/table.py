"""A small table that is HTML in a notebook and aligned text elsewhere: what `%farm` returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .formats import cell
from .theme import esc


class Table:
    """Rows under headers: `_repr_html_` for notebooks, aligned columns for `text/plain`."""

    def __init__(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
        caption: str | None = None,
    ) -> None:
        self.headers = list(headers)
        self.rows = [[cell(v) for v in row] for row in rows]
        self.title = title
        self.caption = caption

    def column(self, name: str) -> list[str]:
        i = self.headers.index(name)
        return [row[i] for row in self.rows]

    def to_dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.headers, row, strict=False)) for row in self.rows]

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{esc(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{esc(v)}</td>" for v in row) + "</tr>" for row in self.rows
        )
        title = (
            f"<caption style='caption-side:top;text-align:left'><b>{esc(self.title)}</b></caption>"
            if self.title
            else ""
        )
        table = f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        if self.caption:
            table += f"<div style='font-size:85%;opacity:.75'>{esc(self.caption)}</div>"
        return table

    def __repr__(self) -> str:
        lines = [self.title] if self.title else []
        if self.headers:
            widths = [len(h) for h in self.headers]
            for row in self.rows:
                for i, v in enumerate(row):
                    widths[i] = max(widths[i], len(v))
            lines.append("  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=False)).rstrip())
            lines.append("  ".join("-" * w for w in widths))
            for row in self.rows:
                lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())
        if self.caption:
            lines.append(self.caption)
        return "\n".join(lines)

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self.rows)
