"""Many requests at once: one prompt over many rows (`map`); `evaluate` compares models over many
prompts with the same machinery.

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
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import provenance
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

PromptBuilder = str | Callable[[Any], "str | Sequence[ChatMessage | dict[str, Any]]"]


class Session(Protocol):
    """What map and compare ask through: a Session (this module is below it, and names none)."""

    aio: Any  # its AsyncSession: `chat`, `runtime` where the rows run, `provider` for a batch job
    last_batch: BatchResult | None
    settings: Any

    def chat(self, prompt: Any, model: str | None = None, **kwargs: Any) -> ChatResponse: ...
    def stream(self, prompt: Any, model: str | None = None, **kwargs: Any) -> Any: ...
    def resolve(self, target: str | None) -> str: ...
    def usage(self, of: Any = "tokens") -> Any: ...


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
        self.meta: dict[str, Any] = {}  # where the rows came from (a batch job's id), for the output's metadata

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
        frame.attrs[provenance.KEY] = self.provenance()
        return frame

    def provenance(self) -> dict[str, Any]:
        """Who answered these rows, with what (`farm_jupyter.provenance.table`), and `meta`."""
        return provenance.table((r.response for r in self), rows=len(self), errors=len(self.errors), **self.meta)

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
ABOUT_THE_TARGET = (ModelNotFound, AuthenticationError, NotConfigured, UnknownProvider, ConfigError)


def run_rows(
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
            finished = _bounded(jobs, concurrency, last=lambda row: isinstance(row.exception, ABOUT_THE_TARGET))
            for row in session.aio.runtime.iterate(finished):
                if isinstance(row.exception, ABOUT_THE_TARGET):
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


def rows_of(
    session: Session, items: Iterable[Any], prompt: PromptBuilder, model: str | None
) -> tuple[list[Any], list[Any], list[Any] | None]:
    """The items as values, each one's prompt built, and a pandas Series' index (its labels):
    a mistyped provider or a template that does not fit fails here, before any request."""
    provenance.install_formatter()  # the table's output carries where its answers came from
    labels = list(getattr(items, "index", ())) if hasattr(items, "iloc") else None  # a pandas Series
    values = list(items.tolist() if hasattr(items, "tolist") else items)
    session.resolve(model)
    return values, [messages_for(prompt, v) for v in values], labels


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
    """One prompt over many items; see `farm_jupyter.map` (`batch=True` goes to `batch_api`)."""
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency} must be at least 1")
    values, built, labels = rows_of(session, items, prompt, model)

    def job(i: int) -> Callable[[], Any]:
        async def ask() -> Row:
            start = time.perf_counter()
            try:
                r = await session.aio.chat(
                    built[i], model, system=system, no_cache=no_cache, fallback=fallback, **params
                )
            except FarmError as exc:
                return Row.failed(i, values[i], exc, time.perf_counter() - start)
            return Row.answered(i, values[i], r)

        return ask

    rows: list[Row | None] = [None] * len(values)
    try:
        run_rows(
            session, [job(i) for i in range(len(values))], concurrency, rows, "farm.map", progress, values.__getitem__
        )
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
