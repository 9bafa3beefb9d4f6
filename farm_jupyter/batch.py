"""Many requests at once: one prompt over many rows (`map`), many prompts over several models
(`compare`).

Both run on the runtime loop with a bounded number of requests in flight, through the router
(rate limits, retries, fallback, the cache), and keep every row's outcome: one failure never
ends a run. A rerun asks only for what the cache does not already hold, so with a disk or Redis
cache a run survives a kernel restart; Ctrl-C stops it, said in one line, and keeps the rows
(`session.last_batch`, the object `map` returned). Progress is a tqdm bar, updated in the caller's
thread, whose saved text is its final one (`farm_jupyter.bars`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .bars import progress_bar
from .errors import (
    AuthenticationError,
    ConfigError,
    FarmError,
    ModelNotFound,
    NotConfigured,
    UnknownProvider,
)
from .types import Attempt, ChatMessage, ChatResponse

if TYPE_CHECKING:
    from .sessions import Session

PromptBuilder = str | Callable[[Any], "str | Sequence[ChatMessage | dict[str, Any]]"]


@dataclass
class Row:
    """One item's outcome: its answer and where it came from, or why there is none."""

    index: int
    item: Any
    answer: str | None = None
    parsed: Any = None  # the validated answer, when the map was given a schema=
    error: str | None = None
    error_type: str | None = None
    # Who answered, and how: the figures are the response's own, measured where it was asked.
    provider: str | None = None
    model: str | None = None
    notice: str | None = None
    cached: bool = False
    retries: int = 0
    seconds: float = 0.0
    first_token: float | None = None
    tokens_per_second: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    response: ChatResponse | None = field(default=None, repr=False)
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def answered(cls, index: int, item: Any, r: ChatResponse) -> Row:
        return cls(
            index,
            item,
            answer=r.text,
            provider=r.provider,
            model=r.model,
            cached=r.cached,
            retries=r.retries,
            notice=r.notice,
            first_token=r.timings.first_token,
            seconds=r.timings.total,
            tokens_in=r.usage.prompt_tokens,
            tokens_out=r.usage.completion_tokens,
            tokens_per_second=r.tokens_per_second,
            attempts=r.attempts,
            parsed=r.parsed,
            response=r,
        )

    @classmethod
    def failed(cls, index: int, item: Any, exc: BaseException, seconds: float) -> Row:
        return cls(
            index,
            item,
            error=str(exc) or type(exc).__name__,
            error_type=type(exc).__name__,
            seconds=seconds,
            attempts=list(getattr(exc, "attempts", [])),
            exception=exc,
        )


class BatchResult(list[Row]):
    """The rows in input order; `answers`, `errors`, `to_pandas()`."""

    COLUMNS = (
        "item",
        "answer",
        "error",
        "provider",
        "model",
        "cached",
        "retries",
        "notice",
        "seconds",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self, rows: Iterable[Row] = (), labels: Sequence[Any] | None = None) -> None:
        super().__init__(rows)
        self.labels = labels  # a pandas Series' index, kept for the DataFrame

    @property
    def answers(self) -> list[str | None]:
        return [r.answer for r in self]

    @property
    def errors(self) -> list[Row]:
        return [r for r in self if not r.ok]

    def to_pandas(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        # `parsed` only when a schema= gave the rows validated answers.
        columns = [*self.COLUMNS, *(["parsed"] if any(r.parsed is not None for r in self) else [])]
        frame = pd.DataFrame([{c: getattr(r, c) for c in columns} for r in self], columns=columns)
        if self.labels is not None:
            frame.index = self.labels
        return frame

    def __repr__(self) -> str:
        done = sum(r.ok for r in self)
        cached = sum(r.cached for r in self)
        return f"<BatchResult {len(self)} rows: {done} answered ({cached} from the cache), {len(self) - done} failed>"


def messages_for(prompt: PromptBuilder, item: Any) -> str | Sequence[ChatMessage | dict[str, Any]]:
    """A `{}`-template filled with the item (a mapping's keys by name too), or the builder's result."""
    if callable(prompt):
        return prompt(item)
    try:
        if isinstance(item, Mapping):
            return prompt.format(item, **{str(k): v for k, v in item.items()})
        return prompt.format(item)
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"the prompt template {prompt!r} cannot be filled with {item!r}: {type(exc).__name__}: {exc}",
            hint="use {} for the item, {name} for a key of a dict item, {{ }} for literal braces",
        ) from None


@dataclass
class _Broken:
    error: Exception


async def _bounded(
    jobs: Sequence[Callable[[], Any]], concurrency: int, last: Callable[[Any], bool] = lambda result: False
) -> AsyncIterator[Any]:
    """Run the jobs with at most `concurrency` in flight; yield each result as it finishes. A
    result for which `last` is true stops the workers from starting more. Closing the iterator
    cancels what is still running."""
    done: asyncio.Queue[Any] = asyncio.Queue()
    todo = iter(jobs)
    stop = False

    async def worker() -> None:
        nonlocal stop
        for job in todo:  # one shared iterator: each worker takes the next job
            if stop:
                return
            try:
                result = await job()
            except Exception as exc:  # noqa: BLE001 - a bug, not a row's failure: it ends the run
                stop = True
                done.put_nowait(_Broken(exc))
                return
            stop = stop or last(result)
            done.put_nowait(result)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(jobs)))]
    try:
        for _ in range(len(jobs)):
            result = await done.get()
            if isinstance(result, _Broken):
                raise result.error
            yield result
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


