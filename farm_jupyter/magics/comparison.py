"""`%%farm_chat --compare A,B`: one prompt to several models at once, their columns side by side.

The columns are `display.columns.Column`s, as in CompareWidget; here they are drawn into one
display output that streams, then shown once more when every model has finished.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from IPython.display import display

from .. import provenance
from ..display.columns import Column, columns_bundle
from ..display.live import Live
from .answer import Stopped

if TYPE_CHECKING:
    from ..sessions import ChatStream
    from .frontend import Screen


def show_comparison(screen: Screen, streams: list[ChatStream], args: Any) -> None:
    """Follow every model's stream at once; draw the columns as they stream; `-o` gets each one's
    response (or its error). The cell fails only when every model failed."""
    from ..sessions.follow import follow

    columns = [Column(s.address, s) for s in streams]
    text_only = args.format == "text"

    def bundle() -> dict[str, str]:
        return columns_bundle(columns, text_only=text_only)

    view = Live(screen.rich and not args.no_stream and screen.owned, screen.rate, bundle())
    start = time.perf_counter()
    changes = follow([c.stream for c in columns if c.stream is not None], tick=1.0 / screen.rate)
    try:
        for change in changes:
            if change is None:
                view.flush(bundle)
            else:
                view.offer(bundle)
    except KeyboardInterrupt:
        changes.close()
        view.close()
        for column in columns:
            column.stopped = not column.done
        display(bundle(), raw=True)
        if args.out:
            screen.user_ns[args.out] = _outcomes(columns, time.perf_counter() - start)
        raise Stopped("the comparison was stopped; partial answers are shown") from None
    finally:
        changes.close()
        view.close()
    screen.updates = view.updates
    answered = [c.response for c in columns if c.response is not None]
    meta = {provenance.KEY: {"columns": [provenance.answer(r)[provenance.KEY] for r in answered]}}
    display(bundle(), raw=True, metadata=meta)
    if args.out:
        screen.user_ns[args.out] = _outcomes(columns, time.perf_counter() - start)
    failures = [c.exception for c in columns if c.exception is not None]
    if failures and len(failures) == len(columns):
        raise failures[0]


def _outcomes(columns: list[Column], total: float) -> dict[str, Any]:
    """Each column's response (a stopped one's partial answer) or error, by address; a model
    asked twice gets `address #2`."""
    out: dict[str, Any] = {}
    for column in columns:
        key, k = column.address, 2
        while key in out:
            key, k = f"{column.address} #{k}", k + 1
        out[key] = column.exception or column.response or column.partial(total)
    return out
