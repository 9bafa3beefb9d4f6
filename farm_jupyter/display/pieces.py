"""The pieces of an answer, each drawn in one place: the notice above it, the folded thinking,
the tool-run lines, the footer, an error line; and a streaming answer as one markdown output.

A cell shows them as display outputs (HTML and `text/plain`, so that nbval and saved notebooks
read them), a widget puts the same HTML in its view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .theme import WARN, esc

if TYPE_CHECKING:
    from ..sessions import ChatStream

Bundle = dict[str, Any]


def notice_html(line: str) -> str:
    """The line above an answer that came from another model than the one asked."""
    return f"<div class='farm-notice' style='color:{WARN}'>&#9888; {esc(line)}</div>"


def notice_bundle(line: str) -> Bundle:
    return {"text/html": notice_html(line), "text/plain": line}


def notice_markdown(line: str) -> str:
    return f"*&#9888; {line}*\n\n"


def thinking_html(text: str, *, attrs: str = "", open: bool = False) -> str:
    """The model's reasoning folded away (`<details>`), open while it is the only thing coming."""
    words = len(text.split())
    return (
        f"<details{attrs}{' open' if open else ''}><summary>thinking ({words} word{'s' if words != 1 else ''})"
        f"</summary><div style='white-space:pre-wrap;opacity:.7'>{esc(text)}</div></details>"
    )


def thinking_bundle(text: str) -> Bundle:
    """Reasoning shown folded under its answer's notice; plain text readers get it whole, marked."""
    return {"text/html": thinking_html(text), "text/plain": f"[thinking] {text}"}


def tool_runs_bundle(lines: Sequence[str]) -> Bundle:
    return {
        "text/html": "<div style='font-family:monospace;font-size:90%'>"
        + "<br>".join(f"&#128295; {esc(line)}" for line in lines)
        + "</div>",
        "text/plain": "\n".join(f"[tool] {line}" for line in lines),
    }


def footer_bundle(line: str) -> Bundle:
    return {"text/html": f"<div style='font-size:85%;opacity:.7'>{esc(line)}</div>", "text/plain": line}


def text_bundle(text: str, fmt: str = "markdown", *, stopped: bool = False) -> Bundle:
    """The answer itself: markdown and plain text, or plain text only (`-f text`)."""
    mark = "\n\n(stopped)" if stopped else ""
    if fmt == "text":
        return {"text/plain": text + mark}
    return {"text/markdown": text + ("\n\n*(stopped)*" if stopped else ""), "text/plain": text + mark}


def streaming(stream: ChatStream, address: str) -> Bundle:
    """An answer as it streams, as one markdown output: its notice, thinking (open while nothing
    else has come), tool runs, the text so far and the latest status line under it."""
    text = stream.text
    runs = [r.line() for r in stream.tool_runs]
    head = notice_markdown(stream.notice) if stream.notice else ""
    head += thinking_html(stream.thinking, open=not text) + "\n\n" if stream.thinking else ""
    head += "".join(f"- `{esc(r)}`\n" for r in runs) + ("\n" if runs else "")
    md = head + text + (f"\n\n*{stream.status}*" if stream.status else "")
    plain = (f"{stream.notice}\n\n" if stream.notice else "") + "".join(f"{r}\n" for r in runs) + text
    return {"text/markdown": md if md.strip() else f"*asking {address}…*", "text/plain": plain}


def error_line(exc: BaseException) -> str:
    """One readable line: a FarmError already says what to do; anything else is our bug."""
    from ..errors import FarmError

    if isinstance(exc, FarmError):
        return str(exc)
    return (
        f"{type(exc).__name__}: {exc}: this is a bug in farm_jupyter, please report it "
        "with the traceback below; the widget keeps working"
    )
