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

import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from IPython.display import display

from ..display.answer import footer_bundle, notice_bundle, streaming, text_bundle, thinking_bundle, tool_runs_bundle
from ..display.live import Live

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
    address: str,
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

    echo = live and not screen.rich  # a terminal: print the text as it comes
    view = Live(
        screen.rich and live and screen.owned, screen.rate, {"text/markdown": f"*asking {address}…*", "text/plain": ""}
    )
    printer = _Printer(stream) if echo else None
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
            _stopped(screen, stream, address, start, echo=echo, out=out)
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
    line = response.notice or stream.notice
    if line and not echo:
        display(notice_bundle(line), raw=True)
    elif line and printer is not None and line != printer.notice:  # not printed with the text
        print(f"\n{line}", flush=True)
    if not echo:
        if response.thinking:
            display(thinking_bundle(response.thinking), raw=True)
        if response.tool_runs:
            display(tool_runs_bundle([r.line() for r in response.tool_runs]), raw=True)
    extra = _finish(screen, response, fmt, echo=echo)
    footer = response.footer() + (f" · {extra}" if extra else "")
    if echo:
        print(f"\n{footer}", flush=True)
    else:
        display(footer_bundle(footer), raw=True)
    return response


class _Printer:
    """A terminal's view of a stream: what has come since it last looked, printed."""

    def __init__(self, stream: ChatStream) -> None:
        self.stream = stream
        self.printed = 0  # characters of the text
        self.runs = 0
        self.restarts = 0
        self.notice: str | None = None  # the notice printed with the text

    def catch_up(self) -> None:
        s = self.stream
        for run in s.tool_runs[self.runs :]:
            print(f"[tool] {run.line()}", flush=True)
        self.runs = len(s.tool_runs)
        if s.restarts != self.restarts:
            from ..sessions.stream import CUT  # the status may be gone already: text came after it

            self.restarts, self.printed = s.restarts, 0
            print(f"\n[{s.status or CUT}]", flush=True)
        text = s.text
        if len(text) > self.printed:
            # The router says the notice before each try of the fallback: print it once, when
            # that model's text comes (a try that fails shows nothing).
            if s.notice and s.notice != self.notice:
                print(s.notice, flush=True)
                self.notice = s.notice
            sys.stdout.write(text[self.printed :])
            sys.stdout.flush()
            self.printed = len(text)


def _stopped(screen: Screen, stream: ChatStream, address: str, start: float, *, echo: bool, out: str | None) -> None:
    """Ctrl-C: keep the partial text on screen, marked, out of the conversation; fail the cell."""
    from ..types import ChatResponse, Timings

    target, _, model = address.partition(":")
    stopped = ChatResponse(
        text=stream.text,
        provider=target,
        model=model,
        stopped=True,
        timings=Timings(total=time.perf_counter() - start),
        notice=stream.notice,
    )
    if echo:
        print(f"\n(stopped)\n{stopped.footer()}", flush=True)
    else:
        if stream.notice:
            display(notice_bundle(stream.notice), raw=True)
        display(text_bundle(stopped.text, stopped=True), raw=True)
        display(footer_bundle(stopped.footer()), raw=True)
    if out:
        screen.user_ns[out] = stopped
    raise Stopped(
        f"the answer was stopped after {len(stopped.text)} characters; it was not added to the conversation"
    ) from None


def _finish(screen: Screen, response: ChatResponse, fmt: str, *, echo: bool) -> str | None:
    """Show the final answer in its format (unless a terminal already printed it)."""
    text = response.text
    if fmt == "code":
        code = extract_code(text)
        if not echo:
            display({"text/markdown": f"```python\n{code}\n```", "text/plain": code}, raw=True)
        screen.set_next_input(code, replace=False)
        return "code put in a new cell below"
    if fmt == "json":
        try:
            value = parse_json(text)
        except ValueError as exc:
            if not echo:
                display({"text/plain": text}, raw=True)
            return f"not valid JSON: {exc}"
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
        if echo:
            print("\n" + pretty)
        else:
            bundle: dict[str, Any] = {"text/plain": pretty}
            if isinstance(value, dict | list):
                bundle["application/json"] = value
            display(bundle, raw=True)
        return None
    if not echo:
        display(text_bundle(text, fmt), raw=True)
    return None


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
_PYTHONISH = {"", "python", "py", "python3", "ipython", "ipython3", "pycon"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown answer, as (language, code)."""
    return [(m.group(2).lower(), m.group(3).rstrip("\n")) for m in _FENCE.finditer(text)]


def extract_code(text: str) -> str:
    """The code to put in a new cell: the Python blocks joined, else every block, else the text."""
    blocks = code_blocks(text)
    if not blocks:
        return text.strip()
    python = [code for lang, code in blocks if lang in _PYTHONISH]
    return "\n\n".join(python or [code for _, code in blocks])


def parse_json(text: str) -> Any:
    """The answer as JSON, also when the model wrapped it in a ```json fence; ValueError if not."""
    try:
        return json.loads(text)
    except ValueError as first:
        for _, code in code_blocks(text):
            try:
                return json.loads(code)
            except ValueError:
                continue
        raise first
