"""The routes of the farm_jupyter server extension, under `{base_url}farm-jupyter/api/`.

Each handler names the path it serves; the URL table is built from `schema.ROUTES` (the same
table as the JSON Schema and the TypeScript client) and `url_specs` refuses to start when the two
disagree. Handlers ask the Session only, through its async face (`farm.aio.stream`, `farm.aio.health`, ...).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from jupyter_server.utils import url_escape, url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import ConfigError, FarmError
from ..sessions.names import canonical_provider, check_provider
from ..types import ChatResponse, Chunk
from . import bounds, schema
from .allow import Admitted, same_model
from .completion import CompleteHandler
from .handling import SETTINGS_KEY, ApiError, FarmHandler, bad_request, farm_error, route
from .jobs import LoadJob, ServerState
from .traits import FarmServer

SSE_TYPE = "text/event-stream; charset=utf-8"


class ChatHandler(FarmHandler):
    path = "chat"

    def body(self) -> schema.ChatBody:
        """The parsed body, within the limits (`bounds`), its first provider's options checked."""
        body: schema.ChatBody = self.parse(schema.ChatBody)
        messages = body.to_messages()
        limits = self.limits
        if len(messages) > limits.max_messages:
            raise bad_request(
                "messages", f"{len(messages)} messages, over the limit of {limits.max_messages}: send fewer"
            )
        bounds.check_text(bounds.text_sizes(body.system, body.prompt, body.messages), limits.max_prompt_chars)
        bounds.check_params(body.params)
        self.farm.aio.resolve(body.model, strict=True)  # an unknown `x:` prefix is 400 before anyone is asked
        try:
            self.farm.aio.resolve(body.model, params=body.params)
        except ConfigError as exc:
            raise bad_request("params.extra", str(exc)) from None
        return body

    async def admit(self, body: schema.ChatBody) -> Admitted:
        """The model as this server offers it (`allow`), or the one refusal; max_tokens within its window."""
        allow = self.state.allow
        # Settled here where no listing must be read: a hop to the runtime loop and back costs
        # more than the check itself (benchmarks/server_load.py).
        model = allow.known(self.farm, body.model)
        if model is None:
            model = await self.until_gone(self.on_runtime(allow.admit(self.farm, body.model)))
        bounds.check_params(body.params, model.window)
        return model

    def load(self, model: Admitted) -> LoadJob | None:
        """A local model's load job (started now unless it ran already): counted against
        `max_load_jobs` like the load route's, and shared with any other request for it."""
        return self.state.start(self.farm, model.address, model, again=False) if model.local else None

    async def loaded(self, job: LoadJob | None) -> None:
        if job is None:
            return
        if job.future is not None and not job.future.done():
            # Shielded: another request may be waiting for the same load.
            await self.until_gone(asyncio.shield(asyncio.wrap_future(job.future)))
        if job.failure is not None:
            raise job.failure

    def source(self, body: schema.ChatBody, model: Admitted) -> AsyncIterator[Chunk]:
        """Tokens as they come (deadlines per token, not per answer), iterated from any loop."""
        return aiter(
            self.farm.aio.stream(
                body.to_messages(),
                model.address,
                params=body.params,
                no_cache=body.no_cache,
                refresh=body.refresh,
                fallback=body.fallback,
            )
        )

    @route
    async def post(self) -> None:
        body = self.body()
        with self.state.answering():
            model = await self.admit(body)
            await self.loaded(self.load(model))
            source = self.source(body, model)  # tokens as they come: deadlines per token
            response = await self.until_gone(self.on_runtime(_answer(source)))
        self.reply(response)


async def _answer(chunks: AsyncIterator[Chunk]) -> ChatResponse:
    async with aclosing(chunks) as it:  # type: ignore[type-var]
        async for chunk in it:
            if chunk.response is not None:
                return chunk.response
    raise FarmError("the router ended without an answer")


