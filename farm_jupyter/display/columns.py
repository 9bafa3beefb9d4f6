"""A comparison's columns: one model's answer each, as `%%farm_chat --compare` and CompareWidget
both show it. The state is the column's ChatStream (folded once) plus what the face decides
(stopped, fastest); the drawing is HTML pieces (heading, body, footer) and plain text. The magic
puts the columns side by side in one display output, the widget each piece in its own view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .markdown import render
from .pieces import error_line, notice_html
from .theme import BAD, BORDER, FG, FG2, GOOD, PANEL, esc

if TYPE_CHECKING:
    from ..sessions import ChatStream
    from ..types import ChatResponse


@dataclass
class Column:
    """One model's column of a comparison."""

    address: str
    stream: ChatStream | None = None
    failure: Exception | None = None  # the stream could not even be made
    stopped: bool = False
    fastest: bool = False

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    @property
    def response(self) -> ChatResponse | None:
        return self.stream.response if self.stream is not None else None

    @property
    def exception(self) -> Exception | None:
        return self.failure or (self.stream.error if self.stream is not None else None)

    @property
    def error(self) -> str | None:
        """The failure as one line, or None."""
        exc = self.exception
        return None if exc is None else error_line(exc)

    @property
    def notice(self) -> str | None:
        return self.stream.notice if self.stream is not None else None

    @property
    def done(self) -> bool:
        return self.stopped or self.exception is not None or self.response is not None

    def stats(self) -> str:
        """The line under the answer: its figures, or where it stands."""
        if self.exception is not None:
            return "failed"
        if self.stopped:
            return "stopped"
        if self.response is not None:
            return self.response.footer(address=False, first_token=True)
        return (self.stream.status if self.stream is not None else None) or ""

    def partial(self, total: float) -> ChatResponse:
        """What a stopped column had: its text, marked stopped (`-o` keeps it)."""
        from ..types import ChatResponse, Timings

        provider, _, model = self.address.partition(":")
        return ChatResponse(text=self.text, provider=provider, model=model, stopped=True, timings=Timings(total=total))

    def heading_html(self) -> str:
        badge = (
            (
                f' <span style="background:{GOOD};color:white;border-radius:8px;padding:0 6px;font-size:11px">'
                "fastest</span>"
            )
            if self.fastest
            else ""
        )
        return (
            f'<div style="font-weight:600;color:{FG};border-bottom:1px solid {BORDER};padding-bottom:2px">'
            f"{esc(self.address)}{badge}</div>"
        )

    def body_html(self, *, text_only: bool = False) -> str:
        text = self.text
        if text:
            body = f"<pre style='white-space:pre-wrap'>{esc(text)}</pre>" if text_only else render(text)
        elif self.done:
            body = ""
        else:
            body = f'<span style="color:{FG2}">waiting for the first token&#8230;</span>'
        if self.notice:
            body = notice_html(self.notice) + body
        return f'<div style="color:{FG};line-height:1.45;overflow-wrap:anywhere">{body}</div>'

    def foot_html(self) -> str:
        error = self.error
        if error is not None:
            stats = f'<span class="farm-error" style="color:{BAD}">&#9888; {esc(error)}</span>'
        else:
            stats = esc(self.stats() or "streaming…")
        return f'<div style="font-size:11px;color:{FG2};background:{PANEL};padding:2px 4px">{stats}</div>'

    def html(self, *, text_only: bool = False) -> str:
        return (
            f"<div style='flex:1;min-width:0;border:1px solid {BORDER};border-radius:4px;padding:.5em'>"
            f"{self.heading_html()}{self.body_html(text_only=text_only)}{self.foot_html()}</div>"
        )

    def plain(self) -> str:
        exc = self.exception
        body = self.text if exc is None else f"{type(exc).__name__}: {exc}"
        notice = f"{self.notice}\n" if self.notice else ""
        return f"── {self.address} ──\n{notice}{body}\n[{self.stats()}]"


def columns_bundle(columns: Sequence[Column], *, text_only: bool = False) -> dict[str, str]:
    """The columns side by side (HTML) and one after another (plain text)."""
    cells = "".join(c.html(text_only=text_only) for c in columns)
    return {
        "text/html": f"<div style='display:flex;gap:.75em;align-items:flex-start'>{cells}</div>",
        "text/plain": "\n\n".join(c.plain() for c in columns),
    }
