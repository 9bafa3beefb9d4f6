"""What every farm_jupyter route shares: its settings, its errors, the body limit, the runtime bridge.

Every handler is a Jupyter `APIHandler` behind `@web.authenticated` and `@authorized`, so the
server's token or cookie is required (403 without) and a custom Authorizer sees the resource
`farm_jupyter`. The body is read in pieces (`stream_request_body`) and kept only up to the limit: a larger
one (by its `Content-Length`, or as it arrives when chunked) is drained unkept and answered 413,
never parsed.
The work runs on the farm runtime loop (its own thread) and the handlers await it from tornado's
loop; a client that goes away cancels that work, and so the provider's HTTP request, and the
handler returns once it has stopped.

Errors are JSON `ErrorBody`: 400 names the body field at fault, 413 says the limit, 502 carries the
provider's one-line message (and the attempts when every provider failed), 404 a missing model.
No request body makes a 500.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from http.client import responses
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from pydantic import BaseModel, ValidationError
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import (
    AllProvidersFailed,
    BadRequest,
    FarmError,
    MissingDependency,
    ModelNotFound,
    ProviderError,
    UnknownProvider,
    problems,
)
from .allow import NotAllowed
from .bounds import OutOfBounds, TooManyLoads
from .jobs import ServerState
from .schema import ErrorBody
from .traits import FarmServer

if TYPE_CHECKING:
    from ..sessions import Session

SETTINGS_KEY = "farm_jupyter"
AUTH_RESOURCE = "farm_jupyter"
NOT_AUTHENTICATED = (
    "not authenticated: send the Jupyter server's token (header `Authorization: token <token>`) or its login cookie"
)
CANCEL_GRACE = 5.0  # seconds a cancelled request gets to close its provider stream

T = TypeVar("T")


class ApiError(web.HTTPError):
    """An HTTP error whose JSON body is an ErrorBody."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        super().__init__(status, log_message=body.error)  # no args: tornado logs it unformatted
        self.body = body


def bad_request(field: str | None, message: str) -> ApiError:
    return ApiError(400, ErrorBody(error=f"{field}: {message}" if field else message, field=field))


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """400 naming the first field at fault (dotted, e.g. `params.temperature`)."""
    where, message, _, kind = problems(exc)[0]
    field = prefix + where or None
    if kind == "extra_forbidden":
        message = "not a generation option" if ".extra." in f".{field}" else "unknown field"
    return bad_request(field, message) if field else bad_request(None, f"invalid request body: {message}")


def farm_error(exc: FarmError, field: str | None) -> ApiError:
    """A missing model is 404 and a request the provider refused 400 (the caller's to fix, as in
    the kernel); other provider failures are 502; an unknown provider is 400; the rest ours."""
    kind = type(exc).__name__
    if isinstance(exc, AllProvidersFailed):
        return ApiError(502, ErrorBody(error=str(exc), type=kind, attempts=exc.attempts))
    if isinstance(exc, ModelNotFound):
        return ApiError(404, ErrorBody(error=str(exc), field=field, type=kind))
    if isinstance(exc, BadRequest):
        return ApiError(400, ErrorBody(error=str(exc), type=kind))
    if isinstance(exc, ProviderError):
        return ApiError(502, ErrorBody(error=str(exc), type=kind))
    if isinstance(exc, (UnknownProvider, MissingDependency)):  # the server lacks an extra: say which
        return ApiError(400, ErrorBody(error=str(exc), field=field, type=kind))
    return ApiError(500, ErrorBody(error=str(exc), type=kind))  # ConfigError and the like: fix the server


