"""Every error farm_jupyter raises, in one tree.

    FarmError
    ├── ConfigError                 bad farm.toml, environment value or argument
    ├── UnknownProvider             no provider of that name is registered
    ├── MissingDependency           an optional extra is not installed
    ├── ProviderError               something went wrong talking to one provider
    │   ├── ProviderUnavailable     could not get an answer: refused, timed out, cut off   availability
    │   │   ├── ProviderTimeout
    │   │   ├── StreamInterrupted   the stream broke after it started
    │   │   ├── CoolingDown         its circuit breaker is open
    │   │   └── WrongServer         something else answers at its URL (an HTML 404): not retried
    │   ├── NotConfigured           no key / URL set: skipped as a fallback, raised when asked
    │   ├── ReplayMiss              a replay's recording lacks the request: never asked   availability*
    │   └── ProviderResponseError   the provider answered with an error
    │       ├── RateLimited         429                                                     availability
    │       ├── ServerError         5xx, or an error line in a stream                       availability
    │       ├── AuthenticationError bad or missing key                                      the caller's
    │       ├── ModelNotFound       the model is not there                                  the caller's
    │       └── BadRequest          the request itself is wrong (400/422, content filter)   the caller's
    │           └── Unsupported     a feature its provider (or model) cannot do, said before  the caller's
    │                               anything is sent; a fallback that cannot is skipped
    ├── AllProvidersFailed          every route was tried; `.attempts` says what happened
    ├── BudgetExceeded (ledger.py)  a request could take the spend past [budget] usd
    └── SchemaMismatch (structured.py) no answer matched the schema after the re-asks

(*) the next route is looked up in the recording too, never asked.

The class decides what the router does, as data (`availability`): an availability failure is
retried (if `retryable`), counted by the provider's circuit breaker and falls back to the next
provider, announced; the caller's own error does none of these: it is raised at once, one line.
`kind` names the failure for people (`%farm stats`, the health board, fallback notices).

Foreign exceptions (httpx, openai, torch) are mapped at each provider's boundary, `from exc`.
Every message is one line that names the provider and says what to do next, with every configured
secret masked (farm_jupyter.secrets).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from .secrets import redact, scrub_exception

if TYPE_CHECKING:
    from pydantic import ValidationError

    from .types import Attempt


class FarmError(Exception):
    """Root of the tree; `hint` is the "what to do" part, already in the message."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # A message may quote what a server echoed: a configured secret never survives into it,
        # nor into the exception being handled, which becomes this one's __cause__/__context__.
        message, hint = redact(message), (redact(hint) if hint else hint)
        scrub_exception(sys.exc_info()[1])
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
        super().__init__(f"{package} is not installed", hint=f'pip install "farm-jupyter[{extra}]"')


class ProviderError(FarmError):
    """A failure at one provider; its class says what the router does (keywords of each subclass)."""

    availability: ClassVar[bool] = False  # True: retry, count against the breaker, fall back
    retryable: ClassVar[bool] = False
    kind: ClassVar[str] = "error"
    # What a fallback notice says happened to this provider: "ollama <did>: answered by ...".
    did: ClassVar[str] = "failed"

    def __init_subclass__(cls, *, kind: str | None = None, did: str | None = None, **policy: bool) -> None:
        super().__init_subclass__()
        cls.kind, cls.did = kind or cls.kind, did or cls.did
        if "availability" in policy:  # the provider's trouble is worth retrying, unless said otherwise
            cls.availability = cls.retryable = policy.pop("availability")
        cls.retryable = policy.pop("retryable", cls.retryable)
        if policy:
            raise TypeError(f"{cls.__name__}: unknown failure policy {', '.join(policy)}")

    def __init__(self, message: str, *, provider: str, hint: str | None = None, status: int | None = None) -> None:
        self.provider = provider
        self.status = status
        self.said = f"{provider} {self.did}"  # in a fallback notice: "ollama was not reachable"
        super().__init__(message, hint=hint)


