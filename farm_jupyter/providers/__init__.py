"""The provider registry: built-ins by import path (imported on first use), custom ones by
`register_provider()` or the `farm_jupyter.providers` entry-point group, all treated alike."""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, ClassVar

from ..errors import (
    ConfigError,
    FarmError,
    ProviderResponseError,
    ProviderTimeout,
    ProviderUnavailable,
    UnknownProvider,
)
from ..types import Capabilities, ChatRequest, Chunk, Usage
from ..types.capabilities import FEATURES, table
from .base import Provider

__all__ = [
    "FunctionProvider",
    "Provider",
    "ProviderFactory",
    "available",
    "canonical",
    "capability_table",
    "create",
    "declared",
    "is_known",
    "register_provider",
    "unregister_provider",
]

ProviderFactory = Callable[..., Provider]
_END = object()

_BUILTIN = {
    "ollama": "farm_jupyter.providers.ollama:OllamaProvider",
    "openai": "farm_jupyter.providers.openai:OpenAIProvider",
    "huggingface": "farm_jupyter.providers.huggingface:HuggingFaceProvider",
    "llamacpp": "farm_jupyter.providers.llamacpp:LlamaCppProvider",
}
_ALIASES = {"hf": "huggingface"}
_registered: dict[str, ProviderFactory] = {}
_declared: dict[str, Capabilities] = {}  # what a registered provider said it can do
ENTRY_POINT_GROUP = "farm_jupyter.providers"


def register_provider(
    name: str,
    factory: ProviderFactory | Callable[..., Any],
    *,
    replace: bool = True,
    capabilities: Capabilities | Iterable[str] | None = None,
) -> None:
    """Register a provider under `name`.

    `factory` is a Provider subclass (called as `cls(name, settings, **options)`), any callable
    with that signature returning a Provider, or a plain function `fn(messages, **params)` that
    returns or yields text (sync or async), which is wrapped in a FunctionProvider.

    `capabilities` says what it can do (feature names, see `farm_jupyter.types.capabilities`):
    a request that asks for anything else is refused before it is sent. A class declares its own
    (`capabilities = Capabilities.of(...)`), which this replaces when given; a function declares
    nothing unless given, and can take only the keywords it is passed (`FunctionProvider.TAKES`).
    """
    if not name or ":" in name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"provider name {name!r} must be letters, digits, '-' or '_'")
    if not replace and (name in _registered or name in _BUILTIN):
        raise ConfigError(f"a provider named {name!r} is already registered")
    try:
        row = Capabilities.parse(capabilities)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"provider {name!r}: {exc}") from None
    is_provider_class = inspect.isclass(factory) and issubclass(factory, Provider)
    is_function = not is_provider_class and not _takes_settings(factory)
    # A factory function's provider is not known until it is made: it says nothing here.
    known = factory.capabilities if is_provider_class and capabilities is None else row  # type: ignore[union-attr]
    if is_function:
        if extra := sorted(row.features - FunctionProvider.TAKES):
            raise ConfigError(
                f"a function provider cannot do {', '.join(extra)}: it is passed only "
                f"{', '.join(sorted(FunctionProvider.TAKES))} and returns text",
                hint="subclass farm_jupyter.Provider for the rest",
            )
        fn = factory
        factory = lambda n, settings, **o: FunctionProvider(n, settings, fn=fn, **o)  # noqa: E731
    elif capabilities is not None:
        made = factory
        factory = lambda n, settings, **o: _declaring(made(n, settings, **o), row)  # noqa: E731
    _registered[name] = factory
    _declared.pop(name, None)
    if is_provider_class or is_function or capabilities is not None:
        _declared[name] = known


def _declaring(provider: Provider, row: Capabilities) -> Provider:
    provider.capabilities = row
    return provider


def capability_table() -> str:
    """The provider x feature table of the README, from the providers' own declarations."""
    rows: dict[str, Capabilities | frozenset[str]] = {f"`{n}`": _lookup(n).capabilities for n in _BUILTIN}  # type: ignore[attr-defined]
    rows["a function (`register_provider(name, fn, capabilities=[...])`)"] = FunctionProvider.TAKES
    rows["a `Provider` subclass (`capabilities = Capabilities.of(...)`)"] = frozenset(FEATURES)
    return table(rows)


def unregister_provider(name: str) -> None:
    _registered.pop(name, None)
    _declared.pop(name, None)


def declared(name: str) -> Capabilities | None:
    """What the provider `name` can do, without making one (None for one not known yet: a
    factory function, or an entry point not loaded)."""
    name = canonical(name)
    if name in _registered:
        return _declared.get(name)
    if name in _BUILTIN:
        row: Capabilities = _lookup(name).capabilities  # type: ignore[attr-defined]
        return row
    return None


