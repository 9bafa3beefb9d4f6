"""CompareWidget: one prompt to N models at once, one column each, streaming side by side.

Under each column: time to first token, total time, tokens/s and tokens; the fastest (least
total time among the answers that finished) is marked. Each model is asked on its own, with no
fallback, so a column shows that model's answer or its error, never another's. By default the
cache is not read (`fresh=True`), so the timings are real.

Over a list of prompts (`prompts=[...]`) it is an evaluation: a pick per prompt (a model, or a
tie) moves on to the next one, a scoreboard keeps each model's win rate and latency, an optional
judge model sees each pair of answers in both orders, and the scoreboard shows its report
(Bradley-Terry scores with 95% intervals, consistency, first-position preference, Cohen's kappa
between your picks and the judge); `comparison` (`to_pandas()`, `to_csv()`) holds every answer
with its figures, pick and verdict.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ipywidgets as W
from traitlets import Bool, Int, List, Unicode

from ..batch import BatchResult, Row
from ..display.columns import Column
from ..display.formats import duration
from ..display.pieces import error_line
from ..display.theme import BORDER, FG, esc
from ..errors import ConfigError, FarmError
from ..evaluate import JUDGE_PROMPT, Comparison, check_judge_prompt, contestant_warning, judge_prompt
from ._base import FarmBox, Throttle

if TYPE_CHECKING:
    from ..sessions import Session
    from ..types import ChatResponse


@dataclass
class _Column(Column):
    """A comparison's column (`display.columns.Column`) drawn into three views."""

    head: W.HTML = field(default_factory=W.HTML)
    body: W.HTML = field(default_factory=W.HTML)
    foot: W.HTML = field(default_factory=W.HTML)

    def box(self) -> W.VBox:
        self.body.add_class("farm-compare-body")
        self.foot.add_class("farm-compare-foot")
        return W.VBox(
            [self.head, self.body, self.foot],
            layout=W.Layout(
                border=f"1px solid {BORDER}",
                padding="4px 8px",
                min_width="0",
                width="auto",
            ),
        )

    def draw(self) -> None:
        self.head.value = self.heading_html()
        self.body.value = self.body_html()
        self.foot.value = self.foot_html()


