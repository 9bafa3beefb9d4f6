"""GPUGauge: per device utilisation, memory, temperature, power and processes; CPU and RAM without one.

Readings come from `session.gpu()` (NVML, torch as a fallback, psutil for the host), taken in a
worker thread by a task on the runtime loop, and drawn from there: the gauge keeps moving while
another cell trains a model. It starts when displayed; `close()` or `stop()` ends it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as W
from traitlets import Bool, Float, Int

from ..display.formats import clock, gib
from ..display.theme import BAD, FG, FG2, WARN, esc
from ._base import PollingBox, card

if TYPE_CHECKING:
    from ..sessions import Session
    from ..types import GPUDevice, GPUStats


def _style(percent: float | None) -> str:
    if percent is None:
        return ""
    return "danger" if percent >= 90 else "warning" if percent >= 70 else "success"


class _Bar:
    """`label [=====    ] text`: a FloatProgress between two HTML labels."""

    def __init__(self, label: str) -> None:
        self.label = W.HTML(
            f'<span style="color:{FG2};font-size:12px">{esc(label)}</span>', layout=W.Layout(width="62px")
        )
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=100.0, layout=W.Layout(flex="1 1 auto", width="auto"))
        self.text = W.HTML("", layout=W.Layout(width="150px"))
        self.text.add_class("farm-gauge-value")
        self.box = W.HBox([self.label, self.bar, self.text], layout=W.Layout(width="100%", align_items="center"))

    def set(self, percent: float | None, text: str) -> None:
        with self.bar.hold_sync():
            self.bar.value = max(0.0, min(100.0, percent or 0.0))
            self.bar.bar_style = _style(percent)
        self.text.value = f'<span style="font-size:12px;color:{FG};white-space:nowrap">{esc(text)}</span>'


class GPUGauge(PollingBox):
    """Live GPU (or CPU/RAM) figures.

    gauge = GPUGauge(interval=1.0)   # starts when displayed; gauge.start() without display
    gauge.stats                       # the last GPUStats
    """

    interval = Float(1.0, help="Seconds between readings while running.").tag(sync=True)
    updates = Int(0, read_only=True, help="Readings drawn so far (tests watch it move).").tag(sync=True)
    has_gpu = Bool(False, read_only=True, help="Whether the last reading saw a GPU.").tag(sync=True)

    def __init__(
        self,
        session: Session | None = None,
        *,
        interval: float = 1.0,
        stats: Callable[[], GPUStats] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(session, **kwargs)
        self.interval = interval
        self.stats: GPUStats | None = None
        self._read = stats or self.session.gpu
        self._loop_future: concurrent.futures.Future[Any] | None = None
        self._shape: tuple[Any, ...] = ()
        self._bars: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.title = W.HTML(card("GPU", right="waiting for the first reading"))
        self.updated = W.HTML("")
        self.updated.add_class("farm-gauge-updated")
        self.body = W.VBox(layout=W.Layout(width="100%"))
        self.children = [self.title, self.body, self.updated, self._error_view]
        self.add_class("farm-gauge")

    # -- public ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._closed or self.running:
            return
        self._loop_future = self.submit(self._every())

    def stop(self) -> None:
        if self._loop_future is not None:
            self._loop_future.cancel()
            self._loop_future = None

    @property
    def running(self) -> bool:
        return self._loop_future is not None and not self._loop_future.done()

    def update(self) -> GPUStats:
        """Take one reading now and draw it (blocks; the timer does this by itself)."""
        stats = self._read()
        self.draw(stats)
        return stats

    def summary(self) -> str:
        s = self.stats
        if s is None:
            return "GPUGauge: no reading yet"
        if not s.has_gpu:
            host = []
            if s.cpu_percent is not None:
                host.append(f"CPU {s.cpu_percent:.0f}%")
            if s.ram_used is not None and s.ram_total:
                host.append(f"RAM {gib(s.ram_used)}/{gib(s.ram_total)} GiB")
            return f"GPUGauge: no GPU ({s.reason or 'none found'}); " + ", ".join(host)
        parts = []
        for d in s.devices:
            util = f"{d.utilization:.0f}% util, " if d.utilization is not None else ""
            parts.append(f"{d.index}: {d.name} {util}{gib(d.memory_used)}/{gib(d.memory_total)} GiB")
        return f"GPUGauge: {len(s.devices)} GPU{'s' if len(s.devices) > 1 else ''}: " + "; ".join(parts)

    # -- drawing --------------------------------------------------------------------------------

    async def _every(self) -> None:
        while True:
            try:
                stats = await asyncio.to_thread(self._read)
                self.draw(stats)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - shown; the gauge keeps trying
                self.show_error(exc)
            await asyncio.sleep(self.interval)

    def draw(self, stats: GPUStats) -> None:
        with self._lock, self.hold_sync():
            self.stats = stats
            shape: tuple[Any, ...] = ("gpu", len(stats.devices)) if stats.has_gpu else ("none",)
            if shape != self._shape:
                self._build(stats)
                self._shape = shape
            if stats.has_gpu:
                for device, bars in zip(stats.devices, self._bars, strict=False):
                    self._draw_device(device, bars)
                right = f"{len(stats.devices)} device{'s' if len(stats.devices) > 1 else ''} · {stats.source}"
            else:
                self._draw_host(stats)
                right = "no GPU · host CPU and RAM"
            self.title.value = card("GPU", right=esc(right))
            self.set_trait("updates", self.updates + 1)
            self.set_trait("has_gpu", stats.has_gpu)
            self.updated.value = (
                f'<span class="farm-gauge-stamp" style="color:{FG2};font-size:11px">'
                f"updated {clock()} · {self.updates}</span>"
            )

    def _build(self, stats: GPUStats) -> None:
        old = list(self.body.children)
        self._bars = []
        children: list[W.Widget] = []
        if stats.has_gpu:
            for _ in stats.devices:
                bars = {"head": W.HTML(), "util": _Bar("util"), "mem": _Bar("memory"), "procs": W.HTML()}
                self._bars.append(bars)
                children += [bars["head"], bars["util"].box, bars["mem"].box, bars["procs"]]
        else:
            bars = {"head": W.HTML(), "util": _Bar("CPU"), "mem": _Bar("RAM")}
            self._bars.append(bars)
            children += [bars["head"], bars["util"].box, bars["mem"].box]
        self.body.children = children
        for widget in old:
            for inner in getattr(widget, "children", ()):
                inner.close()
            widget.close()

    def _draw_device(self, d: GPUDevice, bars: dict[str, Any]) -> None:
        extras = []
        if d.temperature is not None:
            hot = BAD if d.temperature >= 85 else WARN if d.temperature >= 75 else FG2
            extras.append(f'<span style="color:{hot}">{d.temperature:.0f} &#176;C</span>')
        if d.power is not None:
            extras.append(f"{d.power:.0f} W")
        bars["head"].value = (
            f'<div style="font-size:12px;line-height:1.4;color:{FG};margin-top:4px"><b>GPU {d.index}</b> · {esc(d.name)}'
            f'<span style="color:{FG2}"> · {" · ".join(extras) or "no sensors"}</span></div>'
        )
        util = d.utilization
        bars["util"].set(util, "n/a" if util is None else f"{util:.0f}%")
        mem = 100 * d.memory_used / d.memory_total if d.memory_total else None
        bars["mem"].set(mem, f"{gib(d.memory_used)} / {gib(d.memory_total)} GiB")
        if d.processes:
            rows = ", ".join(
                f"{esc(p.name or 'pid')} ({p.pid}) {gib(p.memory_used)} GiB"
                for p in sorted(d.processes, key=lambda p: -p.memory_used)[:5]
            )
            more = f" +{len(d.processes) - 5}" if len(d.processes) > 5 else ""
            text = f"processes: {rows}{more}"
        else:
            text = "processes: none reported"
        bars["procs"].value = f'<span style="color:{FG2};font-size:11px">{text}</span>'

    def _draw_host(self, s: GPUStats) -> None:
        bars = self._bars[0]
        reason = esc(s.reason or "no GPU found")
        bars["head"].value = (
            f'<div class="farm-no-gpu" style="font-size:12px;line-height:1.4;color:{FG}"><b>No GPU</b>'
            f'<span style="color:{FG2}"> · {reason}; local models run on the CPU</span></div>'
        )
        bars["util"].set(s.cpu_percent, "n/a" if s.cpu_percent is None else f"{s.cpu_percent:.0f}%")
        ram = 100 * s.ram_used / s.ram_total if s.ram_used is not None and s.ram_total else None
        bars["mem"].set(ram, f"{gib(s.ram_used)} / {gib(s.ram_total)} GiB")


__all__ = ["GPUGauge"]
