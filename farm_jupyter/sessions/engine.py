"""What a Session and its AsyncSession share: the router, the cache, the monitor, the runtime loop.

The Engine is the sessions package's own: faces reach it only through the Session's names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..cache_guard import GuardedCache
from ..config import Settings
from ..context import DEFAULT_BUDGET, attach, naming_the_budget
from ..errors import ConfigError, FarmError, UnknownProvider
from ..monitor import Monitor
from ..objects import Budget
from ..providers import available as available_providers
from ..providers import is_known as is_provider
from ..providers.base import Provider, as_messages
from ..router import Router
from ..router.call import Route
from ..router.capable import check_options
from ..router.fold import Fold
from ..runtime import Runtime, get_runtime
from ..steps import Extras, Steps, plan
from ..types import ChatMessage, ChatResponse, Chunk, GenerationParams, ImagePart, ModelInfo, PullProgress
from .conversation import Conversation

Prompt = str | Sequence[ChatMessage | dict[str, Any]]


@dataclass(frozen=True)
class Asked:
    """A request as built, once: its messages as sent and the routes it takes (the first is the
    model asked; a face labels the answer with it)."""

    messages: list[ChatMessage]
    routes: list[Route]
    target: str | None  # as given: the steps of a schema or tools ask again with it
    fallback: bool | None
    budget: Budget | None = None  # what each described object could take, when there were any

    @property
    def address(self) -> str:
        return str(self.routes[0])


class Engine:
    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self._runtime = runtime
        self.cache: GuardedCache = GuardedCache(settings.cache)  # a cache that will not open is off, not fatal
        self.monitor: Monitor = Monitor(settings.monitor_size)
        self.router: Router = Router(settings, self.cache, self.monitor)

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None or not self._runtime.alive:
            self._runtime = get_runtime()
        return self._runtime

    def started(self) -> bool:
        return self._runtime is not None and self._runtime.alive

    # -- asking ---------------------------------------------------------------------------------

    def ask(
        self,
        prompt: Prompt,
        model: str | None,
        *,
        system: str | None,
        conversation: Conversation | None,
        turn_id: str | None,
        fallback: bool | None,
        extras: Extras,
    ) -> Asked:
        """The request, built once: the messages as they will be sent, and the routes they take."""
        attached: list[ImagePart] = []
        routes = self.router.routes(model, fallback)
        budget = extras.context_budget if isinstance(extras.context_budget, Budget) else None
        if extras.context is not None or extras.images:
            if not isinstance(prompt, str):
                raise TypeError("context= and images= go with a prompt string")
            if budget is None:  # at the first route's own count or ratio: resolved once, above
                tokens = extras.context_budget if isinstance(extras.context_budget, int) else None
                budget = self.route_budget(routes[0], tokens)
            prompt, attached = attach(prompt, extras.context, extras.images, budget)
        messages = self.messages(prompt, system, conversation, turn_id, attached)
        return Asked(messages, routes, model, fallback, budget)

    def source(
        self,
        asked: Asked,
        params: Mapping[str, Any] | GenerationParams,
        *,
        conversation: Conversation | None,
        turn_id: str | None,
        no_cache: bool,
        refresh: bool,
        stream: bool,
        extras: Extras,
        key: str | None = None,
        fold: Fold | None = None,
    ) -> AsyncIterator[Chunk] | Steps:
        """What a ChatStream iterates: the router's chunks, or the steps of a schema or tools;
        either feeds `fold`, the stream's."""

        def commit(response: ChatResponse) -> None:  # the question as it was sent
            if conversation is not None:
                conversation.commit(asked.messages[-1], response, turn_id, keep_thinking=extras.keep_thinking)

        if extras.schema is None and not extras.tools:
            chunks = self.router.astream(
                asked.messages, None, params, no_cache=no_cache, refresh=refresh, stream=stream, routes=asked.routes,
                key=key, fold=fold,
            )  # fmt: skip
            if asked.budget is not None:  # objects were described: a context-window error names the budget
                chunks = naming_the_budget(chunks, asked.budget, asked.messages)
            return chunks if conversation is None else _committing(chunks, commit)
        if isinstance(params, GenerationParams):
            params = params.model_dump(exclude_defaults=True)
        return plan(
            self.router,
            self.runtime,
            asked.messages,
            asked.target,
            params,
            extras if asked.budget is None else replace(extras, context_budget=asked.budget),
            no_cache=no_cache,
            refresh=refresh,
            fallback=asked.fallback,
            stream=stream,
            on_final=commit,
            fold=fold,
        )

    def budget(self, target: str | None, tokens: int | None = None) -> Budget:
        """What each object described in a prompt to `target` may take (see `route_budget`)."""
        try:
            route = self.router.resolve(target, fallback=False)[0]
        except FarmError:  # the request will say so; the budget is not the place
            return Budget(tokens or DEFAULT_BUDGET)
        return self.route_budget(route, tokens)

    def route_budget(self, route: Route, tokens: int | None = None) -> Budget:
        """`tokens` (default 1000), counted exactly where the route's provider offers
        `count_tokens(model, text) -> int` (a local model's tokenizer), else estimated at the
        characters a prompt token stood for in that model's last reported usage, else at 4."""
        tokens = tokens or DEFAULT_BUDGET
        try:
            provider = self.router.provider(route.provider)
        except FarmError:
            return Budget(tokens)
        if provider.count_tokens("", route.model, load=False) is not None:  # its tokenizer is in memory
            return Budget(tokens, count=lambda text: provider.count_tokens(text, route.model, load=False) or 0)
        ratio = self.monitor.chars_per_token(str(route))
        if ratio is None:
            return Budget(tokens)
        return Budget(tokens, min(max(ratio, 1.0), 10.0), f"{route}'s last usage")

    @staticmethod
    def messages(
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
            raise ConfigError("the prompt is empty", hint="write the question in the cell")
        return messages

    # -- targets --------------------------------------------------------------------------------

    def split(self, target: str | None, *, strict: bool = False) -> tuple[str, str]:
        """`(provider, model)`, asking no one. `strict`: `x:y` with no provider or alias `x` is
        refused, not taken as a model of the default provider (write `ollama:qwen2.5:0.5b`)."""
        if strict:
            head, sep, _ = self.router.expand_alias((target or "").strip()).partition(":")
            if sep and not is_provider(head) and head not in self.router.providers:
                hint = f"write provider:model with one of {', '.join(available_providers())}"
                raise UnknownProvider(f"no provider named {head!r}", hint=hint)
        route = self.router.resolve(target, fallback=False)[0]
        return route.provider, route.model

    def resolve(self, target: str | None, *, strict: bool = False, params: GenerationParams | None = None) -> str:
        """See `Session.resolve`."""
        provider, model = self.split(target, strict=strict)
        if params is not None:
            self.check_params(provider, params)
        return f"{provider}:{model}"

    def check_params(self, provider: str, params: GenerationParams) -> None:
        """An option of `params.extra` that this provider does not take is a mistake, said here."""
        check_options(self.router.provider(provider), params)

    # -- models ---------------------------------------------------------------------------------

    async def models(self, provider: str | None = None) -> list[ModelInfo]:
        """Live model lists: one provider's, or every one in the chain that answers."""
        names = [provider] if provider else list(dict.fromkeys(self.settings.chain))
        out: list[ModelInfo] = []
        for name in names:
            try:
                out += await self.router.provider(name).list_models()
            except FarmError:
                if provider:
                    raise
        return out

    async def model_lists(self, provider: str | None = None) -> dict[str, list[ModelInfo] | FarmError]:
        """Each provider (of the chain, or the one named) with its live list, or the error it gave."""
        names = [provider] if provider else list(dict.fromkeys(self.settings.chain))

        async def one(name: str) -> list[ModelInfo] | FarmError:
            try:
                return await self.router.provider(name).list_models()
            except FarmError as exc:
                if provider:
                    raise
                return exc

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))

    def loads_models(self, provider: str) -> bool:
        """Does this provider pull or load models (Ollama, HuggingFace)? A remote API (OpenAI or a
        compatible server) serves its models itself: there is nothing to load or free."""
        return self.router.provider(provider).capabilities.can("load")

    def load(self, target: str, *, reload: bool = False) -> AsyncIterator[PullProgress] | None:
        """Pull and load; None when the provider has nothing to load (a remote API serves its models)."""
        provider, model = self.split(target)
        if not self.loads_models(provider):
            return None
        found = self.router.provider(provider)
        return _reloading(found, model) if reload else found.load_model(model)

    async def unload(self, target: str) -> bool:
        provider, model = self.split(target)
        if not self.loads_models(provider):
            return False
        await self.router.provider(provider).unload_model(model)
        return True

    async def embed(self, texts: list[str], model: str | None) -> list[list[float]]:
        provider, name = self.split(model) if model else (self.settings.default_provider, None)
        return await self.router.require(provider, "embed").embed(texts, name)

    # -- the cache ------------------------------------------------------------------------------

    @property
    def cache_state(self) -> str:
        """The cache backend's name, or `off: <why>` when it would not open."""
        return str(getattr(self.cache, "state", self.cache.name))

    def report(self, of: str) -> Any:
        """What `usage(of)` reads in the caller's thread: tokens, requests or failures."""
        if of == "tokens":
            return self.router.ledger.report()
        if of == "requests":
            return self.monitor.summary()
        if of == "failures":
            return self.monitor.failure_counts()
        raise ValueError(f"usage of {of!r}? tokens, requests, failures or cache")

    async def cache_info(self) -> dict[str, Any]:
        return {"state": self.cache_state, **(await self.cache.info())}

    async def aclose(self) -> None:
        await self.router.aclose()
        await self.cache.aclose()


async def _committing(stream: AsyncIterator[Chunk], commit: Callable[[ChatResponse], None]) -> AsyncIterator[Chunk]:
    async for chunk in stream:
        if chunk.response is not None:
            commit(chunk.response)
        yield chunk


async def _reloading(provider: Provider, model: str) -> AsyncIterator[PullProgress]:
    await provider.unload_model(model)
    async for step in provider.load_model(model):
        yield step
