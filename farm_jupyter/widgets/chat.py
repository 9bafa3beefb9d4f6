"""ChatWidget: a conversation that streams, with Send, Stop and an inline model picker.

Sending returns at once: the answer streams on the session's runtime loop, and the screen is
updated at most about 20 times a second however fast tokens come. A failed or stopped answer
stays on screen, marked, and is not added to the history, so the next message works as if it
had not been sent.

Keys: ipywidgets' Textarea sends no key events to the kernel, so there is no Shift+Enter; a
single-line `Text` would give Enter, but prompts are often several lines (code, tracebacks).
Send is the button, or `chat.send("...")` from code.

A message sent while an answer streams is queued, not dropped: it shows at once, marked as
queued, and is asked (with the answer before it as history) when that answer is finished. Stop
stops the answer that streams; the queued messages still follow. Clear drops them too.

An answer from another model than the one asked (a fallback) says so in one line above it.

Where each finished answer came from (what a `%%farm_chat` output carries in its metadata) is
kept in the `provenance` trait: a widget has no output of its own per answer, but its state is
saved with the notebook (nbclient does, JupyterLab when it saves widget state), so a reader of a
shared notebook can tell which model, parameters and cache produced each turn.

A message sent while the kernel runs a cell waits for that cell (widget messages go through the
kernel): the chat carries its kernel's id as a class (`farm-kernel-<id>`), and the JupyterLab
extension shows "waiting for the running cell" in it while that kernel runs one.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W
from traitlets import Bool, Dict, Int, List, Unicode, observe

from ..display.markdown import render
from ..display.pieces import error_line, notice_html, thinking_html
from ..display.theme import ACCENT, BAD, BORDER, FG, FG2, PANEL, WARN, esc
from ..errors import FarmError
from ..provenance import KEY
from ..provenance import answer as provenance_of
from ._base import FarmBox, Throttle

if TYPE_CHECKING:
    from ..sessions import ChatStream, Conversation, Session
    from ..types import ChatResponse, ModelInfo


def kernel_class() -> str | None:
    """`farm-kernel-<id>` for the kernel this runs in (its connection file is `kernel-<id>.json`,
    as the Jupyter server names it); None outside a kernel. ipykernel is not imported here:
    importing it outside a kernel changes which comm class ipywidgets makes."""
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    if kernelapp is None or not kernelapp.IPKernelApp.initialized():
        return None
    name = Path(kernelapp.IPKernelApp.instance().connection_file).stem
    return f"farm-{name}" if name.startswith("kernel-") else None


def model_label(info: ModelInfo) -> str:
    return f"{info.address}{'  ●' if info.loaded else ''}"


@dataclass
class _Turn:
    """One message and its answer: what the answer's stream has folded, and how it ended."""

    prompt: str
    view: W.HTML
    target: str
    ask: str | None = None  # what the stream is asked for ("" / None: the session default)
    stream: ChatStream | None = None
    queued: bool = False
    error: str | None = None  # the stream failed, or could not be made
    stopped: bool = False
    done: bool = False

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    def html(self) -> str:
        user = (
            f'<div style="display:flex;justify-content:flex-end;margin:2px 0 6px">'
            f'<div class="farm-user" style="background:{ACCENT};color:white;border-radius:10px 10px 2px 10px;'
            f'padding:5px 10px;max-width:85%;white-space:pre-wrap">{esc(self.prompt)}</div></div>'
        )
        stream = self.stream
        response = stream.response if stream is not None else None
        if self.text:
            body = render(self.text)
        elif not self.done and not self.queued:
            body = f'<span style="color:{FG2}">&#8230;</span>'
        else:
            body = ""
        if stream is not None and stream.thinking:
            style = f' class="farm-thinking" style="color:{FG2};font-size:12px;margin:2px 0 4px"'
            body = thinking_html(stream.thinking, attrs=style) + body
        if stream is not None and stream.notice:
            body = notice_html(stream.notice) + body
        if self.queued:
            note = f'<span class="farm-queued" style="color:{FG2}">queued: sent to {esc(self.target)} when the answer above is finished</span>'
        elif response is not None:
            note = f'<span style="color:{FG2}">{esc(response.footer(first_token=True))}</span>'
        elif self.stopped:
            note = f'<span style="color:{WARN}">&#9632; stopped · {esc(self.target)} · partial answer, not added to the history</span>'
        elif self.error is not None:
            note = f'<span class="farm-error" style="color:{BAD}">&#9888; {esc(self.error)}</span>'
        elif stream is not None and stream.status:
            note = f'<span style="color:{WARN}">{esc(stream.status)}</span>'
        else:
            note = f'<span style="color:{FG2}">streaming from {esc(self.target)}&#8230;</span>'
        answer = (
            f'<div class="farm-answer" style="background:{PANEL};border:1px solid {BORDER};'
            f"border-radius:10px 10px 10px 2px;padding:2px 10px;max-width:95%;color:{FG};"
            f'line-height:1.45;overflow-wrap:anywhere">{body}'
            f'<div class="farm-footer" style="font-size:11px;margin:2px 0 4px">{note}</div></div>'
        )
        return f'<div class="farm-turn" style="margin:4px 2px 8px">{user}{answer}</div>'


