"""One answer in a cell: streamed live into one output, then shown whole with its footer.

An answer streams into one `display(..., display_id=True)` output, updated at most `update_rate`
times a second whatever the token rate. When the answer is complete the cell's outputs are
cleared (`clear_output(wait=True)`: the frontend drops them as the next output comes) and the
answer is shown as a fresh display (markdown and `text/plain`) with a one-line footer below it, so
headless runs (nbval, nbclient) and saved notebooks hold the answer once, and no empty output. An
answer from another model than the one asked has one line above it that says so. A terminal
IPython, which cannot update an output in place, gets the text printed as it comes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..display.final import Printer, show_final, show_stopped
from ..display.live import Live
from ..display.pieces import streaming

if TYPE_CHECKING:
    from ..sessions import ChatStream
    from ..types import ChatResponse
    from .frontend import Screen


class Stopped(KeyboardInterrupt):
    """Ctrl-C during an answer: the partial text stays on screen; the cell fails with one line."""

    def _render_traceback_(self) -> list[str]:
        return [f"Stopped: {self}"]


def show_answer(
    screen: Screen,
    stream: ChatStream,
    *,
    fmt: str = "markdown",
    live: bool = True,
    out: str | None = None,
) -> ChatResponse:
    """Stream one answer to the screen; show the final answer and its footer; return it.

    A fallback's notice (`ollama was not reachable: answered by openai:gpt-4o-mini`) is one
    line above the answer: in the live output as soon as the stream says it, then as its
    own output above the final answer, so text/plain readers (nbval, saved notebooks) see it.
    """
    from ..sessions.follow import follow

    address = stream.address  # as the router resolved it: the label is what is asked
    echo = live and not screen.rich  # a terminal: print the text as it comes
    view = Live(
        screen.rich and live and screen.owned, screen.rate, {"text/markdown": f"*asking {address}…*", "text/plain": ""}
    )
    printer = Printer(stream) if echo else None
    start = time.perf_counter()
    changes = follow([stream], tick=1.0 / screen.rate)
    try:
        for change in changes:
            if change is None:
                view.flush(lambda: streaming(stream, address))
                continue
            if printer is not None:
                printer.catch_up()
            view.offer(lambda: streaming(stream, address))
    except KeyboardInterrupt:
        changes.close()  # cancels the request and waits for it to close
        view.close()
        # An answer that finished (and joined the conversation) just before Ctrl-C reached us is
        # shown as the complete answer it is, rather than as stopped.
        if stream.response is None:
            stopped = show_stopped(stream, address, time.perf_counter() - start, echo=echo)
            if out:
                screen.user_ns[out] = stopped
            raise Stopped(
                f"the answer was stopped after {len(stopped.text)} characters; it was not added to the conversation"
            ) from None
    finally:
        changes.close()
        view.close()
    if stream.error is not None and stream.response is None:
        raise stream.error
    response = stream.response
    if response is None:  # pragma: no cover - a stream always ends with its response
        raise RuntimeError("the stream ended without a response")
    screen.updates = view.updates
    if out:
        screen.user_ns[out] = response
    code = show_final(response, fmt, response.notice or stream.notice, printer)
    if code is not None:
        screen.set_next_input(code, replace=False)
    return response
