"""Driving `%%farm_chat` in a real InteractiveShell, as the magics' own tests do.

`capture_output()` swaps in IPython's capturing display publisher, which records every display
and every `update_display_data`, so a benchmark can count the screen updates a cell makes.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import CapturedIO

    from farm_jupyter.sessions import Session

MAGICS_TODO = "TODO: farm_jupyter.magics (issue 4) is not in this checkout yet"
WIDGETS_TODO = "TODO: farm_jupyter.widgets (ChatWidget) is not in this checkout yet"


def have_magics() -> bool:
    return importlib.util.find_spec("farm_jupyter.magics") is not None


def have_widgets() -> bool:
    return importlib.util.find_spec("farm_jupyter.widgets") is not None


def shell_for(session: Session) -> InteractiveShell:
    """An InteractiveShell with `%load_ext farm_jupyter` whose kernel session is `session`."""
    from IPython.core.interactiveshell import InteractiveShell

    from farm_jupyter.sessions import set_session

    ip = InteractiveShell.instance()
    if "farm_jupyter" not in ip.extension_manager.loaded:
        ip.run_line_magic("load_ext", "farm_jupyter")
    set_session(session)
    return ip


def farm_chat(ip: InteractiveShell, line: str, cell: str = "hi") -> CapturedIO:
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        ip.run_cell_magic("farm_chat", line, cell)
    return cap


def screen_updates(cap: CapturedIO) -> list[dict[str, Any]]:
    """The in-place updates of the live output that carry text (not the final blanking)."""
    return [o.data for o in cap.outputs if o.update and (o.data.get("text/plain") or o.data.get("text/html"))]


def final_text(cap: CapturedIO) -> str:
    """The answer a headless run keeps: the fresh displays' text/plain."""
    return "\n".join(str(o.data.get("text/plain", "")) for o in cap.outputs if not o.update)
