"""Models compared over many prompts, and a judge whose verdicts can be cited.

Every prompt goes to every model (no fallback: a comparison must not compare the wrong model).
A judge model then sees each pair of answers in both orders, N(N-1) calls a prompt; the verdicts
become a report (`farm_jupyter.pairwise`): consistency, first-position preference, Bradley-Terry
scores with bootstrap intervals over prompts, and Cohen's kappa against a person's picks. The
judge's calls go through the cache like any request, so its model and its prompt are in the key:
another judge, or another judge prompt, asks again. Before anything is sent, the calls are
counted and priced, and a budget that they could exceed refuses the run.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import pairwise, provenance
from .batch import ABOUT_THE_TARGET, BatchResult, Row, run_rows
from .errors import ConfigError, FarmError
from .ledger import SHIPPED_PRICES, BudgetExceeded
from .pairwise import TIE, Judgement

if TYPE_CHECKING:
    from .batch import Session
    from .config import Price

JUDGE_PROMPT = (
    "Question:\n{question}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Which answer is better? Reply with one letter (A or B) or TIE, nothing else."
)
RESAMPLES = 1000
_VERDICT = re.compile(r"\b(A|B|TIE)\b")
_WORST_OUT = 256  # the tokens an answer may take when max_tokens is not set (as the ledger holds)


def parse_verdict(reply: str, first: str, second: str) -> str | None:
    """The model a pairwise judge named (A: `first`, B: `second`), "tie", or None when the reply
    names neither."""
    found = _VERDICT.search(reply.strip().upper())
    if found is None:
        return None
    return {"A": first, "B": second, "TIE": TIE}[found.group(1)]


def check_judge_prompt(template: str) -> str:
    try:
        template.format(question="q", a="a", b="b")
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"the judge prompt cannot be filled: {type(exc).__name__}: {exc}",
            hint="use {question}, {a} and {b}, and {{ }} for literal braces",
        ) from None
    if not all(f"{{{name}}}" in template for name in ("question", "a", "b")):
        raise ConfigError("the judge prompt must contain {question}, {a} and {b}")
    return template


@dataclass
class Estimate:
    """What a comparison will ask before it asks: calls, and the most they could cost."""

    answers: int
    judge_calls: int
    usd: float | None  # the priced calls' worst case; None when nothing is priced
    unpriced: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        judged = f" and {self.judge_calls} judge calls (both orders of every pair)" if self.judge_calls else ""
        cost = "nothing priced" if self.usd is None else f"at most ${self.usd:.4f}"
        unknown = f"; price unknown for {', '.join(self.unpriced)}" if self.unpriced else ""
        return f"{self.answers} answers{judged}: {cost}{unknown}"


@dataclass
class JudgeReport:
    """The judge's verdicts read together; `str()` is the report to cite."""

    judge: str
    models: list[str]
    score: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    consistency: float | None
    first_position: float | None
    kappa: float | None
    kappa_prompts: int
    prompts_judged: int
    calls: int
    warnings: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """The report but the scores: the judge, its biases, agreement, warnings."""

        def share(x: float | None) -> str:
            return "-" if x is None else f"{x:.0%}"

        notes = [
            f"judge {self.judge}: {self.calls} calls over {self.prompts_judged} prompts, each pair in both orders",
            f"consistency {share(self.consistency)} (both orders agree), first-position preference "
            f"{share(self.first_position)} (50% is none)",
        ]
        if self.kappa_prompts:
            kappa = "undefined (one label only)" if self.kappa is None else f"{self.kappa:.2f}"
            notes.append(f"agreement with your picks: Cohen's kappa {kappa} over {self.kappa_prompts} prompts")
        return notes + [f"warning: {w}" for w in self.warnings]

    def lines(self) -> list[str]:
        head, *rest = self.notes()
        scores = [
            f"{m}: {self.score[m]:.2f} [{self.low[m]:.2f}, {self.high[m]:.2f}] (Bradley-Terry, 95% CI)"
            for m in self.models
        ]
        return [head, *(f"  {line}" for line in [*rest, *scores])]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    __repr__ = __str__


