"""The Session's old names, each kept for one release with a DeprecationWarning naming the new one.

One table, old name -> (what to write now, what the old name gives): `Session.__getattr__` looks
an old name up here, warns, and hands back the same thing it gave before.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from . import names

if TYPE_CHECKING:
    from ..types import GenerationParams, PullProgress
    from .engine import Engine

Session = Any  # the Session (this module is below it): its public names only
Getter = Callable[[Session, "Engine"], Any]


def _address(s: Session, e: Engine) -> Callable[[str | None], tuple[str, str]]:
    return lambda target: e.split(target or None, strict=True)


def _check_params(s: Session, e: Engine) -> Callable[[str, GenerationParams], None]:
    return e.check_params


def _pull(s: Session, e: Engine) -> Callable[[str, str], AsyncIterator[PullProgress]]:
    return lambda provider, model: e.router.provider(provider).load_model(model)


def _alias(s: Session, e: Engine) -> Callable[[str, str], None]:
    return s.settings.aliases.__setitem__


def _unalias(s: Session, e: Engine) -> Callable[[str], None]:
    def unalias(name: str) -> None:
        s.settings.aliases.pop(name, None)

    return unalias


def _reload(s: Session, e: Engine) -> Callable[[str], Any]:
    return lambda model: s.load(model, reload=True) or iter(())


def _has_models_to_load(s: Session, e: Engine) -> Callable[[str], bool]:
    return lambda model: e.loads_models(e.split(model)[0])


RENAMED: dict[str, tuple[str, Getter]] = {
    "achat": ("session.aio.chat", lambda s, e: s.aio.chat),
    "astream": ("session.stream (a ChatStream is also async-iterable)", lambda s, e: s.stream),
    "ahealth": ("session.aio.health", lambda s, e: s.aio.health),
    "statuses": ("session.aio.health", lambda s, e: s.aio.health),
    "list_models": ("session.aio.models", lambda s, e: s.aio.models),
    "model_lists": ("session.models(by_provider=True)", lambda s, e: lambda: s.models(by_provider=True)),
    "pull": ("session.aio.load('provider:model')", _pull),
    "drop": ("session.aio.unload('provider:model')", lambda s, e: lambda p, m: e.unload(f"{p}:{m}")),
    "reload": ("session.load(model, reload=True)", _reload),
    "has_models_to_load": ("session.load(model), None when there is nothing to load", _has_models_to_load),
    "chunks": ("session.aio.stream", lambda s, e: e.router.astream),
    "address": ("session.resolve(target, strict=True)", _address),
    "check_params": ("session.resolve(target, params=...)", _check_params),
    "conversation": ("session.history", lambda s, e: s.history),
    "default_address": ("session.resolve(None)", lambda s, e: s.resolve(None)),
    "default_target": ("session.use(...) (it returns the target resolved)", lambda s, e: e.router.default_target),
    "expand_alias": ("farm_jupyter.sessions.names.expand_alias", lambda s, e: e.router.expand_alias),
    "check_provider": ("farm_jupyter.sessions.names.check_provider", lambda s, e: names.check_provider),
    "provider_of": ("farm_jupyter.sessions.names.provider_of", lambda s, e: names.provider_of),
    "canonical_provider": ("farm_jupyter.sessions.names.canonical_provider", lambda s, e: names.canonical_provider),
    "provider_names": ("session.settings.chain", lambda s, e: lambda: list(dict.fromkeys(s.settings.chain))),
    "alias": ("session.settings.aliases[name] = target", _alias),
    "unalias": ("session.settings.aliases.pop(name)", _unalias),
    "cache_info": ("session.usage('cache')", lambda s, e: lambda: e.runtime.run(e.cache.info())),
    "cache_clear": ("session.reset(cache=True)", lambda s, e: lambda: s.reset(cache=True, history=False)),
    "cache_state": ("session.usage('cache')['state']", lambda s, e: e.cache_state),
    "cache": ("session.usage('cache') and session.reset(cache=True)", lambda s, e: e.cache),
    "monitor": ("session.usage('requests'), session.usage('failures'), session.aio.watch", lambda s, e: e.monitor),
    "router": ("the Session's own names (the router is private now)", lambda s, e: e.router),
    "runtime": ("session.aio.runtime", lambda s, e: e.runtime),
}


def renamed(session: Session, engine: Engine, name: str) -> Any:
    """What the old `name` gave, after a DeprecationWarning that says what to write now."""
    new, get = RENAMED[name]
    warnings.warn(
        f"Session.{name} is deprecated and goes in the next release: use {new}", DeprecationWarning, stacklevel=3
    )
    return get(session, engine)
