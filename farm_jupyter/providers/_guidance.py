"""Constrained decoding with llguidance on both local engines: a JSON Schema (made strict and
shaped by `_constrain`) becomes a grammar, and a logits processor (`Mask`; for transformers a
`LogitsProcessor` around it) masks, at every step, each token the grammar does not allow next; once
the grammar is complete only the end of the turn is allowed. On llama.cpp it decoded at the
unconstrained rate where llama.cpp's own grammar ran at 0.58x (benchmarks/structured.py).

llguidance enforces numeric bounds, `maxItems` and string lengths itself, so no integer range is
turned into an enum here. Its JSON is compiled without free whitespace (", " and ": " between
items): a small model given the choice of more whitespace can take it until `max_tokens`.

The mask is computed into a numpy buffer and expanded with `unpackbits`: llguidance's own torch
helper compiles a kernel with `torch.compile`, and a plain torch expansion cost 27-75 ms a token on
2 cores, against 0.1 ms this way. llguidance is imported on first use (`pip install
"farm-jupyter[hf]"`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings
from collections.abc import Callable
from typing import Any

from ..errors import BadRequest, MissingDependency
from ._constrain import Constraint
from ._local import first_line

# Items separated as a model writes JSON by itself; no other whitespace (see the module docstring).
_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise MissingDependency("llguidance", "hf") from exc
    return llguidance


def tokenizer(hf_tokenizer: Any, eos: list[int], provider: str) -> Any:
    """llguidance's view of a fast HF tokenizer (about 0.6 s to build: keep it with the model)."""
    _llguidance()
    import llguidance.hf  # it imports transformers, which a llama.cpp-only install lacks

    try:
        return llguidance.hf.from_tokenizer(hf_tokenizer, eos_token=eos[0] if len(eos) == 1 else eos)
    except ValueError as exc:
        raise BadRequest(
            f"this model's tokenizer cannot be constrained ({first_line(exc)})",
            provider=provider,
            hint="use a model with a fast tokenizer (tokenizer.json), or drop schema=/tools=",
        ) from exc


@functools.lru_cache(maxsize=64)
def grammar(schema: str) -> tuple[str, str | None]:
    """(the grammar of a JSON Schema, the note saying what it leaves to the validation, or None)."""
    llg = _llguidance()
    compiled = llg.LLMatcher.grammar_from_json_schema(schema, defaults=_OPTIONS)
    failed, messages = llg.LLMatcher.validate_grammar_with_warnings(compiled)
    if failed:
        raise ValueError(messages[0] if messages else "invalid grammar")
    left: list[str] = []
    for message in messages:
        _, _, keys = message.partition("Unimplemented keys: ")
        try:
            left += json.loads(keys) if keys else [message]
        except ValueError:
            left.append(message)
    note = f"llguidance does not enforce {', '.join(left)}: checked after the answer" if left else None
    return compiled, note


def constrained(shape: Constraint, push: Callable[[str, Any], None]) -> str | None:
    """The grammar of `shape`'s schema (None without one); what it leaves to the validation, or
    that it could not be built at all, is said in the footer (`push("note", ...)`)."""
    if shape.schema is None:
        return None
    try:
        compiled, note = grammar(json.dumps(shape.schema))
    except ValueError as exc:
        push(
            "note",
            f"llguidance cannot turn this schema into a grammar ({first_line(exc)}): "
            "the answer is checked and asked again instead",
        )
        return None
    if note:
        push("note", note)
    return compiled


def available() -> bool:
    return importlib.util.find_spec("llguidance") is not None


def llama_tokenizer(llm: Any) -> Any:
    """llguidance's view of a llama.cpp model's vocabulary (about 1 s to build: keep it)."""
    _llguidance()
    import llguidance.llamacpp

    with warnings.catch_warnings():  # it calls llama_token_get_attr, deprecated in llama-cpp-python 0.3
        warnings.simplefilter("ignore", DeprecationWarning)
        return llguidance.llamacpp.lltokenizer_from_vocab(llm._model.vocab)  # noqa: SLF001 - the only way to it


class Mask:
    """What the grammar blocks next, as a boolean array over the vocabulary; and, called as
    llama-cpp-python's logits processor (numpy scores), those tokens' logits set to -inf. The
    first call sees the prompt alone; each later one first feeds the grammar the token chosen."""

    def __init__(self, lltokenizer: Any, compiled: str) -> None:
        import numpy as np

        self.matcher = _llguidance().LLMatcher(lltokenizer, compiled, log_level=0)
        self.compiled = compiled
        self.bits = np.full((lltokenizer.vocab_size + 31) // 32, -1, dtype=np.int32)
        self.start: int | None = None

    def blocked(self, input_ids: Any, vocab: int) -> Any:
        import numpy as np

        if self.start is None:
            self.start = len(input_ids)
        elif not self.matcher.consume_token(int(input_ids[-1])):
            raise RuntimeError(f"llguidance refused a token it allowed: {self.matcher.get_error()}")
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        allowed = np.unpackbits(self.bits.view(np.uint8), bitorder="little").view(bool)
        blocked = np.ones(vocab, dtype=bool)  # tokens past the grammar's vocabulary too
        width = min(len(allowed), vocab)
        blocked[:width] = ~allowed[:width]
        return blocked

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        scores[self.blocked(input_ids, len(scores))] = -np.inf
        return scores


def processor_class(transformers: Any) -> Any:
    class Constrained(transformers.LogitsProcessor):  # type: ignore[misc, name-defined]
        """`Mask` as a transformers logits processor (a batch of one)."""

        def __init__(self, lltokenizer: Any, compiled: str) -> None:
            self.mask = Mask(lltokenizer, compiled)

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            import torch

            blocked = self.mask.blocked(input_ids[0], int(scores.shape[-1]))
            return scores.masked_fill(torch.from_numpy(blocked).to(scores.device), float("-inf"))

    return Constrained
