"""Inline completion in JupyterLab: `GET complete` (is it on, with which model) and `POST complete`
(the text for the cursor, as server-sent events), served by the Jupyter server's Session, never by
a kernel, so a running cell does not hold them up.

    GET  complete?model=M    CompletionState: on or off (and why), the model, where cell text goes
    POST complete            CompletionBody -> `data: {"text": ...}`..., `event: done` CompletionDone

On by default only when the model runs in this process or on a loopback server: as you type, the
cells leave the machine for a remote one, so that needs `[completion] enabled = true` in farm.toml.
The cells above are cut to the nearest `[completion] context_chars` and secrets are masked in all
the text sent. Answers come from an in-memory cache when the context is the same (never the disk
or Redis cache: that would keep cell text), after a rate limit of their own; a client that goes
away (the next keystroke) cancels the provider's request, which is not a failure.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import FarmError
from ..secrets import redact
from ..types import Chunk, FillRequest
from . import schema
from .handling import ApiError, FarmHandler, farm_error, route

if TYPE_CHECKING:
    from ..config import CompletionSettings
    from ..sessions import Session

STATE_KEY = "farm_jupyter_completion"
SSE_TYPE = "text/event-stream; charset=utf-8"

# A value that looks like a key, and an assignment to a name that says it holds one.
_KEYS = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|xox[abpr]-[A-Za-z0-9-]{10,})"
)
_ASSIGNED = re.compile(
    r"""(?i)\b((?:[\w.]*[_.])?(?:api_?key|key|token|secret|passwd|password|pwd)s?['"]?\]?\s*(?::[^=\n'"]*)?[:=]\s*)(['"])[^'"\n]*\2"""
)


def mask_secrets(text: str) -> str:
    """Text with its secrets masked: the server's registered ones, values that look like keys,
    and string literals assigned to a name like `api_key` or `password`."""
    text = _KEYS.sub("***", redact(text))
    return _ASSIGNED.sub(lambda m: f"{m[1]}{m[2]}***{m[2]}", text)


class Unfenced:
    """A chat model's answer without the code fence it may wrap it in anyway (FIM answers have
    none): the opening fence line is dropped as it streams, and the text stops at a closing one."""

    def __init__(self) -> None:
        self.head = ""
        self.started = False
        self.closed = False

    def feed(self, text: str) -> str:
        if self.closed:
            return ""
        if not self.started:
            self.head += text
            held = self.head.lstrip("\n")
            if held.startswith("```"):
                if "\n" not in held:
                    return ""  # the fence line has not ended yet
                text = held.split("\n", 1)[1]
            elif len(held) < 3 and "```".startswith(held):
                return ""  # it may still become a fence
            else:
                text = self.head
            self.started = True
        if "```" in text:
            text, self.closed = text.split("```", 1)[0], True
        return text

    def flush(self) -> str:
        return "" if self.started else self.head


@dataclass
class CompletionMemory:
    """What the completion route keeps for the life of the server: its rate window and its cache."""

    starts: deque[float] = field(default_factory=deque)
    answers: OrderedDict[str, tuple[str, str]] = field(default_factory=OrderedDict)  # key -> (text, model)

    def wait(self, rpm: int, now: float) -> float:
        """Seconds until one more request fits in `rpm` a minute; 0 admits it (and counts it)."""
        while self.starts and now - self.starts[0] >= 60:
            self.starts.popleft()
        if len(self.starts) >= rpm:
            return 60 - (now - self.starts[0])
        self.starts.append(now)
        return 0.0

    def get(self, key: str) -> tuple[str, str] | None:
        found = self.answers.get(key)
        if found is not None:
            self.answers.move_to_end(key)
        return found

    def put(self, key: str, text: str, model: str, size: int) -> None:
        self.answers[key] = (text, model)
        self.answers.move_to_end(key)
        while len(self.answers) > size:
            self.answers.popitem(last=False)


def decide(farm: Session, asked: str | None) -> schema.CompletionState:
    """On or off for the model `asked` (the Lab's setting) or farm.toml's, and why."""
    config: CompletionSettings = farm.settings.completion
    provider, _, model = farm.resolve(asked or config.model, strict=True).partition(":")
    locality = farm.aio.locality(provider)
    reason = None
    if config.enabled is False:
        reason = "inline completion is off in farm.toml ([completion] enabled = false)"
    elif locality == "remote" and config.enabled is not True:
        # Said first what to do: the Lab's notice shows the first ~140 characters.
        reason = f"`[completion] enabled = true` in farm.toml lets {provider} (not on this machine) see your cells as you type"
    return schema.CompletionState(
        enabled=reason is None,
        model=f"{provider}:{model}",
        locality=locality,
        reason=reason,
        debounce_ms=config.debounce_ms,
        max_tokens=config.max_tokens,
    )


