"""Provider names and aliases, asking no one: plain functions a face may import."""

from __future__ import annotations

from ..config.aliases import expand_alias
from ..errors import UnknownProvider
from ..providers import available, canonical, is_known

__all__ = ["canonical_provider", "check_provider", "expand_alias", "provider_of"]


def check_provider(name: str) -> None:
    """An UnknownProvider error unless `name` is a registered provider (or a short name of one)."""
    if not is_known(name):
        raise UnknownProvider(f"no provider named {name!r}", hint=f"use one of {', '.join(sorted(available()))}")


def provider_of(target: str) -> str | None:
    """The provider `target` names before its first `:` (`hf:x` -> huggingface), or None when it
    names a model only (`llama3.1`, `qwen2.5:0.5b`)."""
    head, sep, _ = target.partition(":")
    return canonical(head) if sep and is_known(head) else None


def canonical_provider(name: str) -> str:
    """The registered name behind a short one (`hf` -> huggingface)."""
    return canonical(name)
