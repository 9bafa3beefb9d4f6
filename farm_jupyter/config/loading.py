"""Reading the layers (farm.toml or [tool.farm], .env files, the environment, arguments) and
merging them into Settings; a bad value is reported under the name it was given, where it was
given (OLLAMA_URL, farm.toml's ollama.host)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .settings import RateLimit, Settings
from .urls import BadValue

CONFIG_FILE = "farm.toml"
# (where: ` in FILE` or ``, the variables it was read from or None, the values), lowest first
_Layer = tuple[str, Mapping[str, str] | None, Mapping[str, Any]]


def find_config_file(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The nearest farm.toml, or pyproject.toml with a [tool.farm] table, from `start` upward."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate, _read_toml(candidate)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _read_toml(pyproject).get("tool", {}).get("farm")
            if table is not None:
                return pyproject, table
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="fix the file or remove it") from exc


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        *parents, leaf = path.split(".")
        node = layer
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    def comma_list(value: str) -> list[str]:
        return [p.strip() for p in value.split(",") if p.strip()]

    simple = {
        "FARM_ENV": "env",
        "FARM_AI_PROVIDER": "provider",
        "OLLAMA_HOST": "ollama.host",
        "OPENAI_API_KEY": "openai.api_key",
        "OPENAI_BASE_URL": "openai.base_url",
        "OPENAI_ORG_ID": "openai.organization",
        "HF_TOKEN": "huggingface.token",
        "FARM_HF_MODEL": "huggingface.default_model",
        "FARM_HF_DEVICE": "huggingface.device",
        "FARM_OLLAMA_MODEL": "ollama.default_model",
        "FARM_OPENAI_MODEL": "openai.default_model",
    }
    for name, path in {**_SEED_NAMES, **simple}.items():  # ours last: they win
        value = environ.get(name, "").strip()
        if value:
            put(path, value)
    for name in ("AI_FALLBACK_PROVIDER", "FARM_FALLBACK"):
        if name in environ:
            put("fallback", comma_list(environ[name]))
    cache = environ.get("FARM_CACHE", "").strip()
    if cache:
        if cache.startswith(("redis://", "rediss://", "unix://")):
            put("cache.backend", "redis")
            put("cache.redis_url", cache)
        elif cache.startswith(("disk:", "record:", "replay:")):
            backend, _, path = cache.partition(":")
            put("cache.backend", backend)
            put("cache.path", path)
        else:
            put("cache.backend", cache)
    return layer


# The seed project's names for ours; AI_DEFAULT_MODEL and AI_RATE_LIMIT need the default provider
# first, and are applied by _apply_seed_defaults.
_SEED_NAMES = {
    "AI_PROVIDER": "provider",
    "OLLAMA_URL": "ollama.host",
    "HUGGINGFACE_TOKEN": "huggingface.token",
}
_OWN_MODEL_NAMES = {"ollama": "FARM_OLLAMA_MODEL", "openai": "FARM_OPENAI_MODEL", "huggingface": "FARM_HF_MODEL"}


def _apply_seed_defaults(settings: Settings, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> None:
    """AI_DEFAULT_MODEL and AI_RATE_LIMIT, for the default provider; our own names and explicit
    arguments win over them."""
    provider = settings.default_provider
    section = "huggingface" if provider == "hf" else provider
    model = environ.get("AI_DEFAULT_MODEL", "").strip()
    if model and not _has(overrides, (section, "default_model")):
        if section in _OWN_MODEL_NAMES:
            if not environ.get(_OWN_MODEL_NAMES[section], "").strip():
                getattr(settings, section).default_model = model
        elif not _has(overrides, ("providers", provider, "default_model")):
            settings.providers.setdefault(provider, {})["default_model"] = model
    rpm = environ.get("AI_RATE_LIMIT", "").strip()
    if rpm and not _has(overrides, ("rate_limits", provider, "rpm")):
        try:
            value = int(rpm)
            if value <= 0:
                raise ValueError(rpm)
        except ValueError:
            raise ConfigError(
                f"AI_RATE_LIMIT={rpm!r} is not a number of requests per minute",
                hint="set a whole number above 0, e.g. AI_RATE_LIMIT=60",
            ) from None
        current = settings.rate_limits.get(provider)
        settings.rate_limits[provider] = RateLimit(rpm=value, tpm=current.tpm if current else None)


def _has(data: Mapping[str, Any], path: tuple[Any, ...]) -> bool:
    """Whether `data` sets `path`, or a leaf (a list, a value) that holds it."""
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping):
            return True
        if key not in node:
            return False
        node = node[key]
    return True


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="fix the file or remove it") from exc
    return {k: v for k, v in values.items() if v is not None}


def _dotenv_files(folder: Path, given: str, file_env: str) -> list[tuple[Path, dict[str, str]]]:
    """`.env`, then `.env.<environment>`, from `folder`, each with its values. The environment is
    the one `given` (arguments, process environment), else .env's FARM_ENV, else farm.toml's."""
    base_path = folder / ".env"
    base = _read_dotenv(base_path)
    env = given or base.get("FARM_ENV", "").strip() or file_env or "development"
    specific_path = folder / f".env.{env}"
    files = [(base_path, base), (specific_path, _read_dotenv(specific_path))]
    return [(path, values) for path, values in files if values]


def _origin(loc: tuple[Any, ...], layers: list[_Layer]) -> tuple[str, str]:
    """Who set the setting at `loc`: (its name there, ` in FILE` or ``)."""
    dotted = ".".join(str(p) for p in loc)
    for size in range(len(loc), 0, -1):  # a missing field: the table that lacks it
        part = loc[:size]
        for where, environ, layer in reversed(layers):
            if not _has(layer, part):
                continue
            if environ is None:
                return dotted, where
            for name, value in environ.items():  # the variable that sets it, found by asking each one
                if _has(_from_environ({name: value}), part) and value.strip():
                    return name, where
            return dotted, where
    return dotted, ""


# One setting in two shapes: a provider's server (`host`) or servers (`hosts`). A layer that gives
# either replaces what the layers below gave in either shape: OLLAMA_HOST over farm.toml's `hosts`.
_SERVERS = {"ollama": ("host", "hosts"), "openai": ("base_url", "base_urls")}


def _merge_layer(data: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    for section, shapes in _SERVERS.items():
        given, below = layer.get(section), data.get(section)
        if isinstance(given, Mapping) and isinstance(below, dict) and any(given.get(s) for s in shapes):
            data = {**data, section: {k: v for k, v in below.items() if k not in shapes}}
    return _merge(data, layer)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    start: Path | None = None,
    use_file: bool = True,
) -> Settings:
    """Build the layered settings; any bad value is one ConfigError line that names it."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    layers: list[_Layer] = []
    source = None
    if use_file and (found := find_config_file(start)):
        source, table = found
        layers.append((f" in {source}", None, table))
    if use_file:
        given = str(overrides.get("env") or environ.get("FARM_ENV", "")).strip()
        file_env = str(layers[0][2].get("env") or "") if layers else ""
        for path, values in _dotenv_files((start or Path.cwd()).resolve(), given, file_env):
            layers.append((f" in {path}", values, _from_environ(values)))
    layers.append(("", environ, _from_environ(environ)))
    layers.append(("", None, overrides))
    data: dict[str, Any] = {}
    for _, _, layer in layers:
        data = _merge_layer(data, layer)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, layers) from None
    if settings.env not in settings.environments:
        known = ", ".join(sorted(settings.environments))
        raise ConfigError(
            f"FARM_ENV={settings.env!r} is not a configured environment ({known})",
            hint="use one of those, or add an [environments.NAME] table to farm.toml",
        )
    variables: dict[str, str] = {}
    for _where, layer_environ, _layer in layers:
        variables.update(layer_environ or {})
    _apply_seed_defaults(settings, variables, overrides)
    settings.source = str(source) if source else None
    return settings


def _config_error(exc: ValidationError, layers: list[_Layer]) -> ConfigError:
    """One line naming the setting as the user wrote it, and where: OLLAMA_URL, farm.toml's ollama.host."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    name, where = _origin(loc, layers)
    bad = (err.get("ctx") or {}).get("error")
    if isinstance(bad, BadValue):
        return ConfigError(f"{name}={bad.value!r}{where} {bad.problem}")
    dotted = ".".join(str(p) for p in loc) or "settings"
    origin = f" (from {name}{where})" if name != dotted else (f" ({where.strip()})" if where else "")
    return ConfigError(f"invalid setting {dotted}{origin}: {err['msg']}")
