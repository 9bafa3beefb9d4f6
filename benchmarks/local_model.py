"""Local model: tokens per second through the HuggingFace provider versus `model.generate` by hand.

    python benchmarks/local_model.py [--runs N] [--tokens N] [--model PATH] [--json]

The tiny chat model (`farm_jupyter.tiny_model`, built once into benchmarks/.cache/tiny-chat) or
`--model`, on the provider's own choice of device and dtype (device auto: a GPU when there is one,
else CPU). Same prompt (the chat template), greedy, min_new_tokens = max_new_tokens = N, and
TextIteratorStreamer's decoding on both sides:
- by hand: `model.generate` in a thread, this thread reading a `TextIteratorStreamer`
  (transformers' documented streaming recipe), on a second copy of the weights loaded the same way;
- farm_jupyter: `session.stream(..., "huggingface:<path>")` read from this thread;
- for reference, `model.generate` with no streamer (the compute alone), in this thread and in a
  new thread (streaming needs a generating thread; on some GPU machines that alone costs a lot).
tokens/s = N / wall time of the whole request. Target: farm_jupyter >= 0.95x by hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, measure, ratio, summary, table, target  # noqa: E402

from farm_jupyter.session import Session  # noqa: E402
from farm_jupyter.tiny_model import build_tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--model", help="a model folder or hub id (default: the tiny model)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads on CPU (default 1: the tiny model's matrices gain nothing from more, and a "
                             "second OpenMP thread on a shared machine makes timings erratic); 0 = torch's default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    import transformers

    path = args.model or str(build_tiny_model(HERE / ".cache" / "tiny-chat"))
    n = args.tokens
    session = Session(config={"env": "test", "cache": {"backend": "none"}, "huggingface": {"default_model": path}})
    target_name = f"huggingface:{path}"
    list(session.load(target_name))
    info = next(m for m in session.models("huggingface") if m.name == path)
    device, dtype = info.details["device"], info.details["dtype"]
    if args.threads and device == "cpu":
        torch.set_num_threads(args.threads)

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    messages = [{"role": "user", "content": "Write about the sea."}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(device)
    settings: dict[str, Any] = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False,
                                "pad_token_id": tokenizer.eos_token_id}

    def by_hand() -> str:
        streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = threading.Thread(target=model.generate, kwargs={**enc, "streamer": streamer, **settings})
        thread.start()
        text = "".join(streamer)
        thread.join()
        return text

    def compute_only() -> None:
        out = model.generate(**enc, **settings)
        assert out.shape[1] - enc["input_ids"].shape[1] == n

    def in_a_thread() -> None:
        thread = threading.Thread(target=compute_only)
        thread.start()
        thread.join()

    def farm() -> str:
        stream = session.stream(messages[0]["content"], target_name, max_tokens=n, extra={"min_new_tokens": n})
        text = "".join(c.text for c in stream)
        assert stream.response is not None and stream.response.usage.completion_tokens == n
        return text

    assert by_hand() == farm(), "the provider and the hand-written loop must generate the same text"
    fns = {"model.generate + TextIteratorStreamer, by hand": by_hand, "farm_jupyter.stream (huggingface)": farm,
           "model.generate, no streamer (compute only)": compute_only,
           "model.generate in a new thread, no streamer": in_a_thread}
    times = measure(fns, args.runs, warmup=2)
    session.close()

    base = "model.generate + TextIteratorStreamer, by hand"
    rel = 1 / ratio(times, "farm_jupyter.stream (huggingface)", base)
    per_second = {"tokens/s": {k: f"{n / statistics.median(v):,.0f}" for k, v in times.items()},
                  "rate vs by hand": {k: f"{statistics.median(times[base]) / statistics.median(v):.3f}x" for k, v in times.items()}}
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    where = f"{device} ({gpu})" if gpu else device
    text = table(
        f"Local model, {n} new tokens, {Path(path).name} on {where}, {dtype}, greedy ({args.runs} runs)", times, base,
        extra=per_second,
        notes=[f"model: {info.parameter_size} parameters; transformers {transformers.__version__}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} CPU thread(s)."],
    )
    targets = [target(f"HuggingFace provider >= 0.95x model.generate by hand ({device})", f"{rel:.3f}x", rel >= 0.95)]
    emit(text, {"times": summary(times), "device": device, "dtype": dtype, "tokens": n, "targets": targets})


if __name__ == "__main__":
    main()
