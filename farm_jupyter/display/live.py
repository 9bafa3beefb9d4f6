"""One output updated in place, at most `rate` times a second: a magic's answer as it streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from IPython.display import display


class Live:
    """One output updated in place, at most `rate` times a second; gone when done.

    `close()` clears the cell's outputs with `wait=True`: the frontend (JupyterLab, nbclient)
    drops them when the next output arrives (the final answer, or the error), so the saved
    notebook holds the answer once and no empty output. Blanking the live output instead left a
    `text/plain: ''` output in every saved notebook; there is no message that removes one output.
    A magic streams live only when it owns the cell (`magics.frontend.Frontend.owns_cell`).
    """

    def __init__(self, enabled: bool, rate: float, initial: dict[str, Any]) -> None:
        self.gap = 1.0 / rate
        self.last = 0.0
        self.dirty = False
        self.updates = 0
        self.handle = display(initial, raw=True, display_id=True) if enabled else None

    def offer(self, bundle: Callable[[], dict[str, Any]], force: bool = False) -> None:
        self.dirty = True
        now = time.monotonic()
        if self.handle is not None and (force or now - self.last >= self.gap):
            self.handle.update(bundle(), raw=True)
            self.updates += 1
            self.last = now
            self.dirty = False

    def flush(self, bundle: Callable[[], dict[str, Any]]) -> None:
        if self.dirty:
            self.offer(bundle, force=True)

    def close(self) -> None:
        if self.handle is not None:
            from IPython.display import clear_output

            clear_output(wait=True)
            self.handle = None
