"""Markdown to safe HTML for answers: markdown-it-py (raw HTML off), code coloured by pygments.

Shared by the widgets and `%%farm_chat --compare`, which renders markdown without importing
ipywidgets. markdown-it and pygments are imported on first
render. Styles are inline (pygments' `noclasses`), because a widget's HTML cannot rely on a
stylesheet being in the page.
"""

from __future__ import annotations

import functools
from typing import Any

from .theme import BORDER, PANEL, esc

_PRE = (
    f'<pre style="background:{PANEL};border:1px solid {BORDER};border-radius:4px;padding:6px 8px;'
    'overflow-x:auto;font-size:12px;line-height:1.4;margin:4px 0"><code>{code}</code></pre>'
)


def _highlight(code: str, lang: str, attrs: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    name = (lang or "").strip().split()[0] if lang and lang.strip() else ""
    if not name:
        return _PRE.format(code=esc(code))
    try:
        lexer = get_lexer_by_name(name)
    except ClassNotFound:
        return _PRE.format(code=esc(code))
    body = highlight(code, lexer, HtmlFormatter(noclasses=True, nowrap=True, style="default"))
    return _PRE.format(code=body)


@functools.cache
def _parser() -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight, "breaks": False})
    md.enable(["table", "strikethrough"])
    return md


def render(text: str) -> str:
    """Markdown (possibly cut mid-stream) as HTML; raw HTML in `text` is escaped, never run."""
    if not text:
        return ""
    out: str = _parser().render(text)
    return out
