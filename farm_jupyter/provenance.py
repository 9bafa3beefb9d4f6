"""Where an answer came from, written into the notebook's output metadata, and the request that
was sent (a local engine: the templated prompt it ran), shown back (`%farm why`, `farm.explain`).

Every answer output carries `{"farm_jupyter": {...}}`: provider, model, parameters, the fallback
notice, cache hit or miss and its key, usage, time and this package's version, so a reader of a
shared notebook can tell what produced it. Tables (map and compare) carry the same per table,
from their rows. Nothing here asks anyone: it reads responses.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # read, not imported: `%load_ext` imports this module and must stay light
    from .types import ChatResponse

KEY = "farm_jupyter"


def _version() -> str:
    # The package is imported whenever this module is; read, not imported, to keep the layers.
    return str(getattr(sys.modules[__package__ or "farm_jupyter"], "__version__", "unknown"))


def answer(response: ChatResponse) -> dict[str, Any]:
    """One answer's provenance, as output metadata."""
    return {
        KEY: {
            "version": _version(),
            "provider": response.provider,
            "model": response.model,
            "params": response.params,
            "notice": response.notice,
            "fell_back_from": response.fell_back_from,
            "cache": {"hit": response.cached, "key": response.cache_key},
            "usage": response.usage.model_dump(),
            "seconds": round(response.timings.total, 4),
            "first_token": response.timings.first_token,
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    }


def table(responses: Iterable[ChatResponse | None], **extra: Any) -> dict[str, Any]:
    """A table of answers' provenance (map, compare): who answered, with what, how many from the
    cache, the usage summed; `extra` (a batch job's id) added as given."""
    found = [r for r in responses if r is not None]
    models = sorted({r.address for r in found})
    params = [r.params for r in found]
    return {
        "version": _version(),
        "models": models,
        "params": params[0] if params and all(p == params[0] for p in params) else params,
        "notices": sorted({r.notice for r in found if r.notice}),
        "cache": {"hits": sum(r.cached for r in found), "misses": sum(not r.cached for r in found)},
        "usage": {
            "prompt_tokens": sum(r.usage.prompt_tokens for r in found),
            "completion_tokens": sum(r.usage.completion_tokens for r in found),
        },
        "seconds": round(sum(r.timings.total for r in found), 4),
        **extra,
    }


@dataclass
class Explanation:
    """What `%farm why` shows: one line on what happened, then the body as the server got it."""

    line: str
    body: str | None

    def __str__(self) -> str:
        return self.line if self.body is None else f"{self.line}\n{self.body}"

    __repr__ = __str__


def explain(response: ChatResponse | None, *, local: bool = False) -> Explanation:
    """`local`: the answer's engine runs in this process (llama.cpp, transformers), whose `sent`
    is the sampling parameters on one line and the templated prompt it ran (`providers._local.ran`)."""
    if response is None:
        return Explanation("nothing has been asked in this session yet", None)
    if response.cached:
        return Explanation(
            f"{response.address} answered from the cache (key {response.cache_key}): nothing was sent; "
            "ask again with refresh=True (%%farm_chat --refresh) to see a request",
            None,
        )
    if response.sent is None:
        return Explanation(f"{response.provider} does not report the request it sends", None)
    if local:
        return Explanation(
            f"{response.address} runs in this process, nothing went over a network: the sampling parameters it used, "
            "then the prompt it ran (its chat template applied, special tokens written out; secrets masked):",
            response.sent,
        )
    return Explanation(f"the request body sent to {response.address} (secrets masked):", response.sent)


def install_formatter() -> None:
    """In IPython, a DataFrame that carries our provenance (`attrs["farm_jupyter"]`, as map and
    compare tables do) puts it into its output's metadata. Idempotent; nothing outside IPython."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return
    try:
        import pandas as pd  # only a map or a compare calls this: they make DataFrames
    except ImportError:
        return
    shell.display_formatter.mimebundle_formatter.for_type(pd.DataFrame, _frame)


def _frame(frame: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    found = getattr(frame, "attrs", {}).get(KEY)
    return ({}, {KEY: found}) if found else None