# The newest turn at the bottom, scrolled into view: a reversed column keeps the scroll there.
_TRANSCRIPT = {"flex_flow": "column-reverse", "overflow": "hidden auto", "max_height": "460px", "min_height": "60px",
               "padding": "2px", "width": "100%", "flex": "1 1 auto"}  # fmt: skip


class ChatWidget(FarmBox):
    """A chat with the session's models: the conversation, a message box, Send, Stop, a model picker.

    chat = ChatWidget()            # the kernel's session; its own conversation
    chat.send("Explain asyncio")   # what the Send button does; returns at once
    chat.wait(); chat.stop()
    """

    model = Unicode("", help='Where to send: "provider:model", an alias, or "" for the session default.').tag(sync=True)
    busy = Bool(False, help="True while an answer is streaming.").tag(sync=True)
    turns = Int(0, help="Turns kept in the conversation (finished answers only).").tag(sync=True)
    queued = Int(0, help="Messages sent while an answer streamed, waiting for their turn.").tag(sync=True)
    updates = Int(0, help="Screen updates sent for streamed answers (coalesced, about 20 a second).").tag(sync=True)
    provenance = List(
        Dict(),
        help="Each finished answer's provenance, as a `%%farm_chat` output's metadata holds it, with "
        "`turn`: its place in the transcript, from 1. Synced: a notebook saved with its widget state keeps it.",
    ).tag(sync=True)

    def __init__(
        self,
        session: Session | None = None,
        *,
        conversation: Conversation | None = None,
        model: str = "",
        system: str | None = None,
        interval: float = 0.05,
        load_models: bool = True,
        think: bool | str | None = None,
        prepare: Callable[[str], tuple[str, dict[str, Any]]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(session, **kwargs)
        # What a message becomes before it is asked (`%farm sidebar` fills `{name}` from the
        # kernel): the prompt, and more keywords for the Session (images).
        self.prepare = prepare
        from ..sessions import Conversation

        self.conversation = (
            conversation if conversation is not None else Conversation(self.session.settings.max_history)
        )
        self.system = system
        self.think = think  # ask for the model's reasoning: shown folded, never part of the answer
        self.interval = interval
        self._turns: list[_Turn] = []
        self._queue: deque[_Turn] = deque()
        self._lock = threading.RLock()

        self.transcript = W.VBox(layout=W.Layout(**_TRANSCRIPT))
        self.transcript.add_class("farm-transcript")
        self.picker = W.Dropdown(
            options=[(self._default_label(), "")],
            value="",
            description="model",
            layout=W.Layout(width="auto", flex="1 1 auto"),
            style={"description_width": "initial"},
        )
        self.input = W.Textarea(
            placeholder="Ask something (Markdown answers; Send or chat.send(text))",
            layout=W.Layout(width="auto", flex="1 1 auto", height="62px"),
        )
        self.send_button = W.Button(
            description="Send",
            button_style="primary",
            icon="paper-plane",
            tooltip="send the message",
            layout=W.Layout(width="90px"),
        )
        self.stop_button = W.Button(
            description="Stop",
            icon="stop",
            disabled=True,
            tooltip="stop the answer (keeps what arrived)",
            layout=W.Layout(width="90px"),
        )
        self.clear_button = W.Button(
            description="Clear", icon="trash", tooltip="start a new conversation", layout=W.Layout(width="90px")
        )
        self.send_button.on_click(self.dispatch(lambda _: self.send()))
        self.stop_button.on_click(self.dispatch(lambda _: self.stop()))
        self.clear_button.on_click(self.dispatch(lambda _: self.clear()))
        self.picker.observe(self.dispatch(self._on_pick), "value")

        self.children = [
            W.HBox([self.picker, self.clear_button], layout=W.Layout(width="100%", align_items="center")),
            self.transcript,
            self._error_view,
            W.HBox(
                [self.input, W.VBox([self.send_button, self.stop_button])],
                layout=W.Layout(width="100%", align_items="flex-start"),
            ),
        ]
        self.add_class("farm-chat")
        if (kernel := kernel_class()) is not None:
            self.add_class(kernel)
        if model:
            self.model = model
        if load_models:
            self.refresh_models()

    # -- public ---------------------------------------------------------------------------------

    def send(self, text: str | None = None) -> None:
        """Send `text` (or the box's text); the answer streams in the background.

        While an answer streams, the message is queued (shown as such) and asked after it.
        """
        prompt = (self.input.value if text is None else text).strip()
        if not prompt:
            self.show_error("the message is empty: write a question first")
            return
        target = self.model or None
        self.clear_error()
        with self._lock:
            if self.busy:
                turn = self._new_turn(prompt, target, queued=True)
                self._queue.append(turn)
                with self.hold_sync():
                    self._show_turn(turn, clear_input=text is None)
                    self.queued = len(self._queue)
                return
            try:
                stream = self._stream(prompt, target)
            except FarmError as exc:  # an unknown provider, a bad alias: say so, keep the text
                self.show_error(exc)
                return
            turn = self._new_turn(prompt, target)
            with self.hold_sync():
                self._show_turn(turn, clear_input=text is None)
                self._set_busy(True)
            self._job = self.submit(self._run(turn, stream))

    def stop(self) -> None:
        """Stop the answer that is streaming: its HTTP stream is closed, the partial text kept.
        Queued messages are asked next; `clear()` drops them too."""
        self._cancel_job()

    def clear(self) -> None:
        """Start over: drop queued messages, stop any answer, forget the turns."""
        with self._lock:
            self._queue.clear()
            self.queued = 0
        self.stop()
        self.conversation.reset(self.system)
        with self._lock, self.hold_sync():
            old = self._turns
            self._turns = []
            self.transcript.children = ()
            self.turns = 0
            self.provenance = []
        for turn in old:
            turn.view.close()

    @property
    def last_text(self) -> str:
        return self._turns[-1].text if self._turns else ""

    @property
    def last_response(self) -> ChatResponse | None:
        stream = self._turns[-1].stream if self._turns else None
        return stream.response if stream is not None else None

    def refresh_models(self) -> None:
        """Fill the model list from `session.models()` in the background."""
        self.submit(self._fill_models())

    def summary(self) -> str:
        target = self.model or f"default {self.default_address()}"
        state = ", streaming" if self.busy else ""
        if self.queued:
            state += f", {self.queued} queued"
        n = len(self.conversation)
        return f"ChatWidget: {n} turn{'' if n == 1 else 's'}, {target}{state}"

    def _new_turn(self, prompt: str, target: str | None, *, queued: bool = False) -> _Turn:
        turn = _Turn(prompt=prompt, view=W.HTML(), target=target or self.default_address(), ask=target, queued=queued)
        turn.view.add_class("farm-turn-view")
        turn.view.value = turn.html()
        return turn

    def _show_turn(self, turn: _Turn, *, clear_input: bool) -> None:
        self._turns.append(turn)
        self.transcript.children = tuple(reversed([t.view for t in self._turns]))
        if clear_input:
            self.input.value = ""

    def _stream(self, prompt: str, target: str | None) -> ChatStream:
        """One way to ask, for a message sent now and one that waited in the queue alike."""
        extra: dict[str, Any] = {} if self.think is None else {"think": self.think}
        if self.prepare is not None:
            try:
                prompt, more = self.prepare(prompt)
            except Exception as exc:  # noqa: BLE001 - a `{name}` the kernel lacks: said in the widget, text kept
                raise FarmError(str(exc)) from None
            extra.update(more)
        return self.session.stream(prompt, target, conversation=self.conversation, system=self.system, **extra)

    def _next_queued(self) -> bool:
        """Start the oldest queued message (the lock is held); False when there is none."""
        while self._queue and not self._closed:
            turn = self._queue.popleft()
            self.queued = len(self._queue)
            turn.queued = False
            try:  # made now, so that the answer just finished is part of its history
                stream = self._stream(turn.prompt, turn.ask)
            except Exception as exc:  # noqa: BLE001 - shown in its turn; the next one still goes
                turn.error, turn.done = error_line(exc), True
                self._render(turn)
                self.error = turn.error
                continue
            self._render(turn)
            self._job = self.submit(self._run(turn, stream))
            return True
        return False

    # -- the stream, on the runtime loop --------------------------------------------------------

    async def _run(self, turn: _Turn, stream: ChatStream) -> None:
        throttle = Throttle(lambda: self._render(turn), self.interval)
        turn.stream = stream
        try:
            async for _ in stream:
                throttle.poke()
        except asyncio.CancelledError:
            turn.stopped = True
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the turn; the chat stays usable
            turn.error = error_line(exc)
        finally:
            throttle.cancel()
            turn.done = True
            self._finish(turn)

    def _render(self, turn: _Turn) -> None:
        value = turn.html()
        with turn.view.hold_sync():
            turn.view.value = value
        self.updates += 1

    def _finish(self, turn: _Turn) -> None:
        with self._lock:
            value = turn.html()
            with turn.view.hold_sync():
                turn.view.value = value
            with self.hold_sync():
                self.updates += 1
                self.turns = len(self.conversation)
                response = turn.stream.response if turn.stream is not None else None
                if response is not None and not turn.stopped and turn in self._turns:
                    entry = {"turn": self._turns.index(turn) + 1, **provenance_of(response)[KEY]}
                    self.provenance = [*self.provenance, entry]
                if turn.error is not None:
                    self.error = turn.error
                elif not turn.stopped:
                    self.error = ""
                if not self._next_queued():
                    self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        # Send stays enabled while an answer streams: a message sent then is queued.
        self.busy = busy
        self.stop_button.disabled = not busy

    # -- the model list -------------------------------------------------------------------------

    def _default_label(self) -> str:
        return f"default ({self.default_address()})"

    async def _fill_models(self) -> None:
        infos = await asyncio.to_thread(self.session.models)
        options: list[tuple[str, str]] = [(self._default_label(), "")]
        options += [(model_label(m), m.address) for m in infos]
        self._set_options(options)

    def _set_options(self, options: list[tuple[str, str]]) -> None:
        with self._lock:
            current = self.model
            values = [v for _, v in options]
            if current and current not in values:
                if f"{current}:latest" in values:  # Ollama lists "llama3.1" as "llama3.1:latest"
                    current = f"{current}:latest"
                else:
                    options.append((current, current))
            self.fill(self.picker, current, options)
            if current != self.model:
                self.model = current

    def _on_pick(self, change: dict[str, Any]) -> None:
        # The lock: a fill on the runtime thread sets _filling; the user's pick waits it out.
        with self._lock:
            if not self._filling and change["new"] is not None:
                self.model = change["new"]

    @observe("model")
    def _model_changed(self, change: dict[str, Any]) -> None:
        new = change["new"] or ""
        with self._lock:
            values = [v for _, v in self.picker.options]
            if new not in values:
                self._set_options([*self.picker.options, (new, new)])
            elif self.picker.value != new:
                self.fill(self.picker, new)