# Errors about the model or provider asked, not about a row: the same for every row, so the first
# one ends the run, said once, and the requests still in flight are cancelled.
_ABOUT_THE_TARGET = (ModelNotFound, AuthenticationError, NotConfigured, UnknownProvider, ConfigError)


def _run(
    session: Session,
    jobs: list[Callable[[], Any]],
    concurrency: int,
    rows: list[Row | None],
    desc: str,
    progress: bool,
    item_of: Callable[[int], Any],
) -> None:
    """Drive the jobs from the caller's thread, filling `rows` by index, with a tqdm bar."""
    errors = 0
    with progress_bar(len(jobs), desc, "row", disable=not progress) as bar:
        try:
            finished = _bounded(jobs, concurrency, last=lambda row: isinstance(row.exception, _ABOUT_THE_TARGET))
            for row in session.runtime.iterate(finished):
                if isinstance(row.exception, _ABOUT_THE_TARGET):
                    raise row.exception  # closing the iteration cancels the requests in flight
                rows[row.index] = row
                if not row.ok:
                    errors += 1
                    bar.set_postfix(errors=errors, refresh=False)
                bar.update(1)
        finally:
            for i, row in enumerate(rows):  # Ctrl-C: what did not finish says so
                if row is None:
                    rows[i] = Row(i, item_of(i), error="stopped before it was asked", error_type="Stopped")


def run_map(
    session: Session,
    items: Iterable[Any],
    prompt: PromptBuilder = "{}",
    *,
    model: str | None = None,
    system: str | None = None,
    concurrency: int = 8,
    progress: bool = True,
    no_cache: bool = False,
    fallback: bool | None = None,
    **params: Any,
) -> Any:
    """One prompt over many items; see `farm_jupyter.map`."""
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency} must be at least 1")
    labels = list(getattr(items, "index", ())) if hasattr(items, "iloc") else None  # a pandas Series
    values = list(items.tolist() if hasattr(items, "tolist") else items)
    session.router.resolve(model, fallback=False)  # a mistyped provider fails once, not per row
    built = [messages_for(prompt, v) for v in values]  # a template that does not fit fails before any request

    def job(i: int) -> Callable[[], Any]:
        async def ask() -> Row:
            start = time.perf_counter()
            try:
                r = await session.achat(built[i], model, system=system, no_cache=no_cache, fallback=fallback, **params)
            except FarmError as exc:
                return Row.failed(i, values[i], exc, time.perf_counter() - start)
            return Row.answered(i, values[i], r)

        return ask

    rows: list[Row | None] = [None] * len(values)
    try:
        _run(session, [job(i) for i in range(len(values))], concurrency, rows, "farm.map", progress, values.__getitem__)
    except KeyboardInterrupt as stop:
        session.last_batch = _returned(rows, labels)
        done = sum(r is not None and r.ok for r in rows)
        _one_line(stop, f"farm.map stopped after {done} of {len(rows)} rows: they are in farm.session().last_batch")
        raise
    except BaseException:
        session.last_batch = _returned(rows, labels)
        raise
    session.last_batch = _returned(rows, labels)
    return session.last_batch  # the very object: `farm.session().last_batch is rows`


def _returned(rows: list[Row | None], labels: Sequence[Any] | None) -> Any:
    """What `farm.map` gives back: a DataFrame when pandas is installed, else the BatchResult."""
    result = BatchResult([r for r in rows if r is not None], labels)
    return result.to_pandas() if _has_pandas() else result


def _one_line(stop: KeyboardInterrupt, said: str) -> None:
    """The interrupt still ends the cell (Run All stops there), shown as one line that says where
    the rows are: IPython prints `_render_traceback_()` in place of the 25-line traceback."""
    stop.args = (said,)
    stop._render_traceback_ = lambda: [f"KeyboardInterrupt: {said}"]  # type: ignore[attr-defined]


def _has_pandas() -> bool:
    return importlib.util.find_spec("pandas") is not None


# -- comparing models over many prompts -----------------------------------------------------------

_VERDICT = re.compile(r"\b([A-Z]|TIE)\b")


