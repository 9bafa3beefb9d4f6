"""The Session: settings + router + cache + monitor + conversation, in one object.

Magics, widgets and the server go through a Session, never to a provider or the router directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..cache_guard import GuardedCache
from ..config import Settings, load_settings
from ..context import attach
from ..errors import ConfigError, FarmError, UnknownProvider
from ..ledger import UsageReport
from ..monitor import Monitor
from ..providers import available as available_providers
from ..providers import canonical
from ..providers import is_known as is_provider
from ..providers.base import as_messages
from ..router import Router
from ..router.pool import Pool
from ..runtime import Runtime, get_runtime
from ..steps import Extras, Steps, plan
from ..types import (
    ChatMessage,
    ChatResponse,
    Chunk,
    GenerationParams,
    GPUStats,
    ImagePart,
    ModelInfo,
    ProviderStatus,
    PullProgress,
)
from .conversation import Conversation
from .stream import ChatStream

if TYPE_CHECKING:
    from ..batch import BatchResult, Comparison, PromptBuilder

Prompt = str | Sequence[ChatMessage | dict[str, Any]]

# Asking with these takes more than one cache lookup (objects to describe, steps to run).
_MORE = ("context", "images", "schema", "tools")
_ASKING = frozenset(
    {
        "system",
        "conversation",
        "turn_id",
        "no_cache",
        "refresh",
        "fallback",
        *_MORE,
        "context_budget",
        "max_steps",
        "max_reasks",
        "keep_thinking",
    }
)  # not params


class Session:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.settings = settings or load_settings(config)
        self._runtime = runtime
        self.cache = GuardedCache(self.settings.cache)  # a cache that will not open is off, not fatal
        self.monitor = Monitor(self.settings.monitor_size)
        self.router = Router(self.settings, self.cache, self.monitor)
        self.conversation = Conversation(self.settings.max_history)
        self.last_batch: BatchResult | None = None  # the last map's rows, kept when it was stopped

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None or not self._runtime.alive:
            self._runtime = get_runtime()
        return self._runtime

    # -- asking ---------------------------------------------------------------------------------

    def _source(
        self,
        prompt: Prompt,
        model: str | None,
        *,
        system: str | None,
        conversation: Conversation | None,
        turn_id: str | None,
        no_cache: bool,
        refresh: bool,
        fallback: bool | None,
        params: dict[str, Any],
        stream: bool = True,
        extras: Extras | None = None,
    ) -> AsyncIterator[Chunk] | Steps:
        x = extras or Extras()
        attached: list[ImagePart] = []
        if x.context is not None or x.images:
            if not isinstance(prompt, str):
                raise TypeError("context= and images= go with a prompt string")
            prompt, attached = attach(prompt, x.context, x.images, x.context_budget)
        messages = self._messages(prompt, system, conversation, turn_id, attached)

        def commit(response: ChatResponse) -> None:
            if conversation is not None:
                conversation.commit(str(prompt), response, turn_id, images=attached, keep_thinking=x.keep_thinking)

        if x.schema is None and not x.tools:
            chunks = self.router.astream(
                messages, model, params, no_cache=no_cache, refresh=refresh, fallback=fallback, stream=stream
            )
            return chunks if conversation is None else self._committing(chunks, commit)
        return plan(
            self.router,
            self.runtime,
            messages,
            model,
            params,
            x,
            no_cache=no_cache,
            refresh=refresh,
            fallback=fallback,
            stream=stream,
            on_final=commit,
        )

    @staticmethod
    def _messages(
        prompt: Prompt,
        system: str | None,
        conversation: Conversation | None = None,
        turn_id: str | None = None,
        images: Sequence[ImagePart] = (),
    ) -> list[ChatMessage]:
        if conversation is not None:
            if not isinstance(prompt, str):
                raise TypeError("a conversation turn takes a prompt string")
            messages = conversation.messages_for(prompt, turn_id, system, images)
        else:
            messages = as_messages(prompt)
            if images:
                messages[-1] = messages[-1].model_copy(update={"images": list(images)})
            if system:
                messages.insert(0, ChatMessage(role="system", content=system))
        if not any(m.content.strip() for m in messages if m.role == "user"):
            raise FarmError("the prompt is empty", hint="write a question in the cell")
        return messages

    async def _committing(
        self, stream: AsyncIterator[Chunk], commit: Callable[[ChatResponse], None]
    ) -> AsyncIterator[Chunk]:
        async for chunk in stream:
            if chunk.response is not None:
                commit(chunk.response)
            yield chunk

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
        context_budget: int | None = None,
        schema: Any = None,
        tools: Sequence[Callable[..., Any]] | None = None,
        max_steps: int = 5,
        max_reasks: int = 2,
        keep_thinking: bool = False,
        _whole: bool = False,
        **params: Any,
    ) -> ChatStream:
        """A stream of the answer; `conversation=session.conversation` makes it a turn.

        - `context={"df": df, "fig": fig}` fills `{df}`, `{fig}` in the prompt with each object's
          description (`farm_jupyter.context`), within `context_budget` tokens each; figures and
          pictures go as images to a model that takes them (`images=[fig]` attaches them directly).
        - `schema=Model` (a pydantic model, a type or a JSON Schema dict): the answer is validated
          into `response.parsed`, re-asked up to `max_reasks` times when it does not match.
        - `tools=[fn, ...]`: kernel functions the model may call, at most `max_steps` rounds; each
          call runs in the thread that iterates the stream and shows as a `Chunk(tool_run=...)`.
        - `think=True` asks for the model's reasoning: it streams apart (`Chunk.thinking`), is never
          part of the answer, and goes back in a conversation only with `keep_thinking=True`.
        """
        extras = Extras(context, images, context_budget, schema, tools, max_steps, max_reasks, keep_thinking)
        source = self._source(
            prompt, model, system=system, conversation=conversation, turn_id=turn_id,
            no_cache=no_cache, refresh=refresh, fallback=fallback, params=params, stream=not _whole, extras=extras,
        )  # fmt: skip
        return ChatStream(self, source)

    astream = stream  # a ChatStream is both iterable and async-iterable

    def chat(self, prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
        if not any(kwargs.get(k) for k in ("conversation", "no_cache", "refresh", *_MORE)):
            params = {k: v for k, v in kwargs.items() if k not in _ASKING}
            hit = self.router.replay(self._messages(prompt, kwargs.get("system")), model, params)
            if hit is not None:  # a memory-cache hit, answered here: no hop to the runtime loop
                return hit
        return self.stream(prompt, model, _whole=True, **kwargs).result()

    async def achat(self, prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
        return await self.stream(prompt, model, _whole=True, **kwargs).aresult()

    # -- models and state -----------------------------------------------------------------------

    def use(self, target: str | None) -> str:
        """Set the session default (`provider:model`, provider, model or alias); returns it resolved."""
        route = self.router.resolve(target, fallback=False)[0] if target else None
        self.router.default_target = target
        return str(route) if route else str(self.router.resolve(None, fallback=False)[0])

    @property
    def default_address(self) -> str:
        return self.resolve(None)

    @property
    def default_target(self) -> str | None:
        """What `use()` set, as given; None when the default comes from the settings."""
        return self.router.default_target

    # -- targets, asking no one -----------------------------------------------------------------

    def resolve(self, target: str | None) -> str:
        """The `provider:model` a target (an address, provider, model or alias; None: the default)
        stands for; an unknown provider or alias is a FarmError that says what to write."""
        return str(self.router.resolve(target, fallback=False)[0])

    def expand_alias(self, target: str) -> str:
        return self.router.expand_alias(target)

    def provider_names(self) -> list[str]:
        """The chain's providers, then the others this session has set up."""
        return list(dict.fromkeys([*self.settings.chain, *self.router.providers]))

    def check_provider(self, name: str) -> None:
        """An UnknownProvider error unless `name` is registered or set up in this session."""
        if not (is_provider(name) or name in self.router.providers):
            known = sorted(set(available_providers()) | set(self.router.providers))
            raise UnknownProvider(f"no provider named {name!r}", hint=f"use one of {', '.join(known)}")

    @staticmethod
    def provider_of(target: str) -> str | None:
        """The provider `target` names before its first `:` (`hf:x` -> huggingface), or None when
        it names a model only (`llama3.1`, `qwen2.5:0.5b`)."""
        head, sep, _ = target.partition(":")
        return canonical(head) if sep and is_provider(head) else None

    @staticmethod
    def canonical_provider(name: str) -> str:
        """The registered name behind a short one (`hf` -> huggingface)."""
        return canonical(name)

    def alias(self, name: str, target: str) -> None:
        self.settings.aliases[name] = target

    def unalias(self, name: str) -> None:
        self.settings.aliases.pop(name, None)

    def models(self, provider: str | None = None) -> list[ModelInfo]:
        return self.runtime.run(self.list_models(provider))

    async def list_models(self, provider: str | None = None) -> list[ModelInfo]:
        """Live model lists (runs on the runtime loop): one provider's, or every one in the chain
        that answers."""
        names = [provider] if provider else list(dict.fromkeys(self.settings.chain))
        out: list[ModelInfo] = []
        for name in names:
            try:
                out += await self.router.provider(name).list_models()
            except FarmError:
                if provider:
                    raise
        return out

    def model_lists(self) -> dict[str, list[ModelInfo] | FarmError]:
        """Each provider of the chain with its live model list, or the error it gave instead
        (`%farm models` says which provider is down and why, not just "no models")."""
        return self.runtime.run(self._model_lists())

    async def _model_lists(self) -> dict[str, list[ModelInfo] | FarmError]:
        names = list(dict.fromkeys(self.settings.chain))

        async def one(name: str) -> list[ModelInfo] | FarmError:
            try:
                return await self.router.provider(name).list_models()
            except FarmError as exc:
                return exc

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))

    def has_models_to_load(self, model: str) -> bool:
        """Does `model`'s provider pull or load models (Ollama, HuggingFace)? A remote API (OpenAI
        or a compatible server) serves its models itself: there is nothing to load or free."""
        from ..providers.base import Provider

        provider, _ = self._split(model)
        found = self.router.provider(provider)
        one = found.members[0].provider if isinstance(found, Pool) else found  # a pool of servers: ask one
        return type(one).load_model is not Provider.load_model

    def _split(self, model: str) -> tuple[str, str]:
        route = self.router.resolve(model, fallback=False)[0]
        return route.provider, route.model

    def load(self, model: str) -> Iterator[PullProgress]:
        """Pull (Ollama) and load a model; yields progress."""
        provider, name = self._split(model)
        return self.runtime.iterate(self.router.provider(provider).load_model(name))

    def unload(self, model: str) -> None:
        provider, name = self._split(model)
        self.runtime.run(self.router.provider(provider).unload_model(name))

    def reload(self, model: str) -> Iterator[PullProgress]:
        self.unload(model)
        return self.load(model)

    def health(self, providers: list[str] | None = None) -> list[ProviderStatus]:
        return self.runtime.run(self.router.health(providers))

    async def ahealth(self, providers: list[str] | None = None) -> list[ProviderStatus]:
        return await self.runtime.wrap(self.router.health(providers))

    def gpu(self) -> GPUStats:
        from ..gpu import gpu_stats

        return gpu_stats()

    def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        provider, name = self._split(model) if model else (self.settings.default_provider, None)
        return self.runtime.run(self.router.provider(provider).embed(texts, name))

    def map(self, items: Iterable[Any], prompt: PromptBuilder = "{}", **kwargs: Any) -> Any:
        """One prompt over many items, `concurrency` at a time; see `farm_jupyter.map`."""
        from ..batch import run_map

        return run_map(self, items, prompt, **kwargs)

    def compare(self, prompts: Sequence[str], models: Sequence[str], **kwargs: Any) -> Comparison:
        """Every prompt to every model; see `farm_jupyter.compare`."""
        from ..batch import run_compare

        return run_compare(self, prompts, models, **kwargs)

    def usage(self) -> UsageReport:
        """Tokens, requests, cache savings and cost per provider:model for this session."""
        return self.router.ledger.report()

    def cache_info(self) -> dict[str, Any]:
        return self.runtime.run(self.cache.info())

    def cache_clear(self) -> None:
        self.runtime.run(self.cache.clear())

    # -- for a face that drives the runtime loop itself (the server extension) -----------------

    def address(self, target: str | None) -> tuple[str, str]:
        """`(provider, model)`, asking no one; `x:y` with no provider or alias `x` is refused, not
        taken as a model of the default provider (write `ollama:qwen2.5:0.5b`)."""
        head, sep, _ = self.router.expand_alias((target or "").strip()).partition(":")
        if sep and not is_provider(head) and head not in self.router.providers:
            hint = f"write provider:model with one of {', '.join(available_providers())}"
            raise UnknownProvider(f"no provider named {head!r}", hint=hint)
        return self._split(target) if target else self._split(self.default_address)

    def check_params(self, provider: str, params: GenerationParams) -> None:
        """An option of `params.extra` that this provider does not take is a mistake, said here."""
        found = self.router.provider(provider)
        members = getattr(found, "members", None)  # a pool of servers: they are all of one kind
        unknown, taken = params.not_taken_by(members[0].provider.kind if members else found.kind)
        if unknown:
            raise ConfigError(f"{provider} takes no option {unknown[0]!r}", hint=f"its options are {', '.join(taken)}")

    def chunks(
        self, messages: list[ChatMessage], target: str | None, params: GenerationParams, **options: Any
    ) -> AsyncIterator[Chunk]:
        """The router's raw chunks (options: no_cache, refresh, fallback, stream), for the runtime loop."""
        return self.router.astream(messages, target, params, **options)

    async def statuses(self, providers: list[str] | None = None) -> list[ProviderStatus]:
        """Health of each provider (runs on the runtime loop)."""
        return await self.router.health(providers)

    def pull(self, provider: str, model: str) -> AsyncIterator[PullProgress]:
        """Pull and load one model, as progress (iterated on the runtime loop)."""
        return self.router.provider(provider).load_model(model)

    async def drop(self, provider: str, model: str) -> None:
        """Unload one model (runs on the runtime loop)."""
        await self.router.provider(provider).unload_model(model)

    @property
    def cache_state(self) -> str:
        """The cache backend's name, or `off: <why>` when it would not open."""
        return str(getattr(self.cache, "state", self.cache.name))

    async def check_cache(self) -> str:
        """`cache_state` after asking the backend (a Redis that went away is `off: <why>`)."""
        return await self.cache.check()

    def close(self) -> None:
        async def shutdown() -> None:
            await self.router.aclose()
            await self.cache.aclose()

        if self._runtime is not None and self._runtime.alive:
            self.runtime.run(shutdown())

    def __repr__(self) -> str:
        return f"<Session env={self.settings.env!r} default={self.router.default_target or self.settings.default_provider!r} cache={self.cache.name}>"
