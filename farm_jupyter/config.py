"""Layered settings: defaults < farm.toml / [tool.farm] < .env < .env.<environment> < the process
environment < explicit arguments.

Environment names are the ones users already have: OLLAMA_HOST, OPENAI_API_KEY, OPENAI_BASE_URL,
HF_TOKEN; ours are FARM_ENV, FARM_AI_PROVIDER, FARM_FALLBACK, FARM_CACHE, FARM_HF_MODEL. The seed
project's names work as aliases, and ours win where both are set (within one layer): AI_PROVIDER
(FARM_AI_PROVIDER), OLLAMA_URL (OLLAMA_HOST), AI_FALLBACK_PROVIDER (FARM_FALLBACK),
HUGGINGFACE_TOKEN (HF_TOKEN), AI_DEFAULT_MODEL (the default provider's model, unless its own
FARM_OLLAMA_MODEL / FARM_OPENAI_MODEL / FARM_HF_MODEL is set) and AI_RATE_LIMIT (requests per
minute for the default provider).

`.env` files are read with python-dotenv from the folder where the search for farm.toml starts
(the current directory, or `start`), never from its parents, and never copied into os.environ:
`.env`, then `.env.<environment>` over it, where the environment is FARM_ENV from the arguments,
else the process environment, else `.env`, else farm.toml's `env`, else `development`.

Secrets are pydantic SecretStr: they print as `sk-...f3a9` at most (see `mask`), and each one is
registered with farm_jupyter.secrets as the settings are built, so that errors and logs mask it
too. A user:password in OLLAMA_HOST or OPENAI_BASE_URL is moved out of the URL into the section's
`username` and `password`: providers send it as HTTP basic auth, and show the URL as
`http://user:***@host`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from . import secrets
from .errors import ConfigError

CONFIG_FILE = "farm.toml"


def mask(secret: str | SecretStr | None) -> str | None:
    """`sk-abc...f3a9` -> `sk-...f3a9`: enough to tell keys apart, never enough to use one."""
    if secret is None:
        return None
    return secrets.mask(secret.get_secret_value() if isinstance(secret, SecretStr) else secret)


_SECRET_NAMES = ("key", "token", "secret", "password")


def mask_url(url: str) -> str:
    """`redis://:pw@host:6379/0` -> `redis://***@host:6379/0`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`http://user:pw@host:1` -> (`http://host:1`, `user`, `pw`); unquoted, as basic auth wants."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    return parts._replace(netloc=hostport).geturl(), unquote(user) or None, unquote(password) if colon else None


def shown_url(url: str, username: str | None = None, password: str | SecretStr | None = None) -> str:
    """The URL to show: credentials in it, or given beside it, as `user:***@`."""
    url, user, pw = split_credentials(url)
    user = user or username
    if not (user or pw or password):
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=f"{quote(user or '', safe='')}:***@{parts.netloc}").geturl()


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
        raise BadValue(name, value, "is not a URL; use e.g. http://127.0.0.1:11434")
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadValue(name, value, "is not an http(s) URL; use e.g. http://127.0.0.1:11434")
    try:
        port = parts.port
    except ValueError as exc:
        raise BadValue(name, value, "has a bad port; use e.g. http://127.0.0.1:11434") from exc
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if host == "0.0.0.0":  # what `ollama serve` binds; clients must connect to loopback
        host = "127.0.0.1"
    netloc = f"{host}:{port or default_port}" if (port or default_port) else host
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:  # kept for the settings to move into username/password
        netloc = f"{userinfo}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


