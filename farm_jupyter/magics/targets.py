"""Targets as a magic takes them: the Session's answers, a user's mistake made a one-line UsageError."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..errors import ConfigError, FarmError, UnknownProvider

if TYPE_CHECKING:
    from ..sessions import ChatStream, Session


def resolve(session: Session, target: str | None) -> str:
    """Resolve a target now so that an unknown provider is a UsageError, not a failed request."""
    try:
        return session.resolve(target)
    except FarmError as exc:
        raise UsageError(str(exc)) from None


def asked(session: Session, prompt: str, target: str | None, **kwargs: Any) -> ChatStream:
    """`session.stream(...)`: the request built and its target resolved, once, before anything is
    sent; an unknown provider, an empty prompt or a bad option is a UsageError."""
    try:
        return session.stream(prompt, target, **kwargs)
    except (UnknownProvider, ConfigError) as exc:
        raise UsageError(str(exc)) from None


def check_provider(name: str) -> None:
    from ..sessions import names  # on use: `%load_ext` imports no provider

    try:
        names.check_provider(name)
    except FarmError as exc:
        raise UsageError(str(exc)) from None


def join(session: Session, model: str | None, provider: str | None) -> str | None:
    """One target from `-m` and `-p`; `-p ollama -m fast` with fast an alias of an Ollama model."""
    if not (provider and model):
        return provider or model or None
    from ..sessions.names import canonical_provider, expand_alias, provider_of

    expanded = expand_alias(session.settings.aliases, model)
    named = provider_of(expanded)
    if named is None:
        return f"{provider}:{expanded}"
    if named != canonical_provider(provider):
        raise UsageError(
            f"-m {model} names provider {expanded.partition(':')[0]!r}, but -p says {provider!r}: drop one of them"
        )
    return expanded
