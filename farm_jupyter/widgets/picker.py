"""ModelPicker: provider, then model, from the providers' live lists; pull, load, unload, reload.

Choosing a model sets the session default (`session.use("provider:model")`) and the observable
`value`, so other widgets can follow it (`traitlets.dlink((picker, "value"), (chat, "model"))`).
Filling the lists never changes the default: only a choice does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ipywidgets as W
from traitlets import Bool, Int, Unicode, observe

from ..display.formats import human_bytes
from ..display.theme import FG2, esc
from ._base import FarmBox, card

if TYPE_CHECKING:
    from ..sessions import Session
    from ..types import ModelInfo, PullProgress


def describe(info: ModelInfo) -> str:
    """`llama3.1:latest · 4.8 GB · llama 8.0B · loaded`: the dropdown label."""
    parts = [info.name]
    if info.size:
        parts.append(human_bytes(info.size))
    kind = " ".join(p for p in (info.family, info.parameter_size) if p)
    if kind:
        parts.append(kind)
    if info.loaded:
        parts.append("● loaded")
    return " · ".join(parts)


def _same_model(listed: str, wanted: str) -> bool:
    return listed == wanted or listed == f"{wanted}:latest"


class ModelPicker(FarmBox):
    """Pick the session's default model from what the providers really have.

    picker = ModelPicker()
    picker.value              # "ollama:llama3.1:latest"
    picker.value = "openai:gpt-4o-mini"   # same as choosing it
    """

    value = Unicode("", help='The chosen model as "provider:model"; choosing one sets the session default.').tag(
        sync=True
    )
    provider = Unicode("", help="The provider whose models are listed.").tag(sync=True)
    busy = Bool(False, help="True while a pull, load or unload runs.").tag(sync=True)
    fills = Int(0, help="How many times the model list has been filled.").tag(sync=True)

    def __init__(self, session: Session | None = None, *, load_models: bool = True, **kwargs: Any) -> None:
        super().__init__(session, **kwargs)
        self.models: list[ModelInfo] = []
        self._lock = threading.RLock()
        self._op: Any = None

        current = self.default_address()
        providers = list(
            dict.fromkeys([*self.session.settings.chain, *([current.partition(":")[0]] if ":" in current else [])])
        )
        head = current.partition(":")[0] if ":" in current else (providers[0] if providers else "")
        self.provider_dd = W.Dropdown(
            options=providers,
            value=head if head in providers else None,
            description="provider",
            style={"description_width": "60px"},
            layout=W.Layout(width="100%"),
        )
        self.model_dd = W.Dropdown(
            options=[],
            description="model",
            style={"description_width": "60px"},
            layout=W.Layout(width="auto", flex="1 1 auto"),
        )
        self.refresh_button = W.Button(
            icon="refresh", tooltip="refresh the model list", layout=W.Layout(width="36px", flex="0 0 36px")
        )
        self.load_button = W.Button(
            description="Load",
            tooltip="load the model into memory (pulls it if missing)",
            layout=W.Layout(width="auto", flex="1"),
        )
        self.unload_button = W.Button(
            description="Unload", tooltip="free the model's memory", layout=W.Layout(width="auto", flex="1")
        )
        self.reload_button = W.Button(
            description="Reload", tooltip="unload, then load again", layout=W.Layout(width="auto", flex="1")
        )
        self.pull_name = W.Text(placeholder="model to pull, e.g. qwen2.5:0.5b", layout=W.Layout(width="auto", flex="1"))
        self.pull_button = W.Button(
            description="Pull", icon="download", tooltip="download the model (Ollama)", layout=W.Layout(width="80px")
        )
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="100%", visibility="hidden"))
        self.progress_label = W.HTML("", layout=W.Layout(width="100%"))
        self.info = W.HTML("")
        self.info.add_class("farm-picker-info")

        self.provider_dd.observe(self.dispatch(self._on_provider), "value")
        self.model_dd.observe(self.dispatch(self._on_model), "value")
        self.refresh_button.on_click(self.dispatch(lambda _: self.refresh()))
        self.load_button.on_click(self.dispatch(lambda _: self.load()))
        self.unload_button.on_click(self.dispatch(lambda _: self.unload()))
        self.reload_button.on_click(self.dispatch(lambda _: self.reload()))
        self.pull_button.on_click(self.dispatch(lambda _: self.pull()))

        self.children = [
            W.HTML(card("Model")),
            self.provider_dd,
            W.HBox([self.model_dd, self.refresh_button], layout=W.Layout(width="100%")),
            self.info,
            W.HBox([self.load_button, self.unload_button, self.reload_button], layout=W.Layout(width="100%")),
            W.HBox([self.pull_name, self.pull_button], layout=W.Layout(width="100%")),
            self.progress,
            self.progress_label,
            self._error_view,
        ]
        self.add_class("farm-picker")
        self.provider = self.provider_dd.value or ""
        self._filling = True  # showing the current default is not choosing it
        try:
            self.value = current if ":" in current else ""
        finally:
            self._filling = False
        if load_models and self.provider:
            self.refresh()

    # -- public ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Refill the model list of the chosen provider, in the background."""
        if self.provider:
            self.submit(self._fill(self.provider))

    def load(self, model: str | None = None) -> None:
        """Load the chosen model (Ollama pulls it first if missing); progress in the bar."""
        self._start_op("load", model or self._need_value())

    def unload(self, model: str | None = None) -> None:
        self._start_op("unload", model or self._need_value())

    def reload(self, model: str | None = None) -> None:
        self._start_op("reload", model or self._need_value())

    def pull(self, name: str | None = None) -> None:
        """Download `name` (or the text box's) from the provider's registry, with progress."""
        name = (name or self.pull_name.value).strip()
        if not name:
            self.show_error("write the model to pull in the box first, e.g. qwen2.5:0.5b")
            return
        address = (
            name if ":" in name and name.partition(":")[0] in self.provider_dd.options else f"{self.provider}:{name}"
        )
        self._start_op("pull", address)

    def summary(self) -> str:
        listed = f"{len(self.models)} models from {self.provider}" if self.provider else "no provider"
        return f"ModelPicker: {self.value or 'no model chosen'} ({listed})"

    # -- lists ----------------------------------------------------------------------------------

    async def _fill(self, provider: str) -> None:
        infos = await asyncio.to_thread(self.session.models, provider)
        if provider != self.provider:
            return  # the user moved on meanwhile
        with self._lock:
            self.models = infos
            head, _, model = self.value.partition(":")
            if head != provider:
                model = (
                    self.default_address().partition(":")[2]
                    if self.default_address().startswith(provider + ":")
                    else ""
                )
            chosen = next((m.name for m in infos if _same_model(m.name, model)), None)
            options = [(describe(m), m.name) for m in infos]
            self.fill(self.model_dd, chosen, options)
            self._show_info()
            self.fills += 1

    def _show_info(self) -> None:
        name = self.model_dd.value
        info = next((m for m in self.models if m.name == name), None)
        if info is None:
            text = f"{len(self.models)} models at {esc(self.provider)}" if self.models else "no models listed"
        else:
            bits = [
                b
                for b in (
                    info.quantization,
                    human_bytes(info.size) if info.size else None,
                    "loaded in memory" if info.loaded else "not loaded",
                )
                if b
            ]
            text = esc(" · ".join(bits))
        self.info.value = f'<span style="color:{FG2};font-size:12px">{text}</span>'

    # The user's changes take the lock before reading _filling: a fill on the runtime thread sets
    # it, and a pick made meanwhile must wait for the fill, not be mistaken for part of it.

    def _on_provider(self, change: dict[str, Any]) -> None:
        with self._lock:
            if self._filling or change["new"] is None:
                return
            self.provider = change["new"]
            self.models = []
            self.fill(self.model_dd, None, [])
        self.refresh()

    def _on_model(self, change: dict[str, Any]) -> None:
        with self._lock:
            if self._filling or change["new"] is None:
                return
            self.value = f"{self.provider}:{change['new']}"

    @observe("value")
    def _value_changed(self, change: dict[str, Any]) -> None:
        new = change["new"]
        with self._lock:
            if not new or self._filling:
                return
        try:
            self.session.use(new)
        except Exception as exc:  # noqa: BLE001 - the dispatcher's rule, for a trait change
            self.show_error(exc)
            return
        self.clear_error()
        head, _, model = new.partition(":")
        with self._lock:
            if head != self.provider_dd.value and head in self.provider_dd.options:
                self.fill(self.provider_dd, head)
                self.provider = head
                self.refresh()
            elif model and self.model_dd.value != model:
                match = next((m.name for m in self.models if _same_model(m.name, model)), None)
                if match is not None:
                    self.fill(self.model_dd, match)
            self._show_info()

    # -- pull, load, unload (sync Session calls, in a worker thread) ----------------------------

    def _need_value(self) -> str:
        if not self.value:
            raise ValueError("choose a model first")
        return self.value

    def _start_op(self, kind: str, address: str) -> None:
        if self.busy:
            self.show_error("another pull or load is running: wait for it to finish")
            return
        self.clear_error()
        self._set_busy(True)
        self.progress.layout.visibility = "visible" if kind != "unload" else "hidden"
        self._progress(kind, address, None)
        self._job = self.submit(self._op_task(kind, address))  # wait() waits for it

    async def _op_task(self, kind: str, address: str) -> None:
        cancelled = threading.Event()
        try:
            changed = await asyncio.to_thread(self._op_sync, kind, address, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except Exception:
            self.progress.bar_style = "danger"
            self.progress_label.value = ""
            raise
        finally:
            self._set_busy(False)
        if changed and self.provider and not self._closed:
            await self._fill(self.provider)

    def _op_sync(self, kind: str, address: str, cancelled: threading.Event) -> bool:
        """Run the pull, load or unload; False when there was nothing to do."""
        if kind == "unload":
            if not self.session.unload(address):
                return self._remote(kind, address)
            self._progress(kind, address, None, done=True)
            return True
        steps: Iterator[PullProgress] | None = self.session.load(address, reload=kind == "reload")
        if steps is None:
            return self._remote(kind, address)
        try:
            for step in steps:
                if cancelled.is_set() or self._closed:
                    break
                self._progress(kind, address, step)
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()  # cancels the pull on the runtime loop if we stopped early
        self._progress(kind, address, None, done=not cancelled.is_set())
        return True

    def _remote(self, kind: str, address: str) -> bool:
        """A remote API serves its models itself: say so, having done nothing."""
        provider = address.partition(":")[0]
        with self.progress.hold_sync():
            self.progress.max, self.progress.value, self.progress.bar_style = 1, 1, "info"
        self.progress_label.value = (
            f'<span style="color:{FG2};font-size:12px">{esc(address)}: nothing to {kind}: '
            f"{esc(provider)} serves its models remotely</span>"
        )
        return False

    def _progress(self, kind: str, address: str, step: PullProgress | None, *, done: bool = False) -> None:
        verb = {"pull": "pulling", "load": "loading", "unload": "unloading", "reload": "reloading"}[kind]
        with self.progress.hold_sync():
            if done:
                self.progress.max = 1
                self.progress.value = 1
                self.progress.bar_style = "success"
                text = f"{kind} {address}: done"
            elif step is None:
                self.progress.bar_style = ""
                self.progress.max, self.progress.value = 1, 0
                text = f"{verb} {address}&#8230;"
            else:
                if step.total:
                    self.progress.max = max(int(step.total), 1)
                    self.progress.value = min(int(step.completed or 0), self.progress.max)
                    pct = 100 * (step.completed or 0) / step.total
                    text = (
                        f"{esc(step.status)} · {human_bytes(step.completed)} / {human_bytes(step.total)} ({pct:.0f}%)"
                    )
                else:
                    text = esc(step.status)
        self.progress_label.value = f'<span style="color:{FG2};font-size:12px">{text}</span>'

    def _set_busy(self, busy: bool) -> None:
        with self.hold_sync():
            self.busy = busy
            for button in (self.load_button, self.unload_button, self.reload_button, self.pull_button):
                button.disabled = busy
