"""Layered settings: defaults < farm.toml / [tool.farm] < environment < explicit arguments.

Environment names are the ones users already have: OLLAMA_HOST, OPENAI_API_KEY, OPENAI_BASE_URL,
HF_TOKEN; ours are FARM_ENV, FARM_AI_PROVIDER, FARM_FALLBACK, FARM_CACHE, FARM_HF_MODEL.
Secrets are pydantic SecretStr: they print as `sk-...f3a9` at most (see `mask`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError

CONFIG_FILE = "farm.toml"


def mask(secret: str | SecretStr | None) -> str | None:
    """`sk-abc...f3a9` -> `sk-...f3a9`: enough to tell keys apart, never enough to use one."""
    if secret is None:
        return None
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if len(value) < 12:
        return "***"
    prefix = value.split("-", 1)[0] + "-" if "-" in value[:8] else ""
    return f"{prefix}...{value[-4:]}"


_SECRET_NAMES = ("key", "token", "secret", "password")


def mask_url(url: str) -> str:
    """`redis://:pw@host:6379/0` -> `redis://***@host:6379/0`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def _masked_options(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked_options(v, str(k)) for k, v in value.items()}
    if isinstance(value, (str, SecretStr)) and any(word in name.lower() for word in _SECRET_NAMES):
        return mask(value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def normalize_url(value: str, *, default_port: int | None = None, name: str = "URL") -> str:
    """Accept `host`, `host:port` or a full URL (OLLAMA_HOST allows all three)."""
    raw = value.strip()
    if not raw or any(c.isspace() for c in raw):
        raise ValueError(f"{name}={value!r} is not a URL; use e.g. http://127.0.0.1:11434")
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name}={value!r} is not an http(s) URL; use e.g. http://127.0.0.1:11434")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{name}={value!r} has a bad port") from exc
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if host == "0.0.0.0":  # what `ollama serve` binds; clients must connect to loopback
        host = "127.0.0.1"
    netloc = f"{host}:{port or default_port}" if (port or default_port) else host
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OllamaSettings(_Section):
    host: str = "http://127.0.0.1:11434"
    default_model: str = "llama3.1"
    keep_alive: str | None = None
    auto_pull: list[str] = Field(default_factory=list)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalize_url(value, default_port=11434, name="OLLAMA_HOST")


class OpenAISettings(_Section):
    api_key: SecretStr | None = None
    base_url: str | None = None
    default_model: str = "gpt-4o-mini"
    organization: str | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else normalize_url(value, name="OPENAI_BASE_URL")


class HuggingFaceSettings(_Section):
    default_model: str | None = None
    token: SecretStr | None = None
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_new_tokens: int = Field(default=256, gt=0)
    stream_timeout: float = Field(default=60.0, gt=0)


class CacheSettings(_Section):
    backend: Literal["memory", "disk", "redis", "none", "record", "replay"] = "memory"
    path: str | None = None  # disk: the cache file (default under ~/.cache/farm_jupyter); record/replay: the answers file
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl: float | None = Field(default=None, gt=0)  # seconds; None keeps entries until evicted
    max_entries: int = Field(default=1024, gt=0)


class RetrySettings(_Section):
    max_retries: int = Field(default=2, ge=0)
    backoff: float = Field(default=0.25, ge=0)  # first wait; doubles each retry, with jitter
    backoff_max: float = Field(default=8.0, ge=0)
    max_retry_after: float = Field(default=30.0, ge=0)  # a longer Retry-After falls back instead


class BreakerSettings(_Section):
    failures: int = Field(default=3, gt=0)  # consecutive failures that open the circuit
    cooldown: float = Field(default=30.0, ge=0)


class TimeoutSettings(_Section):
    connect: float = Field(default=5.0, gt=0)
    first_token: float = Field(default=120.0, gt=0)
    total: float = Field(default=600.0, gt=0)


class RateLimit(_Section):
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)