class CompareWidget(FarmBox):
    """The same prompt to several models, side by side.

    CompareWidget("Explain a mutex in one paragraph", ["ollama:llama3.1", "openai:gpt-4o-mini"])
    """

    prompt = Unicode("", help="The prompt sent to every model.").tag(sync=True)
    models = List(Unicode(), help='The models compared, as "provider:model" addresses.').tag(sync=True)
    running = Bool(False, help="True while any column is streaming.").tag(sync=True)
    fastest = Unicode("", help="The address with the least total time, once all are done.").tag(sync=True)
    updates = Int(0, help="Column redraws sent (coalesced, about 20 a second per column).").tag(sync=True)
    index = Int(0, help="Which of `prompts` is shown (an evaluation over several prompts).").tag(sync=True)

    def __init__(
        self,
        prompt: str = "",
        models: list[str] | None = None,
        session: Session | None = None,
        *,
        system: str | None = None,
        fresh: bool = True,
        interval: float = 0.05,
        run: bool = True,
        prompts: list[str] | None = None,
        judge: str | None = None,
        judge_prompt: str = JUDGE_PROMPT,
        **params: Any,
    ) -> None:
        super().__init__(session)
        self.prompts = list(prompts or ([prompt] if prompt else []))
        self.judge = judge
        self.judge_prompt = check_judge_prompt(judge_prompt)
        self.comparison: Comparison | None = None
        self.system = system
        self.fresh = fresh
        self.interval = interval
        self.params = params
        self.columns: list[_Column] = []
        self.prompt_box = W.Text(
            value=prompt, placeholder="prompt for every model", layout=W.Layout(flex="1 1 auto", width="auto")
        )
        self.run_button = W.Button(
            description="Run", button_style="primary", icon="play", layout=W.Layout(width="80px")
        )
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True, layout=W.Layout(width="80px"))
        self.run_button.on_click(self.dispatch(lambda _: self.run(self.prompt_box.value)))
        self.stop_button.on_click(self.dispatch(lambda _: self.stop()))
        self.grid = W.GridBox(layout=W.Layout(width="100%", grid_gap="8px"))
        self.grid.add_class("farm-compare-grid")
        self.picks_row = W.HBox(layout=W.Layout(width="100%", flex_flow="row wrap"))
        self.scoreboard = W.HTML()
        self.children = [
            W.HBox([self.prompt_box, self.run_button, self.stop_button], layout=W.Layout(width="100%")),
            self._error_view,
            self.grid,
        ]
        self.add_class("farm-compare")
        self.models = list(models or [])
        if prompts:
            self._start_evaluation()
        prompt = self.prompts[0] if prompts else prompt
        self.prompt = prompt
        if run and prompt and self.models:
            self.run(prompt)

    # -- public ---------------------------------------------------------------------------------

    def run(self, prompt: str | None = None, models: list[str] | None = None) -> None:
        """Ask every model; returns at once, the columns stream."""
        prompt = (prompt if prompt is not None else self.prompt).strip()
        if not prompt:
            self.show_error("the prompt is empty: write one in the box first")
            return
        if models is not None:
            self.models = list(models)
        if not self.models:
            self.show_error('no models to compare: CompareWidget(prompt, ["ollama:llama3.1", "openai:gpt-4o-mini"])')
            return
        self.stop()
        self.clear_error()
        old = self.columns
        self.columns = [_Column(address=m) for m in self.models]
        with self.hold_sync():
            self.prompt = prompt
            self.prompt_box.value = prompt
            self.fastest = ""
            self.grid.layout.grid_template_columns = f"repeat({len(self.columns)}, minmax(0, 1fr))"
            self.grid.children = [c.box() for c in self.columns]
            for column in self.columns:
                column.draw()
            self.running = True
            self.run_button.disabled, self.stop_button.disabled = True, False
        for column in old:
            for w in (column.head, column.body, column.foot):
                w.close()
        self._job = self.submit(self._all(prompt, self.columns))

    def stop(self) -> None:
        self._cancel_job()

    # -- an evaluation over several prompts -------------------------------------------------------

    def _start_evaluation(self) -> None:
        if len(self.models) < 2:
            raise ConfigError(
                "an evaluation needs at least two models", hint='models=["ollama:llama3.1", "openai:gpt-4o-mini"]'
            )
        n = len(self.prompts)
        self.comparison = Comparison(
            self.prompts,
            list(self.models),
            BatchResult(
                Row(k, self.prompts[k // len(self.models)], error="not asked yet", error_type="NotAsked")
                for k in range(n * len(self.models))
            ),
            picks=[None] * n,
            judge=self.judge,
            warnings=contestant_warning(self.session, self.judge, self.models) if self.judge else [],
        )
        buttons = [W.Button(description=f"{m} is better", layout=W.Layout(width="auto")) for m in self.models]
        buttons.append(W.Button(description="tie", layout=W.Layout(width="auto")))
        for button, choice in zip(buttons, [*self.models, "tie"], strict=True):
            button.on_click(self.dispatch(lambda _, choice=choice: self.pick(choice)))
        self.picks_row.children = buttons
        self.children = [*self.children, self.picks_row, self.scoreboard]
        self._draw_scoreboard()

    def pick(self, choice: str) -> None:
        """Record a person's pick for the prompt shown (a model's address, or "tie"), then ask
        the next prompt that has no pick yet."""
        if self.comparison is None:
            raise ConfigError("pick() is for an evaluation: CompareWidget(prompts=[...], models=[...])")
        if choice != "tie" and choice not in self.models:
            raise ConfigError(f"pick one of {', '.join(self.models)} or 'tie', not {choice!r}")
        self.comparison.picks[self.index] = choice
        self._draw_scoreboard()
        rest = [i for i, p in enumerate(self.comparison.picks) if p is None]
        if rest:
            self.index = rest[0]
            self.run(self.prompts[self.index])

    async def _record(self, columns: list[_Column]) -> None:
        """The finished columns of the prompt shown go into the comparison; the judge is asked."""
        assert self.comparison is not None
        i, width = self.index, len(self.models)
        for j, column in enumerate(columns):
            k = i * width + j
            if column.response is not None:
                self.comparison.rows[k] = Row.answered(k, self.prompts[i], column.response)
            else:
                self.comparison.rows[k] = Row(k, self.prompts[i], error=column.error or "stopped", error_type="Failed")
        if self.judge:
            answers = {c.address: (c.text if c.response is not None else None) for c in columns}
            try:
                found = await judge_prompt(self.session, self.judge, self.judge_prompt, i, self.prompts[i], answers)
                kept = [j for j in self.comparison.judgements if j.prompt != i]  # a prompt run again
                self.comparison.judgements = kept + found
            except FarmError as exc:
                self.show_error(f"the judge {self.judge} could not answer: {error_line(exc)}")
        self._draw_scoreboard()

    def _draw_scoreboard(self) -> None:
        if self.comparison is None:
            return
        picked = sum(p is not None for p in self.comparison.picks)
        report = self.comparison.report() if self.judge else None
        rows = []
        for s in self.comparison.summary():
            rate = f"{s['picked'] / picked:.0%}" if picked else "-"
            judged = "-" if s["score"] is None else f"{s['score']:.2f} [{s['score_low']:.2f}, {s['score_high']:.2f}]"
            ttft = duration(s["first_token"]) if s["first_token"] is not None else "-"
            total = duration(s["seconds"]) if s["seconds"] is not None else "-"
            rows.append(
                f"<tr><td>{esc(s['model'])}</td><td>{s['picked']}</td><td>{rate}</td><td>{judged}</td>"
                f"<td>{ttft}</td><td>{total}</td></tr>"
            )
        ties = sum(p == "tie" for p in self.comparison.picks)
        notes = [esc(line) for line in report.notes()] if report else []
        notes += [f"warning: {esc(w)}" for w in self.comparison.warnings if report is None]
        self.scoreboard.value = (
            f'<div style="font-size:12px;color:{FG}">prompt {self.index + 1} of {len(self.prompts)} · '
            f"{picked} picked, {ties} tie{'s' if ties != 1 else ''}"
            f'<table class="farm-scoreboard"><tr><th>model</th><th>your picks</th><th>win rate</th>'
            f"<th>judge's score [95% CI]</th><th>TTFT (mean)</th><th>total (mean)</th></tr>{''.join(rows)}</table>"
            + "".join(f'<div class="farm-judge-note">{n}</div>' for n in notes)
            + "</div>"
        )

    @property
    def responses(self) -> dict[str, ChatResponse | None]:
        return {c.address: c.response for c in self.columns}

    def summary(self) -> str:
        short = self.prompt if len(self.prompt) <= 40 else self.prompt[:39] + "…"
        head = f"CompareWidget: {short!r} over {len(self.models)} models"
        if self.running:
            return head + ", streaming"
        best = next((c for c in self.columns if c.address == self.fastest), None)
        if best is not None:
            total = best.response.timings.total if best.response else None
            return head + f"; fastest {self.fastest} ({duration(total)})"
        return head

    # -- on the runtime loop --------------------------------------------------------------------

    async def _all(self, prompt: str, columns: list[_Column]) -> None:
        try:
            await asyncio.gather(*(self._one(prompt, c) for c in columns))
            if self.comparison is not None and columns is self.columns:
                await self._record(columns)
        finally:
            if columns is self.columns:  # else a newer run has taken over the widget: leave it be
                self._finish(columns)

    def _finish(self, columns: list[_Column]) -> None:
        finished = [c for c in columns if c.response is not None]
        best = min(finished, key=lambda c: c.response.timings.total if c.response else 0.0, default=None)
        with self.hold_sync():
            if best is not None and len(columns) > 1:
                best.fastest = True
                best.draw()
                self.fastest = best.address
            self.running = False
            self.run_button.disabled, self.stop_button.disabled = False, True

    async def _one(self, prompt: str, column: _Column) -> None:
        def flush() -> None:
            column.draw()
            self.updates += 1

        throttle = Throttle(flush, self.interval)
        try:
            column.stream = self.session.stream(
                prompt, column.address, system=self.system, fallback=False, refresh=self.fresh, **self.params
            )
            async for _ in column.stream:
                throttle.poke()
        except asyncio.CancelledError:
            column.stopped = True
            raise
        except Exception as exc:  # noqa: BLE001 - one model's failure is its column's, not the others'
            if column.stream is None or column.stream.error is None:
                column.failure = exc
        finally:
            throttle.cancel()
            flush()


__all__ = ["CompareWidget"]
