"""Fill-in-the-middle on a GGUF model, with the model's own FIM tokens.

llama.cpp knows a model's prefix, suffix and middle tokens from the file (`tokenizer.ggml.fim_*`
metadata, or tokens named like `<|fim_prefix|>`). A model that has all three is asked as llama.cpp's
own server asks `/infill`: `[BOS] <PRE> prefix <SUF> suffix <MID>`, the answer being what follows
`<MID>` up to the model's end-of-generation token. llama-cpp-python's `suffix=` is not used: it
wraps the prompt in tokens of its own rather than the model's. A model without them (SmolLM2) is
asked with the chat prompt (`Provider.afill`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from ..types import FillRequest
from ._local import Channel, ran


def fim_tokens(llm: Any) -> tuple[int, int, int] | None:
    """The model's (prefix, suffix, middle) token ids, or None when its vocabulary lacks one."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    found = (
        int(llama_cpp.llama_vocab_fim_pre(vocab)),
        int(llama_cpp.llama_vocab_fim_suf(vocab)),
        int(llama_cpp.llama_vocab_fim_mid(vocab)),
    )
    return None if -1 in found else found


def fim_prompt(llm: Any, request: FillRequest, marks: tuple[int, int, int]) -> list[int]:
    pre, suf, mid = marks

    def text(value: str) -> list[int]:  # special=False: a cell that spells `<|fim_prefix|>` stays text
        return list(llm.tokenize(value.encode(), add_bos=False, special=False))

    head = list(llm.tokenize(b"", add_bos=True, special=True))  # the BOS, when the model wants one
    return [*head, pre, *text(request.fim_prompt), suf, *text(request.suffix), mid]


def infill(llm: Any, request: FillRequest, marks: tuple[int, int, int], channel: Channel, stop: threading.Event) -> str:
    """One FIM generation, its text pushed to `channel` as it comes; returns the finish reason."""
    prompt = fim_prompt(llm, request, marks)
    params: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature}
    if request.stop:
        params["stop"] = request.stop
    channel.push("sent", ran(llm.detokenize(prompt, special=True).decode(errors="replace"), params))
    finish = None
    with contextlib.closing(llm.create_completion(prompt, stream=True, **params)) as chunks:
        for chunk in chunks:
            if stop.is_set():
                break  # closing the generator stops llama.cpp before its next token
            choice = chunk["choices"][0]
            if choice["text"]:
                channel.push("text", choice["text"])
            finish = choice.get("finish_reason") or finish
    return finish or "stop"
