"""The module-level shortcuts: each goes through the kernel's Session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .sessions import ChatStream, Prompt, session
from .types import ChatResponse

if TYPE_CHECKING:
    from .batch import Comparison, PromptBuilder
    from .ledger import UsageReport


def chat(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
    """Ask and wait: `chat("hi", model="ollama:llama3.1", temperature=0)`."""
    return session().chat(prompt, model, **kwargs)


async def achat(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
    return await session().achat(prompt, model, **kwargs)


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
    """
    return session().map(items, prompt, **kwargs)


def compare(prompts: Sequence[str], models: Sequence[str], **kwargs: Any) -> Comparison:
    """Every prompt to every model (no fallback): answers, time to first token, total, tokens,
    tokens/s per cell and a summary per model; `judge="openai:gpt-4o-mini"` records a verdict
    per prompt; `.to_pandas()`, `.to_csv(path)`."""
    return session().compare(prompts, models, **kwargs)


def usage() -> UsageReport:
    """Tokens in and out, requests, cache savings and cost per provider:model for this session."""
    return session().usage()
