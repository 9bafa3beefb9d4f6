"""Can a route do what a request asks? The one check, before anything is sent.

A provider's row (`Provider.capabilities`, see `farm_jupyter.types.capabilities`) says what it
does; a feature that depends on the model (Ollama's tools and thinking) is asked of the model
only when the request uses it, once per model. What it cannot do is refused in one line, an
`Unsupported` (the caller's error: no retry, no fallback, no breaker count), naming the providers
that can. On a fallback route the same refusal skips the route, said in the notice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import providers as registry
from ..errors import ConfigError, FarmError, Unsupported
from ..providers.base import Provider
from ..types import ChatMessage, GenerationParams
from ..types.capabilities import asked, refusal, stands_in
from .call import Route


def able(names: Sequence[str], feature: str) -> list[str]:
    """Of `names` (the chain first, then every provider known), those whose row has `feature`."""
    found = []
    for name in dict.fromkeys(registry.canonical(n) for n in names):
        try:
            row = registry.declared(name)
        except FarmError:  # a provider that cannot even be looked up suggests nothing
            continue
        if row is not None and row.can(feature):
            found.append(name)
    return found


def unsupported(
    name: str, feature: str, others: Callable[[str], list[str]], *, model: str | None = None
) -> Unsupported:
    """`llamacpp cannot do think here: use ollama or openai, or drop think=`."""
    can = [n for n in others(feature) if n != name or model]
    if model:  # another model of the same provider may do it
        can = [f"another {n} model" if n == name else n for n in can]
    row = registry.declared(name)
    message, hint = refusal(name, feature, can, model=model, install=row.install(feature) if row else None)
    return Unsupported(message, feature=feature, provider=name, hint=hint)


def check_options(provider: Provider, params: GenerationParams) -> None:
    """An option of `params.extra` that the provider asked does not take is the caller's mistake
    (a mistyped name, another provider's option), said before anything is sent. A fallback leaves
    the ones it does not take: they were for the provider asked."""
    if not params.extra:  # the common case, on every request: nothing to look up
        return
    members = getattr(provider, "members", None)  # a pool of servers: they are all of one kind
    unknown, taken = params.not_taken_by(members[0].provider.kind if members else provider.kind)
    if unknown:
        raise ConfigError(f"{provider.name} takes no option {unknown[0]!r}", hint=f"its options are {', '.join(taken)}")


def missing(provider: Provider, params: GenerationParams, messages: Sequence[ChatMessage] = ()) -> str | None:
    """The first feature the request uses that `provider`'s row lacks (and nothing stands in for)."""
    return _missing(provider, params, asked(params, messages))


def _missing(provider: Provider, params: GenerationParams, used: list[str]) -> str | None:
    row = provider.capabilities
    return next((f for f in used if not row.can(f) and not stands_in(f, params)), None)


async def refused(
    provider: Provider,
    route: Route,
    params: GenerationParams,
    messages: Sequence[ChatMessage],
    others: Callable[[str], list[str]],
    *,
    ask_model: bool,
) -> Unsupported | None:
    """Why `route`'s provider cannot answer this request with its model, or None.
    `ask_model=False` keeps to the row (a replay asks no server anything)."""
    name, model = route.provider, route.model
    used = asked(params, messages)  # once: the row, then the model
    feature = _missing(provider, params, used)
    if feature is not None:
        return unsupported(name, feature, others)
    per_model = provider.capabilities.per_model
    depends = [f for f in used if f in per_model and not stands_in(f, params)]
    if depends and ask_model:
        has = await provider.model_capabilities(model)
        feature = next((f for f in depends if f not in has), None)
        if feature is not None:
            return unsupported(name, feature, others, model=model)
    return None
