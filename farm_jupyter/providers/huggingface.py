"""Local models through transformers: loaded on first use, generated in a thread, streamed.

`model.generate` blocks, so it runs in a daemon thread per request; a streamer hands each piece
of text to the runtime loop (`_local.Channel`), and a stopping criterion watches an event so that
cancelling the request really stops the generation. With nothing configured the provider runs
the embedded SmolLM2-135M-Instruct (`farm_jupyter.embedded`).

A GGUF file (`huggingface:/path/model.gguf`, or the embedded model) is dequantised by
transformers on its first load, then saved once as a plain checkpoint under
`~/.cache/farm_jupyter/converted/`: later loads read that (seconds instead of a minute).

torch and transformers are imported inside the methods that need them: creating this provider
costs nothing, and the first load pays for the import.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from .. import embedded
from ..errors import BadRequest, FarmError, MissingDependency, ModelNotFound, ServerError
from ..tiny_model import quiet_hf
from ..types import ChatMessage, ChatRequest, ModelInfo, ProviderStatus, PullProgress, Usage
from ..types.capabilities import Capabilities
from . import _guidance
from ._constrain import Constraint, Reader, constraint, repeated
from ._local import Channel, LocalProvider, ensure, first_line
from ._transformers import (
    CONVERTED,
    Loaded,
    describe,
    encode,
    human_count,
    imports,
    mean_pooled,
    oom_type,
    penalty_class,
    ran_text,
    save_converted,
    stop_class,
    streamer_class,
    structure,
)

_NOT_FOUND_HINT = "give a local path, or set HF_TOKEN / check the hub id"
# The embedded model's penalties. Free text: greedy alone looped 4 times in 60 questions, 1.1 never
# (benchmarks/local_quality.py). Under a grammar: the answer's own tokens, JSON spared (as on llama.cpp).
EMBEDDED_PENALTY, EMBEDDED_GRAMMAR_PENALTY = 1.1, 1.3
log = logging.getLogger("farm_jupyter")


_GUIDED = ("schema", "tools", "tool_choice")  # what llguidance's grammar gives this provider


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name) or Path(name).exists()


class HuggingFaceProvider(LocalProvider[Loaded]):
    kind = "huggingface"
    # schema and tools under llguidance's grammar, "auto" included (issue 23). Without llguidance a
    # schema is said in the prompt and validated, and tools are refused before anything is sent.
    capabilities = Capabilities.of(
        "stream", "stop", "seed", "temperature", "max_tokens", "embed", "load", "fallback",
        *(_GUIDED if _guidance.available() else ()),
        installs={} if _guidance.available() else dict.fromkeys(_GUIDED, 'pip install "farm-jupyter[hf]"'),
    )  # fmt: skip
    stalled = "raise huggingface.stream_timeout, or use a smaller model or a GPU"

    def __init__(self, name: str, settings: Any, **options: Any) -> None:
        super().__init__(name, settings, **options)
        self._embedders: dict[str, Loaded] = {}
        self._device: str | None = None

    # -- identity --------------------------------------------------------------------------------

    @property
    def _hf(self) -> Any:
        return self.settings.huggingface

    @property
    def default_model(self) -> str:
        return str(self.options.get("default_model") or self._hf.default_model or embedded.NAME)

    @property
    def stream_timeout(self) -> float:
        return float(self._hf.stream_timeout)

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
                f"huggingface.dtype={name!r} is not a torch dtype",
                provider=self.name,
                hint="use auto, float32, float16 or bfloat16",
            )
        return dtype

    def _token(self) -> str | None:
        token = self._hf.token
        return token.get_secret_value() if token is not None else None

    def _source(self, name: str) -> str:
        """Where from_pretrained reads `name`; a missing local path fails here, not after a hub retry."""
        if _looks_local(name):
            path = Path(name).expanduser()
            if not path.exists():
                raise ModelNotFound(
                    f"HuggingFace model folder {name} does not exist", provider=self.name, hint=_NOT_FOUND_HINT
                )
            return str(path)
        return name

    def _gguf(self, name: str) -> Path | None:
        """The GGUF file behind `name` (the embedded model's name, or a path ending in .gguf), or None."""
        if embedded.is_embedded(name):
            return embedded.locate(self.name)
        if not name.lower().endswith(".gguf"):
            return None
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelNotFound(
                f"GGUF file {name} does not exist", provider=self.name, hint="give the path of a .gguf file"
            )
        return path.absolute()

    def _from_pretrained(self, name: str, loader: Any, source: str | None = None, **kwargs: Any) -> Any:
        try:
            with quiet_hf(warnings=False):
                return loader.from_pretrained(source or self._source(name), token=self._token(), **kwargs)
        except FarmError:
            raise
        except ImportError as exc:
            raise MissingDependency(exc.name or "transformers", "hf") from exc
        except (OSError, ValueError) as exc:
            # OSError: no such hub id / no access; ValueError: a folder that is not a model.
            raise ModelNotFound(
                f"HuggingFace model {name} could not be loaded ({first_line(exc)})",
                provider=self.name,
                hint=_NOT_FOUND_HINT,
            ) from exc

    def _load_gguf(self, name: str, gguf: Path, transformers: Any, dtype: Any) -> tuple[Any, Any]:
        """Tokenizer and model from a GGUF file: from its converted copy when there is one."""
        folder = embedded.converted_dir() / f"{gguf.stem}-{embedded.fingerprint(gguf)}"
        if (folder / CONVERTED).is_file():
            tokenizer = self._from_pretrained(name, transformers.AutoTokenizer, str(folder))
            return tokenizer, self._from_pretrained(name, transformers.AutoModelForCausalLM, str(folder), dtype=dtype)
        where = str(gguf.parent)
        tokenizer = self._from_pretrained(name, transformers.AutoTokenizer, where, gguf_file=gguf.name)
        model = self._from_pretrained(name, transformers.AutoModelForCausalLM, where, gguf_file=gguf.name, dtype=dtype)
        # The weights are plain tensors now; only the GGUF tag stops save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        try:
            save_converted(folder, gguf, model, tokenizer)
        except OSError as exc:  # a full disk costs the next load its time, not this answer
            log.warning("could not save the converted %s into %s: %s", gguf.name, folder, exc)
        return tokenizer, model

    def _place(self, torch: Any, model: Any, device: str) -> Any:
        try:
            return model.to(device).eval()
        except oom_type(torch) as exc:
            raise ServerError(
                f"HuggingFace model does not fit on {device}",
                provider=self.name,
                hint="use a smaller model, set huggingface.dtype=float16, or unload other models",
            ) from exc

    def _load(self, name: str) -> Loaded:
        with self._lock_for(name):
            if (ready := self._models.get(name)) is not None:
                return ready
            torch, transformers = imports()
            device = self._resolve_device()
            dtype = self._resolve_dtype(torch, device)
            gguf = self._gguf(name)
            if gguf is not None:
                tokenizer, model = self._load_gguf(name, gguf, transformers, dtype)
            else:
                tokenizer = self._from_pretrained(name, transformers.AutoTokenizer)
                model = self._from_pretrained(name, transformers.AutoModelForCausalLM, dtype=dtype)
            model = self._place(torch, model, device)
            if model.generation_config.pad_token_id is None and tokenizer.eos_token_id is not None:
                model.generation_config.pad_token_id = tokenizer.eos_token_id  # quiets a warning per call
            loaded = describe(name, model, tokenizer, device)
            if gguf is not None:
                loaded.quantization = f"{gguf.stem.rsplit('.', 1)[-1]} (GGUF, dequantised)"
            self._models[name] = loaded
            return loaded

    # -- the primitive ---------------------------------------------------------------------------

    def _generate_kwargs(self, request: ChatRequest, loaded: Loaded) -> dict[str, Any]:
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

    def _generate(self, loaded: Loaded, request: ChatRequest, channel: Channel, stop: threading.Event) -> None:
        """The body of the generate thread: every outcome ends as one "done" or "error" item."""
        try:
            shape = constraint(request, self.name)
            finish, answer, usage = self._run(loaded, request, shape, channel, stop)
            if shape.envelope and answer.call is not None and repeated(answer.call, request.messages):
                shape = constraint(request, self.name, answer_only=True)
                finish, answer, more = self._run(loaded, request, shape, channel, stop)
                usage = Usage(
                    prompt_tokens=usage.prompt_tokens + more.prompt_tokens,
                    completion_tokens=usage.completion_tokens + more.completion_tokens,
                )
            if answer.call is not None:
                channel.push("calls", [answer.call])
            channel.push("done", (usage, finish))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            # The traceback's frames (and torch's hook closures in them) hold the model, and a
            # notebook keeps the last exception: keep the traceback as text so unload can free it.
            exc.add_note("raised in the generate thread:\n" + "".join(traceback.format_tb(exc.__traceback__)).rstrip())
            channel.push("error", exc.with_traceback(None))
            del exc

    def _run(
        self, loaded: Loaded, request: ChatRequest, shape: Constraint, channel: Channel, stop: threading.Event
    ) -> tuple[str, Reader, Usage]:
        """One generation under `shape` (a grammar when it has a schema): its finish reason, what
        it said, read, and its usage."""
        torch, transformers = imports()
        enc = encode(loaded.tokenizer, shape.messages).to(loaded.device)
        prompt_tokens = int(enc["input_ids"].shape[1])
        kwargs = self._generate_kwargs(request, loaded)
        window = getattr(loaded.model.config, "max_position_embeddings", None)
        if isinstance(window, int) and prompt_tokens >= window:  # counted exactly, before generating
            raise BadRequest(
                f"the prompt is {prompt_tokens} tokens, over {request.model}'s context window of {window}",
                provider=self.name,
                hint="shorten the conversation (%farm reset)",
            )
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = list(eos if isinstance(eos, list) else [eos])
        processors, own = [], "repetition_penalty" in request.params.extra
        if (compiled := _guidance.constrained(shape, channel.push)) is not None:
            if loaded.guide is None:
                loaded.guide = _guidance.tokenizer(loaded.tokenizer, eos_ids, self.name)
            processors.append(_guidance.processor_class(transformers)(loaded.guide, compiled))
            if not own:  # a model's own penalty (its generation config) would push JSON off its `"` and `,`
                kwargs["repetition_penalty"] = 1.0
            if not own and embedded.is_embedded(request.model):
                processors.insert(0, penalty_class(transformers)(structure(loaded), EMBEDDED_GRAMMAR_PENALTY))
        elif embedded.is_embedded(request.model) and not own:
            kwargs["repetition_penalty"] = EMBEDDED_PENALTY
        shown = {**kwargs, "grammar": compiled} if processors else kwargs
        channel.push("sent", ran_text(loaded, enc["input_ids"][0], shown, request.params.seed))
        answer = Reader(channel.push, shape)
        streamer = streamer_class(transformers)(loaded.tokenizer, answer.add, self._hf.stream_timeout, bool(processors))
        stopping = transformers.StoppingCriteriaList([stop_class(transformers)(stop)])
        if request.params.seed is not None and kwargs.get("do_sample"):
            torch.manual_seed(request.params.seed)
        if processors:
            kwargs["logits_processor"] = transformers.LogitsProcessorList(processors)
        out = loaded.model.generate(**enc, streamer=streamer, stopping_criteria=stopping, **kwargs)
        completion = int(out.shape[1]) - prompt_tokens
        hit_eos = completion > 0 and int(out[0, -1]) in eos_ids
        finish = "length" if completion >= kwargs["max_new_tokens"] and not hit_eos else "stop"
        # The end-of-turn token is not part of the answer (llama.cpp's count leaves it out too).
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion - int(hit_eos))
        return answer.end(finish), answer, usage

    def _failed(self, exc: BaseException, model: str, shown: bool) -> FarmError:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(exc, oom_type(torch)):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return ServerError(
                f"local model {model} ran out of GPU memory while generating",
                provider=self.name,
                hint="lower max_tokens, use a smaller model or dtype, or unload other models (%farm unload)",
            )
        rejected = isinstance(exc, (ValueError, TypeError)) or type(exc).__module__.startswith("jinja2")
        if rejected and not shown:
            return BadRequest(
                f"local model {model} rejected the request: {first_line(exc)}",
                provider=self.name,
                hint="check the generation parameters (params.extra) and the messages' roles",
            )
        return ServerError(
            f"local model {model} failed while generating: {type(exc).__name__}: {first_line(exc)}",
            provider=self.name,
            hint="see the traceback above; try device=cpu to rule out the GPU",
        )

    # -- counting --------------------------------------------------------------------------------

    def count_tokens(
        self, prompt: str | Sequence[ChatMessage], model: str | None = None, *, load: bool = True
    ) -> int | None:
        name = model or self.default_model
        loaded = self._load(name) if load else self._models.get(name)
        if loaded is None:
            return None
        if isinstance(prompt, str):
            return len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return int(encode(loaded.tokenizer, list(prompt))["input_ids"].shape[1])

    # -- model management ------------------------------------------------------------------------

    def _info(self, loaded: Loaded) -> ModelInfo:
        return ModelInfo(
            name=loaded.name,
            provider=self.name,
            size=loaded.size,
            family=loaded.family,
            parameter_size=human_count(loaded.parameters),
            quantization=loaded.quantization,
            loaded=True,
            details={"device": loaded.device, "dtype": loaded.dtype, "kind": loaded.kind},
        )

    async def list_models(self) -> list[ModelInfo]:
        """The loaded models, the default one, and the GGUF files and converted models on this machine."""
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
            if embedded.is_embedded(default):
                models.append(
                    ModelInfo(
                        name=default,
                        provider=self.name,
                        family="llama",
                        parameter_size="135M",
                        quantization="Q4_1 (GGUF)",
                        loaded=False,
                        details={"about": embedded.ABOUT},
                    )
                )
            else:
                models.append(ModelInfo(name=default, provider=self.name, family=family, loaded=False))
        shown = {m.name for m in models}
        for path in [*embedded.local_gguf_files(), *embedded.converted_models()]:
            if str(path) not in shown:
                kind = "gguf" if path.suffix == ".gguf" else "converted from gguf"
                size = path.stat().st_size if path.is_file() else None
                models.append(
                    ModelInfo(name=str(path), provider=self.name, size=size, loaded=False, details={"kind": kind})
                )
        return models

    async def load_model(self, model: str) -> AsyncIterator[PullProgress]:
        yield PullProgress(status="loading")
        loaded = await ensure(self._models, self._load, model)
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
            provider=self.name,
            state="healthy",
            url=self.url,
            latency=time.perf_counter() - start,
            models_loaded=sorted({*self._models, *self._embedders}),
        )

    # -- embeddings ------------------------------------------------------------------------------

    def _load_embedder(self, name: str) -> Loaded:
        key = f"embed:{name}"
        with self._lock_for(key):
            if (ready := self._embedders.get(name)) is not None:
                return ready
            torch, transformers = imports()
            device = self._resolve_device()
            source = self._source(name)
            if (Path(source) / "modules.json").is_file() and importlib.util.find_spec("sentence_transformers"):
                from sentence_transformers import SentenceTransformer

                with quiet_hf(warnings=False):
                    model = SentenceTransformer(source, device=device, token=self._token())
                loaded = describe(name, model, None, device, kind="sentence-transformers")
            elif (chat := self._models.get(name)) is not None:
                # The chat model's own encoder: no second copy of the weights.
                loaded = describe(name, chat.model.base_model, chat.tokenizer, chat.device, kind="encoder")
            else:
                dtype = self._resolve_dtype(torch, device)
                tokenizer = self._from_pretrained(name, transformers.AutoTokenizer)
                model = self._place(torch, self._from_pretrained(name, transformers.AutoModel, dtype=dtype), device)
                loaded = describe(name, model, tokenizer, device, kind="encoder")
            self._embedders[name] = loaded
            return loaded

    def _embed_sync(self, texts: list[str], name: str) -> list[list[float]]:
        loaded = self._load_embedder(name)
        if loaded.kind == "sentence-transformers":
            vectors = loaded.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
            return [list(map(float, v)) for v in vectors]
        return mean_pooled(loaded, texts)

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
                f"local model {name} failed to embed: {type(exc).__name__}: {first_line(exc)}",
                provider=self.name,
                hint="check that the model has an encoder (an embedding or LM model)",
            ) from exc

    async def aclose(self) -> None:
        for name in sorted({*self._models, *self._embedders}):
            await self.unload_model(name)
