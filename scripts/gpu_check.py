"""Check farm_jupyter's GPU paths on a real NVIDIA machine, in well under two minutes.

    PYTHONPATH=. python scripts/gpu_check.py

What it checks: NVML figures from gpu_stats(); the HuggingFace provider with device "auto" puts
the embedded tiny model on CUDA and streams from it (tokens/s, and the same generation by hand for
comparison); cancelling a stream stops the generate thread; unloading gives the memory back, seen
both by torch's allocator and by NVML, for the tiny model and for a ~130M-parameter random Llama
whose weights are big enough for NVML to show. Exit status 0 when every check passed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEADLINE_S = 110
MiB = 2**20
results: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> bool:
    results.append((bool(ok), what))
    print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
    return bool(ok)


def show_stats(title: str) -> Any:
    from farm_jupyter.gpu import gpu_stats

    stats = gpu_stats()
    print(
        f"\n== {title}: source={stats.source} cpu={stats.cpu_percent}% "
        f"ram={(stats.ram_used or 0) / 2**30:.1f}/{(stats.ram_total or 0) / 2**30:.1f} GiB"
        + (f" reason={stats.reason}" if stats.reason else "")
    )
    for d in stats.devices:
        print(
            f"   gpu{d.index} {d.name}: util={d.utilization}% mem={d.memory_used / MiB:.0f}/"
            f"{d.memory_total / MiB:.0f} MiB temp={d.temperature}C power={d.power}W"
        )
        for p in d.processes:
            print(f"     pid {p.pid} {p.name or '?'}: {p.memory_used / MiB:.0f} MiB")
    return stats


def memory(index: int) -> dict[str, float]:
    import torch

    try:
        nvml_used = torch.cuda.device_memory_used(index)  # NVML, with CUDA_VISIBLE_DEVICES mapped
    except Exception:  # noqa: BLE001 - fall back to our own NVML reading
        from farm_jupyter.gpu import gpu_stats

        nvml_used = gpu_stats().devices[index].memory_used
    # cuBLAS keeps a per-stream workspace (32 MiB on Hopper) in torch's allocator; it belongs to
    # the process, not to a model, so it is released before counting what the model left behind.
    torch.cuda.synchronize(index)
    getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()
    torch.cuda.empty_cache()
    return {
        "allocated_mib": torch.cuda.memory_allocated(index) / MiB,
        "reserved_mib": torch.cuda.memory_reserved(index) / MiB,
        "nvml_used_mib": nvml_used / MiB,
    }


def build_medium_model(tiny: Path, out: Path) -> Path:
    """A random ~130M-parameter Llama in bf16 that shares the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from farm_jupyter.tiny_model import quiet_hf

    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    with quiet_hf():
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def stream_once(provider: Any, name: str, tokens: int) -> dict[str, float]:
    from farm_jupyter.runtime import get_runtime
    from farm_jupyter.types import ChatMessage, ChatRequest, GenerationParams

    req = ChatRequest(
        messages=[ChatMessage(role="user", content="Write a haiku about GPUs.")],
        model=name,
        params=GenerationParams(max_tokens=tokens, extra={"min_new_tokens": tokens}),
    )
    start = time.perf_counter()
    first = None
    text = []
    done = None
    for chunk in get_runtime().iterate(provider.astream(req)):
        if chunk.text:
            first = first or time.perf_counter() - start
            text.append(chunk.text)
        if chunk.done:
            done = chunk
    total = time.perf_counter() - start
    completion = done.usage.completion_tokens if done and done.usage else 0
    return {
        "first_token_s": first or 0.0,
        "total_s": total,
        "completion_tokens": completion,
        "tok_per_s": completion / total if total else 0.0,
        "chars": len("".join(text)),
    }


