"""The settings' sections as pydantic models, and `Settings`, which holds them.

Secrets are pydantic SecretStr: they print as `sk-...f3a9` at most (see `mask`), and each one is
registered with farm_jupyter.secrets as the settings are built, so that errors and logs mask it
too. A user:password in OLLAMA_HOST or OPENAI_BASE_URL is moved out of the URL into the section's
`username` and `password`: providers send it as HTTP basic auth, and show the URL as
`http://user:***@host`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .. import secrets
from ..errors import ConfigError
from .urls import mask, mask_url, normalize_url, shown_url, split_credentials


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Credentials(_Section):
    """A user:password in the section's URL field moves into `username` and `password`."""

    username: str | None = None
    password: SecretStr | None = None
    url_field: ClassVar[str] = ""
    urls_field: ClassVar[str] = ""

    @model_validator(mode="after")
    def _move_credentials(self) -> _Credentials:
        urls = getattr(self, self.urls_field)
        for each in urls:
            _register_url(each)
        if urls:  # one setting in two shapes: the list names the first server (all of it, if one)
            self.__dict__[self.url_field] = urls[0]
        url = getattr(self, self.url_field)
        if url is not None:
            url, user, password = split_credentials(url)
            # Written past validation: assigning would validate again, and loop.
            self.__dict__[self.url_field] = url
            if user is not None:
                self.__dict__["username"] = user
            if password is not None:
                self.__dict__["password"] = SecretStr(password)
        if self.password is not None:
            secrets.register_basic(self.username, self.password.get_secret_value())
        return self

    def endpoint(self, given: str | None, default: str = "") -> tuple[str, str | None, str | None]:
        """A provider's URL without credentials, and the basic-auth user and password to send: a URL
        `given` in the provider's options brings its own (registered as secrets here), the section's
        URL (else `default`) goes with the section's `username` and `password`."""
        url, user, password = split_credentials(given or getattr(self, self.url_field) or default)
        if not given:
            user = self.username
            password = self.password.get_secret_value() if self.password else None
        secrets.register_basic(user, password)
        return url, user, password


class OllamaSettings(_Credentials):
    host: str = "http://127.0.0.1:11434"
    hosts: list[str] = Field(default_factory=list)  # several servers: least busy first (router/pool.py)
    default_model: str = "llama3.1"
    keep_alive: str | None = None
    auto_pull: list[str] = Field(default_factory=list)
    allow_registries: bool = False  # over HTTP: may a model name pull from `host:port/...`?
    url_field: ClassVar[str] = "host"
    urls_field: ClassVar[str] = "hosts"

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
    url_field: ClassVar[str] = "base_url"
    urls_field: ClassVar[str] = "base_urls"

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
    models_dir: str | list[str] | None = None  # over HTTP, local models only from here (none by default)

    @model_validator(mode="after")
    def _register_token(self) -> HuggingFaceSettings:
        if self.token is not None:
            secrets.register(self.token.get_secret_value())
        return self


class CacheSettings(_Section):
    backend: Literal["memory", "disk", "redis", "none", "record", "replay"] = "memory"
    # disk: the cache file (default under ~/.cache/farm_jupyter); record/replay: the answers file
    path: str | None = None
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
    # A Batch API's prices (`farm.map(..., batch=True)`); unset: half the regular ones, "assumed".
    batch_input: float | None = Field(default=None, ge=0)
    batch_output: float | None = Field(default=None, ge=0)

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input + tokens_out * self.output) / 1e6


class BatchSettings(_Section):
    """`farm.map(..., batch=True)`: where job ids are kept (so a rerun resumes the job), how often
    the job is polled, and the completion window asked for."""

    dir: str | None = None  # default: ~/.cache/farm_jupyter/batches
    poll: float = Field(default=30.0, ge=0)
    window: str = "24h"


class BudgetSettings(_Section):
    usd: float | None = Field(default=None, gt=0)  # stop before the session's spend passes this


class CompletionSettings(_Section):
    """`[completion]`: inline completions in JupyterLab, served by the Jupyter server (never a kernel)."""

    model: str | None = None  # "provider:model"; the Lab's own setting wins; None: the default provider's
    # None: on when the model runs here or on a loopback server; cell text goes to a remote one only
    # with `enabled = true`, since it leaves the machine as you type.
    enabled: bool | None = None
    debounce_ms: int = Field(default=250, ge=0, le=5000)
    max_tokens: int = Field(default=64, gt=0, le=512)
    cells: int = Field(default=5, ge=0, le=50)  # cells above the cursor's that the model sees
    context_chars: int = Field(default=4000, ge=0, le=100_000)  # of those, the nearest characters
    rpm: int = Field(default=240, gt=0)  # completion requests per minute, apart from the chat limits
    cache_size: int = Field(default=256, ge=0, le=100_000)  # in memory only


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
    batch: BatchSettings = Field(default_factory=BatchSettings)
    aliases: dict[str, str] = Field(default_factory=dict)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    huggingface: HuggingFaceSettings = Field(default_factory=HuggingFaceSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)  # custom providers' options
    monitor_size: int = Field(default=10_000, gt=0)
    max_history: int = Field(default=50, gt=0)  # turns kept in a conversation
    source: str | None = Field(default=None, exclude=True)  # the config file, for %farm config

    @model_validator(mode="after")
    def _register_options(self) -> Settings:
        _register_options(self.providers)
        return self

    def default_model_of(self, kind: str) -> str | None:
        """A provider kind's configured default model (`[ollama] default_model`), if it has one."""
        return getattr(getattr(self, kind, None), "default_model", None)

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
            self.provider is None
            and self.fallback is None
            and self.env == "development"
            and self.environments.get(self.env) == _default_environments()[self.env]
            and not self.ollama.model_fields_set
            and self.openai.api_key is None
            and self.openai.base_url is None
            and self.huggingface.default_model is None
            and not self.providers
        )
        if not untouched:
            return None
        from ..embedded import installed_engine

        return installed_engine()  # with neither engine installed there is nothing to fall back on

    def public(self) -> dict[str, Any]:
        """A dict safe to show: secrets masked, wherever they sit."""
        data = self.model_dump(mode="python")
        data["openai"]["api_key"] = mask(self.openai.api_key)
        data["huggingface"]["token"] = mask(self.huggingface.token)
        for name in ("ollama", "openai"):
            section = getattr(self, name)
            data[name]["password"] = "***" if section.password else None  # a password shows nothing
            field = section.url_field
            if data[name][field] is not None:
                data[name][field] = shown_url(data[name][field], section.username, section.password)
            data[name][section.urls_field] = [shown_url(u) for u in data[name][section.urls_field]]
        data["cache"]["redis_url"] = mask_url(self.cache.redis_url)
        data["providers"] = _masked_options(self.providers)
        data["source"] = self.source
        return data

    def __repr_args__(self) -> Any:  # pydantic's repr: the public view, never a secret
        return list(self.public().items())


_SECRET_NAMES = ("key", "token", "secret", "password")


def _masked_options(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked_options(v, str(k)) for k, v in value.items()}
    if isinstance(value, (str, SecretStr)) and any(word in name.lower() for word in _SECRET_NAMES):
        return mask(value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


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
