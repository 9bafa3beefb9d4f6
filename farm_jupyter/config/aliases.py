"""Aliases (`[aliases]` in farm.toml, `%farm alias`): a name for a target."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError


def expand_alias(aliases: Mapping[str, str], target: str) -> str:
    """The target an alias stands for (aliases of aliases followed); any other target as it is."""
    seen: list[str] = []
    while target in aliases:
        if target in seen:
            raise ConfigError(f"alias loop: {' -> '.join([*seen, target])}")
        seen.append(target)
        target = aliases[target]
    return target
