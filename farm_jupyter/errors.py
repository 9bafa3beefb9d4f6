"""Every error farm_jupyter raises, in one tree.

    FarmError
    ├── ConfigError                 bad farm.toml, environment value or argument
    ├── UnknownProvider             no provider of that name is registered
    ├── MissingDependency           an optional extra is not installed
    ├── ProviderError               something went wrong talking to one provider
    │   ├── ProviderUnavailable     could not get an answer: refused, timed out, cut off   (retry, fall back)
    │   │   ├── ProviderTimeout
    │   │   └── StreamInterrupted   the stream broke after it started
    │   └── ProviderResponseError   the provider answered with an error
    │       ├── RateLimited         429                                                     (retry, fall back)
    │       ├── ServerError         5xx, or an error line in a stream                       (retry, fall back)
    │       ├── AuthenticationError bad or missing key                                      (fall back)
    │       ├── ModelNotFound       the model is not there                                  (fall back)
    │       └── BadRequest          the request itself is wrong                             (give up)
    └── AllProvidersFailed          every route was tried; `.attempts` says what happened

Foreign exceptions (httpx, openai, torch) are mapped at each provider's boundary, `from exc`.
Every message is one line that names the provider and says what to do next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import Attempt


class FarmError(Exception):
    """Root of the tree; `hint` is the "what to do" part, already in the message."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(f"{message}: {hint}" if hint else message)

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: a failed cell says one readable line."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(FarmError):
    pass


class UnknownProvider(FarmError):
    pass


class MissingDependency(FarmError):
    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed", hint=f'pip install "farm-jupyter[{extra}]"'
        )


class ProviderError(FarmError):
    retryable = False
    fallback = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        hint: str | None = None,
        status: int | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        super().__init__(message, hint=hint)


class ProviderUnavailable(ProviderError):
    retryable = True


class ProviderTimeout(ProviderUnavailable):
    pass


class StreamInterrupted(ProviderUnavailable):
    pass


class ProviderResponseError(ProviderError):
    pass


class RateLimited(ProviderResponseError):
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ServerError(ProviderResponseError):
    retryable = True


class AuthenticationError(ProviderResponseError):
    pass


class ModelNotFound(ProviderResponseError):
    pass


class BadRequest(ProviderResponseError):
    fallback = False


class AllProvidersFailed(FarmError):
    def __init__(self, attempts: list[Attempt], last: BaseException | None = None) -> None:
        self.attempts = attempts
        self.last = last
        if len(attempts) == 1 and last is not None:
            message = str(last)
        else:
            tried = "; ".join(f"{a.provider}:{a.model}: {a.error}" for a in attempts)
            message = f"every provider failed ({tried})"
        super().__init__(message)


class ReplayMiss(ProviderError):
    """`FARM_CACHE=replay:PATH` holds no answer for a request, and nothing else may answer it
    (a replayed notebook must not quietly ask a real model): never retried, never a fallback."""

    fallback = False
