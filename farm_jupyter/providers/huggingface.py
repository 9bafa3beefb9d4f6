"""Local models through transformers: loaded on first use, generated in a thread, streamed.

`model.generate` blocks, so it runs in a daemon thread per request; a streamer hands each piece
of text to the runtime loop with `call_soon_threadsafe`, and a stopping criterion watches an
event so that cancelling the request really stops the generation. With nothing configured the
provider runs the embedded tiny model (`farm_jupyter.tiny_model`), built on first load.

torch and transformers are imported inside the methods that need them: creating this provider
costs nothing, and the first load pays for the import.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadRequest, FarmError, MissingDependency, ModelNotFound, ProviderTimeout, ServerError
from ..tiny_model import build_tiny_model, default_tiny_model_dir, is_built, quiet_hf
from ..types import ChatMessage, ChatRequest, Chunk, ModelInfo, ProviderStatus, PullProgress, Usage
from .base import Provider

_JOIN_TIMEOUT = 10.0  # seconds a cancelled generation gets to finish its current step
_NOT_FOUND_HINT = "give a local path, or set HF_TOKEN / check the hub id"
_OWN_KWARGS = {"streamer", "stopping_criteria", "input_ids", "attention_mask"}
_EMBED_BATCH = 32


@dataclass
class _Loaded:
    name: str
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    size: int
    parameters: int
    family: str | None
    quantization: str | None = None
    kind: str = "causal"  # causal | encoder | sentence-transformers
    loaded_at: float = field(default_factory=time.time)


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependency(exc.name or "transformers", "hf") from exc
    return torch, transformers


def _oom_type(torch: Any) -> type[BaseException]:
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name) or Path(name).exists()


def _human(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class _Channel:
    """Items from the generate thread to the runtime loop, without a thread hop per read.

    The loop is woken only while the reader waits: when it lags behind, items pile up and are
    taken in one batch, so fast tokens cost no extra wake-ups.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[str, Any]] = deque()
        self.ready = asyncio.Event()
        self.waiting = False

    def push(self, kind: str, value: Any) -> None:  # called from the generate thread
        self.items.append((kind, value))  # append before reading `waiting`: see take()
        if self.waiting:
            self.waiting = False
            try:
                self.loop.call_soon_threadsafe(self.ready.set)
            except RuntimeError:
                pass  # the loop is closed: nobody is listening any more

    async def take(self, timeout: float) -> list[tuple[str, Any]]:
        while not self.items:
            self.ready.clear()
            self.waiting = True  # set before the second look, so a push in between wakes us
            if self.items:
                break
            try:
                async with asyncio.timeout(timeout):
                    await self.ready.wait()
            finally:
                self.waiting = False
        self.waiting = False
        batch = []
        while self.items:
            batch.append(self.items.popleft())
        return batch


def _streamer_class(transformers: Any) -> Any:
    class LoopStreamer(transformers.TextIteratorStreamer):
        """TextIteratorStreamer's decoding, delivered to the loop instead of a blocking queue."""

        def __init__(self, tokenizer: Any, channel: _Channel, timeout: float) -> None:
            super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
            self.channel = channel

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                self.channel.push("text", text)

    return LoopStreamer


def _stop_class(transformers: Any) -> Any:
    class StopOnEvent(transformers.StoppingCriteria):
        def __init__(self, event: threading.Event) -> None:
            self.event = event
            self.answers: dict[tuple[int, bool], Any] = {}  # made once: no allocation per token

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            key = (input_ids.shape[0], self.event.is_set())
            if key not in self.answers:
                import torch

                self.answers[key] = torch.full(key[:1], key[1], dtype=torch.bool, device=input_ids.device)
            return self.answers[key]

    return StopOnEvent


