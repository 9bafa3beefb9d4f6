"""The Session's public API: one name per act, at most 20 names, and the old names as shims that warn."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import farm_jupyter
from farm_jupyter.errors import UnknownProvider
from farm_jupyter.sessions import AsyncSession, ChatStream, Conversation, Session
from farm_jupyter.sessions.renamed import RENAMED
from farm_jupyter.types import GenerationParams, ProviderStatus

pytestmark = pytest.mark.timeout(60)

PUBLIC = {
    "chat", "stream", "map", "compare", "embed", "models", "load", "unload", "health", "gpu", "usage",
    "history", "reset", "settings", "close", "use", "resolve", "last_batch", "aio", "explain",
}  # fmt: skip


def public_names(obj: Any) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def test_the_session_has_at_most_20_public_names(farm_session: Session) -> None:
    names = public_names(farm_session)
    assert names == PUBLIC  # `explain` (issue 25) makes it 20
    assert len(names) <= 20


def test_the_readme_lists_every_session_name_and_every_export() -> None:
    readme = Path(farm_jupyter.__file__).parent.parent / "README.md"
    section = readme.read_text(encoding="utf-8").split("### The Session", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{n}" in section for n in PUBLIC), [n for n in PUBLIC if f"`{n}" not in section]
    exports = section.split("exports (`farm.__all__`", 1)[1].split("\n\n", 2)[1]  # the list below it
    assert set(re.findall(r"`(\w+)`", exports)) == set(farm_jupyter.__all__)


def test_aio_has_the_same_acts_as_coroutines() -> None:
    for name in ("chat", "embed", "models", "unload", "health", "gpu", "usage"):
        assert inspect.iscoroutinefunction(getattr(AsyncSession, name)), name
    for name in ("stream", "load", "resolve"):  # an async iterable, or no waiting at all
        assert not inspect.iscoroutinefunction(getattr(AsyncSession, name)), name


def test_sync_and_async_twins_agree(farm_session: Session) -> None:
    s = farm_session
    sync = s.chat("parity", "ollama", no_cache=True)
    asyn = asyncio.run(s.aio.chat("parity", "ollama", no_cache=True))
    assert (sync.text, sync.address) == (asyn.text, asyn.address)
    assert [m.address for m in s.models("ollama")] == [m.address for m in asyncio.run(s.aio.models("ollama"))]
    assert [h.provider for h in s.health()] == [h.provider for h in asyncio.run(s.aio.health())]
    assert s.usage("cache") == asyncio.run(s.aio.usage("cache"))
    assert s.resolve("ollama") == s.aio.resolve("ollama")


def test_models_by_provider_says_which_one_failed(farm_session: Session) -> None:
    lists = farm_session.models(by_provider=True)
    assert set(lists) >= {"ollama", "openai"}
    assert all(not isinstance(v, BaseException) for v in lists.values())


def test_reset_history_and_cache(farm_session: Session) -> None:
    s = farm_session
    s.chat("one", conversation=s.history)
    assert len(s.history) == 1 and s.usage("cache")["entries"] == 1
    s.reset()
    assert len(s.history) == 0 and s.usage("cache")["entries"] == 1
    s.chat("two", conversation=s.history)
    s.reset(cache=True)
    assert len(s.history) == 1 and s.usage("cache")["entries"] == 0


def test_load_says_when_there_is_nothing_to_load(farm_session: Session) -> None:
    assert farm_session.load("openai:gpt-4o-mini") is None  # a remote API serves its models itself
    assert farm_session.unload("openai:gpt-4o-mini") is False
    steps = farm_session.load("ollama:qwen2.5:0.5b")
    assert steps is not None and list(steps)[-1].status == "loaded"


def test_resolve_strict_and_params(farm_session: Session) -> None:
    s = farm_session
    assert s.resolve("qwen2.5:0.5b") == "ollama:qwen2.5:0.5b"  # a model of the default provider
    with pytest.raises(UnknownProvider):
        s.resolve("qwen2.5:0.5b", strict=True)
    from farm_jupyter.errors import ConfigError

    params = GenerationParams(extra={"num_ctx": 2048})
    assert s.resolve("ollama", params=params) == "ollama:llama3.1"
    with pytest.raises(ConfigError, match="takes no option 'num_ctx'"):
        s.resolve("openai", params=params)


# -- the old names: each warns, names its replacement, and still does what it did -----------------


def _run(s: Session, value: Any) -> Any:
    return s.aio.runtime.run(value) if inspect.isawaitable(value) else value


async def _drain(steps: Any) -> list[Any]:
    return [step async for step in steps]


USES: dict[str, Callable[[Session, Any], None]] = {
    "achat": lambda s, f: _check(_run(s, f("hi", "ollama")).text == "Echo: hi"),
    "astream": lambda s, f: _check(isinstance(f("hi"), ChatStream)),
    "ahealth": lambda s, f: _check(isinstance(_run(s, f())[0], ProviderStatus)),
    "statuses": lambda s, f: _check(isinstance(_run(s, f())[0], ProviderStatus)),
    "list_models": lambda s, f: _check(len(_run(s, f("ollama"))) > 0),
    "model_lists": lambda s, f: _check("ollama" in f()),
    "pull": lambda s, f: _check(s.aio.runtime.run(_drain(f("ollama", "qwen2.5:0.5b")))[-1].status == "loaded"),
    "drop": lambda s, f: _check(_run(s, f("ollama", "qwen2.5:0.5b")) is True),
    "reload": lambda s, f: _check(list(f("ollama:qwen2.5:0.5b"))[-1].status == "loaded"),
    "has_models_to_load": lambda s, f: _check(f("ollama:x") and not f("openai:gpt-4o")),
    "chunks": lambda s, f: _check(callable(f)),
    "address": lambda s, f: _check(f("openai:gpt-4o") == ("openai", "gpt-4o")),
    "check_params": lambda s, f: _check(f("ollama", GenerationParams()) is None),
    "conversation": lambda s, f: _check(isinstance(f, Conversation) and f is s.history),
    "default_address": lambda s, f: _check(f == "ollama:llama3.1"),
    "default_target": lambda s, f: _check(f is None),
    "expand_alias": lambda s, f: _check(f("ollama") == "ollama"),
    "check_provider": lambda s, f: _check(f("ollama") is None),
    "provider_of": lambda s, f: _check(f("hf:x") == "huggingface"),
    "canonical_provider": lambda s, f: _check(f("hf") == "huggingface"),
    "provider_names": lambda s, f: _check(f()[:2] == ["ollama", "openai"]),
    "alias": lambda s, f: _check(f("fast", "openai:gpt-4o") is None and s.resolve("fast") == "openai:gpt-4o"),
    "unalias": lambda s, f: _check(f("nothing") is None),
    "cache_info": lambda s, f: _check(f()["backend"] == "memory"),
    "cache_clear": lambda s, f: _check(f() is None),
    "cache_state": lambda s, f: _check(f == "memory"),
    "cache": lambda s, f: _check(f.name == "memory"),
    "monitor": lambda s, f: _check(isinstance(f.summary(), list)),
    "router": lambda s, f: _check(str(f.resolve("openai")[0]) == "openai:gpt-4o-mini"),
    "runtime": lambda s, f: _check(f is s.aio.runtime),
}


def _check(ok: Any) -> None:
    assert ok


def test_every_old_name_is_tested() -> None:
    assert set(USES) == set(RENAMED)


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_name_warns_and_still_works(farm_session: Session, old: str) -> None:
    new = RENAMED[old][0]
    said = f"Session.{old} is deprecated and goes in the next release: use {new}"
    with pytest.warns(DeprecationWarning, match=re.escape(said)):
        value = getattr(farm_session, old)
    USES[old](farm_session, value)


def test_an_unknown_name_is_an_attribute_error(farm_session: Session) -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        farm_session.nonsense  # type: ignore[attr-defined]  # noqa: B018
