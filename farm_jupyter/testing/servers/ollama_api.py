"""An Ollama look-alike: the /api routes a client and `%farm ollama` use, with Ollama's NDJSON
streams, its error bodies and its timing fields, so that the provider is tested against the wire."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .answers import chunks, embedding, last_user, message_words, positive_int, text_of, words
from .faults import Fault
from .loopback import Frame, Json, LoopbackServer
from .transport import Handler, dumps

if TYPE_CHECKING:
    from typing import Unpack

    from .loopback import Options


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _inserts(name: str) -> bool:
    """A code model's template takes a suffix (fill-in-the-middle), as qwen2.5-coder's and starcoder's do."""
    return bool(re.search(r"code", name))


class OllamaServer(LoopbackServer):
    """An Ollama look-alike: /api/chat, /api/generate (NDJSON), tags, ps, show, pull, embed.

    With `auth=(user, password)` it stands for an Ollama behind a proxy with HTTP basic auth:
    other requests get 401 and a `WWW-Authenticate: Basic` challenge.
    """

    kind = "ollama"
    stream_type = "application/x-ndjson"

    def __init__(
        self,
        models: Sequence[str] = ("llama3.1:latest", "qwen2.5:0.5b"),
        *,
        auth: tuple[str, str] | None = None,
        **options: Unpack[Options],
    ) -> None:
        super().__init__(models, **options)
        self.auth = auth
        self._loaded: set[str] = set()
        self.evals: list[tuple[int, int]] = []  # (eval_count, eval_duration ns) of each answer, as sent
        self._modified_at = datetime.now(UTC).isoformat()

    @property
    def loaded(self) -> set[str]:
        with self._lock:
            return set(self._loaded)

    def _normalise(self, name: str) -> str:
        name = name.strip()
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    def _lookup(self, name: Any) -> str | None:
        if not isinstance(name, str) or not name.strip():
            return None
        full = self._normalise(name)
        with self._lock:
            return full if full in self._models else None

    def _installed(self, h: Handler, asked: Any, fault: Fault | None, missing: str) -> str | None:
        """The full name of the model `asked` for; None, after a 404 saying `missing`, if there is none."""
        name = self._lookup(asked)
        if name is None:
            self._send(h, 404, self.error_body(404, missing), fault)
        return name

    def _authorised(self, h: Handler, headers: dict[str, str]) -> bool:
        if self.auth is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        if headers.get("authorization", "") == expected:
            return True
        challenge = {"WWW-Authenticate": 'Basic realm="ollama"'}
        h.send_bytes(401, dumps({"error": "unauthorized"}), self.content_type, challenge)
        return False

    def _thinks(self, body: Json) -> bool:
        return bool(body.get("think"))

    def _schema(self, body: Json) -> Any:
        found = body.get("format")
        return found if isinstance(found, dict) else None

    def error_body(self, status: int, message: str | None = None) -> Json:
        if message is None:
            message = {
                404: "404 page not found",
                429: "too many requests",
                503: "server busy, please try again.  maximum pending requests exceeded",
            }.get(status, f"simulated HTTP {status} error")
        return {"error": message}

    def _line(self, data: bytes) -> bytes:
        return data + b"\n"

    def _route(self, h: Handler, method: str, path: str, body: Json, fault: Fault | None) -> None:
        routes: dict[str, tuple[str, Callable[[Handler, Json, Fault | None], None]]] = {
            "/api/chat": ("POST", self._chat),
            "/api/generate": ("POST", self._generate),
            "/api/tags": ("GET", self._tags),
            "/api/ps": ("GET", self._ps),
            "/api/show": ("POST", self._show),
            "/api/pull": ("POST", self._pull),
            "/api/delete": ("DELETE", self._delete),
            "/api/embed": ("POST", self._embed),
            "/api/embeddings": ("POST", self._embeddings),
            "/api/version": ("GET", lambda h, b, f: self._send(h, 200, {"version": "0.6.0"}, f)),
        }
        if path == "/" and method in ("GET", "HEAD"):
            return h.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
        if path not in routes:
            return self._send(h, 404, self.error_body(404), fault)
        allowed, handler = routes[path]
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return self._send(h, 405, self.error_body(405, "405 method not allowed"), fault)
        handler(h, body, fault)

    # model metadata

    def _details(self, name: str) -> Json:
        base, _, tag = name.rsplit("/", 1)[-1].partition(":")
        letters = re.match(r"[A-Za-z]+", base)
        family = letters[0].lower() if letters else "llama"
        size = re.search(r"(\d+(?:\.\d+)?)[bB]", tag)
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": f"{float(size[1]):.1f}B" if size else "8.0B",
            "quantization_level": "Q4_K_M",
        }

    def _entry(self, name: str) -> Json:
        details = self._details(name)
        params = float(details["parameter_size"][:-1])
        return {
            "name": name,
            "model": name,
            "modified_at": self._modified_at,
            "size": int(params * 0.6e9),
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": details,
        }

    def _tags(self, h: Handler, body: Json, fault: Fault | None) -> None:
        self._send(h, 200, {"models": [self._entry(m) for m in self.models]}, fault)

    def _ps(self, h: Handler, body: Json, fault: Fault | None) -> None:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        with self._lock:
            loaded = [m for m in self._models if m in self._loaded]
        models = []
        for name in loaded:
            entry = self._entry(name)
            del entry["modified_at"]
            entry.update(expires_at=expires, size_vram=entry["size"], context_length=4096)
            models.append(entry)
        self._send(h, 200, {"models": models}, fault)

    def _show(self, h: Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model") or body.get("name")
        name = self._installed(h, asked, fault, f"model '{asked}' not found")
        if name is None:
            return
        details = self._details(name)
        family = details["family"]
        embeds = "embed" in name
        vision = ["vision"] if re.search(r"llava|vision|-vl|gemma3|moondream", name) else []
        shown = {
            "modelfile": f"# Modelfile generated by farm_jupyter.testing\nFROM {name}\n",
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": details,
            "model_info": {
                "general.architecture": family,
                "general.parameter_count": int(float(details["parameter_size"][:-1]) * 1e9),
                f"{family}.context_length": 8192,
                f"{family}.embedding_length": 8 if embeds else 4096,
            },
            "capabilities": ["embedding"]
            if embeds
            else ["completion", *self._abilities(name), *vision, *(["insert"] if _inserts(name) else [])],
            "modified_at": self._modified_at,
        }
        self._send(h, 200, shown, fault)

    @staticmethod
    def _abilities(name: str) -> list[str]:
        """What /api/show says a chat model can do besides completion: as real Ollama says of
        gemma2, phi3 and tinyllama, nothing (no tools, no thinking); every other model both."""
        return [] if re.search(r"gemma2|phi3|tinyllama", name) else ["tools", "thinking"]

    def _delete(self, h: Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model") or body.get("name")
        name = self._installed(h, asked, fault, f"model '{asked}' not found")
        if name is None:
            return
        with self._lock:
            self._models.remove(name)
            self._loaded.discard(name)
        h.send_bytes(200, b"")

    def _pull(self, h: Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model") or body.get("name")
        if not isinstance(asked, str) or not asked.strip():
            return self._send(h, 400, self.error_body(400, "model is required"), fault)
        name = self._normalise(asked)
        missing = name.rsplit("/", 1)[-1].startswith("missing")
        error = "pull model manifest: file does not exist"

        def frames() -> Iterator[Frame]:
            yield "content", self._line(dumps({"status": "pulling manifest"}))
            if missing:
                yield "tail", self._line(dumps({"error": error}))
                return
            for layer, total in enumerate((int(self._entry(name)["size"]), 485)):
                digest = hashlib.sha256(f"{name}#{layer}".encode()).hexdigest()
                for completed in (0, total // 2, total):
                    line = {
                        "status": f"pulling {digest[:12]}",
                        "digest": f"sha256:{digest}",
                        "total": total,
                        "completed": completed,
                    }
                    yield "content", self._line(dumps(line))
            yield "content", self._line(dumps({"status": "verifying sha256 digest"}))
            yield "content", self._line(dumps({"status": "writing manifest"}))
            with self._lock:
                if name not in self._models:
                    self._models.append(name)
            yield "tail", self._line(dumps({"status": "success"}))

        if body.get("stream", True) is False:
            if missing:
                return self._send(h, 500, {"error": error}, fault)
            for _ in frames():
                pass
            return self._send(h, 200, {"status": "success"}, fault)
        self._stream(h, frames(), fault)

    # inference

    def _chat(self, h: Handler, body: Json, fault: Fault | None) -> None:
        self._infer(h, body, fault, generate=False)

    def _generate(self, h: Handler, body: Json, fault: Fault | None) -> None:
        self._infer(h, body, fault, generate=True)

    def _infer(self, h: Handler, body: Json, fault: Fault | None, *, generate: bool) -> None:
        asked = body.get("model")
        if not isinstance(asked, str) or not asked.strip():
            return self._send(h, 400, self.error_body(400, "model is required"), fault)
        name = self._installed(h, asked, fault, f'model "{asked}" not found, try pulling it first')
        if name is None:
            return

        keep_alive = body.get("keep_alive")
        unload = keep_alive in (0, "0", "0s", "0m", "0h")
        messages = body.get("messages")
        prompt = text_of(body.get("prompt"))
        if (not prompt) if generate else (not messages):
            with self._lock:
                (self._loaded.discard if unload else self._loaded.add)(name)
            done: Json = {"model": asked, "created_at": _now_iso()}
            done.update({"response": ""} if generate else {"message": {"role": "assistant", "content": ""}})
            done.update(done=True, done_reason="unload" if unload else "load")
            return self._send(h, 200, done, fault)

        started = time.perf_counter_ns()
        if not self._model_time(h):
            return
        with self._lock:
            cold = name not in self._loaded
            self._loaded.add(name)
        if generate and "suffix" in body:  # fill-in-the-middle: only a model whose template takes a suffix
            if not _inserts(name):
                return self._send(
                    h, 400, self.error_body(400, f"registry.ollama.ai/library/{name} does not support insert"), fault
                )
            said = self._filled(body, prompt, text_of(body.get("suffix")))
        else:
            said = self._said(body, prompt if generate else last_user(messages))
        pieces = chunks(said.content)
        thoughts = chunks(said.thinking)
        calls = [{"function": {"name": c.get("name"), "arguments": c.get("arguments") or {}}} for c in said.tool_calls]
        reason = "stop"
        limit = positive_int((body.get("options") or {}).get("num_predict"))
        if limit is not None and limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        prompt_words = words(prompt, text_of(body.get("system"))) if generate else message_words(messages)

        def content(text: str, done: bool, **extra: Any) -> Json:
            line: Json = {"model": asked, "created_at": _now_iso()}
            if generate:
                line.update({"response": text, **extra})
            else:
                line["message"] = {"role": "assistant", "content": text, **extra}
            line["done"] = done
            return line

        def final(text: str, eval_started: int) -> Json:
            now = time.perf_counter_ns()
            load = 12_000_000 if cold else 150_000
            prompt_eval = 50_000 * max(prompt_words, 1)
            line = content(text, True)
            line.update(
                done_reason=reason,
                total_duration=now - started + load + prompt_eval,
                load_duration=load,
                prompt_eval_count=prompt_words,
                prompt_eval_duration=prompt_eval,
                eval_count=len(pieces),
                eval_duration=max(now - eval_started, 1),
            )
            self.evals.append((len(pieces), line["eval_duration"]))
            if unload:
                with self._lock:
                    self._loaded.discard(name)
            return line

        if body.get("stream", True) is False:
            # A whole answer takes as long to generate as a streamed one, and says so.
            eval_started = time.perf_counter_ns()
            if self.chunk_delay > 0 and h.server.stopping.wait(self.chunk_delay * max(len(pieces) - 1, 0)):
                return h.drop()
            whole = final("".join(pieces), eval_started)
            if not generate:
                if thoughts:
                    whole["message"]["thinking"] = "".join(thoughts)
                if calls:
                    whole["message"]["tool_calls"] = calls
            return self._send(h, 200, whole, fault)

        def frames() -> Iterator[Frame]:
            eval_started = time.perf_counter_ns()
            for thought in thoughts:  # reasoning first, in its own field, as Ollama streams it
                yield "content", self._line(dumps(content("", False, thinking=thought)))
            for piece in pieces:
                yield "content", self._line(dumps(content(piece, False)))
            if calls:  # Ollama sends a turn's tool calls whole, in one line before the last
                yield "content", self._line(dumps(content("", False, tool_calls=calls)))
            yield "tail", self._line(dumps(final("", eval_started)))

        self._stream(h, frames(), fault)

    def _embed(self, h: Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model")
        name = self._installed(h, asked, fault, f'model "{asked}" not found, try pulling it first')
        if name is None:
            return
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else [str(t) for t in raw or []]
        if not self._model_time(h):
            return
        with self._lock:
            self._loaded.add(name)
        counted = words(*texts)
        result = {
            "model": asked,
            "embeddings": [embedding(t) for t in texts],
            "total_duration": 1_000_000 + 10_000 * counted,
            "load_duration": 150_000,
            "prompt_eval_count": counted,
        }
        self._send(h, 200, result, fault)

    def _embeddings(self, h: Handler, body: Json, fault: Fault | None) -> None:
        asked = body.get("model")
        name = self._installed(h, asked, fault, f'model "{asked}" not found, try pulling it first')
        if name is None or not self._model_time(h):
            return
        self._send(h, 200, {"embedding": embedding(text_of(body.get("prompt")))}, fault)
