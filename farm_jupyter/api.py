"""The module-level shortcuts: each goes through the kernel's Session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .sessions import ChatStream, Prompt, session
from .types import ChatResponse

if TYPE_CHECKING:
    from .batch import PromptBuilder
    from .evaluate import Comparison
    from .ledger import UsageReport
    from .provenance import Explanation


def chat(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
    """Ask and wait: `chat("hi", model="ollama:llama3.1", temperature=0)`."""
    return session().chat(prompt, model, **kwargs)


async def achat(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
    return await session().aio.chat(prompt, model, **kwargs)


def stream(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatStream:
    """Ask and iterate: `for chunk in stream("hi"): print(chunk.text, end="")`."""
    return session().stream(prompt, model, **kwargs)


def astream(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatStream:
    """`async for chunk in astream("hi")`: the same ChatStream, iterated from a cell's loop."""
    return session().stream(prompt, model, **kwargs)


def map(items: Iterable[Any], prompt: PromptBuilder = "{}", **kwargs: Any) -> Any:  # noqa: A001 - farm.map
    """One prompt over many items: `farm.map(df.review, "Sentiment of: {}", model="ollama", concurrency=8)`.

    `prompt` is a `{}`-template (a dict item's keys fill `{name}` too) or a function of the item
    returning a prompt or messages. Every row's outcome is kept (answer, provider, attempts, error)
    in input order: a pandas DataFrame when pandas is installed, else a BatchResult; with
    `schema=Model` each answer is validated too (a `parsed` column, re-asked when it does not match). Rate limits,
    retries, fallback and the cache apply per row; a rerun asks only for rows the cache lacks.
    Ctrl-C stops it, in one line, and the rows (the stopped ones saying so) stay in
    `farm.session().last_batch`, which is always what the last map returned.

    `batch=True` sends the rows as one OpenAI-compatible Batch API job (half the price, answered
    within the completion window): the estimated cost is said first and the budget applied; the
    job id is kept on disk, so running the cell again (after a restart too) resumes that job;
    `poll=` seconds between status checks (`[batch] poll`); Ctrl-C leaves the job running.
    """
    return session().map(items, prompt, **kwargs)


def cancel_batch(ident: str, model: str | None = None) -> str:
    """Cancel a Batch API job that `farm.map(..., batch=True)` submitted; returns its status."""
    from .batch_api import cancel

    return cancel(session(), ident, model)


def compare(prompts: Sequence[str], models: Sequence[str], **kwargs: Any) -> Comparison:
    """Every prompt to every model (no fallback): answers, time to first token, total, tokens,
    tokens/s per cell and a summary per model. `judge="openai:gpt-4o-mini"` judges every pair in
    both orders (N(N-1) calls a prompt, counted in the estimate and the budget): `.report()` gives
    consistency, first-position preference, Bradley-Terry scores with bootstrap 95% intervals
    (`seed=`) and kappa against CompareWidget picks; `judge_prompt=` takes {question}, {a}, {b}.
    `.to_pandas()`, `.to_csv(path)`, `.judgements_to_pandas()`."""
    return session().compare(prompts, models, **kwargs)


def explain(response: ChatResponse | None = None) -> Explanation:
    """The request body an answer (default: the last one) was asked with, as the server got it."""
    return session().explain(response)


def usage() -> UsageReport:
    """Tokens in and out, requests, cache savings and cost per provider:model for this session."""
    return session().usage()