class Environment(_Section):
    provider: str
    fallback: list[str] = Field(default_factory=list)


def _default_environments() -> dict[str, Environment]:
    return {
        "development": Environment(provider="ollama", fallback=["openai", "huggingface"]),
        "production": Environment(provider="openai", fallback=["ollama"]),
        "test": Environment(provider="ollama", fallback=[]),
    }


class Settings(_Section):
    env: str = "development"
    provider: str | None = None  # overrides the environment's provider
    fallback: list[str] | None = None  # overrides the environment's chain
    environments: dict[str, Environment] = Field(default_factory=_default_environments)
    aliases: dict[str, str] = Field(default_factory=dict)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    huggingface: HuggingFaceSettings = Field(default_factory=HuggingFaceSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)  # custom providers' options
    monitor_size: int = Field(default=10_000, gt=0)
    max_history: int = Field(default=50, gt=0)  # turns kept in a conversation
    source: str | None = Field(default=None, exclude=True)  # the config file, for %farm config

    @property
    def default_provider(self) -> str:
        if self.provider:
            return self.provider
        env = self.environments.get(self.env)
        if env is None:
            known = ", ".join(sorted(self.environments))
            raise ConfigError(f"FARM_ENV={self.env!r} is not a configured environment ({known})")
        return env.provider

    @property
    def chain(self) -> list[str]:
        """The default provider followed by its fallbacks, without repeats."""
        if self.fallback is not None:
            rest = self.fallback
        else:
            env = self.environments.get(self.env)
            rest = env.fallback if env else []
        chain = [self.default_provider]
        chain += [p for p in rest if p not in chain]
        if (last := self.embedded_fallback) is not None and last not in chain:
            chain.append(last)
        return chain

    @property
    def embedded_fallback(self) -> str | None:
        """The engine of the embedded model (`farm_jupyter.embedded`) as the chain's last resort,
        only while nothing at all is configured: a fresh machine still answers, and the fallback
        onto it is announced like any other. None as soon as the user has set up a provider."""
        untouched = (
            self.provider is None and self.fallback is None
            and self.env == "development" and self.environments.get(self.env) == _default_environments()[self.env]
            and not self.ollama.model_fields_set and self.openai.api_key is None and self.openai.base_url is None
            and self.huggingface.default_model is None and not self.providers
        )
        if not untouched:
            return None
        from .embedded import installed_engine

        return installed_engine()  # with neither engine installed there is nothing to fall back on

    def public(self) -> dict[str, Any]:
        """A dict safe to show: secrets masked, wherever they sit."""
        data = self.model_dump(mode="python")
        data["openai"]["api_key"] = mask(self.openai.api_key)
        data["huggingface"]["token"] = mask(self.huggingface.token)
        data["cache"]["redis_url"] = mask_url(self.cache.redis_url)
        data["providers"] = _masked_options(self.providers)
        data["source"] = self.source
        return data

    def __repr_args__(self) -> Any:  # pydantic's repr: the public view, never a secret
        return list(self.public().items())


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
    for name, path in simple.items():
        value = environ.get(name, "").strip()
        if value:
            put(path, value)
    if "FARM_FALLBACK" in environ:
        put("fallback", comma_list(environ["FARM_FALLBACK"]))
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
    data: dict[str, Any] = {}
    source = None
    if use_file and (found := find_config_file(start)):
        source, table = found
        data = _merge(data, table)
    data = _merge(data, _from_environ(os.environ if environ is None else environ))
    if overrides:
        data = _merge(data, overrides)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        origin = f" (from {source})" if source else ""
        raise ConfigError(f"invalid setting {where}{origin}: {err['msg']}") from None
    if settings.env not in settings.environments:
        known = ", ".join(sorted(settings.environments))
        raise ConfigError(
            f"FARM_ENV={settings.env!r} is not a configured environment ({known})",
            hint="use one of those, or add an [environments.NAME] table to farm.toml",
        )
    settings.source = str(source) if source else None
    return settings