@dataclass
class Comparison:
    """Every prompt x model: the rows, a summary per model, and verdicts when there is a judge."""

    prompts: list[str]
    models: list[str]
    rows: BatchResult
    verdicts: list[str | None] = field(default_factory=list)  # per prompt: the judge's: a model, "tie", None
    picks: list[str | None] = field(default_factory=list)  # per prompt: a person's (CompareWidget), the same

    def row(self, prompt: int, model: int) -> Row:
        return self.rows[prompt * len(self.models) + model]

    def rows_of(self, prompt: int) -> list[Row]:
        return [self.row(prompt, j) for j in range(len(self.models))]

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for j, m in enumerate(self.models):
            rows = [self.row(i, j) for i in range(len(self.prompts))]
            ok = [r for r in rows if r.ok]
            served = [r for r in ok if not r.cached]

            def mean(values: list[float]) -> float | None:
                return sum(values) / len(values) if values else None

            out.append(
                {
                    "model": m,
                    "answered": len(ok),
                    "errors": len(rows) - len(ok),
                    "first_token": mean([r.first_token for r in served if r.first_token is not None]),
                    "seconds": mean([r.seconds for r in served]),
                    "tokens_per_second": mean([r.tokens_per_second for r in served if r.tokens_per_second]),
                    "tokens_out": sum(r.tokens_out for r in ok),
                    "wins": sum(v == m for v in self.verdicts),  # the judge's
                    "picked": sum(v == m for v in self.picks),  # a person's
                }
            )
        return out

    def to_pandas(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        records = []
        for i, p in enumerate(self.prompts):
            for j, m in enumerate(self.models):
                r = self.row(i, j)
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
                        "verdict": _at(self.verdicts, i),
                        "pick": _at(self.picks, i),
                    }
                )
        return pd.DataFrame.from_records(records)

    def to_csv(self, path: str) -> None:
        import csv

        frame_rows = [self.row(i, j) for i in range(len(self.prompts)) for j in range(len(self.models))]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "prompt",
                    "model",
                    "answer",
                    "error",
                    "first_token",
                    "seconds",
                    "tokens_out",
                    "tokens_per_second",
                    "verdict",
                    "pick",
                ]
            )
            for k, r in enumerate(frame_rows):
                i, j = divmod(k, len(self.models))
                writer.writerow(
                    [
                        self.prompts[i],
                        self.models[j],
                        r.answer,
                        r.error,
                        r.first_token,
                        r.seconds,
                        r.tokens_out,
                        r.tokens_per_second,
                        _at(self.verdicts, i),
                        _at(self.picks, i),
                    ]
                )

    def __repr__(self) -> str:
        lines = [f"<Comparison {len(self.prompts)} prompts x {len(self.models)} models>"]
        for s in self.summary():
            ttft = "-" if s["first_token"] is None else f"{s['first_token']:.2f}s"
            rate = "-" if s["tokens_per_second"] is None else f"{s['tokens_per_second']:.1f} tok/s"
            wins = f", {s['wins']} wins" if self.verdicts else ""
            lines.append(f"  {s['model']}: {s['answered']} answered, {s['errors']} errors, TTFT {ttft}, {rate}{wins}")
        return "\n".join(lines)


def _at(values: list[str | None], i: int) -> str | None:
    return values[i] if i < len(values) else None


def run_compare(
    session: Session,
    prompts: Sequence[str],
    models: Sequence[str],
    *,
    judge: str | None = None,
    concurrency: int = 4,
    progress: bool = True,
    no_cache: bool = False,
    **params: Any,
) -> Comparison:
    """Each prompt to each model, streamed (so time to first token is real), without fallback:
    a comparison of models must not silently compare one with another."""
    if len(models) < 2:
        raise ConfigError("compare needs at least two models", hint='models=["ollama:llama3.1", "openai:gpt-4o-mini"]')
    for m in models:
        session.router.resolve(m, fallback=False)
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
    _run(
        session, [job(k) for k in range(len(pairs))], concurrency, rows, "farm.compare", progress, lambda k: pairs[k][0]
    )
    result = Comparison(list(prompts), list(models), BatchResult(r for r in rows if r is not None))
    if judge is not None:
        result.verdicts = [_judge(session, judge, result, i) for i in range(len(prompts))]
    return result


def _judge(session: Session, judge: str, result: Comparison, i: int) -> str | None:
    reply = session.chat(
        judge_question(result.prompts[i], [r.answer for r in result.rows_of(i)]), judge, temperature=0, fallback=False
    )
    return parse_verdict(reply.text, result.models)


def judge_question(prompt: str, answers: Sequence[str | None]) -> str:
    """What a judge model is asked: the question and the answers, lettered, in the models' order."""
    letters = [chr(ord("A") + j) for j in range(len(answers))]
    listed = "\n\n".join(
        f"Answer {letter}:\n{answer or '(no answer)'}" for letter, answer in zip(letters, answers, strict=True)
    )
    return (
        f"Question:\n{prompt}\n\n{listed}\n\nWhich answer is best? "
        f"Reply with one letter ({', '.join(letters)}) or TIE, nothing else."
    )


def parse_verdict(reply: str, models: Sequence[str]) -> str | None:
    """The model the judge named, "tie", or None: a reply that names no answer is not a verdict."""
    found = _VERDICT.search(reply.strip().upper())
    if found is None:
        return None
    if found.group(1) == "TIE":
        return "tie"
    j = ord(found.group(1)) - ord("A")
    return models[j] if 0 <= j < len(models) else None