class HuggingFaceProvider(Provider):
    kind = "huggingface"

    def __init__(self, name: str, settings: Any, **options: Any) -> None:
        super().__init__(name, settings, **options)
        self._models: dict[str, _Loaded] = {}
        self._embedders: dict[str, _Loaded] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._device: str | None = None

    # -- identity --------------------------------------------------------------------------------

    @property
    def _hf(self) -> Any:
        return self.settings.huggingface

    @property
    def default_model(self) -> str:
        configured = self.options.get("default_model") or self._hf.default_model
        return str(configured) if configured else str(default_tiny_model_dir())

    @property
    def url(self) -> str:
        devices = sorted({m.device for m in (*self._models.values(), *self._embedders.values())})
        if devices:
            return f"local ({', '.join(devices)})"
        return f"local ({self._device or self._configured_device()})"

    @property
    def cache_identity(self) -> str | None:
        return "local"  # the model path is in the key already; the device does not change the answer

    def _configured_device(self) -> str:
        return str(self.options.get("device") or self._hf.device)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.url} models={sorted(self._models)}>"

    # -- loading ---------------------------------------------------------------------------------

    def _resolve_device(self) -> str:
        if self._device is None:
            device = self._configured_device()
            if device == "auto":
                from ..gpu import best_device

                device = best_device()
            elif device == "cuda":
                device = "cuda:0"
            self._device = device
        return self._device

    def _resolve_dtype(self, torch: Any, device: str) -> Any:
        name = str(self.options.get("dtype") or self._hf.dtype)
        if name == "auto":
            if device.startswith("cuda"):
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float16 if device == "mps" else torch.float32
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise BadRequest(
                f"huggingface.dtype={name!r} is not a torch dtype", provider=self.name,
                hint="use auto, float32, float16 or bfloat16",
            )
        return dtype

    def _token(self) -> str | None:
        token = self._hf.token
        return token.get_secret_value() if token is not None else None

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _source(self, name: str) -> str:
        """Where from_pretrained reads `name`; a missing local path fails here, not after a hub retry."""
        if name == str(default_tiny_model_dir()) and not is_built(name):
            build_tiny_model(name)
        if _looks_local(name):
            path = Path(name).expanduser()
            if not path.exists():
                raise ModelNotFound(
                    f"HuggingFace model folder {name} does not exist", provider=self.name, hint=_NOT_FOUND_HINT
                )
            return str(path)
        return name

    def _from_pretrained(self, name: str, loader: Any, **kwargs: Any) -> Any:
        try:
            with quiet_hf(warnings=False):
                return loader.from_pretrained(self._source(name), token=self._token(), **kwargs)
        except FarmError:
            raise
        except ImportError as exc:
            raise MissingDependency(exc.name or "transformers", "hf") from exc
        except (OSError, ValueError) as exc:
            # OSError: no such hub id / no access; ValueError: a folder that is not a model.
            raise ModelNotFound(
                f"HuggingFace model {name} could not be loaded ({_first_line(exc)})",
                provider=self.name, hint=_NOT_FOUND_HINT,
            ) from exc

    def _place(self, torch: Any, model: Any, device: str) -> Any:
        try:
            return model.to(device).eval()
        except _oom_type(torch) as exc:
            raise ServerError(
                f"HuggingFace model does not fit on {device}", provider=self.name,
                hint="use a smaller model, set huggingface.dtype=float16, or unload other models",
            ) from exc

    def _load_causal(self, name: str) -> _Loaded:
        with self._lock_for(name):
            if (ready := self._models.get(name)) is not None:
                return ready
            torch, transformers = _imports()
            device = self._resolve_device()
            dtype = self._resolve_dtype(torch, device)
            tokenizer = self._from_pretrained(name, transformers.AutoTokenizer)
            model = self._from_pretrained(name, transformers.AutoModelForCausalLM, dtype=dtype)
            model = self._place(torch, model, device)
            if model.generation_config.pad_token_id is None and tokenizer.eos_token_id is not None:
                model.generation_config.pad_token_id = tokenizer.eos_token_id  # quiets a warning per call
            loaded = self._describe(name, model, tokenizer, device)
            self._models[name] = loaded
            return loaded

    def _describe(self, name: str, model: Any, tokenizer: Any, device: str, kind: str = "causal") -> _Loaded:
        params = list(model.parameters())
        config = getattr(model, "config", None)
        quant = getattr(config, "quantization_config", None)
        if isinstance(quant, dict):
            quant_method = quant.get("quant_method")
        else:
            quant_method = getattr(quant, "quant_method", None)
        return _Loaded(
            name=name, model=model, tokenizer=tokenizer, device=device,
            dtype=str(params[0].dtype).removeprefix("torch.") if params else "unknown",
            size=sum(p.numel() * p.element_size() for p in params),
            parameters=sum(p.numel() for p in params),
            family=getattr(config, "model_type", None),
            quantization=str(quant_method) if quant_method else None,
            kind=kind,
        )

    async def _ensure(self, name: str) -> _Loaded:
        loaded = self._models.get(name)
        if loaded is None:
            loaded = await asyncio.to_thread(self._load_causal, name)
        return loaded

    # -- the primitive ---------------------------------------------------------------------------

    def _encode(self, tokenizer: Any, messages: list[ChatMessage]) -> Any:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [m.model_dump() for m in messages],
                add_generation_prompt=True, return_tensors="pt", return_dict=True,
            )
        # A base model: one user message is a plain completion; a conversation becomes lines.
        if len(messages) == 1 and messages[0].role == "user":
            prompt = messages[0].content
        else:
            prompt = "\n".join(f"{m.role}: {m.content}" for m in messages) + "\nassistant:"
        return tokenizer(prompt, return_tensors="pt")

    def _generate_kwargs(self, request: ChatRequest, loaded: _Loaded) -> dict[str, Any]:
        p = request.params
        kwargs: dict[str, Any] = {"max_new_tokens": p.max_tokens or self._hf.max_new_tokens}
        if p.temperature:
            kwargs.update(do_sample=True, temperature=p.temperature)
            if p.top_p is not None:
                kwargs["top_p"] = p.top_p
        else:
            kwargs["do_sample"] = False
        if p.stop:
            kwargs.update(stop_strings=p.stop, tokenizer=loaded.tokenizer)
        kwargs.update(p.options_for("huggingface"))  # a closed set: none loads or runs code
        return kwargs

    def _generate(
        self, loaded: _Loaded, request: ChatRequest, channel: _Channel, stop: threading.Event
    ) -> None:
        """The body of the generate thread: every outcome ends as one "done" or "error" item."""
        try:
            torch, transformers = _imports()
            enc = self._encode(loaded.tokenizer, request.messages).to(loaded.device)
            prompt_tokens = int(enc["input_ids"].shape[1])
            kwargs = self._generate_kwargs(request, loaded)
            streamer = _streamer_class(transformers)(loaded.tokenizer, channel, self._hf.stream_timeout)
            stopping = transformers.StoppingCriteriaList([_stop_class(transformers)(stop)])
            if request.params.seed is not None and kwargs.get("do_sample"):
                torch.manual_seed(request.params.seed)
            out = loaded.model.generate(**enc, streamer=streamer, stopping_criteria=stopping, **kwargs)
            completion = int(out.shape[1]) - prompt_tokens
            eos = loaded.model.generation_config.eos_token_id
            eos_ids = set(eos if isinstance(eos, list) else [eos])
            hit_eos = completion > 0 and int(out[0, -1]) in eos_ids
            finish = "length" if completion >= kwargs["max_new_tokens"] and not hit_eos else "stop"
            channel.push("done", (prompt_tokens, completion, finish))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            # The traceback's frames (and torch's hook closures in them) hold the model, and a
            # notebook keeps the last exception: keep the traceback as text so unload can free it.
            exc.add_note("raised in the generate thread:\n" + "".join(traceback.format_tb(exc.__traceback__)).rstrip())
            channel.push("error", exc.with_traceback(None))
            del exc

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        loaded = await self._ensure(request.model)
        channel = _Channel(asyncio.get_running_loop())
        stop = threading.Event()
        thread = threading.Thread(
            target=self._generate, args=(loaded, request, channel, stop),
            name=f"farm-hf-generate-{loaded.name}", daemon=True,
        )
        del loaded  # the thread holds it while it runs; unload must be able to free it after
        error: BaseException | None = None
        shown = ended = False
        thread.start()
        try:
            while error is None:
                try:
                    batch = await channel.take(self._hf.stream_timeout)
                except TimeoutError:
                    raise ProviderTimeout(
                        f"local model {request.model} produced nothing for {self._hf.stream_timeout:.0f}s",
                        provider=self.name,
                        hint="raise huggingface.stream_timeout, or use a smaller model or a GPU",
                    ) from None
                text = "".join(v for k, v in batch if k == "text")
                if text:
                    shown = True
                    yield Chunk(text=text)
                for kind, value in batch:
                    if kind == "error":
                        error, ended = value, True
                    elif kind == "done":
                        ended = True
                        prompt_tokens, completion, finish = value
                        yield Chunk(
                            done=True, finish_reason=finish,
                            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion),
                        )
                        return
        finally:
            stop.set()
            await self._join(thread, channel, ended)
        assert error is not None
        raise self._generate_error(error, request.model, shown) from error

    async def _join(self, thread: threading.Thread, channel: _Channel, ended: bool) -> None:
        """Wait (bounded) for the generate thread: its last act is to push "done" or "error"."""
        deadline = time.monotonic() + _JOIN_TIMEOUT
        while not ended and thread.is_alive():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # a step that outlasts the deadline; the thread is a daemon and ends after it
            try:
                batch = await channel.take(remaining)
            except TimeoutError:
                return
            ended = any(kind != "text" for kind, _ in batch)
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.0005)

    def _generate_error(self, exc: BaseException, model: str, shown: bool) -> FarmError:
        if isinstance(exc, FarmError):
            return exc
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(exc, _oom_type(torch)):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return ServerError(
                f"local model {model} ran out of GPU memory while generating", provider=self.name,
                hint="lower max_tokens, use a smaller model or dtype, or unload other models (%farm unload)",
            )
        rejected = isinstance(exc, (ValueError, TypeError)) or type(exc).__module__.startswith("jinja2")
        if rejected and not shown:
            return BadRequest(
                f"local model {model} rejected the request: {_first_line(exc)}", provider=self.name,
                hint="check the generation parameters (params.extra) and the messages' roles",
            )
        return ServerError(
            f"local model {model} failed while generating: {type(exc).__name__}: {_first_line(exc)}",
            provider=self.name, hint="see the traceback above; try device=cpu to rule out the GPU",
        )

    # -- model management ------------------------------------------------------------------------

    def _info(self, loaded: _Loaded) -> ModelInfo:
        return ModelInfo(
            name=loaded.name, provider=self.name, size=loaded.size, family=loaded.family,
            parameter_size=_human(loaded.parameters), quantization=loaded.quantization, loaded=True,
            details={"device": loaded.device, "dtype": loaded.dtype, "kind": loaded.kind},
        )

    async def list_models(self) -> list[ModelInfo]:
        models = [self._info(m) for m in self._models.values()]
        models += [self._info(m) for name, m in self._embedders.items() if name not in self._models]
        default = self.default_model
        if default not in self._models and default not in self._embedders:
            family = None
            config = Path(default).expanduser() / "config.json"
            if _looks_local(default) and config.is_file():
                try:
                    family = json.loads(config.read_text()).get("model_type")
                except (OSError, ValueError):
                    pass
            models.append(ModelInfo(name=default, provider=self.name, family=family, loaded=False))
        return models

    async def load_model(self, model: str) -> AsyncIterator[PullProgress]:
        yield PullProgress(status="loading")
        loaded = await self._ensure(model)
        yield PullProgress(status=f"loaded on {loaded.device}", total=loaded.size, completed=loaded.size)

    async def unload_model(self, model: str) -> None:
        dropped = [d.pop(model) for d in (self._models, self._embedders) if model in d]
        if not dropped:
            return
        on_cuda = any(d.device.startswith("cuda") for d in dropped)
        dropped.clear()
        await asyncio.to_thread(self._free, on_cuda)

    @staticmethod
    def _free(on_cuda: bool) -> None:
        gc.collect()
        torch = sys.modules.get("torch")
        if on_cuda and torch is not None:
            torch.cuda.empty_cache()

    async def health(self) -> ProviderStatus:
        start = time.perf_counter()
        missing = [p for p in ("torch", "transformers") if importlib.util.find_spec(p) is None]
        if missing:
            error = str(MissingDependency(missing[0], "hf"))
            return ProviderStatus(provider=self.name, state="unhealthy", url=self.url, error=error)
        return ProviderStatus(
            provider=self.name, state="healthy", url=self.url, latency=time.perf_counter() - start,
            models_loaded=sorted({*self._models, *self._embedders}),
        )

    # -- embeddings ------------------------------------------------------------------------------

    def _load_embedder(self, name: str) -> _Loaded:
        key = f"embed:{name}"
        with self._lock_for(key):
            if (ready := self._embedders.get(name)) is not None:
                return ready
            torch, transformers = _imports()
            device = self._resolve_device()
            source = self._source(name)
            if (Path(source) / "modules.json").is_file() and importlib.util.find_spec("sentence_transformers"):
                from sentence_transformers import SentenceTransformer

                with quiet_hf(warnings=False):
                    model = SentenceTransformer(source, device=device, token=self._token())
                loaded = self._describe(name, model, None, device, kind="sentence-transformers")
            elif (chat := self._models.get(name)) is not None:
                # The chat model's own encoder: no second copy of the weights.
                loaded = self._describe(name, chat.model.base_model, chat.tokenizer, chat.device, kind="encoder")
            else:
                dtype = self._resolve_dtype(torch, device)
                tokenizer = self._from_pretrained(name, transformers.AutoTokenizer)
                model = self._place(torch, self._from_pretrained(name, transformers.AutoModel, dtype=dtype), device)
                loaded = self._describe(name, model, tokenizer, device, kind="encoder")
            self._embedders[name] = loaded
            return loaded

    def _embed_sync(self, texts: list[str], name: str) -> list[list[float]]:
        loaded = self._load_embedder(name)
        if loaded.kind == "sentence-transformers":
            vectors = loaded.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
            return [list(map(float, v)) for v in vectors]
        import torch

        tokenizer = loaded.tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        out: list[list[float]] = []
        for start in range(0, len(texts), _EMBED_BATCH):
            enc = tokenizer(
                texts[start : start + _EMBED_BATCH], padding=True, truncation=True, return_tensors="pt"
            ).to(loaded.device)
            with torch.inference_mode():
                hidden = loaded.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out += torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().tolist()
        return out

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        if not texts:
            return []
        name = model or self.default_model
        try:
            return await asyncio.to_thread(self._embed_sync, list(texts), name)
        except FarmError:
            raise
        except Exception as exc:
            raise ServerError(
                f"local model {name} failed to embed: {type(exc).__name__}: {_first_line(exc)}",
                provider=self.name, hint="check that the model has an encoder (an embedding or LM model)",
            ) from exc

    async def aclose(self) -> None:
        for name in sorted({*self._models, *self._embedders}):
            await self.unload_model(name)
