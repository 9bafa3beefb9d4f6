"""Dashboard: the model picker, the GPU gauge, the chat and the health board in one layout.

    from farm_jupyter.widgets import Dashboard
    d = Dashboard(); d          # `%farm dashboard` shows the same
    d.chat.send("hello")

The chat follows the picker (`traitlets.dlink`); the board and the gauge run while it is
displayed; `close()` closes every part and stops every timer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W
from traitlets import dlink

from ..display.theme import BORDER, FG, FG2, PANEL, esc
from ._base import FarmBox
from .chat import ChatWidget
from .gauge import GPUGauge
from .health import HealthBoard
from .picker import ModelPicker

if TYPE_CHECKING:
    from ..sessions import Session


class Dashboard(FarmBox):
    """Everything at a glance: `.picker`, `.gauge`, `.chat`, `.health`."""

    def __init__(
        self,
        session: Session | None = None,
        *,
        health_interval: float = 10.0,
        gpu_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(session, **kwargs)
        self.picker = ModelPicker(self.session)
        self.gauge = GPUGauge(self.session, interval=gpu_interval)
        self.chat = ChatWidget(self.session)
        self.health = HealthBoard(self.session, interval=health_interval)
        self._link = dlink((self.picker, "value"), (self.chat, "model"))
        self.title = W.HTML(self._title())
        self.picker.observe(lambda _: setattr(self.title, "value", self._title()), "value")

        panel = {"border": f"1px solid {BORDER}", "padding": "8px 10px", "margin": "0"}
        for part, area in (
            (self.picker, "picker"),
            (self.gauge, "gauge"),
            (self.chat, "chat"),
            (self.health, "health"),
        ):
            part.layout = W.Layout(grid_area=area, min_width="0", width="auto", **panel)
        self.chat.layout.height = "100%"
        self.title.layout = W.Layout(grid_area="header")
        self.grid = W.GridBox(
            [self.title, self.picker, self.gauge, self.chat, self.health],
            layout=W.Layout(
                width="100%",
                grid_template_columns="minmax(320px, 2fr) minmax(0, 3fr)",
                grid_template_rows="auto auto 1fr auto",
                grid_template_areas='"header header" "picker chat" "gauge chat" "health health"',
                grid_gap="8px",
            ),
        )
        self.children = [self.grid, self._error_view]
        self.add_class("farm-dashboard")

    def _title(self) -> str:
        env = esc(self.session.settings.env)
        return (
            f'<div style="display:flex;align-items:baseline;gap:12px;padding:6px 10px;background:{PANEL};'
            f'border:1px solid {BORDER}"><span style="font-size:15px;font-weight:700;color:{FG}">farm_jupyter</span>'
            f'<span style="color:{FG2};font-size:12px">environment <b>{env}</b> · default '
            f"<b>{esc(self.default_address())}</b> · chain {esc(' → '.join(self.session.settings.chain))}</span></div>"
        )

    @property
    def parts(self) -> list[FarmBox]:
        return [self.picker, self.gauge, self.chat, self.health]

    def start(self) -> None:
        self.health.start()
        self.gauge.start()

    def stop(self) -> None:
        self.health.stop()
        self.gauge.stop()

    def summary(self) -> str:
        health = self.health.summary().removeprefix("HealthBoard: ")
        gpu = self.gauge.summary().removeprefix("GPUGauge: ")
        return f"Dashboard: default {self.default_address()} · {_turns(len(self.chat.conversation))} · {health} · {gpu}"

    def close(self) -> None:
        if not self._closed:
            self._link.unlink()
            for part in self.parts:
                part.close()
        super().close()


def _turns(n: int) -> str:
    return f"{n} turn" if n == 1 else f"{n} turns"
