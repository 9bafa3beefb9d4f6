"""What the HuggingFace provider asks of transformers and torch, apart from the provider itself:
their import, a streamer and a stopping criterion for the generate thread, what a loaded model
is, how a prompt is encoded, how an encoder embeds, and how a dequantised GGUF model is saved.

Nothing here imports torch or transformers at import time: each function is handed the module,
or imports it when it is called.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MissingDependency
from ..tiny_model import quiet_hf
from ..types import ChatMessage
from ._constrain import STRUCTURE, Penalty
from ._local import ran

# What decides the sampling, as `%farm why` shows it: the model's generation config, under what
# the request gave `generate`; the sampling knobs only where it samples (greedy ignores them).
_SAMPLING = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
             "no_repeat_ngram_size", "max_new_tokens", "eos_token_id")  # fmt: skip
_SAMPLED_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p")

CONVERTED = "farm-converted.json"  # written last: a folder without it is an unfinished conversion
EMBED_BATCH = 32


@dataclass
class Loaded:
    """A model in memory, with what `%farm models` shows of it."""

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
    guide: Any = None  # llguidance's view of the tokenizer, made on the first constrained answer
    spared: Any = None  # the tokens `Penalty` never penalises, found on first use


def imports() -> tuple[Any, Any]:
    # OpenMP's threads spin while they wait for work; with another process on the same cores they
    # spin against it: SmolLM2 on 2 busy cores decoded 1.4-1.5 tokens/s spinning, 3.0-4.4 passive
    # (two busy loops beside it). Only where nobody chose, and only before torch is first imported:
    # its OpenMP reads this once.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependency(exc.name or "transformers", "hf") from exc
    return torch, transformers


def oom_type(torch: Any) -> type[BaseException]:
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def streamer_class(transformers: Any) -> Any:
    class LoopStreamer(transformers.TextIteratorStreamer):
        """TextIteratorStreamer's decoding, delivered to the loop instead of a blocking queue."""

        def __init__(self, tokenizer: Any, add: Callable[[str], None], timeout: float, eager: bool = False) -> None:
            super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
            self.add = add  # a constrained answer's reader (`_constrain.Reader.add`)
            self.eager = eager

        def put(self, value: Any) -> None:
            """With `eager` (JSON under a grammar), each token's text as it comes: TextStreamer holds
            symbols until the next space, and a string value such as a URL has none."""
            if not self.eager or self.next_tokens_are_prompt:
                super().put(value)
                return
            self.token_cache.extend(value.reshape(-1).tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if not text.endswith("\ufffd"):  # else a character is not whole yet
                shown = int(self.print_len)  # type: ignore[has-type]
                self.on_finalized_text(text[shown:])
                self.print_len = len(text)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                self.add(text)

    return LoopStreamer


def structure(loaded: Loaded) -> Any:
    """Which tokens are JSON punctuation and whitespace only (`_constrain.Penalty` spares them)."""
    if loaded.spared is None:
        import numpy as np

        vocab = int(loaded.model.config.vocab_size)
        pieces = loaded.tokenizer.batch_decode([[i] for i in range(min(vocab, len(loaded.tokenizer)))])
        spared = np.zeros(vocab, dtype=bool)
        spared[: len(pieces)] = [bool(p) and set(p) <= STRUCTURE for p in pieces]
        loaded.spared = spared
    return loaded.spared


def penalty_class(transformers: Any) -> Any:
    class Sparing(transformers.LogitsProcessor):  # type: ignore[misc, name-defined]
        """`_constrain.Penalty` (numpy) as a transformers logits processor (a batch of one)."""

        def __init__(self, spared: Any, penalty: float) -> None:
            self.penalty = Penalty(spared, penalty)

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            import torch

            said = self.penalty(input_ids[0].cpu().numpy(), scores[0].detach().float().cpu().numpy().copy())
            return torch.from_numpy(said).to(scores.device, scores.dtype).unsqueeze(0)

    return Sparing


def stop_class(transformers: Any) -> Any:
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


def describe(name: str, model: Any, tokenizer: Any, device: str, kind: str = "causal") -> Loaded:
    """Its size, dtype and quantisation, read off the model itself: what was asked for may differ."""
    params = list(model.parameters())
    config = getattr(model, "config", None)
    quant = getattr(config, "quantization_config", None)
    if isinstance(quant, dict):
        quant_method = quant.get("quant_method")
    else:
        quant_method = getattr(quant, "quant_method", None)
    return Loaded(
        name=name,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=str(params[0].dtype).removeprefix("torch.") if params else "unknown",
        size=sum(p.numel() * p.element_size() for p in params),
        parameters=sum(p.numel() for p in params),
        family=getattr(config, "model_type", None),
        quantization=str(quant_method) if quant_method else None,
        kind=kind,
    )


def encode(tokenizer: Any, messages: list[ChatMessage]) -> Any:
    """The prompt's tensors: through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [m.model_dump() for m in messages],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
    # A base model: one user message is a plain completion; a conversation becomes lines.
    if len(messages) == 1 and messages[0].role == "user":
        prompt = messages[0].content
    else:
        prompt = "\n".join(f"{m.role}: {m.content}" for m in messages) + "\nassistant:"
    return tokenizer(prompt, return_tensors="pt")


def ran_text(loaded: Loaded, input_ids: Any, kwargs: dict[str, Any], seed: int | None) -> str:
    """What `generate` runs (`_local.ran`): the prompt's tokens written out, special ones
    included, and the sampling parameters in effect."""
    config = loaded.model.generation_config
    params = {k: v for k in _SAMPLING if (v := getattr(config, k, None)) is not None}
    params.update((k, v) for k, v in kwargs.items() if k != "tokenizer")
    if params.get("do_sample"):
        params["seed"] = seed
    else:
        for key in _SAMPLED_ONLY:
            params.pop(key, None)
    return ran(loaded.tokenizer.decode(input_ids, skip_special_tokens=False), params)


def mean_pooled(loaded: Loaded, texts: list[str]) -> list[list[float]]:
    """Unit vectors of `texts` from an encoder: its last hidden state, averaged over the real tokens."""
    import torch

    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[list[float]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        enc = tokenizer(texts[start : start + EMBED_BATCH], padding=True, truncation=True, return_tensors="pt").to(
            loaded.device
        )
        with torch.inference_mode():
            hidden = loaded.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        out += torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().tolist()
    return out


def save_converted(folder: Path, gguf: Path, model: Any, tokenizer: Any) -> None:
    """Save a dequantised GGUF model as a plain checkpoint: later loads take seconds, not a minute."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with quiet_hf(warnings=False):
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED).write_text(json.dumps({"gguf": str(gguf), "at": time.time()}))
        tmp.chmod(0o755)
        try:
            os.replace(tmp, folder)  # atomic: of two kernels converting at once, one wins
        except OSError:
            if not (folder / CONVERTED).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def human_count(count: int) -> str:
    """`135.0M` for a parameter count, as Ollama writes a model's size."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)