@dataclass
class Comparison:
    """Every prompt x model: the rows, a summary per model, and the judge's report."""

    prompts: list[str]
    models: list[str]
    rows: BatchResult
    judgements: list[Judgement] = field(default_factory=list)
    picks: list[str | None] = field(default_factory=list)  # per prompt: a person's (CompareWidget)
    judge: str | None = None
    estimate: Estimate | None = None
    warnings: list[str] = field(default_factory=list)
    seed: int = 0

    def row(self, prompt: int, model: int) -> Row:
        return self.rows[prompt * len(self.models) + model]

    def rows_of(self, prompt: int) -> list[Row]:
        return [self.row(prompt, j) for j in range(len(self.models))]

    @property
    def verdicts(self) -> list[str | None]:
        """Per prompt, the judge's pick from its pairwise verdicts: a model, "tie", or None."""
        found = pairwise.outcomes(self.judgements, self.models)
        return [pairwise.prompt_winner(found, self.models, i) for i in range(len(self.prompts))]

    def report(self) -> JudgeReport | None:
        """The judge's report, or None before any pair was judged in both orders."""
        if self.judge is None:
            return None
        found = pairwise.outcomes(self.judgements, self.models)
        judged = sorted({o.prompt for o in found if o.winner is not None})
        if not judged:
            return None
        per_prompt = pairwise.win_counts(found, self.models, judged)
        score = pairwise.scores(pairwise.bradley_terry(per_prompt.sum(axis=0)))
        low, high = pairwise.bootstrap(per_prompt, RESAMPLES, self.seed)
        kappa, n = pairwise.cohen_kappa(self.picks, self.verdicts)
        return JudgeReport(
            judge=self.judge,
            models=list(self.models),
            score={m: float(score[i]) for i, m in enumerate(self.models)},
            low={m: float(low[i]) for i, m in enumerate(self.models)},
            high={m: float(high[i]) for i, m in enumerate(self.models)},
            consistency=pairwise.consistency(self.judgements, self.models),
            first_position=pairwise.first_position_preference(self.judgements),
            kappa=kappa,
            kappa_prompts=n,
            prompts_judged=len(judged),
            calls=sum(j.reply is not None for j in self.judgements),
            warnings=list(self.warnings),
        )

    def summary(self) -> list[dict[str, Any]]:
        report = self.report()
        verdicts = self.verdicts
        out = []
        for j, m in enumerate(self.models):
            rows = [self.row(i, j) for i in range(len(self.prompts))]
            ok = [r for r in rows if r.ok]
            served = [r for r in ok if not r.cached]
            out.append(
                {
                    "model": m,
                    "answered": len(ok),
                    "errors": len(rows) - len(ok),
                    "first_token": _mean([r.first_token for r in served if r.first_token is not None]),
                    "seconds": _mean([r.seconds for r in served]),
                    "tokens_per_second": _mean([r.tokens_per_second for r in served if r.tokens_per_second]),
                    "tokens_out": sum(r.tokens_out for r in ok),
                    "wins": sum(v == m for v in verdicts),  # the judge's
                    "picked": sum(v == m for v in self.picks),  # a person's
                    "score": report.score[m] if report else None,
                    "score_low": report.low[m] if report else None,
                    "score_high": report.high[m] if report else None,
                }
            )
        return out

    COLUMNS = (
        "prompt", "model", "answer", "error", "first_token", "seconds", "tokens_out", "tokens_per_second",
        "verdict", "pick", "judge_points", "score", "score_low", "score_high",
    )  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        """One record per prompt x model, the columns of `to_pandas` and `to_csv`."""
        report = self.report()
        found = pairwise.outcomes(self.judgements, self.models)
        verdicts = self.verdicts
        records = []
        for i, p in enumerate(self.prompts):
            for j, m in enumerate(self.models):
                r = self.row(i, j)
                points = [1.0 if o.winner == m else 0.5 if o.winner == TIE else 0.0 for o in found if o.prompt == i and m in (o.a, o.b) and o.winner]  # fmt: skip
                records.append(
                    {
                        "prompt": p,
                        "model": m,
                        "answer": r.answer,
                        "error": r.error,
                        "first_token": r.first_token,
                        "seconds": r.seconds,
                        "tokens_out": r.tokens_out,
                        "tokens_per_second": r.tokens_per_second,
                        "verdict": verdicts[i],
                        "pick": self.picks[i] if i < len(self.picks) else None,
                        "judge_points": sum(points) if points else None,
                        "score": report.score[m] if report else None,
                        "score_low": report.low[m] if report else None,
                        "score_high": report.high[m] if report else None,
                    }
                )
        return records

    def to_pandas(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        frame = pd.DataFrame.from_records(self.records(), columns=list(self.COLUMNS))
        frame.attrs[provenance.KEY] = self.provenance()
        return frame

    def provenance(self) -> dict[str, Any]:
        """The answers' provenance (`farm_jupyter.provenance.table`), the judge and its report."""
        report = self.report()
        judged = {"judge": self.judge, "report": str(report) if report else None} if self.judge else {}
        return provenance.table((r.response for r in self.rows), **judged)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"text/plain": repr(self)}, {provenance.KEY: self.provenance()}

    def judgements_to_pandas(self):  # type: ignore[no-untyped-def]
        """Every judge call: the prompt, which model was shown first, the verdict, the reply."""
        import pandas as pd

        columns = ["prompt", "first", "second", "winner", "reply"]
        return pd.DataFrame(
            [[self.prompts[j.prompt], j.first, j.second, j.winner, j.reply] for j in self.judgements], columns=columns
        )

    def to_csv(self, path: str) -> None:
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.COLUMNS))
            writer.writeheader()
            writer.writerows(self.records())

    def __repr__(self) -> str:
        lines = [f"<Comparison {len(self.prompts)} prompts x {len(self.models)} models>"]
        for s in self.summary():
            ttft = "-" if s["first_token"] is None else f"{s['first_token']:.2f}s"
            rate = "-" if s["tokens_per_second"] is None else f"{s['tokens_per_second']:.1f} tok/s"
            lines.append(f"  {s['model']}: {s['answered']} answered, {s['errors']} errors, TTFT {ttft}, {rate}")
        report = self.report()
        if report is not None:
            lines += report.lines()
        elif self.warnings:
            lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# -- asking ----------------------------------------------------------------------------------------


