"""GGUF models through llama.cpp (`llama-cpp-python`): `llamacpp:/path/model.gguf`.

Quantised weights, the engine Ollama and LM Studio run on; the default model is the embedded
SmolLM2-135M-Instruct (`farm_jupyter.embedded`). A model loads on first use (a fraction of a
second), generates in a daemon thread that hands text to the runtime loop (`_local.Channel`), and
stops within a token when the request is cancelled: the thread closes llama.cpp's generator.

llama_cpp is imported on first load. Its exceptions become FarmErrors in one place,
`_mapped_errors`. Options (`[providers.llamacpp]` in farm.toml): `default_model`, `n_ctx`
(default 2048), `n_threads`, `n_threads_batch` (default: `n_threads`), `n_gpu_layers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib.util
import inspect
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import embedded
from ..errors import BadRequest, FarmError, MissingDependency, ModelNotFound, ServerError
from ..types import ChatMessage, ChatRequest, Chunk, FillRequest, ModelInfo, ProviderStatus, PullProgress, Usage
from ..types.capabilities import Capabilities
from . import _guidance
from ._constrain import GBNF_IGNORES, STRUCTURE, Constraint, Penalty, Reader, constraint, repeated, unenforced
from ._infill import fim_tokens, infill
from ._local import Channel, LocalProvider, ensure, first_line, ran

_STREAM_TIMEOUT = 60.0  # seconds without a token before the request is given up
# The embedded model's default repeat penalties (issue 23): llama.cpp's own on free text, chosen
# by benchmarks/local_quality.py; under a grammar ours (Penalty), which let every optional-field
# answer of tests/test_local_structured.py end (without one, some looped to max_tokens).
EMBEDDED_PENALTY = 1.2
EMBEDDED_GRAMMAR_PENALTY = 1.3
# What decides the sampling, as `%farm why` shows it: each argument given, else llama.cpp's default.
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
             "frequency_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta", "max_tokens",
             "seed", "logit_bias")  # fmt: skip


@dataclass
class _Loaded:
    name: str
    path: Path
    llm: Any
    lock: threading.Lock = field(default_factory=threading.Lock)  # a Llama runs one generation at a time
    loaded_at: float = field(default_factory=time.time)
    spared: Any = None  # the tokens Penalty never penalises, found on first use
    guide: Any = None  # llguidance's view of the vocabulary, made on the first constrained answer

    def structure(self) -> Any:
        if self.spared is None:
            import numpy as np

            pieces = (self.llm.detokenize([i]).decode(errors="ignore") for i in range(self.llm.n_vocab()))
            self.spared = np.fromiter((bool(p) and set(p) <= STRUCTURE for p in pieces), dtype=bool)
        return self.spared


def _llama_class() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependency("llama-cpp-python", "llamacpp") from exc

    class CountingLlama(llama_cpp.Llama):  # type: ignore[misc, name-defined]
        """Llama that counts what it really generated: its stream carries no usage."""

        prompt_tokens = 0
        sampled = 0
        last_token: int | None = None

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
            self.prompt_tokens, self.sampled, self.last_token = len(tokens), 0, None
            # llama.cpp may round the context up past the buffer llama-cpp-python made for it (n_ctx=64
            # gives 256): a prompt between the two would fail deep inside eval() with a numpy error.
            limit = min(self.n_ctx(), len(self.input_ids))
            if len(tokens) >= limit:
                raise ValueError(f"the prompt is {len(tokens)} tokens, over the context window of {limit}")
            with contextlib.closing(super().generate(tokens, *args, **kwargs)) as inner:
                for token in inner:
                    self.sampled += 1
                    self.last_token = token
                    yield token

        def completion_tokens(self) -> int:
            # The end-of-generation token is sampled but not part of the answer (llama.cpp's own
            # non-streaming usage does not count it either).
            last = self.last_token
            is_eog = last is not None and bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, last))
            return self.sampled - int(is_eog)

    return CountingLlama


def _biased(bias: dict[int, float], _ids: Any, scores: Any) -> Any:
    """`logit_bias` as a logits processor, as llama-cpp-python applies it."""
    for token, value in bias.items():
        scores[token] += value
    return scores


@functools.lru_cache(maxsize=64)
def _gbnf(schema: str) -> str:
    """The grammar of a JSON Schema, as `LlamaGrammar.from_json_schema` builds it: its converter
    raises on what it cannot convert (never `response_format`, which then falls back to any JSON)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(schema))


