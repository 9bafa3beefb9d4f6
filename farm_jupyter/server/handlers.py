"""The routes of the farm_jupyter server extension, under `{base_url}farm-jupyter/api/`.

Every handler is a Jupyter `APIHandler` behind `@web.authenticated` and `@authorized`, so the
server's token or cookie is required (403 without) and a custom Authorizer sees the resource
`farm_jupyter`. The work runs on the farm runtime loop (its own thread) and the handlers await it
from tornado's loop: `session.runtime.submit(coro)` wrapped for asyncio for one answer,
`session.runtime.aiterate(...)` for a stream. A client that goes away cancels that work, and so
the provider's HTTP request, and the handler returns once it has stopped.

Errors are JSON `ErrorBody`: 400 names the body field that failed validation, 502 carries the
provider's one-line message (and the attempts when every provider failed).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from http.client import responses
from typing import TYPE_CHECKING, Any, TypeVar, cast

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_escape, url_path_join
from pydantic import BaseModel, ValidationError
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import AllProvidersFailed, FarmError, ProviderError, UnknownProvider
from ..schema import (
    API_PREFIX,
    ChatBody,
    ErrorBody,
    HealthResponse,
    LoadStarted,
    LoadState,
    LoadStatus,
    ModelsResponse,
    StatsResponse,
    StreamRestart,
    StreamStatus,
    StreamText,
    UnloadResponse,
)
from ..types import ChatResponse, Chunk, PullProgress

if TYPE_CHECKING:
    import concurrent.futures

    from ..session import Session

SETTINGS_KEY = "farm_jupyter"
AUTH_RESOURCE = "farm_jupyter"
SSE_TYPE = "text/event-stream; charset=utf-8"
NOT_AUTHENTICATED = (
    "not authenticated: send the Jupyter server's token (header `Authorization: token <token>`) or its login cookie"
)
CANCEL_GRACE = 5.0  # seconds a cancelled request gets to close its provider stream

T = TypeVar("T")


# -- process-wide state -----------------------------------------------------------------------


@dataclass
class LoadJob:
    """A background `load` on the runtime loop; written there, read by the handlers."""

    name: str
    address: str
    started_at: float
    state: LoadState = "running"
    progress: PullProgress | None = None
    error: str | None = None
    finished_at: float | None = None
    future: concurrent.futures.Future[None] | None = None

    def status(self) -> LoadStatus:
        return LoadStatus(
            model=self.name, address=self.address, state=self.state, progress=self.progress,
            error=self.error, started_at=self.started_at, finished_at=self.finished_at,
        )


class ServerState:
    """What the extension keeps for the life of the server: the Session, load jobs, a gauge."""

    def __init__(self, session: Session | None = None) -> None:
        self._session = session
        self.jobs: dict[str, LoadJob] = {}
        self.in_flight = 0

    @property
    def session(self) -> Session:
        """The given Session, else the process's (`farm_jupyter.session()`: farm.toml + environment)."""
        if self._session is not None:
            return self._session
        from ..session import session

        return session()

    @contextmanager
    def answering(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


# -- errors -----------------------------------------------------------------------------------


class ApiError(web.HTTPError):
    """An HTTP error whose JSON body is an ErrorBody."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        super().__init__(status, log_message=body.error)  # no args: tornado logs it unformatted
        self.body = body


def validation_error(exc: ValidationError) -> ApiError:
    """400 naming the first field at fault (dotted, e.g. `params.temperature`)."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    error = f"{field}: {message}" if field else f"invalid request body: {message}"
    return ApiError(400, ErrorBody(error=error, field=field))


def farm_error(exc: FarmError, field: str | None) -> ApiError:
    """Provider failures are 502; an unknown provider is the caller's 400; the rest are ours."""
    kind = type(exc).__name__
    if isinstance(exc, AllProvidersFailed):
        return ApiError(502, ErrorBody(error=str(exc), type=kind, attempts=exc.attempts))
    if isinstance(exc, ProviderError):
        return ApiError(502, ErrorBody(error=str(exc), type=kind))
    if isinstance(exc, UnknownProvider):
        return ApiError(400, ErrorBody(error=str(exc), field=field, type=kind))
    return ApiError(500, ErrorBody(error=str(exc), type=kind))  # ConfigError and the like: fix the server


def _mapped(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """FarmError -> ApiError (with the handler's `field` for an unknown provider); a client that
    went away ends the request quietly."""

    @functools.wraps(method)
    async def wrapper(self: FarmHandler, *args: Any, **kwargs: Any) -> None:
        try:
            await method(self, *args, **kwargs)
        except FarmError as exc:
            raise farm_error(exc, self.field) from exc
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


# -- handlers ---------------------------------------------------------------------------------


class FarmHandler(APIHandler):
    auth_resource = AUTH_RESOURCE
    field: str | None = "model"  # the input named by a 400 for an unknown provider

    def initialize(self) -> None:
        self._client_gone = False
        self._waiting: asyncio.Future[Any] | None = None

    @property
    def state(self) -> ServerState:
        state: ServerState = self.settings[SETTINGS_KEY]
        return state

    @property
    def farm(self) -> Session:
        return self.state.session

    def parse(self, model: type[BaseModel]) -> Any:
        try:
            return model.model_validate_json(self.request.body or b"")
        except ValidationError as exc:
            raise validation_error(exc) from None

    def _source(self, body: ChatBody) -> AsyncIterator[Chunk]:
        """The router's stream for a chat body (both chat routes ask the same way)."""
        return self.farm.router.astream(
            body.to_messages(), body.model, body.params,
            no_cache=body.no_cache, refresh=body.refresh, fallback=body.fallback,
        )

    def reply(self, model: BaseModel, status: int = 200) -> None:
        self.set_status(status)
        self.finish(model.model_dump_json())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            body = exc.body
        elif status_code == 403 and not self._authenticated():
            body = ErrorBody(error=NOT_AUTHENTICATED)  # rather than Jupyter's "'_xsrf' argument missing"
        elif isinstance(exc, web.HTTPError):
            body = ErrorBody(error=exc.log_message or exc.reason or responses.get(status_code, "error"))
        else:
            body = ErrorBody(error="internal error in farm_jupyter: see the Jupyter server's log", type=type(exc).__name__)
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
        runtime_loop = self.farm.runtime.loop
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


async def _answer(chunks: AsyncIterator[Chunk]) -> ChatResponse:
    async with aclosing(chunks) as it:  # type: ignore[type-var]
        async for chunk in it:
            if chunk.response is not None:
                return chunk.response
    raise FarmError("the router ended without an answer")


class ChatHandler(FarmHandler):
    @route
    async def post(self) -> None:
        source = self._source(self.parse(ChatBody))
        with self.state.answering():
            response = await self.until_gone(self.on_runtime(_answer(source)))
        self.reply(response)


def _event(data: str, name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {data}\n\n"


class ChatStreamHandler(FarmHandler):
    """Server-sent events: `data: {"text": ...}` per chunk, `{"restart": true}`, `{"status": ...}`,
    then `event: done` with the ChatResponse, then `data: [DONE]`.

    The headers wait for the answer to begin, so a failure before any text is a plain 502 JSON
    response; after that it is an `event: error` with an ErrorBody, then `data: [DONE]`.
    """

    @route
    async def post(self) -> None:
        source = self._source(self.parse(ChatBody))
        with self.state.answering():
            await self.until_gone(self._relay(self.farm.runtime.aiterate(source)))

    async def _relay(self, chunks: AsyncIterator[Chunk]) -> None:
        held: list[str] = []  # status notes that came before the answer began
        started = False
        async with aclosing(chunks) as it:  # type: ignore[type-var]
            try:
                async for chunk in it:
                    events = []
                    if chunk.restart:
                        events.append(_event(StreamRestart().model_dump_json()))
                    if chunk.status:
                        events.append(_event(StreamStatus(status=chunk.status).model_dump_json()))
                    if chunk.text:
                        events.append(_event(StreamText(text=chunk.text).model_dump_json()))
                    if chunk.response is not None:
                        events.append(_event(chunk.response.model_dump_json(), "done"))
                        events.append(_event("[DONE]"))
                    if not started and not (chunk.text or chunk.restart or chunk.done):
                        held += events
                        continue
                    if not started:
                        started = True
                        self.set_header("Content-Type", SSE_TYPE)
                        self.set_header("Cache-Control", "no-cache")
                        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
                        events = held + events
                    self.write("".join(events))
                    await self.flush()
            except FarmError as exc:
                if not started:
                    raise
                self.log.warning("farm_jupyter: stream failed after it began: %s", exc)
                error = farm_error(exc, self.field).body
                self.write(_event(error.model_dump_json(), "error") + _event("[DONE]"))
        self.finish(set_content_type=SSE_TYPE)


class ModelsHandler(FarmHandler):
    field = "provider"

    @route
    async def get(self) -> None:
        provider = self.get_argument("provider", None) or None
        models = await self.until_gone(self.on_runtime(self.farm.list_models(provider)))
        self.reply(ModelsResponse(models=models))


class HealthHandler(FarmHandler):
    field = "provider"

    @route
    async def get(self) -> None:
        providers = [p for p in self.get_arguments("provider") if p] or None
        statuses = await self.until_gone(self.on_runtime(self.farm.router.health(providers)))
        self.reply(HealthResponse(providers=statuses))


class LoadHandler(FarmHandler):
    field = "name"

    def _address(self, name: str) -> tuple[str, str]:
        route_ = self.farm.router.resolve(name, fallback=False)[0]
        return route_.provider, route_.model

    def progress_url(self, name: str) -> str:
        return url_path_join(self.base_url, API_PREFIX, "models", url_escape(name), "load")

    @route
    async def post(self, name: str) -> None:
        session = self.farm
        provider_name, model = self._address(name)
        address = f"{provider_name}:{model}"
        job = self.state.jobs.get(address)
        if job is None or job.state != "running":
            provider = session.router.provider(provider_name)
            job = LoadJob(name=name, address=address, started_at=time.time())

            async def run(job: LoadJob = job) -> None:
                try:
                    async for progress in provider.load_model(model):
                        job.progress = progress
                except asyncio.CancelledError:
                    job.error, job.finished_at, job.state = "cancelled", time.time(), "error"
                    raise
                except Exception as exc:  # noqa: BLE001 - reported through GET, not raised
                    job.error, job.finished_at, job.state = str(exc) or type(exc).__name__, time.time(), "error"
                else:
                    job.finished_at, job.state = time.time(), "done"

            self.state.jobs[address] = job
            job.future = session.runtime.submit(run())
        started = LoadStarted(**job.status().model_dump(), progress_url=self.progress_url(name))
        self.set_header("Location", started.progress_url)
        self.reply(started, status=202)

    @route
    async def get(self, name: str) -> None:
        provider_name, model = self._address(name)
        job = self.state.jobs.get(f"{provider_name}:{model}")
        if job is None:
            raise ApiError(404, ErrorBody(
                error=f"no load of {name!r} was started here: POST to this URL to start one", field="name",
            ))
        self.reply(job.status())


class UnloadHandler(FarmHandler):
    field = "name"

    @route
    async def post(self, name: str) -> None:
        session = self.farm
        target = session.router.resolve(name, fallback=False)[0]
        provider = session.router.provider(target.provider)
        await self.until_gone(self.on_runtime(provider.unload_model(target.model)))
        self.reply(UnloadResponse(model=name, address=str(target), unloaded=True))


class StatsHandler(FarmHandler):
    @route
    async def get(self) -> None:
        session = self.farm
        self.reply(StatsResponse(
            models=session.monitor.summary(), in_flight=self.state.in_flight, cache=session.cache.name,
        ))


class GPUHandler(FarmHandler):
    @route
    async def get(self) -> None:
        # NVML calls (and torch's import, the first time) block: keep them off tornado's loop.
        stats = await asyncio.to_thread(self.farm.gpu)
        self.reply(stats)


HANDLERS: list[tuple[str, type[FarmHandler]]] = [
    ("chat", ChatHandler),
    ("chat/stream", ChatStreamHandler),
    ("models", ModelsHandler),
    ("models/(?P<name>.+)/load", LoadHandler),
    ("models/(?P<name>.+)/unload", UnloadHandler),
    ("health", HealthHandler),
    ("stats", StatsHandler),
    ("gpu", GPUHandler),
]


def setup_handlers(web_app: Any, session: Session | None = None) -> str:
    """Add the routes to a Jupyter server's tornado application; returns their URL prefix."""
    base_url = web_app.settings.get("base_url", "/")
    prefix = url_path_join(base_url, API_PREFIX)
    web_app.settings[SETTINGS_KEY] = ServerState(session)
    web_app.add_handlers(".*$", [(url_path_join(prefix, pattern), handler) for pattern, handler in HANDLERS])
    return prefix