def by_hand(provider: Any, name: str, tokens: int) -> float:
    """The same generation with generate + TextIteratorStreamer in a thread: the reference speed."""
    from transformers import TextIteratorStreamer

    loaded = provider._models[name]
    enc = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a haiku about GPUs."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    ).to(loaded.device)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    kwargs = dict(**enc, streamer=streamer, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    start = time.perf_counter()
    thread = threading.Thread(target=loaded.model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    for _ in streamer:
        pass
    thread.join()
    return tokens / (time.perf_counter() - start)


def cancel_mid_stream(provider: Any, name: str) -> bool:
    from farm_jupyter.runtime import get_runtime
    from farm_jupyter.types import ChatMessage, ChatRequest, GenerationParams

    req = ChatRequest(
        messages=[ChatMessage(role="user", content="go on")],
        model=name,
        params=GenerationParams(max_tokens=500, extra={"min_new_tokens": 500}),
    )
    stream = get_runtime().iterate(provider.astream(req))
    next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("farm-hf-generate") for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def exercise(provider: Any, name: str, index: int, label: str, *, compare: bool, tokens: int = 256) -> dict[str, Any]:
    import torch

    from farm_jupyter.runtime import get_runtime

    out: dict[str, Any] = {"before": memory(index)}
    t = time.perf_counter()
    statuses = [p.status for p in get_runtime().iterate(provider.load_model(name))]
    out["load_s"] = time.perf_counter() - t
    out["after_load"] = memory(index)
    loaded = provider._models[name]
    weights_mib = loaded.size / MiB
    print(
        f"\n== {label}: {statuses}, {loaded.parameters / 1e6:.1f}M params, {loaded.dtype}, "
        f"{weights_mib:.1f} MiB, loaded in {out['load_s']:.2f}s"
    )
    check(loaded.device.startswith("cuda"), f"{label}: device auto -> {loaded.device}")
    check(next(loaded.model.parameters()).is_cuda, f"{label}: weights are on the GPU")
    if torch.cuda.is_bf16_supported():
        check(loaded.dtype == "bfloat16", f"{label}: dtype auto -> {loaded.dtype}")
    del loaded
    stream_once(provider, name, 16)  # warm-up: kernels, allocator
    out["stream"] = stream_once(provider, name, tokens)
    s = out["stream"]
    print(
        f"   streamed {s['completion_tokens']} tokens: first token {s['first_token_s'] * 1000:.0f} ms, "
        f"{s['tok_per_s']:.0f} tok/s"
    )
    check(s["completion_tokens"] == tokens, f"{label}: usage counts {tokens} generated tokens")
    if compare:
        hand = max(by_hand(provider, name, tokens) for _ in range(2))
        ours = max(s["tok_per_s"], stream_once(provider, name, tokens)["tok_per_s"])
        out["by_hand_tok_per_s"], out["ratio"] = hand, ours / hand
        print(f"   by hand {hand:.0f} tok/s; provider/by-hand = {ours / hand:.2f}")
    check(cancel_mid_stream(provider, name), f"{label}: closing a stream ends the generate thread")
    out["after_stream"] = memory(index)
    get_runtime().run(provider.unload_model(name))
    out["after_unload"] = after = memory(index)
    peak = max(out["after_load"]["nvml_used_mib"], out["after_stream"]["nvml_used_mib"])
    print("   memory MiB (allocated / reserved / NVML used):")
    for key in ("before", "after_load", "after_stream", "after_unload"):
        m = out[key]
        print(f"     {key:13s} {m['allocated_mib']:9.1f} {m['reserved_mib']:9.1f} {m['nvml_used_mib']:9.0f}")
    check(name not in provider._models, f"{label}: unload drops the model")
    check(
        after["allocated_mib"] <= out["before"]["allocated_mib"] + 1,
        f"{label}: torch allocated back to {after['allocated_mib']:.1f} MiB after unload",
    )
    check(
        after["reserved_mib"] <= out["before"]["reserved_mib"] + 1,
        f"{label}: cache emptied (reserved {after['reserved_mib']:.1f} MiB)",
    )
    freed = peak - after["nvml_used_mib"]
    need = 0.8 * weights_mib if weights_mib > 64 else 0.5
    check(freed >= need, f"{label}: NVML sees {freed:.0f} MiB given back (weights {weights_mib:.0f} MiB)")
    return out


def main() -> int:
    watchdog = threading.Timer(DEADLINE_S, lambda: (print("\nTIMED OUT", flush=True), os._exit(3)))
    watchdog.daemon = True
    watchdog.start()
    started = time.perf_counter()

    stats = show_stats("gpu_stats() at start")
    check(stats.source == "nvml", f"NVML answers (source={stats.source})")
    check(stats.has_gpu and all(d.memory_total > 0 for d in stats.devices), "every device reports its memory")
    check(
        any(d.temperature is not None and d.power is not None for d in stats.devices), "temperature and power are read"
    )
    from farm_jupyter.gpu import gpu_stats

    t = time.perf_counter()
    for _ in range(20):
        gpu_stats()
    poll_ms = (time.perf_counter() - t) / 20 * 1000
    check(poll_ms < 50, f"gpu_stats() costs {poll_ms:.1f} ms a call")

    t = time.perf_counter()
    import torch

    from farm_jupyter.config import load_settings
    from farm_jupyter.gpu import best_device
    from farm_jupyter.providers import create
    from farm_jupyter.runtime import get_runtime
    from farm_jupyter.tiny_model import build_tiny_model

    print(
        f"\nimports {time.perf_counter() - t:.1f}s; torch {torch.__version__}, cuda {torch.version.cuda}, "
        f"available={torch.cuda.is_available()}"
    )
    device = best_device()
    check(device.startswith("cuda:"), f"best_device() -> {device}")
    if not device.startswith("cuda:"):
        return 1
    index = int(device.split(":")[1])

    root = Path(tempfile.gettempdir()) / "farm-gpu-check"
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    tiny = build_tiny_model(root / "tiny-chat")
    print(f"built the tiny model in {time.perf_counter() - t:.1f}s at {tiny}")
    t = time.perf_counter()
    medium = build_medium_model(tiny, root / "medium")
    print(f"built the medium model in {time.perf_counter() - t:.1f}s")

    settings = load_settings(
        use_file=False, environ={}, overrides={"huggingface": {"default_model": str(tiny), "device": "auto"}}
    )
    provider = create("huggingface", settings)
    report = {"tiny": exercise(provider, str(tiny), index, "tiny model", compare=True, tokens=128)}
    report["medium"] = exercise(provider, str(medium), index, "medium model", compare=True, tokens=48)
    status = get_runtime().run(provider.health())
    check(status.healthy and device in (status.url or ""), f"health: {status.state}, url={status.url}")

    show_stats("gpu_stats() at the end")
    failed = [what for ok, what in results if not ok]
    print(
        f"\n== report: {len(results) - len(failed)}/{len(results)} checks passed "
        f"in {time.perf_counter() - started:.0f}s"
    )
    for label, r in report.items():
        s = r["stream"]
        print(
            f"   {label}: load {r['load_s']:.2f}s, first token {s['first_token_s'] * 1000:.0f} ms, "
            f"{s['tok_per_s']:.0f} tok/s (by hand {r.get('by_hand_tok_per_s', 0):.0f}, "
            f"ratio {r.get('ratio', 0):.2f}); NVML used {r['before']['nvml_used_mib']:.0f} -> "
            f"{r['after_load']['nvml_used_mib']:.0f} -> {r['after_unload']['nvml_used_mib']:.0f} MiB"
        )
    for what in failed:
        print(f"   FAILED: {what}")
    watchdog.cancel()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
