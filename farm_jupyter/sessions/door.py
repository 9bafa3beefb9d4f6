"""The Session: settings + router + cache + monitor + history, in one object with one name per act.

Magics, widgets and the server go through a Session, never to a provider or the router directly.
Its public names are the list below (a test keeps it at 20 at most); `aio` is the async twin with
the same acts, for the server and `await`-ing users. Old names keep working for one release with a
DeprecationWarning (`sessions/renamed.py`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from ..batch import PromptBuilder, run_map
from ..config import Settings, load_settings
from ..errors import FarmError
from ..evaluate import Comparison, run_compare
from ..ledger import UsageReport
from ..objects import Budget
from ..records import ModelSummary
from ..router.call import parse_params
from ..router.fold import Fold
from ..runtime import Runtime
from ..steps import Extras
from ..types import ChatResponse, GenerationParams, GPUStats, ModelInfo, ProviderStatus, PullProgress
from .aio import AsyncSession
from .conversation import Conversation
from .engine import Asked, Engine, Prompt
from .renamed import RENAMED, renamed
from .stream import ChatStream

Usage = Literal["tokens", "requests", "failures", "cache"]

if TYPE_CHECKING:
    from ..provenance import Explanation

# Asking with these takes more than one cache lookup (objects to describe, steps to run).
_MORE = ("context", "images", "schema", "tools")


class Session:
    """chat, stream, map, compare, embed; models, load, unload, health, gpu; usage, history, reset;
    settings, use, resolve, last_batch, close; and `aio`, the same acts as coroutines."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.settings: Settings = settings or load_settings(config)
        self._engine = Engine(self.settings, runtime)
        self.history: Conversation = Conversation(self.settings.max_history)  # the turns of %%farm_chat cells
        # What the last map returned (a DataFrame with pandas, else a BatchResult), also when it was stopped.
        self.last_batch: Any = None
        self.aio: AsyncSession = AsyncSession(self._engine, self.stream)

    if not TYPE_CHECKING:  # the old names, each a DeprecationWarning; not seen by type checkers

        def __getattr__(self, name: str) -> Any:
            if name in RENAMED:
                return renamed(self, self._engine, name)
            raise AttributeError(f"'Session' object has no attribute {name!r}")

    # -- asking ---------------------------------------------------------------------------------

    def stream(
        self,
        prompt: Prompt,
        model: str | None = None,
        *,
        system: str | None = None,
        conversation: Conversation | None = None,
        turn_id: str | None = None,
        no_cache: bool = False,
        refresh: bool = False,
        fallback: bool | None = None,
        context: Mapping[str, Any] | None = None,
        images: Sequence[Any] = (),
        context_budget: int | Budget | None = None,
        schema: Any = None,
        tools: Sequence[Callable[..., Any]] | None = None,
        max_steps: int = 5,
        max_reasks: int = 2,
        keep_thinking: bool = False,
        params: GenerationParams | None = None,
        _whole: bool = False,
        _asked: tuple[Asked, str | None] | None = None,
        **options: Any,
    ) -> ChatStream:
        """A stream of the answer; `conversation=session.history` makes it a turn.

        - `context={"df": df, "fig": fig}` fills `{df}`, `{fig}` in the prompt with each object's
          description (`farm_jupyter.context`), within `context_budget` tokens each; figures and
          pictures go as images to a model that takes them (`images=[fig]` attaches them directly).
        - `schema=Model` (a pydantic model, a type or a JSON Schema dict): the answer is validated
          into `response.parsed`, re-asked up to `max_reasks` times when it does not match.
        - `tools=[fn, ...]`: kernel functions the model may call, at most `max_steps` rounds; each
          call runs in the thread that iterates the stream and shows as a `Chunk(tool_run=...)`.
        - `think=True` asks for the model's reasoning: it streams apart (`Chunk.thinking`), is never
          part of the answer, and goes back in a conversation only with `keep_thinking=True`.
        - generation options as keywords (`temperature=0`), or `params=GenerationParams(...)`.
        """
        if params is not None and options:
            raise TypeError("give generation options as keywords or as params=, not both")
        engine = self._engine
        extras = Extras(context, images, context_budget, schema, tools, max_steps, max_reasks, keep_thinking)
        asked, key = _asked or (
            engine.ask(prompt, model, system=system, conversation=conversation, turn_id=turn_id, fallback=fallback,
                       extras=extras),
            None,
        )  # fmt: skip
        fold = Fold()  # the answer's one: the router (or the steps) feeds it, the stream reads it
        source = engine.source(
            asked, params or options, conversation=conversation, turn_id=turn_id, no_cache=no_cache, refresh=refresh,
            stream=not _whole, extras=extras, key=key, fold=fold,
        )  # fmt: skip
        return ChatStream(engine.runtime, source, asked.address, fold)

    def chat(self, prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
        """Ask and wait; the keywords are `stream`'s."""
        if any(kwargs.get(k) for k in ("conversation", "no_cache", "refresh", "params", *_MORE)):
            return self.stream(prompt, model, _whole=True, **kwargs).result()
        engine = self._engine
        generation = parse_params({k: v for k, v in kwargs.items() if k not in _ASKING})
        asked = engine.ask(
            prompt, model, system=kwargs.get("system"), conversation=None, turn_id=None,
            fallback=kwargs.get("fallback"), extras=Extras(),
        )  # fmt: skip
        hit, key = engine.router.replay(asked.messages, asked.routes[0], generation)
        if hit is not None:  # a memory-cache hit, answered here: no hop to the runtime loop
            return hit
        kept = {k: v for k, v in kwargs.items() if k in _ASKING}
        return self.stream(prompt, model, params=generation, _whole=True, _asked=(asked, key), **kept).result()

    def map(self, items: Iterable[Any], prompt: PromptBuilder = "{}", *, batch: bool = False, **kwargs: Any) -> Any:
        """One prompt over many items, `concurrency` at a time (`batch=True`: one Batch API job at
        half the price); see `farm_jupyter.map`."""
        if batch:
            from ..batch_api import run_batch

            return run_batch(self, items, prompt, **kwargs)
        return run_map(self, items, prompt, **kwargs)

    def compare(self, prompts: Sequence[str], models: Sequence[str], **kwargs: Any) -> Comparison:
        """Every prompt to every model; see `farm_jupyter.compare`."""
        return run_compare(self, prompts, models, **kwargs)

    def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        return self._engine.runtime.run(self._engine.embed(texts, model))

    def explain(self, response: ChatResponse | None = None) -> Explanation:
        """The request body `response` (default: the last answer of this session) was asked with,
        byte for byte as the server received it, secrets masked (a local engine: the templated
        prompt it ran, with its sampling parameters); or why there is none (a cache hit sent nothing)."""
        from ..provenance import explain

        found = response if response is not None else self._engine.router.last_response
        try:
            local = found is not None and self.aio.locality(found.provider) == "local"
        except FarmError:  # a provider this session no longer knows: said as a request body
            local = False
        return explain(found, local=local)

    # -- models ---------------------------------------------------------------------------------

    @overload
    def models(self, provider: str | None = None, *, by_provider: Literal[False] = False) -> list[ModelInfo]: ...
    @overload
    def models(
        self, provider: str | None = None, *, by_provider: Literal[True]
    ) -> dict[str, list[ModelInfo] | FarmError]: ...
    def models(
        self, provider: str | None = None, *, by_provider: bool = False
    ) -> list[ModelInfo] | dict[str, list[ModelInfo] | FarmError]:
        """Live model lists: one provider's, or every one in the chain that answers.
        `by_provider=True`: each provider with its list, or the error it gave instead (so a face
        can say which provider is down and why, not just "no models")."""
        engine = self._engine
        if by_provider:
            return engine.runtime.run(engine.model_lists(provider))
        return engine.runtime.run(engine.models(provider))

    def load(self, model: str, *, reload: bool = False) -> Iterator[PullProgress] | None:
        """Pull (Ollama) and load a model (`reload=True`: unload it first); yields progress.
        None when its provider serves its models itself (a remote API): there is nothing to load."""
        steps = self._engine.load(model, reload=reload)
        return None if steps is None else self._engine.runtime.iterate(steps)

    def unload(self, model: str) -> bool:
        """Free a model's memory; False when its provider serves its models itself."""
        return self._engine.runtime.run(self._engine.unload(model))

    def health(self, providers: list[str] | None = None) -> list[ProviderStatus]:
        return self._engine.runtime.run(self._engine.router.health(providers))

    def gpu(self) -> GPUStats:
        from ..gpu import gpu_stats  # NVML, or torch: on first use only

        return gpu_stats()

    # -- this session ---------------------------------------------------------------------------

    @overload
    def usage(self, of: Literal["tokens"] = "tokens") -> UsageReport: ...
    @overload
    def usage(self, of: Literal["requests"]) -> list[ModelSummary]: ...
    @overload
    def usage(self, of: Literal["failures"]) -> dict[str, dict[str, int]]: ...
    @overload
    def usage(self, of: Literal["cache"]) -> dict[str, Any]: ...
    def usage(self, of: Usage = "tokens") -> Any:
        """What this session has used: `tokens` (tokens, requests, cache savings and cost per
        provider:model), `requests` (latency, TTFT, tokens/s per model), `failures` (provider ->
        {failure kind: count}) or `cache` (the response cache's state and size)."""
        if of == "cache":
            return self._engine.runtime.run(self._engine.cache_info())
        return self._engine.report(of)

    def reset(self, *, cache: bool = False, history: bool | None = None) -> None:
        """Start a new conversation (`history`, the default); `cache=True` empties the response
        cache instead (both with `history=True`)."""
        if history if history is not None else not cache:
            self.history.reset()
        if cache:
            self._engine.runtime.run(self._engine.cache.clear())

    def use(self, target: str | None) -> str:
        """Set the session default (`provider:model`, provider, model or alias; None: the settings');
        returns it resolved."""
        router = self._engine.router
        route = router.resolve(target, fallback=False)[0] if target else None
        router.default_target = target
        return str(route) if route else self.resolve(None)

    def resolve(self, target: str | None, *, strict: bool = False, params: GenerationParams | None = None) -> str:
        """The `provider:model` a target (an address, provider, model or alias; None: the default)
        stands for, asking no one; an unknown provider or alias is a FarmError that says what to
        write. `strict`: `x:y` with no provider `x` is refused rather than taken as a model of the
        default provider; `params`: options its provider does not take are refused too."""
        return self._engine.resolve(target, strict=strict, params=params)

    def close(self) -> None:
        if self._engine.started():
            self._engine.runtime.run(self._engine.aclose())

    def __repr__(self) -> str:
        router = self._engine.router
        default = router.default_target or self.settings.default_provider
        return f"<Session env={self.settings.env!r} default={default!r} cache={self._engine.cache.name}>"


# `stream`'s keywords that are not generation options, read from its signature: the list is kept once.
_ASKING = frozenset(
    name
    for name, p in inspect.signature(Session.stream).parameters.items()
    if p.kind is p.KEYWORD_ONLY and not name.startswith("_") and name != "params"
)