def _grammar(shape: Constraint, provider: str, loaded: _Loaded) -> tuple[Any, str | None]:
    """(llguidance's mask for `shape` where llguidance is installed, else the LlamaGrammar, or
    None; the note saying what is left to the validation)."""
    if shape.schema is None:
        return None, None
    if _guidance.available():
        notes: list[str] = []
        compiled = _guidance.constrained(shape, lambda _, note: notes.append(note))
        if compiled is not None:
            if loaded.guide is None:
                loaded.guide = _guidance.llama_tokenizer(loaded.llm)
            return _guidance.Mask(loaded.guide, compiled), (notes[0] if notes else None)
    from llama_cpp import LlamaGrammar  # also where llguidance refused the schema: this may take it

    try:
        grammar = LlamaGrammar.from_string(_gbnf(json.dumps(shape.schema)), verbose=False)
    except Exception as exc:  # noqa: BLE001 - the converter asserts and raises many kinds; said once
        return None, (
            f"llama.cpp cannot turn this schema into a grammar ({type(exc).__name__}: {first_line(exc)}): "
            "the answer is checked and asked again instead"
        )
    left = unenforced(shape.schema, GBNF_IGNORES)
    note = f"llama.cpp does not enforce {', '.join(left)}: checked after the answer" if left else None
    return grammar, note


def _formatter(llm: Any) -> Any:
    """The model's chat template as llama-cpp-python renders it (None when the file has none)."""
    found = getattr(llm, "_farm_formatter", False)
    if found is False:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        text = {
            i: llm.detokenize([i], special=True).decode(errors="replace") for i in (llm.token_eos(), llm.token_bos())
        }
        found = (
            Jinja2ChatFormatter(template=template, eos_token=text[llm.token_eos()], bos_token=text[llm.token_bos()])
            if template
            else None
        )
        setattr(llm, "_farm_formatter", found)  # noqa: B010 - kept on the Llama it was made for
    return found


def _defaults(llm: Any) -> dict[str, Any]:
    found = inspect.signature(llm.create_chat_completion).parameters
    return {k: found[k].default for k in _SAMPLING if k in found}


def _prompt(llm: Any, messages: list[dict[str, Any]]) -> tuple[Any, list[int]] | None:
    """The chat template's rendering of `messages` and its tokens, as llama-cpp-python's chat
    handler makes them (None when the file has no template: llama.cpp's own default format)."""
    formatter = _formatter(llm)
    if formatter is None:
        return None
    said = formatter(messages=messages)
    return said, llm.tokenize(said.prompt.encode(), add_bos=not said.added_special, special=True)


def _ran(llm: Any, arguments: dict[str, Any]) -> str | None:
    """What this generation runs (`_local.ran`): the tokens the model reads, written out, with the
    sampling parameters in effect and the stop strings the template adds to the caller's."""
    found = _prompt(llm, arguments["messages"])
    if found is None:
        return None
    said, tokens = found
    params = {k: arguments.get(k, default) for k, default in _defaults(llm).items()}
    stop = arguments.get("stop") or []
    added = said.stop or []
    params["stop"] = [*([stop] if isinstance(stop, str) else stop), *([added] if isinstance(added, str) else added)]
    grammar = arguments.get("grammar")
    if grammar is not None:
        params["grammar"] = getattr(grammar, "_grammar", grammar)
    for step in arguments.get("logits_processor", ()):
        if isinstance(step, _guidance.Mask):
            params["grammar"] = step.compiled
        elif getattr(step, "func", None) is _biased:
            params["logit_bias"] = step.args[0]
    return ran(llm.detokenize(tokens, special=True).decode(errors="replace"), params)


