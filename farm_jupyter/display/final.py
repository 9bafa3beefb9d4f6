"""An answer's last look in a cell: the final answer in its format, with the lines around it; the
stopped answer; and a terminal's view, printed as it comes (a terminal cannot update in place).

Displayed as outputs (HTML or markdown with `text/plain`, so that nbval and saved notebooks read
them); a terminal gets the same lines printed.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, Any

from IPython.display import display

from .. import provenance
from .pieces import footer_bundle, notice_bundle, text_bundle, thinking_bundle, tool_runs_bundle

if TYPE_CHECKING:
    from ..sessions import ChatStream
    from ..types import ChatResponse


def show_final(response: ChatResponse, fmt: str, notice: str | None, printer: Printer | None) -> str | None:
    """The notice, thinking and tool runs above the answer, the answer in its format (`markdown`,
    `text`, `code`, `json`), the footer below; with a `printer`, a terminal already printed the
    text and gets the rest printed. Returns the code to put in a new cell (`fmt="code"`)."""
    echo = printer is not None
    meta = provenance.answer(response)  # on every output of the answer: the saved notebook says who
    if notice and not echo:
        display(notice_bundle(notice), raw=True, metadata=meta)
    elif notice and printer is not None and notice != printer.notice:  # not printed with the text
        print(f"\n{notice}", flush=True)
    if not echo:
        if response.thinking:
            display(thinking_bundle(response.thinking), raw=True, metadata=meta)
        if response.tool_runs:
            display(tool_runs_bundle([r.line() for r in response.tool_runs]), raw=True, metadata=meta)
    extra = _formatted(response.text, fmt, echo=echo, metadata=meta)
    code = extract_code(response.text) if fmt == "code" else None
    if code is not None:
        extra = "code put in a new cell below"
    footer = response.footer() + (f" · {extra}" if extra else "")
    if echo:
        print(f"\n{footer}", flush=True)
    else:
        display(footer_bundle(footer), raw=True, metadata=meta)
    return code


def _formatted(text: str, fmt: str, *, echo: bool, metadata: dict[str, Any]) -> str | None:
    """Show the answer in its format (unless a terminal already printed it); what the footer adds."""
    if fmt == "code":
        code = extract_code(text)
        if not echo:
            display({"text/markdown": f"```python\n{code}\n```", "text/plain": code}, raw=True, metadata=metadata)
        return None
    if fmt == "json":
        try:
            value = parse_json(text)
        except ValueError as exc:
            if not echo:
                display({"text/plain": text}, raw=True, metadata=metadata)
            return f"not valid JSON: {exc}"
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
        if echo:
            print("\n" + pretty)
        else:
            bundle: dict[str, Any] = {"text/plain": pretty}
            if isinstance(value, dict | list):
                bundle["application/json"] = value
            display(bundle, raw=True, metadata=metadata)
        return None
    if not echo:
        display(text_bundle(text, fmt), raw=True, metadata=metadata)
    return None


def show_stopped(stream: ChatStream, address: str, seconds: float, *, echo: bool) -> ChatResponse:
    """Ctrl-C: the partial text, marked stopped, with its notice and footer; returned as a response."""
    from ..types import ChatResponse, Timings

    target, _, model = address.partition(":")
    stopped = ChatResponse(
        text=stream.text,
        provider=target,
        model=model,
        stopped=True,
        timings=Timings(total=seconds),
        notice=stream.notice,
    )
    if echo:
        print(f"\n(stopped)\n{stopped.footer()}", flush=True)
    else:
        if stream.notice:
            display(notice_bundle(stream.notice), raw=True)
        display(text_bundle(stopped.text, stopped=True), raw=True)
        display(footer_bundle(stopped.footer()), raw=True)
    return stopped


class Printer:
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
