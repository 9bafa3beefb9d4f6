"""The routes of the farm_jupyter server extension, under `{base_url}farm-jupyter/api/`.

Each handler names the path it serves; the URL table is built from `schema.ROUTES` (the same
table as the JSON Schema and the TypeScript client) and `url_specs` refuses to start when the two
disagree. Handlers ask the Session's async twin only (`farm.aio.stream`, `farm.aio.health`, `farm.aio.load`, ...).
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

from ..errors import ConfigError, FarmError
from ..sessions import ChatStream
from ..types import ChatResponse, Chunk
from . import schema
from .handling import SETTINGS_KEY, ApiError, FarmHandler, bad_request, farm_error, route
from .jobs import LoadJob, ServerState, TooManyLoads
from .traits import FarmServer

SSE_TYPE = "text/event-stream; charset=utf-8"


class ChatHandler(FarmHandler):
    path = "chat"

    def body(self) -> schema.ChatBody:
        """The parsed body, within the limits, its first provider's options checked."""
        body: schema.ChatBody = self.parse(schema.ChatBody)
        messages = body.to_messages()
        limits = self.limits
        if len(messages) > limits.max_messages:
            raise bad_request(
                "messages", f"{len(messages)} messages, over the limit of {limits.max_messages}: send fewer"
            )
        chars = sum(len(m.content) for m in messages)
        if chars > limits.max_prompt_chars:
            field = "prompt" if body.prompt is not None else "messages"
            raise bad_request(field, f"{chars} characters, over the limit of {limits.max_prompt_chars}: send less")
        self.farm.aio.resolve(body.model, strict=True)  # an unknown `x:` prefix is 400 before anyone is asked
        try:
            self.farm.aio.resolve(body.model, params=body.params)
        except ConfigError as exc:
            raise bad_request("params.extra", str(exc)) from None
        return body

    def source(self, body: schema.ChatBody) -> ChatStream:
        """Tokens as they come (deadlines per token, not per answer)."""
        return self.farm.aio.stream(
            body.to_messages(),
            body.model,
            params=body.params,
            no_cache=body.no_cache,
            refresh=body.refresh,
            fallback=body.fallback,
        )

    @route
    async def post(self) -> None:
        source = self.source(self.body())
        with self.state.answering():
            response = await self.until_gone(self.on_runtime(_answer(aiter(source))))
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
    """Server-sent events: `data: {"text": ...}` per chunk, `{"restart": true}`, `{"status": ...}`,
    then `event: done` with the ChatResponse, then `data: [DONE]`.

    The headers wait for the answer to begin, so a failure before any text is a plain 502 JSON
    response; after that it is an `event: error` with an ErrorBody, then `data: [DONE]`.
    """

    path = "chat/stream"

    @route
    async def post(self) -> None:
        source = self.source(self.body())
        with self.state.answering():
            await self.until_gone(self._relay(aiter(source)))

    async def _relay(self, chunks: AsyncIterator[Chunk]) -> None:
        held: list[str] = []  # status notes that came before the answer began
        started = False
        async with aclosing(chunks) as it:  # type: ignore[type-var]
            try:
                async for chunk in it:
                    events = []
                    if chunk.restart:
                        events.append(_event(schema.StreamRestart().model_dump_json()))
                    if chunk.status:
                        events.append(_event(schema.StreamStatus(status=chunk.status).model_dump_json()))
                    if chunk.text:
                        events.append(_event(schema.StreamText(text=chunk.text).model_dump_json()))
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
    path = "models"
    field = "provider"

    @route
    async def get(self) -> None:
        provider = self.get_argument("provider", None) or None
        models = await self.until_gone(self.on_runtime(self.farm.aio.models(provider)))
        self.reply(schema.ModelsResponse(models=models))


class HealthHandler(FarmHandler):
    path = "health"
    field = "provider"

    @route
    async def get(self) -> None:
        providers = [p for p in self.get_arguments("provider") if p] or None
        statuses = await self.until_gone(self.on_runtime(self.farm.aio.health(providers)))
        self.reply(schema.HealthResponse(providers=statuses, cache=self.farm.aio.cache_state))


class ModelHandler(FarmHandler):
    """A route about one model: its name is checked before it goes anywhere (a URL included)."""

    field = "name"

    def address(self, name: str) -> tuple[str, str]:
        try:
            schema.check_model_name(name)
        except ValueError as exc:
            raise bad_request("name", str(exc)) from None
        provider, _, model = self.farm.aio.resolve(name, strict=True).partition(":")
        return provider, model


class LoadHandler(ModelHandler):
    path = "models/{name}/load"

    def progress_url(self, name: str) -> str:
        return url_path_join(self.base_url, schema.API_PREFIX, "models", url_escape(name), "load")

    @route
    async def post(self, name: str) -> None:
        provider, model = self.address(name)
        address = f"{provider}:{model}"
        job = self.state.job(address)
        if job is None or job.state != "running":
            job = LoadJob(model=name, address=address, started_at=time.time())
            try:
                self.state.add(job)
            except TooManyLoads:
                raise ApiError(
                    429,
                    schema.ErrorBody(
                        error=(
                            f"{self.limits.max_load_jobs} loads are running already: wait for one to finish "
                            "(GET its progress_url) and try again"
                        ),
                        field="name",
                    ),
                ) from None
            job.future = self.farm.aio.runtime.submit(job.run(self.farm.aio, address))
        started = schema.LoadStarted(**job.status().model_dump(), progress_url=self.progress_url(name))
        self.set_header("Location", started.progress_url)
        self.reply(started, status=202)

    @route
    async def get(self, name: str) -> None:
        provider, model = self.address(name)
        job = self.state.job(f"{provider}:{model}")
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
        provider, model = self.address(name)
        await self.until_gone(self.on_runtime(self.farm.aio.unload(f"{provider}:{model}")))
        self.reply(schema.UnloadResponse(model=name, address=f"{provider}:{model}", unloaded=True))


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


HANDLERS: list[type[FarmHandler]] = [
    ChatHandler,
    ChatStreamHandler,
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
    web_app.add_handlers(".*$", url_specs(prefix))
    return prefix


__all__ = ["HANDLERS", "setup_handlers", "url_specs"]
