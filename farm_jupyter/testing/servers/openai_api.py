"""An OpenAI look-alike under /v1: chat completions with OpenAI's SSE chunks (and the reasoning field
that DeepSeek and vLLM add), models, embeddings, and the Bearer-auth errors the SDK maps."""

from __future__ import annotations

import base64
import itertools
import json
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .answers import chunks, embedding, last_user, message_words, positive_int, words
from .batches import BatchAPI
from .faults import Fault
from .loopback import Frame, Json, LoopbackServer
from .transport import Handler, dumps

if TYPE_CHECKING:
    from typing import Unpack

    from .loopback import Options

TEST_API_KEY = "sk-test-0123456789abcdef"  # what the fixtures give OpenAIServer and the client


def _mask(secret: str) -> str:
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) >= 12 else "..."


class OpenAIServer(LoopbackServer, BatchAPI):
    """An OpenAI look-alike under /v1: chat completions (SSE), models, embeddings, Bearer auth,
    and the Batch API (files and batches, `batches.BatchAPI`)."""

    kind = "openai"
    content_type = "application/json"
    stream_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4o"),
        *,
        api_key: str | None = "sk-test",
        context_window: int | None = None,
        batch_polls: int = 3,
        batch_failure: Callable[[Json], int | None] | None = None,
        batch_expire_after: int | None = None,
        **options: Unpack[Options],
    ) -> None:
        super().__init__(models, **options)
        self.api_key = api_key
        # A prompt of more "tokens" (words, as usage counts them) is refused as OpenAI and vLLM do.
        self.context_window = context_window
        self._ids = itertools.count(1)
        self._init_batches(batch_polls, batch_failure, batch_expire_after)

    def _thinks(self, body: Json) -> bool:
        return bool(body.get("reasoning_effort"))

    def _schema(self, body: Json) -> Any:
        found = body.get("response_format") or {}
        return (found.get("json_schema") or {}).get("schema") if found.get("type") == "json_schema" else None

    @property
    def base_url(self) -> str:
        """`url + "/v1"`, what `OpenAI(base_url=...)` wants."""
        return f"{self.url}/v1"

    def __repr__(self) -> str:
        where = self.url if self._started else "not started"
        key = None if self.api_key is None else _mask(self.api_key)
        return f"OpenAIServer({where}, models={self.models!r}, api_key={key!r})"

    def error_body(self, status: int, message: str | None = None) -> Json:
        kinds: dict[int, tuple[str, str | None, str]] = {
            400: ("invalid_request_error", None, "Bad request."),
            401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
            403: ("insufficient_permissions", None, "You are not allowed to do this."),
            404: ("invalid_request_error", None, "Not found."),
            429: (
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                "Rate limit reached for requests (simulated by farm_jupyter.testing).",
            ),
            500: ("server_error", None, "The server had an error while processing your request."),
            503: ("server_error", None, "The engine is currently overloaded, please try again later."),
        }
        type_, code, default = kinds.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}.")
        )
        return {"error": {"message": message or default, "type": type_, "param": None, "code": code}}

    def _line(self, data: bytes) -> bytes:
        return b"data: " + data + b"\n\n"

    def _authorised(self, h: Handler, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() == "bearer" and given == self.api_key:
            return True
        if not given:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            body = self.error_body(401, message)
            body["error"]["code"] = None
        else:
            body = self.error_body(401, f"Incorrect API key provided: {_mask(given)}.")
        h.send_bytes(401, dumps(body), self.content_type)
        return False

    def _route(self, h: Handler, method: str, path: str, body: Json, fault: Fault | None) -> None:
        if method == "GET" and path == "/v1/models":
            return self._send(h, 200, {"object": "list", "data": [self._model(m) for m in self.models]}, fault)
        if method == "GET" and path.startswith("/v1/models/"):
            name = path[len("/v1/models/") :]
            if name in self.models:
                return self._send(h, 200, self._model(name), fault)
            return self._send(h, 404, self._not_found(name), fault)
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(h, body, fault)
        if method == "POST" and path == "/v1/completions":
            return self._complete(h, body, fault)
        if method == "POST" and path == "/v1/embeddings":
            return self._embeddings(h, body, fault)
        if self._batch_route(h, method, path, body, fault):
            return None
        self._send(h, 404, self.error_body(404, f"Invalid URL ({method} {path})"), fault)

    @staticmethod
    def _model(name: str) -> Json:
        owner = "openai" if name.startswith(("gpt-", "text-", "o1", "o3", "o4")) else "system"
        return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": owner}

    def _not_found(self, name: Any) -> Json:
        body = self.error_body(404, f"The model `{name}` does not exist or you do not have access to it.")
        body["error"]["code"] = "model_not_found"
        return body

    def _check_model(self, h: Handler, body: Json, fault: Fault | None) -> str | None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send(h, 400, self.error_body(400, "you must provide a model parameter"), fault)
            return None
        if model not in self.models:
            self._send(h, 404, self._not_found(model), fault)
            return None
        return model

    def _chat(self, h: Handler, body: Json, fault: Fault | None) -> None:
        model = self._check_model(h, body, fault)
        if model is None:
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._send(h, 400, self.error_body(400, "Missing required parameter: 'messages'."), fault)
        if self.context_window is not None and (used := message_words(messages)) > self.context_window:
            too_long = (
                f"This model's maximum context length is {self.context_window} tokens. However, your messages "
                f"resulted in {used} tokens. Please reduce the length of the messages."
            )
            error = self.error_body(400, too_long)
            error["error"].update(param="messages", code="context_length_exceeded")
            return self._send(h, 400, error, fault)
        if not self._model_time(h):
            return
        if not body.get("stream"):
            return self._send(h, 200, self.completion(model, messages, body), fault)
        pieces, thoughts, calls, reason, usage = self._reply(messages, body)
        ident, created = f"chatcmpl-farm{next(self._ids):012d}", int(time.time())
        envelope = {"created": created, "model": model, "system_fingerprint": "fp_farm"}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(delta: Json | None, finish: str | None = None, last: bool = False) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            chunk: Json = {"id": ident, "object": "chat.completion.chunk", **envelope, "choices": choices}
            if include_usage:
                chunk["usage"] = usage if last else None
            return self._line(dumps(chunk))

        def frames() -> Iterator[Frame]:
            yield "head", event({"role": "assistant", "content": "", "refusal": None})
            for thought in thoughts:  # DeepSeek's and vLLM's field for reasoning
                yield "content", event({"content": None, "reasoning_content": thought})
            for piece in pieces:
                yield "content", event({"content": piece})
            for index, call in enumerate(calls):  # as OpenAI streams them: the name, then the arguments in pieces
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                named = {"name": call["function"]["name"], "arguments": ""}
                opening = {"index": index, "id": call["id"], "type": "function", "function": named}
                yield "content", event({"tool_calls": [opening]})
                for part in (arguments[:half], arguments[half:]):
                    yield "content", event({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            yield "tail", event({}, reason)
            if include_usage:
                yield "tail", event(None, last=True)
            yield "tail", self._line(b"[DONE]")

        self._stream(h, frames(), fault)

    def _reply(self, messages: list[Any], body: Json) -> tuple[list[str], list[str], list[Json], str, Json]:
        """What the model says to a chat request: answer pieces, thoughts, tool calls, the finish
        reason and the usage."""
        said = self._said(body, last_user(messages))
        pieces = chunks(said.content)
        thoughts = chunks(said.thinking)
        calls: list[Json] = [
            {
                "id": f"call_farm{next(self._ids):06d}",
                "type": "function",
                "function": {"name": c.get("name"), "arguments": json.dumps(c.get("arguments") or {})},
            }
            for c in said.tool_calls
        ]
        reason = "tool_calls" if calls else "stop"
        limit = positive_int(body.get("max_completion_tokens")) or positive_int(body.get("max_tokens"))
        if limit is not None and limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        prompt_tokens = message_words(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        return pieces, thoughts, calls, reason, usage

    def completion(self, model: str, messages: list[Any], body: Json) -> Json:
        """A whole `chat.completion` object: the non-streamed answer, and a batch line's body."""
        pieces, thoughts, calls, reason, usage = self._reply(messages, body)
        message = {
            "role": "assistant",
            "content": "".join(pieces) if pieces or not calls else None,
            "refusal": None,
            **({"reasoning_content": "".join(thoughts)} if thoughts else {}),
            **({"tool_calls": calls} if calls else {}),
        }
        choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
        return {
            "id": f"chatcmpl-farm{next(self._ids):012d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_farm",
            "choices": [choice],
            "usage": usage,
        }

    def _complete(self, h: Handler, body: Json, fault: Fault | None) -> None:
        """The legacy completions endpoint, with `suffix` for fill-in-the-middle (as vLLM and
        llama.cpp's server take it): `text_completion` objects, streamed as SSE."""
        model = self._check_model(h, body, fault)
        if model is None:
            return
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return self._send(h, 400, self.error_body(400, "'prompt' must be a string."), fault)
        if not self._model_time(h):
            return
        suffix = body.get("suffix")
        said = self._filled(body, prompt, suffix) if isinstance(suffix, str) else self._said(body, prompt)
        pieces = chunks(said.content)
        reason = "stop"
        limit = positive_int(body.get("max_tokens"))
        if limit is not None and limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        ident, created = f"cmpl-farm{next(self._ids):012d}", int(time.time())
        usage = {
            "prompt_tokens": words(prompt),
            "completion_tokens": len(pieces),
            "total_tokens": words(prompt) + len(pieces),
        }

        def completion(text: str, finish: str | None) -> Json:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": [choice]}

        if not body.get("stream"):
            return self._send(h, 200, {**completion("".join(pieces), reason), "usage": usage}, fault)

        def frames() -> Iterator[Frame]:
            for piece in pieces:
                yield "content", self._line(dumps(completion(piece, None)))
            yield "tail", self._line(dumps(completion("", reason)))
            yield "tail", self._line(b"[DONE]")

        self._stream(h, frames(), fault)

    def _embeddings(self, h: Handler, body: Json, fault: Fault | None) -> None:
        model = self._check_model(h, body, fault)
        if model is None:
            return
        raw = body.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            texts = [" ".join(map(str, raw))]  # one pre-tokenised input
        elif isinstance(raw, list) and raw:
            texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in raw]
        else:
            return self._send(h, 400, self.error_body(400, "'input' must be a string or a non-empty array."), fault)
        if not self._model_time(h):
            return
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector: Any = embedding(text)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = words(*texts)
        result = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self._send(h, 200, result, fault)
