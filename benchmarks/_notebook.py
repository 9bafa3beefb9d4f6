"""Driving `%%farm_chat` in a real InteractiveShell, as the magics' own tests do.

A cell runs under IPython's capturing display publisher, which records every display and every
`update_display_data`, so a benchmark can count the screen updates a cell makes.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

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


def farm_chat(ip: InteractiveShell, line: str, cell: str = "hi") -> Any:
    """Run a cell; returns the display publisher that recorded it (`.outputs`, `.updates`)."""
    from IPython.utils.capture import capture_output

    recording = _recording_publisher()
    saved, ip.display_pub = ip.display_pub, recording
    try:
        with capture_output(display=False):
            ip.run_cell_magic("farm_chat", line, cell)
    finally:
        ip.display_pub = saved
    return recording


def _recording_publisher() -> Any:
    """IPython's capturing publisher that also keeps every in-place update: the live answer ends
    with `clear_output(wait=True)`, which empties the capture of what it updated."""
    from IPython.core.displaypub import CapturingDisplayPublisher

    class Recording(CapturingDisplayPublisher):
        def __init__(self) -> None:
            super().__init__()
            self.updates: list[dict[str, Any]] = []

        def publish(self, data: Any, metadata: Any = None, source: Any = None, **kwargs: Any) -> None:
            if kwargs.get("update"):
                self.updates.append(data)
            super().publish(data, metadata, source, **kwargs)

    return Recording()


def screen_updates(recorded: Any) -> list[dict[str, Any]]:
    """The in-place updates of the live output that carry text (not the final blanking)."""
    return [d for d in recorded.updates if d.get("text/plain") or d.get("text/html") or d.get("text/markdown")]


def final_text(recorded: Any) -> str:
    """The answer a headless run keeps: the fresh displays' text/plain."""
    return "\n".join(str(o["data"].get("text/plain", "")) for o in recorded.outputs if not o["update"])