class BadValue(ValueError):
    """A value that is wrong whatever its origin; load_settings says where it came from."""

    def __init__(self, name: str, value: str, problem: str) -> None:
        self.value = mask_url(value) if "@" in value else value  # a password never goes in a message
        self.problem = problem
        super().__init__(f"{name}={self.value!r} {problem}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Credentials(_Section):
    """A user:password in the section's URL field moves into `username` and `password`."""

    username: str | None = None
    password: SecretStr | None = None
    _url_field: ClassVar[str] = ""

    @model_validator(mode="after")
    def _move_credentials(self) -> _Credentials:
        url = getattr(self, self._url_field)
        if url is not None:
            url, user, password = split_credentials(url)
            # Written past validation: assigning would validate again, and loop.
            self.__dict__[self._url_field] = url
            if user is not None:
                self.__dict__["username"] = user
            if password is not None:
                self.__dict__["password"] = SecretStr(password)
        if self.password is not None:
            secrets.register_basic(self.username, self.password.get_secret_value())
        return self


class OllamaSettings(_Credentials):
    host: str = "http://127.0.0.1:11434"
    hosts: list[str] = Field(default_factory=list)  # several servers: least busy first (router/pool.py)
    default_model: str = "llama3.1"
    keep_alive: str | None = None
    auto_pull: list[str] = Field(default_factory=list)
    _url_field: ClassVar[str] = "host"

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalize_url(value, default_port=11434, name="ollama.host")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        return [normalize_url(v, default_port=11434, name="ollama.hosts") for v in values]


class OpenAISettings(_Credentials):
    api_key: SecretStr | None = None
    base_url: str | None = None
    base_urls: list[str] = Field(default_factory=list)  # several OpenAI-compatible servers
    default_model: str = "gpt-4o-mini"
    organization: str | None = None
    _url_field: ClassVar[str] = "base_url"

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else normalize_url(value, name="openai.base_url")

    @model_validator(mode="after")
    def _register_key(self) -> OpenAISettings:
        if self.api_key is not None:
            secrets.register(self.api_key.get_secret_value())
        return self

    @field_validator("base_urls")
    @classmethod
    def _base_urls(cls, values: list[str]) -> list[str]:
        return [normalize_url(v, name="openai.base_urls") for v in values]


class HuggingFaceSettings(_Section):
    default_model: str | None = None
    token: SecretStr | None = None
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_new_tokens: int = Field(default=256, gt=0)
    stream_timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _register_token(self) -> HuggingFaceSettings:
        if self.token is not None:
            secrets.register(self.token.get_secret_value())
        return self


class CacheSettings(_Section):
    backend: Literal["memory", "disk", "redis", "none", "record", "replay"] = "memory"
    path: str | None = None  # disk: the cache file (default under ~/.cache/farm_jupyter); record/replay: the answers file
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    ttl: float | None = Field(default=None, gt=0)  # seconds; None keeps entries until evicted
    max_entries: int = Field(default=1024, gt=0)

    @model_validator(mode="after")
    def _register_password(self) -> CacheSettings:
        _register_url(self.redis_url)
        return self


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


class Price(_Section):
    """US dollars per million tokens; `as_of` says when a shipped price was read."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    as_of: str | None = None

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input + tokens_out * self.output) / 1e6


class BudgetSettings(_Section):
    usd: float | None = Field(default=None, gt=0)  # stop before the session's spend passes this


class Environment(_Section):
    provider: str
    fallback: list[str] = Field(default_factory=list)


def _default_environments() -> dict[str, Environment]:
    return {
        # No local model in the default chains: an answer from a model nobody chose is worse
        # than an error that says what to start.
        "development": Environment(provider="ollama", fallback=["openai"]),
        "production": Environment(provider="openai", fallback=["ollama"]),
        "test": Environment(provider="ollama", fallback=[]),
    }


class Settings(_Section):
    env: str = "development"
    provider: str | None = None  # overrides the environment's provider
    # Overrides the environment's chain; `false` turns fallback off: the model asked, or an error.
    fallback: list[str] | Literal[False] | None = None
    environments: dict[str, Environment] = Field(default_factory=_default_environments)
    prices: dict[str, Price] = Field(default_factory=dict)  # "provider:model" -> price
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
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

    @model_validator(mode="after")
    def _register_options(self) -> Settings:
        _register_options(self.providers)
        return self

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
        if self.fallback is False:
            rest = []
        elif self.fallback is not None:
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
        for name in ("ollama", "openai"):
            section = getattr(self, name)
            data[name]["password"] = "***" if section.password else None  # a password shows nothing
            field = section._url_field
            if data[name][field] is not None:
                data[name][field] = shown_url(data[name][field], section.username, section.password)
        data["cache"]["redis_url"] = mask_url(self.cache.redis_url)
        data["providers"] = _masked_options(self.providers)
        data["source"] = self.source
        return data

    def __repr_args__(self) -> Any:  # pydantic's repr: the public view, never a secret
        return list(self.public().items())


def _register_url(url: str) -> None:
    _, user, password = split_credentials(url)
    secrets.register_basic(user, password)


def _register_options(value: Any, name: str = "") -> None:
    """A custom provider's options: values named like a secret, and passwords in URLs."""
    if isinstance(value, dict):
        for key, item in value.items():
            _register_options(item, str(key))
    elif isinstance(value, (str, SecretStr)):
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if any(word in name.lower() for word in _SECRET_NAMES):
            secrets.register(text)
        elif "://" in text:
            _register_url(text)


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


def _origin(loc: tuple[Any, ...], layers: list[tuple[str, Mapping[str, str] | None, Mapping[str, Any]]]) -> tuple[str, str]:
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
    # (where, the variables it came from or None, the layer), lowest first
    layers: list[tuple[str, Mapping[str, str] | None, Mapping[str, Any]]] = []
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
        data = _merge(data, layer)
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


def _config_error(exc: ValidationError, layers: list[tuple[str, Mapping[str, str] | None, Mapping[str, Any]]]) -> ConfigError:
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
