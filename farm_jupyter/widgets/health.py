"""HealthBoard: one row per provider: up, down, cooling down or rate-limited, and what to do.

It checks once when made (in the background), so a board that is never displayed still knows:
`board.statuses` waits for that first check. While displayed it refreshes on the runtime loop
every `interval` seconds (an asyncio task, so it keeps going while a cell computes) and soon
after any failed request or attempt (it listens to the session's monitor); `close()` or `stop()`
ends both. Each provider's failures are counted by class (unreachable, timeout, ...).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as W
from traitlets import Float, Int

from ..display.formats import clock, describe_failures, duration
from ..display.theme import BAD, BORDER, FG, FG2, GOOD, WARN, esc
from ._base import PollingBox, card

_FIRST_CHECK_WAIT = 30.0  # most seconds `statuses` waits for the check a new board started

if TYPE_CHECKING:
    from ..records import RequestRecord
    from ..sessions import Session
    from ..types import ProviderStatus

_STATE = {
    "healthy": (GOOD, "&#9679;", "healthy"),
    "unhealthy": (BAD, "&#9679;", "unhealthy"),
    "cooling_down": (WARN, "&#9680;", "cooling down"),
    "rate_limited": (WARN, "&#9680;", "rate-limited"),
    "unknown": (FG2, "&#9675;", "not checked"),
}


def state_text(status: ProviderStatus) -> str:
    """`healthy`, `unhealthy`, `cooling down until 12:00:31`, `rate-limited`."""
    text = _STATE.get(status.state, _STATE["unknown"])[2]
    if status.state == "cooling_down" and status.cooldown_until:
        text += f" until {clock(status.cooldown_until)}"
    return text


def advice(status: ProviderStatus) -> str:
    """The last error and what to do about it (provider errors already carry their hint)."""
    if status.state == "healthy":
        return ""
    if status.state == "cooling_down":
        until = clock(status.cooldown_until) if status.cooldown_until else "the cooldown ends"
        cause = f"{status.error}. " if status.error else ""
        return f"{cause}Requests skip it until {until}, then one request probes it; fix the cause above meanwhile."
    if status.state == "rate_limited":
        return (
            status.error + ". " if status.error else ""
        ) + "Requests wait for their turn; raise rate_limits in farm.toml if your plan allows more."
    return status.error or "not checked yet: press refresh"


class HealthBoard(PollingBox):
    """Which provider is up, at a glance.

    board = HealthBoard(interval=10)   # refreshes while displayed
    board.refresh()                     # one check now (blocks until done)
    """

    interval = Float(10.0, help="Seconds between checks while displayed.").tag(sync=True)
    checks = Int(0, help="How many times the board has been refreshed.").tag(sync=True)

    def __init__(
        self, session: Session | None = None, *, interval: float = 10.0, check: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(session, **kwargs)
        self.interval = interval
        self._statuses: list[ProviderStatus] = []
        self._asked = 0  # refreshes started and applied, in order: a slow old one never
        self._applied = 0  # overwrites a newer one
        self._first: concurrent.futures.Future[Any] | None = None
        self._loop_future: concurrent.futures.Future[Any] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._poke: asyncio.Event | None = None
        self.header = W.HTML(card("Providers", right="not checked yet"))
        self.refresh_button = W.Button(
            icon="refresh", tooltip="check every provider now", layout=W.Layout(width="36px")
        )
        self.refresh_button.on_click(self.dispatch(lambda _: self.submit(self._refresh())))
        self.table = W.HTML(self._table([]))
        self.table.add_class("farm-health-table")
        self.children = [
            W.HBox(
                [W.Box([self.header], layout=W.Layout(flex="1")), self.refresh_button],
                layout=W.Layout(width="100%", align_items="center"),
            ),
            self.table,
            self._error_view,
        ]
        self.add_class("farm-health")
        if check:
            self._first = self.submit(self._refresh())

    # -- public ---------------------------------------------------------------------------------

    @property
    def statuses(self) -> list[ProviderStatus]:
        """Each provider's last status; the first access waits for the check made at creation."""
        first = self._first
        if first is not None and not first.done() and not self.session.aio.runtime.in_loop():
            concurrent.futures.wait([first], timeout=_FIRST_CHECK_WAIT)
        return self._statuses

    def refresh(self, timeout: float = 30.0) -> list[ProviderStatus]:
        """Check every provider now and redraw; returns the statuses."""
        if self.session.aio.runtime.in_loop():
            raise RuntimeError("HealthBoard.refresh() blocks; from the runtime loop await board._refresh()")
        self.submit(self._refresh()).result(timeout)
        return self.statuses

    def start(self) -> None:
        """Refresh every `interval` s on the runtime loop (and soon after a failed request)."""
        if self._closed or (self._loop_future is not None and not self._loop_future.done()):
            return
        self._loop_future = self.submit(self._every())
        if self._unsubscribe is None:
            self._unsubscribe = self.session.aio.watch(self._on_record)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._loop_future is not None:
            self._loop_future.cancel()
            self._loop_future = None
        self._poke = None

    @property
    def running(self) -> bool:
        return self._loop_future is not None and not self._loop_future.done()

    def summary(self) -> str:
        statuses = self._statuses  # a repr never waits for a check
        if not statuses:
            return f"HealthBoard: {', '.join(self.session.settings.chain)} (not checked yet)"
        parts = []
        for s in statuses:
            part = f"{s.provider} {state_text(s)}"
            if s.state == "healthy" and s.latency is not None:
                part += f" ({duration(s.latency)})"
            parts.append(part)
        return "HealthBoard: " + ", ".join(parts)

    # -- on the runtime loop --------------------------------------------------------------------

    async def _every(self) -> None:
        self._poke = asyncio.Event()
        while True:
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - shown; the loop keeps going
                self.show_error(exc)
            try:
                await asyncio.wait_for(self._poke.wait(), self.interval)
                await asyncio.sleep(0.2)  # let a burst of failures settle into one refresh
            except TimeoutError:
                pass
            self._poke.clear()

    def _on_record(self, record: RequestRecord) -> None:
        if record.ok and record.smooth:
            return  # nothing failed: the failure counts are as they were
        poke = self._poke
        if poke is not None:
            try:
                self.session.aio.runtime.loop.call_soon_threadsafe(poke.set)
            except RuntimeError:  # the loop is closed: nothing to refresh
                pass

    async def _refresh(self) -> None:
        self._asked += 1
        ticket = self._asked
        statuses = await self.session.aio.health()
        if ticket < self._applied:
            return  # a newer check has drawn already
        self._applied = ticket
        self._statuses = statuses
        with self.hold_sync():
            self.table.value = self._table(statuses)
            self.header.value = card("Providers", right=f"checked {clock()} · every {self.interval:g} s")
            self.checks += 1

    def _table(self, statuses: list[ProviderStatus]) -> str:
        stats = self._request_stats()
        head = "".join(
            f'<th style="text-align:left;padding:3px 8px 3px 0;color:{FG2};font-weight:600;'
            f'border-bottom:1px solid {BORDER}">{h}</th>'
            for h in (
                "provider",
                "status",
                "latency",
                "URL",
                "loaded",
                "requests",
                "failures",
                "last error · what to do",
            )
        )
        if not statuses:
            names = self.session.settings.chain
            rows = "".join(
                f'<tr><td style="padding:3px 8px 3px 0">{esc(n)}</td>'
                f'<td colspan="7" style="color:{FG2}">checking&#8230;</td></tr>'
                for n in names
            )
        else:
            failures = self.session.usage("failures")
            seen: set[str] = set()
            parts = []
            for s in statuses:  # a provider with several servers has a row each; its counts go on the first
                first = s.provider not in seen
                seen.add(s.provider)
                parts.append(
                    self._row(
                        s, stats.get(s.provider) if first else None, failures.get(s.provider, {}) if first else {}
                    )
                )
            rows = "".join(parts)
        return (
            f'<table class="farm-health-rows" style="border-collapse:collapse;width:100%;font-size:12px;color:{FG};'
            f'table-layout:auto"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        )

    def _row(self, s: ProviderStatus, stat: tuple[int, int] | None, failures: dict[str, int]) -> str:
        color, dot, _ = _STATE.get(s.state, _STATE["unknown"])
        loaded = ", ".join(s.models_loaded[:4]) + (f" +{len(s.models_loaded) - 4}" if len(s.models_loaded) > 4 else "")
        requests = (
            "–"
            if stat is None
            else f"{stat[0]}" + (f' <span style="color:{BAD}">({stat[1]} failed)</span>' if stat[1] else "")
        )
        cell = "padding:3px 8px 3px 0;vertical-align:top"
        return (
            f'<tr class="farm-health-row" data-provider="{esc(s.provider)}" data-state="{esc(s.state)}">'
            f'<td style="{cell};font-weight:600">{esc(s.provider)}</td>'
            f'<td style="{cell};color:{color};white-space:nowrap">{dot} {esc(state_text(s))}</td>'
            f'<td style="{cell};white-space:nowrap">{duration(s.latency) if s.latency is not None else "–"}</td>'
            f'<td style="{cell};color:{FG2}"><code>{esc(s.url or "–")}</code></td>'
            f'<td style="{cell}">{esc(loaded) or "–"}</td>'
            f'<td style="{cell}">{requests}</td>'
            f'<td class="farm-failures" style="{cell};color:{BAD if failures else FG2}">{esc(describe_failures(failures)) or "–"}</td>'
            f'<td style="{cell};color:{FG2};overflow-wrap:anywhere">{esc(advice(s)) or "–"}</td></tr>'
        )

    def _request_stats(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        try:
            for summary in self.session.usage("requests"):
                provider = summary.address.partition(":")[0]
                n, e = out.get(provider, (0, 0))
                out[provider] = (n + summary.requests, e + summary.errors)
        except Exception:  # noqa: BLE001 - statistics are a nicety
            return {}
        return out
