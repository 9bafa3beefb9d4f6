"""A pull's progress as tqdm bars, one per layer (`%farm pull`, `%farm load`, `%farm ollama start`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..types import PullProgress


def show_progress(steps: Iterable[PullProgress]) -> str:
    """Draw each layer's download as a bar (bytes) while `steps` runs; return the last status.
    A saved notebook keeps each bar's final text (`farm_jupyter.bars`)."""
    from contextlib import ExitStack

    from ..bars import progress_bar

    bar: Any = None
    digest: str | None = None
    last = ""
    with ExitStack() as layers:
        for p in steps:
            last = p.status
            if p.digest and p.total:
                if p.digest != digest:
                    layers.close()  # the previous layer's bar, finished
                    bar = layers.enter_context(progress_bar(p.total, p.status, "B", unit_scale=True, unit_divisor=1024))
                    digest = p.digest
                bar.update(max(0, (p.completed or 0) - bar.n))
            elif bar is not None:
                layers.close()
                bar, digest = None, None
    return last