def _takes_settings(factory: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return False
    return params[:2] == ["name", "settings"]


def canonical(name: str) -> str:
    """The registered name behind a short one (`hf` -> `huggingface`)."""
    return _ALIASES.get(name, name)


@functools.cache
def _entry_point_names() -> frozenset[str]:
    # Scanning installed distributions costs milliseconds: once per process is enough.
    return frozenset(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def is_known(name: str) -> bool:
    name = canonical(name)
    return name in _registered or name in _BUILTIN or name in _entry_point_names()


def available() -> list[str]:
    return sorted(set(_BUILTIN) | set(_registered) | _entry_point_names())


def _lookup(name: str) -> ProviderFactory:
    name = canonical(name)
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        factory: ProviderFactory = getattr(importlib.import_module(module), attr)
        return factory
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        factory = ep.load()
        register_provider(name, factory)
        return _registered[name]
    raise UnknownProvider(
        f"no provider named {name!r}",
        hint=f"use one of {', '.join(available())}, or register_provider({name!r}, ...)",
    )


def create(name: str, settings: Any, **options: Any) -> Provider:
    """Build the provider `name`; a factory that raises is reported as a one-line ConfigError."""
    factory = _lookup(name)
    merged = {**settings.providers.get(name, {}), **options}
    try:
        provider = factory(canonical(name), settings, **merged)
    except (UnknownProvider, ConfigError):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""  # messages are one line
        raise ConfigError(f"provider {name!r} failed to start: {type(exc).__name__}: {first}") from exc
    if not isinstance(provider, Provider):
        raise ConfigError(f"provider {name!r} factory returned {type(provider).__name__}, not a Provider")
    return provider


class FunctionProvider(Provider):
    """A provider made from one function: `fn(messages, **params)` returning or yielding text.

    The few-lines way to plug in anything (a rule, a remote API, a test double)::

        def shout(messages, **params):
            return messages[-1]["content"].upper()

        farm_jupyter.register_provider("shout", shout)
    """

    # What it can be passed (as keywords: `stop=`, `seed=`, `response_schema=`, ...), of which
    # `register_provider(..., capabilities=...)` says what it does; stream and fallback go without saying.
    TAKES: ClassVar[frozenset[str]] = frozenset(
        {"stream", "fallback", "schema", "images", "stop", "seed", "temperature", "max_tokens"}
    )

    def __init__(self, name: str, settings: Any, *, fn: Callable[..., Any], **options: Any) -> None:
        super().__init__(name, settings, **options)
        self.fn = fn
        self.capabilities = _declared.get(name, Capabilities())

    @property
    def default_model(self) -> str:
        return str(self.options.get("default_model") or getattr(self.fn, "__name__", "default"))

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        try:
            async for chunk in self._run(request):
                yield chunk
        except FarmError:
            raise
        except (ConnectionError, TimeoutError) as exc:  # what it talks to is down: fall back
            cls = ProviderTimeout if isinstance(exc, TimeoutError) else ProviderUnavailable
            raise cls(
                f"provider {self.name!r} could not reach its backend: {type(exc).__name__}: {exc}".splitlines()[0],
                provider=self.name,
                hint="check what the function talks to",
            ) from exc
        except Exception as exc:  # a bug in the user's function: say which one failed
            raise ProviderResponseError(
                f"provider {self.name!r} failed: {type(exc).__name__}: {exc}".strip().splitlines()[0],
                provider=self.name,
                hint=f"fix the function registered as {self.name!r}",
            ) from exc

    async def _run(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        params = request.params.model_dump(exclude_none=True, exclude={"extra"})
        params.update(request.params.extra)
        messages = [m.model_dump() for m in request.messages]
        # A plain `def` may block (a sleep, a blocking client): it runs in a worker thread, and so
        # does each step of a sync generator, so one slow function never stalls the other streams.
        if inspect.iscoroutinefunction(self.fn) or inspect.isasyncgenfunction(self.fn):
            result = self.fn(messages, model=request.model, **params)
        else:
            result = await asyncio.to_thread(lambda: self.fn(messages, model=request.model, **params))
        if inspect.isawaitable(result):
            result = await result
        count = 0
        if isinstance(result, str):
            yield Chunk(text=result)
            count = 1
        elif hasattr(result, "__aiter__"):
            async for piece in result:
                count += 1
                yield Chunk(text=self._checked(piece))
        elif isinstance(result, Iterable):
            pieces = iter(result)
            while (piece := await asyncio.to_thread(next, pieces, _END)) is not _END:
                count += 1
                yield Chunk(text=self._checked(piece))
        else:
            raise ProviderResponseError(
                f"provider {self.name!r} returned {type(result).__name__}, not text",
                provider=self.name,
                hint="return a str, or yield str pieces",
            )
        words = sum(len(m.content.split()) for m in request.messages)
        yield Chunk(done=True, usage=Usage(prompt_tokens=words, completion_tokens=count), finish_reason="stop")

    def _checked(self, piece: Any) -> str:
        if not isinstance(piece, str):
            raise ProviderResponseError(
                f"provider {self.name!r} yielded {type(piece).__name__}, not str",
                provider=self.name,
                hint="yield text pieces (str) only",
            )
        return piece