# The tree of the module's docstring, in code: where each failure goes and what its notice says.
class ProviderUnavailable(ProviderError, availability=True, kind="unreachable", did="was not reachable"): ...


class ProviderTimeout(ProviderUnavailable, kind="timeout", did="timed out"): ...


class StreamInterrupted(ProviderUnavailable, kind="cut mid-answer", did="cut the answer"): ...


class CoolingDown(
    ProviderUnavailable, retryable=False, kind="cooling down", did="is cooling down after repeated failures"
): ...


class WrongServer(
    ProviderUnavailable, retryable=False, kind="not that server", did="found another kind of server at its URL"
):
    """`not an Ollama server at URL`: the URL is wrong or taken by something else; asking again
    gets the same page, so it is not retried, but the next provider may answer."""


class NotConfigured(ProviderError, kind="not configured", did="is not configured"): ...


class ProviderResponseError(ProviderError): ...


class RateLimited(ProviderResponseError, availability=True, kind="rate limited", did="is rate limited"):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ServerError(ProviderResponseError, availability=True, kind="server error"):
    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        # What the notice says: the status and the server's own words, not just "failed".
        first = redact(message).splitlines()[0] if message.strip() else ""
        words = re.sub(r"^.+? at \S+ (?=answered |failed)", "", first)
        words = words if words.startswith(("answered ", "failed")) else f"failed: {first}"
        self.said = f"{self.provider} {words[:160] + '...' if len(words) > 160 else words}"


class AuthenticationError(ProviderResponseError, kind="auth", did="refused the key"): ...


class ModelNotFound(ProviderResponseError, kind="model not found", did="has no such model"): ...


class BadRequest(ProviderResponseError, kind="bad request", did="refused the request"): ...


class Unsupported(BadRequest, kind="unsupported"):
    """`llamacpp cannot do think here: use ollama or openai, or drop think=`: raised by the router
    before anything is sent (farm_jupyter.types.capabilities); its notice names the feature."""

    def __init__(self, message: str, *, feature: str, provider: str, hint: str | None = None) -> None:
        self.feature = feature
        vars(self)["did"] = f"cannot do {feature}"  # per refusal: what a fallback notice says of it
        super().__init__(message, provider=provider, hint=hint)


class AllProvidersFailed(FarmError):
    """No route could answer; the message names each provider and why, in one line."""

    def __init__(self, attempts: list[Attempt], last: BaseException | None = None) -> None:
        self.attempts = attempts
        self.last = last
        if len(attempts) == 1 and last is not None:
            message = str(last)
        else:
            # A provider retried shows once, with its last error.
            last_of = {a.provider: a for a in attempts if not a.ok}
            tried = "; ".join(f"{a.provider}:{a.model}: {a.error}" for a in last_of.values())
            message = f"no provider could answer ({tried})"
        super().__init__(message)


class ReplayMiss(ProviderError, availability=True, retryable=False, kind="not recorded", did="has no recorded answer"):
    """`FARM_CACHE=replay:PATH` holds no answer for a request, and nothing else may answer it
    (a replayed notebook must not quietly ask a real model). The router raises it instead of
    asking the provider; the next route is looked up in the recording too (a recorded fallback
    replays), never asked; when no route is recorded, the first route's miss is the error."""


class Problem(NamedTuple):
    place: str  # dotted: `params.temperature`; empty for the value as a whole
    why: str
    value: Any
    type: str


def problems(exc: ValidationError, most: int = 3) -> list[Problem]:
    """pydantic says each problem in several lines: here each is its place, why and the value, to
    be said in one line with what to do."""
    return [
        Problem(".".join(map(str, e["loc"])), str(e["msg"]).removeprefix("Value error, "), e.get("input"), e["type"])
        for e in exc.errors(include_url=False)[:most]
    ]