def fill_request(body: schema.CompletionBody, config: CompletionSettings) -> FillRequest:
    """The body as what the model sees: the nearest cells above, within the bounds, masked."""
    cells = body.cells[-config.cells :] if config.cells else []
    context = "\n\n".join(cells)[-config.context_chars :] if config.context_chars else ""
    return FillRequest(
        prefix=mask_secrets(body.prefix),
        suffix=mask_secrets(body.suffix),
        context=mask_secrets(context),
        max_tokens=config.max_tokens,
        language=body.language,
    )


def _event(data: str, name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {data}\n\n"


class CompleteHandler(FarmHandler):
    path = "complete"

    @property
    def memory(self) -> CompletionMemory:
        state: CompletionMemory = self.settings.setdefault(STATE_KEY, CompletionMemory())
        return state

    @route
    async def get(self) -> None:
        self.reply(decide(self.farm, self._model(self.get_argument("model", None) or None)))

    @staticmethod
    def _model(name: str | None) -> str | None:
        try:
            return None if name is None else schema.check_model_name(name)
        except ValueError as exc:
            raise ApiError(400, schema.ErrorBody(error=f"model: {exc}", field="model")) from None

    @route
    async def post(self) -> None:
        body: schema.CompletionBody = self.parse(schema.CompletionBody)
        state = decide(self.farm, body.model)
        if not state.enabled:
            raise ApiError(409, schema.ErrorBody(error=state.reason or "inline completion is off", field="model"))
        config = self.farm.settings.completion
        request = fill_request(body, config)
        key = hashlib.sha256(json.dumps([state.model, request.model_dump()], sort_keys=True).encode()).hexdigest()
        if (hit := self.memory.get(key)) is not None:
            self._begin()
            self.write(_event(schema.StreamText(text=hit[0]).model_dump_json()))
            self._end(schema.CompletionDone(text=hit[0], model=hit[1], cached=True))
            return
        wait = self.memory.wait(config.rpm, time.monotonic())
        if wait:  # answered here: an error raised would lose the Retry-After header
            self.set_header("Retry-After", f"{max(1, round(wait))}")
            error = f"over {config.rpm} completions a minute ([completion] rpm): the next in {wait:.0f} s"
            self.reply(schema.ErrorBody(error=error), status=429)
            return
        chunks = self.farm.aio.complete(request, state.model)
        done = await self.until_gone(self._relay(chunks))
        if done is not None and config.cache_size:
            self.memory.put(key, done.text, done.model, config.cache_size)

    def _begin(self) -> None:
        self.set_header("Content-Type", SSE_TYPE)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    def _end(self, done: schema.CompletionDone) -> None:
        self.write(_event(done.model_dump_json(), "done") + _event("[DONE]"))
        self.finish(set_content_type=SSE_TYPE)

    async def _relay(self, chunks: AsyncIterator[Chunk]) -> schema.CompletionDone | None:
        """Relay the text as it comes; the headers wait for the first text, so a failure before it
        is a plain JSON error. Returns the whole completion, or None if it failed after text."""
        model, parts, started = "", [], False
        fence = Unfenced()
        async with aclosing(chunks) as it:  # type: ignore[type-var]
            try:
                async for chunk in it:
                    if chunk.status and not chunk.text:
                        model = chunk.status  # the route answering, named before its text
                        continue
                    text = fence.feed(chunk.text) if not chunk.done else fence.flush()
                    if not text:
                        continue
                    parts.append(text)
                    if not started:
                        started = True
                        self._begin()
                    self.write(_event(schema.StreamText(text=text).model_dump_json()))
                    await self.flush()
            except FarmError as exc:
                if not started:
                    raise
                self.write(_event(farm_error(exc, "model").body.model_dump_json(), "error") + _event("[DONE]"))
                self.finish(set_content_type=SSE_TYPE)
                return None
        if not started:
            self._begin()
        done = schema.CompletionDone(text="".join(parts), model=model, cached=False)
        self._end(done)
        return done