@contextlib.contextmanager
def _mapped_errors(provider: str, model: str, *, loading: bool = False) -> Iterator[None]:
    """The one place where llama.cpp's exceptions become FarmErrors, each with what to do."""
    try:
        yield
    except FarmError:
        raise
    except MemoryError as exc:
        raise ServerError(
            f"llama.cpp ran out of memory with {model}",
            provider=provider,
            hint="lower n_ctx, use a smaller quantisation, or unload other models (%farm unload)",
        ) from exc
    except (ValueError, RuntimeError) as exc:
        text = first_line(exc)
        if loading:
            raise ModelNotFound(
                f"llama.cpp could not load {model} ({text})",
                provider=provider,
                hint="check that the file is a GGUF model that this llama-cpp-python version supports",
            ) from exc
        if "context window" in text or "exceed" in text:
            raise BadRequest(
                f"llama.cpp rejected the request to {model}: {text}",
                provider=provider,
                hint="shorten the conversation (%farm reset) or raise n_ctx in [providers.llamacpp]",
            ) from exc
        raise ServerError(
            f"llama.cpp failed with {model}: {text}", provider=provider, hint="see the log above"
        ) from exc
    except (TypeError, KeyError) as exc:
        raise BadRequest(
            f"llama.cpp rejected the request to {model}: {type(exc).__name__}: {first_line(exc)}",
            provider=provider,
            hint="check the generation parameters (params.extra) and the messages' roles",
        ) from exc


