"""A pull's progress as tqdm bars, one per layer (`%farm pull`, `%farm load`, `%farm ollama start`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..types import PullProgress


def show_progress(steps: Iterable[PullProgress]) -> str:
    """Draw each layer's download as a bar (bytes) while `steps` runs; return the last status."""
    from tqdm.auto import tqdm

    bar: Any = None
    digest: str | None = None
    last = ""
    try:
        for p in steps:
            last = p.status
            if p.digest and p.total:
                if p.digest != digest:
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=p.total, unit="B", unit_scale=True, unit_divisor=1024, desc=p.status, leave=True)
                    digest = p.digest
                bar.update(max(0, (p.completed or 0) - bar.n))
            elif bar is not None:
                bar.close()
                bar, digest = None, None
    finally:
        if bar is not None:
            bar.close()
    return last