def _event(data: str, name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {data}\n\n"


class ChatStreamHandler(ChatHandler):
    """Server-sent events: at once the headers and a `{"status": ...}` line, then `data:
    {"text": ...}` per chunk, `{"restart": true}`, a `{"status": ...}` for each retry, wait, load
    and fallback, a `: keep-alive` comment while nothing else is said for `heartbeat` seconds,
    then `event: done` with the ChatResponse, then `data: [DONE]`.

    What is refused before anything is asked (the body, the model) is a plain 4xx JSON answer;
    a failure after the headers is an `event: error` with an ErrorBody, then `data: [DONE]`.
    """

    path = "chat/stream"

    def initialize(self) -> None:
        super().initialize()
        self._said = time.monotonic()

    @route
    async def post(self) -> None:
        body = self.body()
        with self.state.answering():
            model = await self.admit(body)
            job = self.load(model)  # before the headers: too many loads is a plain 429
            self.set_header("Content-Type", SSE_TYPE)
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
            beat = asyncio.ensure_future(self._heartbeat())
            try:
                await self.say(_status(f"asking {model.address}"))
                await self.until_gone(self._answer(body, model, job))
            finally:
                beat.cancel()
        self.finish()

    async def say(self, text: str) -> None:
        self._said = time.monotonic()
        self.write(text)
        await self.flush()

    async def _heartbeat(self) -> None:
        interval = self.limits.heartbeat
        try:
            while True:
                await asyncio.sleep(max(0.0, self._said + interval - time.monotonic()))
                if time.monotonic() - self._said >= interval:
                    await self.say(": keep-alive\n\n")
        except StreamClosedError:
            pass  # the client left: the request's own cancellation follows

    async def _answer(self, body: schema.ChatBody, model: Admitted, job: LoadJob | None) -> None:
        try:
            if job is not None and job.state == "running":
                await self.say(_status(f"loading {model.address}"))
            await self.loaded(job)
            source = self.source(body, model)
            async with aclosing(source) as it:  # type: ignore[type-var]
                async for chunk in it:
                    await self.say(_events(chunk))
        except FarmError as exc:
            self.log.warning("farm_jupyter: stream failed: %s", exc)
            error = farm_error(exc, self.field).body
            await self.say(_event(error.model_dump_json(), "error") + _event("[DONE]"))


def _status(text: str) -> str:
    return _event(schema.StreamStatus(status=text).model_dump_json())


def _events(chunk: Chunk) -> str:
    events = []
    if chunk.restart:
        events.append(_event(schema.StreamRestart().model_dump_json()))
    for note in (chunk.status, chunk.notice):
        if note:
            events.append(_status(note))
    if chunk.text:
        events.append(_event(schema.StreamText(text=chunk.text).model_dump_json()))
    if chunk.response is not None:
        events.append(_event(chunk.response.model_dump_json(), "done"))
        events.append(_event("[DONE]"))
    return "".join(events)


class ModelsHandler(FarmHandler):
    path = "models"
    field = "provider"

    @route
    async def get(self) -> None:
        names = self.providers()
        if len(names) > 1:
            raise bad_request("provider", "give at most one provider")
        models = await self.until_gone(self.on_runtime(self.farm.aio.models(names[0] if names else None)))
        self.reply(schema.ModelsResponse(models=self.state.allow.offered(self.farm, models)))

    def providers(self) -> list[str]:
        """The query's `provider` values: names that exist, each once, checked by the Session
        (which scans entry points once a process, never per name)."""
        names = [canonical_provider(p) for p in self.get_arguments("provider") if p]
        return bounds.check_providers(names, check_provider)


class HealthHandler(ModelsHandler):
    path = "health"

    @route
    async def get(self) -> None:
        providers = self.providers() or None
        statuses = await self.until_gone(self.on_runtime(self.farm.aio.health(providers)))
        cache = await self.until_gone(self.on_runtime(self.farm.aio.check_cache()))
        self.reply(schema.HealthResponse(providers=statuses, cache=cache))


class ModelHandler(FarmHandler):
    """A route about one model: its name is checked before it goes anywhere (a URL included)."""

    field = "name"

    async def admitted(self, name: str, *, pull: bool = False) -> Admitted:
        try:
            schema.check_model_name(name)
        except ValueError as exc:
            raise bad_request("name", str(exc)) from None
        return await self.until_gone(self.on_runtime(self.state.allow.admit(self.farm, name, pull=pull)))


class LoadHandler(ModelHandler):
    path = "models/{name}/load"

    def progress_url(self, name: str) -> str:
        return url_path_join(self.base_url, schema.API_PREFIX, "models", url_escape(name), "load")

    @route
    async def post(self, name: str) -> None:
        model = await self.admitted(name, pull=True)
        job = self.state.start(self.farm, name, model)
        started = schema.LoadStarted(**job.status().model_dump(), progress_url=self.progress_url(name))
        self.set_header("Location", started.progress_url)
        self.reply(started, status=202)

    @route
    async def get(self, name: str) -> None:
        job = self.state.job((await self.admitted(name, pull=True)).address)
        if job is None:
            raise ApiError(
                404,
                schema.ErrorBody(
                    error=f"no load of {name!r} is known here: POST to this URL to start one",
                    field="name",
                ),
            )
        self.reply(job.status())


class UnloadHandler(ModelHandler):
    path = "models/{name}/unload"

    @route
    async def post(self, name: str) -> None:
        model = await self.admitted(name, pull=True)  # a model not offered is not loaded either
        unloaded = await self.until_gone(self.on_runtime(_unload(self.farm, model)))
        self.state.jobs.pop(model.address, None)
        self.reply(schema.UnloadResponse(model=name, address=model.address, unloaded=unloaded))


async def _unload(farm: Any, model: Admitted) -> bool:
    """Unload `model`; whether it was loaded (a model never loaded is not `unloaded`)."""
    try:
        listed = await farm.aio.models(model.provider)
    except FarmError:
        listed = []
    was = any(m.loaded and same_model(model.provider, m.name, model.model) for m in listed)
    if was:
        await farm.aio.unload(model.address)
    return was


class StatsHandler(FarmHandler):
    path = "stats"

    @route
    async def get(self) -> None:
        session = self.farm
        self.reply(
            schema.StatsResponse(
                models=session.usage("requests"),
                in_flight=self.state.in_flight,
                cache=session.aio.cache_state,
            )
        )


class GPUHandler(FarmHandler):
    path = "gpu"

    @route
    async def get(self) -> None:
        # NVML calls (and torch's import, the first time) block: keep them off tornado's loop.
        stats = await asyncio.to_thread(self.farm.gpu)
        self.reply(stats)


class NotFoundHandler(FarmHandler):
    """Any other path under the prefix: a JSON 404 naming the routes, not Jupyter's HTML page."""

    path = ""

    async def _missing(self, *args: Any) -> None:
        routes = ", ".join(f"{r['method']} {r['path']}" for r in schema.ROUTES)
        raise ApiError(
            404,
            schema.ErrorBody(error=f"no route {self.request.method} {self.request.path} here: the routes are {routes}"),
        )

    get = post = put = patch = delete = route(_missing)


HANDLERS: list[type[FarmHandler]] = [
    ChatHandler,
    ChatStreamHandler,
    CompleteHandler,
    ModelsHandler,
    HealthHandler,
    LoadHandler,
    UnloadHandler,
    StatsHandler,
    GPUHandler,
]


def url_specs(prefix: str, handlers: list[type[FarmHandler]] = HANDLERS) -> list[tuple[str, type[FarmHandler]]]:
    """Tornado's URL table from the route table: each route's path served by the handler that
    names it, with its method; a route without one, or a handler for no route, is an error."""
    by_path = {h.path: h for h in handlers}
    specs: dict[str, tuple[str, type[FarmHandler]]] = {}
    for r in schema.ROUTES:
        handler = by_path.get(r["path"])
        if (
            handler is None
            or not callable(getattr(handler, r["method"].lower(), None))
            or (getattr(handler, r["method"].lower()) is getattr(web.RequestHandler, r["method"].lower()))
        ):
            raise ConfigError(f"no handler serves {r['method']} {r['path']}: add it to server.handlers")
        # A model name may hold `/` (hf.co/org/model): tornado unquotes what the pattern captures.
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>.+)", r["path"])
        specs[r["path"]] = (url_path_join(prefix, pattern), handler)
    unused = set(by_path) - set(specs)
    if unused:
        raise ConfigError(f"handlers for paths not in schema.ROUTES: {', '.join(sorted(unused))}")
    return list(specs.values())


def setup_handlers(web_app: Any, session: Any = None, limits: FarmServer | None = None) -> str:
    """Add the routes to a Jupyter server's tornado application; returns their URL prefix."""
    base_url = web_app.settings.get("base_url", "/")
    prefix = url_path_join(base_url, schema.API_PREFIX)
    web_app.settings[SETTINGS_KEY] = ServerState(session, limits)
    web_app.add_handlers(".*$", [*url_specs(prefix), (url_path_join(prefix, ".*"), NotFoundHandler)])
    return prefix


__all__ = ["HANDLERS", "setup_handlers", "url_specs"]