class LlamaCppProvider(LocalProvider[_Loaded]):
    kind = "llamacpp"
    # schema and tools under a grammar, "auto" included; fim for a model with its own FIM tokens
    capabilities = Capabilities.of(
        "stream", "schema", "tools", "tool_choice", "stop", "seed", "temperature", "max_tokens", "load", "fallback",
        "fim", per_model=("fim",),
    )  # fmt: skip
    stalled = "raise stream_timeout in [providers.llamacpp], or use a smaller model"

    @property
    def default_model(self) -> str:
        return str(self.options.get("default_model") or embedded.NAME)

    @property
    def url(self) -> str:
        return "local (llama.cpp)"

    @property
    def stream_timeout(self) -> float:
        return float(self.options.get("stream_timeout", _STREAM_TIMEOUT))

    @property
    def cache_identity(self) -> str | None:
        return "local"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} models={sorted(self._models)}>"

    # -- loading ---------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if embedded.is_embedded(name):
            return embedded.locate(self.name)
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelNotFound(
                f"no GGUF file at {name}",
                provider=self.name,
                hint=f"give the path of a .gguf file, or use {embedded.NAME} (the embedded model)",
            )
        return path.absolute()

    def _load(self, name: str) -> _Loaded:
        with self._lock_for(name):
            if (ready := self._models.get(name)) is not None:
                return ready
            path = self._path(name)
            llama = _llama_class()
            kwargs: dict[str, Any] = {"n_ctx": int(self.options.get("n_ctx", 2048)), "verbose": False}
            for key in ("n_threads", "n_threads_batch", "n_gpu_layers", "seed"):
                if self.options.get(key) is not None:
                    kwargs[key] = int(self.options[key])
            # llama-cpp-python reads the prompt on every logical core by default; they wait for each
            # other, so one core busy elsewhere made the first token 5x later here (issue 23).
            kwargs.setdefault("n_threads_batch", kwargs.get("n_threads") or max((os.cpu_count() or 2) // 2, 1))
            with _mapped_errors(self.name, name, loading=True):
                llm = llama(model_path=str(path), **kwargs)
            loaded = self._models[name] = _Loaded(name=name, path=path, llm=llm)
            return loaded

    # -- the primitive ---------------------------------------------------------------------------

    def _arguments(self, request: ChatRequest, shape: Constraint, grammar: Any, loaded: _Loaded) -> dict[str, Any]:
        p = request.params
        kwargs: dict[str, Any] = {
            "messages": [m.model_dump() for m in shape.messages],
            "stream": True,
            "temperature": p.temperature or 0.0,  # 0 is greedy in llama.cpp too
            "max_tokens": p.max_tokens or 256,
        }
        processors: list[Any] = [grammar] if isinstance(grammar, _guidance.Mask) else []
        if grammar is not None and not processors:
            kwargs["grammar"] = grammar
        if p.top_p is not None:
            kwargs["top_p"] = p.top_p
        if p.stop:
            kwargs["stop"] = p.stop
        if p.seed is not None:
            kwargs["seed"] = p.seed
        options = p.options_for("llamacpp")  # the ones for another provider are left for it
        if "grammar" in options and grammar is not None:
            raise BadRequest(
                "params.extra grammar and a schema or tools cannot go together",
                provider=self.name,
                hint="drop the grammar: the schema (or the tools) is the grammar",
            )
        kwargs.update(options)
        if embedded.is_embedded(request.model) and "repeat_penalty" not in options:
            # Greedy alone loops at 135M ("capital of France?" -> a French word list to the cap).
            if grammar is None:
                kwargs["repeat_penalty"] = EMBEDDED_PENALTY
            else:
                processors.insert(0, Penalty(loaded.structure(), EMBEDDED_GRAMMAR_PENALTY))
        if processors and "logit_bias" in kwargs:  # given with processors, llama-cpp-python drops both
            processors.insert(0, functools.partial(_biased, {int(k): v for k, v in kwargs.pop("logit_bias").items()}))
        if processors:
            kwargs["logits_processor"] = processors
        return kwargs

    async def model_capabilities(self, model: str) -> frozenset[str]:
        """The row; `fim` only for a model whose vocabulary has FIM tokens (it loads: it is local)."""
        llm = (await ensure(self._models, self._load, model)).llm
        return self.capabilities.features - (frozenset() if llm is not None and fim_tokens(llm) else {"fim"})

    async def afill(self, request: FillRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        # A model with FIM tokens is asked with them, on the chat's thread machinery; others (SmolLM2) chat.
        native = "fim" in await self.model_capabilities(request.model)
        chunks = self.astream(request) if native else super().afill(request)  # type: ignore[arg-type]
        async for chunk in chunks:
            yield chunk

    def _generate(
        self, loaded: _Loaded, request: ChatRequest | FillRequest, channel: Channel, stop: threading.Event
    ) -> None:
        """The body of the generate thread: every outcome ends as one "done" or "error" item."""
        try:
            with loaded.lock, _mapped_errors(self.name, request.model):
                llm = loaded.llm
                if llm is None:  # unloaded while this request waited for the lock
                    raise ServerError(
                        f"{request.model} was unloaded", provider=self.name, hint="ask again to reload it"
                    )
                if isinstance(request, FillRequest):
                    marks = fim_tokens(llm)
                    assert marks is not None  # afill sends only such a model's requests here
                    finish = infill(llm, request, marks, channel, stop)
                    channel.push(
                        "done",
                        (Usage(prompt_tokens=llm.prompt_tokens, completion_tokens=llm.completion_tokens()), finish),
                    )
                    return
                shape = constraint(request, self.name, integer_enums=not _guidance.available())
                finish, answer = self._run(loaded, request, shape, channel, stop)
                usage = Usage(prompt_tokens=llm.prompt_tokens, completion_tokens=llm.completion_tokens())
                if shape.envelope and answer.call is not None and repeated(answer.call, request.messages):
                    shape = constraint(request, self.name, integer_enums=not _guidance.available(), answer_only=True)
                    finish, answer = self._run(loaded, request, shape, channel, stop)
                    usage = Usage(
                        prompt_tokens=usage.prompt_tokens + llm.prompt_tokens,
                        completion_tokens=usage.completion_tokens + llm.completion_tokens(),
                    )
                if answer.call is not None:
                    channel.push("calls", [answer.call])
            channel.push("done", (usage, finish))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            channel.push("error", exc.with_traceback(None))
            del exc

    def _run(
        self, loaded: _Loaded, request: ChatRequest, shape: Constraint, channel: Channel, stop: threading.Event
    ) -> tuple[str, Reader]:
        """One generation under `shape`; its finish reason, and what it said, read."""
        grammar, note = _grammar(shape, self.name, loaded)
        if note:
            channel.push("note", note)
        answer = Reader(channel.push, shape)
        finish = None
        arguments = self._arguments(request, shape, grammar, loaded)
        if (sent := _ran(loaded.llm, arguments)) is not None:
            channel.push("sent", sent)
        with contextlib.closing(loaded.llm.create_chat_completion(**arguments)) as chunks:
            for chunk in chunks:
                if stop.is_set():
                    break  # closing the generator stops llama.cpp before its next token
                choice = chunk["choices"][0]
                answer.add(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
        return answer.end(finish or "stop"), answer

    def _failed(self, exc: BaseException, model: str, shown: bool) -> FarmError:
        return ServerError(
            f"llama.cpp failed with {model}: {type(exc).__name__}: {first_line(exc)}",
            provider=self.name,
            hint="see the log above",
        )

    # -- counting --------------------------------------------------------------------------------

    def count_tokens(
        self, prompt: str | Sequence[ChatMessage], model: str | None = None, *, load: bool = True
    ) -> int | None:
        name = model or self.default_model
        loaded = self._load(name) if load else self._models.get(name)
        llm = loaded.llm if loaded is not None else None
        if llm is None:
            return None
        if isinstance(prompt, str):
            return len(llm.tokenize(prompt.encode(), add_bos=False, special=False))
        found = _prompt(llm, [m.model_dump() for m in prompt])
        return None if found is None else len(found[1])  # what generate() sees

    # -- model management ------------------------------------------------------------------------

    def _info(self, name: str, path: Path | None, loaded: bool) -> ModelInfo:
        details: dict[str, Any] = {"engine": "llama.cpp"}
        if path is not None:
            details["path"] = str(path)
        if embedded.is_embedded(name):
            details["about"] = embedded.ABOUT
        size = path.stat().st_size if path is not None and path.is_file() else None
        quant = path.stem.rsplit(".", 1)[-1] if path is not None and "." in path.stem else None
        return ModelInfo(
            name=name,
            provider=self.name,
            size=size,
            family="gguf",
            quantization=quant,
            loaded=loaded,
            parameter_size="135M" if embedded.is_embedded(name) else None,
            details=details,
        )

    async def list_models(self) -> list[ModelInfo]:
        """The loaded models, the default one, and the GGUF files on this machine."""
        models = [self._info(m.name, m.path, True) for m in self._models.values()]
        seen = {m.path for m in self._models.values()}
        default = self.default_model
        if default not in self._models:
            found = embedded.find() if embedded.is_embedded(default) else None
            path = found[0] if found else (Path(default) if Path(default).is_file() else None)
            models.append(self._info(default, path, False))
            if path is not None:
                seen.add(path)
        for path in embedded.local_gguf_files():
            if path not in seen:
                models.append(self._info(str(path), path, False))
        return models

    async def load_model(self, model: str) -> AsyncIterator[PullProgress]:
        yield PullProgress(status="loading")
        loaded = await ensure(self._models, self._load, model)
        size = loaded.path.stat().st_size
        yield PullProgress(status="loaded (llama.cpp)", total=size, completed=size)

    async def unload_model(self, model: str) -> None:
        loaded = self._models.pop(model, None)
        if loaded is not None:
            await asyncio.to_thread(self._close, loaded)

    @staticmethod
    def _close(loaded: _Loaded) -> None:
        with loaded.lock:  # never under a running generation: it ends (or is stopped) first
            llm, loaded.llm = loaded.llm, None
        with contextlib.suppress(Exception):
            llm.close()  # frees the weights and the context now, not whenever the object is collected
        del llm
        gc.collect()

    async def health(self) -> ProviderStatus:
        if importlib.util.find_spec("llama_cpp") is None:
            error = str(MissingDependency("llama-cpp-python", "llamacpp"))
            return ProviderStatus(provider=self.name, state="unhealthy", url=self.url, error=error)
        return ProviderStatus(
            provider=self.name, state="healthy", url=self.url, latency=0.0, models_loaded=sorted(self._models)
        )

    async def aclose(self) -> None:
        for name in list(self._models):
            await self.unload_model(name)
