"""The colours every face shares: JupyterLab's theme variables, with fallbacks for classic
Notebook and VS Code, and the status colours; `esc` for whatever goes into HTML."""

from __future__ import annotations

import html

FG = "var(--jp-ui-font-color1, #1f2328)"
FG2 = "var(--jp-ui-font-color2, #59636e)"
BORDER = "var(--jp-border-color2, #d0d7de)"
PANEL = "var(--jp-layout-color2, #f6f8fa)"
GOOD = "#1a7f37"
BAD = "#cf222e"
WARN = "#9a6700"
ACCENT = "#0969da"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)