def _mapped(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """FarmError -> ApiError (with the handler's `field`); a client that went away ends quietly."""

    @functools.wraps(method)
    async def wrapper(self: FarmHandler, *args: Any, **kwargs: Any) -> None:
        if self._refused is not None:
            raise self._refused
        try:
            await method(self, *args, **kwargs)
        except FarmError as exc:
            raise farm_error(exc, self.field) from exc
        except OutOfBounds as exc:
            raise bad_request(exc.field, exc.message) from None
        except NotAllowed as exc:
            raise bad_request(self.field, str(exc)) from None
        except TooManyLoads:
            limit = self.limits.max_load_jobs
            error = f"{limit} loads are running already: wait for one to finish (GET its progress_url) and try again"
            raise ApiError(429, ErrorBody(error=error, field=self.field)) from None
        except asyncio.CancelledError:
            if not self._client_gone:  # not ours: the server is shutting down
                raise
            self.note_gone()
        except StreamClosedError:
            self._client_gone = True
            self.note_gone()

    return wrapper


def route(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Authenticated (403 without the server's token or cookie), authorized, errors mapped."""
    return cast("Callable[..., Awaitable[None]]", web.authenticated(authorized(_mapped(method))))


@web.stream_request_body
class FarmHandler(APIHandler):
    auth_resource = AUTH_RESOURCE
    path: ClassVar[str]  # the route table's path this handler serves
    field: str | None = "model"  # the input named by a 400 for an unknown provider

    def initialize(self) -> None:
        self._client_gone = False
        self._waiting: asyncio.Future[Any] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._refused: web.HTTPError | None = None

    @property
    def state(self) -> ServerState:
        state: ServerState = self.settings[SETTINGS_KEY]
        return state

    @property
    def limits(self) -> FarmServer:
        return self.state.limits

    @property
    def farm(self) -> Session:
        return self.state.session

    async def prepare(self) -> None:  # type: ignore[override]  # as APIHandler's own
        # Host, token, XSRF first; a refusal is answered once the body has been drained (read and
        # dropped, never kept): an answer before that makes the client's send fail with a reset,
        # and it never sees the answer.
        try:
            await super().prepare()
        except web.HTTPError as exc:
            self._refused = exc
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit():
            self._over_limit(int(length))

    def _over_limit(self, size: int) -> None:
        limit = self.limits.max_body_size
        if size > limit and self._refused is None:
            self._refused = ApiError(
                413,
                ErrorBody(
                    error=f"the request body is over the limit of {limit} bytes: send less "
                    "(the server's c.FarmServer.max_body_size sets it)",
                ),
            )

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._over_limit(self._size)  # a chunked body has no length to check first
        if self._refused is None:
            self._body.append(chunk)

    def parse(self, model: type[BaseModel]) -> Any:
        """The body as `model`, strictly typed (no "yes" -> True), counted as it is parsed."""
        try:
            return model.model_validate_json(
                b"".join(self._body), strict=True, context={"max_messages": self.limits.max_messages}
            )
        except ValidationError as exc:
            raise validation_error(exc) from None

    def reply(self, model: BaseModel, status: int = 200) -> None:
        self.set_status(status)
        self.finish(model.model_dump_json())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            body = exc.body
        elif status_code == 403 and not self.check_host():
            body = ErrorBody(
                error=(
                    f"host {self.request.host!r} is not allowed: use the server's own address, or let it answer "
                    "other names (c.ServerApp.local_hostnames or c.ServerApp.allow_remote_access)"
                )
            )
        elif status_code == 403 and not self._authenticated():
            body = ErrorBody(error=NOT_AUTHENTICATED)  # rather than Jupyter's "'_xsrf' argument missing"
        elif isinstance(exc, web.HTTPError):
            body = ErrorBody(error=exc.log_message or exc.reason or responses.get(status_code, "error"))
        else:
            body = ErrorBody(
                error="internal error in farm_jupyter: see the Jupyter server's log", type=type(exc).__name__
            )
        self.finish(body.model_dump_json())

    def _authenticated(self) -> bool:
        try:
            return bool(self.current_user)
        except Exception:  # noqa: BLE001 - failed before Jupyter's prepare() identified the user
            return False

    # A client that goes away cancels what it was waiting for.

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.cancel()

    async def until_gone(self, work: Awaitable[T]) -> T:
        """Await `work`; cancel it if the client disconnects (then CancelledError is raised here)."""
        task = asyncio.ensure_future(work)
        self._waiting = task
        if self._client_gone:
            task.cancel()
        try:
            return await task
        finally:
            self._waiting = None

    async def on_runtime(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` as a task on the farm runtime loop and await its outcome here.

        If this request is cancelled (the client went away), the task is cancelled there too and
        this waits (up to CANCEL_GRACE) until it has stopped, so the provider's HTTP request is
        closed by the time the handler returns. (`asyncio.wrap_future(runtime.submit(coro))`
        cannot tell when a cancelled task has actually finished.)
        """
        runtime_loop = self.farm.aio.runtime.loop
        here = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = here.create_future()
        tasks: list[asyncio.Task[T]] = []

        def settle(task: asyncio.Task[T]) -> None:  # on tornado's loop
            if outcome.done():
                return
            if task.cancelled():
                outcome.set_exception(FarmError("the request was cancelled on the farm runtime loop"))
            elif (exc := task.exception()) is not None:
                outcome.set_exception(exc)
            else:
                outcome.set_result(task.result())

        def start() -> None:  # on the runtime loop
            task = runtime_loop.create_task(coro)
            tasks.append(task)
            task.add_done_callback(lambda t: here.call_soon_threadsafe(settle, t))

        def cancel() -> None:  # on the runtime loop, always after start(): callbacks run in order
            tasks[0].cancel()

        runtime_loop.call_soon_threadsafe(start)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            runtime_loop.call_soon_threadsafe(cancel)
            await asyncio.wait([outcome], timeout=CANCEL_GRACE)
            if outcome.done():
                outcome.exception()  # retrieved: it is the cancellation we asked for
            raise

    def note_gone(self) -> None:
        self.log.info("farm_jupyter: %s went away; cancelled its request", self.request.remote_ip)
        self.set_status(499, reason="Client Closed Request")