def contestant_warning(session: Session, judge: str, models: Sequence[str]) -> list[str]:
    """A judge that is also a contestant favours its own answers: said, not hidden."""
    address = session.resolve(judge)
    if address in {session.resolve(m) for m in models}:
        return [f"the judge {address} is also a contestant: judges tend to prefer their own answers"]
    return []


def estimate(
    session: Session, prompts: Sequence[str], models: Sequence[str], judge: str | None, template: str, max_out: int
) -> Estimate:
    """Every answer and N(N-1) judge calls a prompt, at their worst case (max_tokens out)."""

    def price_of(address: str) -> Price | None:
        return session.settings.prices.get(address) or SHIPPED_PRICES.get(address)

    usd: float | None = None
    unpriced: list[str] = []

    def add(address: str, tokens_in: int, tokens_out: int) -> None:
        nonlocal usd
        price = price_of(address)
        if price is None:
            unpriced.append(address) if address not in unpriced else None
            return
        usd = (usd or 0.0) + price.cost(tokens_in, tokens_out)

    for p in prompts:
        for m in models:
            add(session.resolve(m), len(p) // 4 + 1, max_out)
    pairs = len(models) * (len(models) - 1)
    if judge is not None:
        address = session.resolve(judge)
        for p in prompts:
            for _ in range(pairs):
                add(address, (len(template) + len(p)) // 4 + 2 * max_out, _WORST_OUT)
    return Estimate(len(prompts) * len(models), len(prompts) * pairs if judge else 0, usd, unpriced)


def afford(session: Session, planned: Estimate) -> None:
    """Refuse, before anything is sent, a run whose worst case would take the spend past the budget."""
    usage = session.usage()
    if usage.budget is not None and planned.usd is not None and usage.spent + planned.usd > usage.budget:
        raise BudgetExceeded(
            f"this comparison ({planned}) could take the spend (${usage.spent:.4f}) past the ${usage.budget:.2f} budget",
            hint="compare fewer prompts or models, set max_tokens, or raise [budget] usd in farm.toml",
        )


async def judge_prompt(
    session: Session,
    judge: str,
    template: str,
    index: int,
    question: str,
    answers: Mapping[str, str | None],
    concurrency: int = 4,
) -> list[Judgement]:
    """Every ordered pair of one prompt's answers to the judge, N(N-1) calls; a pair with a missing
    answer is not asked. A mistake about the judge (a missing model, a bad key) is raised."""
    gate = asyncio.Semaphore(concurrency)
    models = list(answers)

    async def one(first: str, second: str) -> Judgement:
        a, b = answers[first], answers[second]
        if a is None or b is None:
            return Judgement(index, first, second, None)
        async with gate:
            try:
                reply = await session.aio.chat(
                    template.format(question=question, a=a, b=b), judge, temperature=0, fallback=False
                )
            except ABOUT_THE_TARGET:
                raise
            except FarmError as exc:
                return Judgement(index, first, second, None, f"{type(exc).__name__}: {exc}")
        return Judgement(index, first, second, parse_verdict(reply.text, first, second), reply.text)

    return list(await asyncio.gather(*(one(a, b) for a in models for b in models if a != b)))


def run_compare(
    session: Session,
    prompts: Sequence[str],
    models: Sequence[str],
    *,
    judge: str | None = None,
    judge_prompt: str = JUDGE_PROMPT,
    seed: int = 0,
    concurrency: int = 4,
    progress: bool = True,
    no_cache: bool = False,
    **params: Any,
) -> Comparison:
    """Each prompt to each model, streamed (so time to first token is real), without fallback:
    a comparison of models must not silently compare one with another; then the judge."""
    if len(models) < 2:
        raise ConfigError("compare needs at least two models", hint='models=["ollama:llama3.1", "openai:gpt-4o-mini"]')
    for m in models:
        session.resolve(m)
    check_judge_prompt(judge_prompt)
    provenance.install_formatter()
    planned = estimate(session, prompts, models, judge, judge_prompt, int(params.get("max_tokens") or _WORST_OUT))
    afford(session, planned)
    warnings = contestant_warning(session, judge, models) if judge else []
    pairs = [(p, m) for p in prompts for m in models]

    def job(k: int) -> Callable[[], Any]:
        async def ask() -> Row:
            prompt, model = pairs[k]
            start = time.perf_counter()
            try:
                r = await session.stream(prompt, model, no_cache=no_cache, fallback=False, **params).aresult()
            except FarmError as exc:
                return Row.failed(k, prompt, exc, time.perf_counter() - start)
            return Row.answered(k, prompt, r)

        return ask

    rows: list[Row | None] = [None] * len(pairs)
    run_rows(
        session, [job(k) for k in range(len(pairs))], concurrency, rows, "farm.compare", progress, lambda k: pairs[k][0]
    )
    result = Comparison(
        list(prompts),
        list(models),
        BatchResult(r for r in rows if r is not None),
        judge=judge,
        estimate=planned,
        warnings=warnings,
        seed=seed,
    )
    if judge is not None:
        _judge_all(session, result, judge, judge_prompt, concurrency, progress)
    return result


def _judge_all(
    session: Session, result: Comparison, judge: str, template: str, concurrency: int, progress: bool
) -> None:
    from tqdm.auto import tqdm

    async def each() -> AsyncIterator[list[Judgement]]:
        gate = asyncio.Semaphore(max(1, concurrency // 2))

        async def prompt(i: int) -> list[Judgement]:
            answers = {m: r.answer for m, r in zip(result.models, result.rows_of(i), strict=True)}
            async with gate:
                return await judge_prompt(session, judge, template, i, result.prompts[i], answers, concurrency)

        for done in asyncio.as_completed([prompt(i) for i in range(len(result.prompts))]):
            yield await done

    with tqdm(total=len(result.prompts), desc="farm.compare judge", unit="prompt", disable=not progress) as bar:
        for found in session.aio.runtime.iterate(each()):
            result.judgements += found
            bar.update(1)
    result.judgements.sort(key=lambda j: (j.prompt, result.models.index(j.first), result.models.index(j.second)))
