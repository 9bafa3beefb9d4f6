"""A tqdm progress bar whose saved text is its last one (`farm.map`, `farm.compare`, pulls).

In a notebook, tqdm.auto draws an ipywidgets bar; the text/plain beside the widget (what a saved
notebook, nbval and GitHub show) is taken once, when the bar is first displayed, so a finished run
saved `farm.map:   0%|          | 0/200`. Here the bar is displayed under a display id and shown
again when it closes: the saved output then says how the run ended (`100%|...| 200/200`, or where
it stopped). In a terminal tqdm's own text is already the truth.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def progress_bar(total: int, desc: str, unit: str, *, disable: bool = False, **options: Any) -> Iterator[Any]:
    """`tqdm.auto.tqdm(total, desc=desc, unit=unit, leave=True, **options)`, closed on exit."""
    from tqdm.auto import tqdm

    notebook = sys.modules.get("tqdm.notebook")
    if disable or notebook is None or not issubclass(tqdm, notebook.tqdm_notebook):
        with tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=True, **options) as bar:
            yield bar
        return
    from IPython.display import display

    bar = tqdm(total=total, desc=desc, unit=unit, leave=True, display=False, **options)
    handle = display(bar.container, display_id=True)
    try:
        yield bar
    finally:
        bar.close()
        if handle is not None:
            handle.update(bar.container)  # the widget again, with its final text as text/plain
