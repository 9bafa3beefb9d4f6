"""A fresh kernel with nothing configured: `%load_ext farm_jupyter` to the embedded model's first token.

    python benchmarks/first_answer.py [--runs 5] [--json]

Each run starts a new IPython kernel (jupyter_client) with nothing of ours in its environment:
a fresh HOME and working folder, no FARM_/OLLAMA_/OPENAI_ variables, Ollama's default port
refused (the run stops if something listens there). Then it sends two cells at once,
`%load_ext farm_jupyter` and `%%farm_chat` with a question, and times from sending the first
to the first answer text on the kernel's iopub channel (a notice line is not an answer).

Baseline, in the same kind of fresh kernel, interleaved: llama.cpp by hand (`import llama_cpp`,
`Llama(...)`, `create_chat_completion(stream=True)` to its first token), with its own defaults
and with the prompt read on as many threads as ours (`n_threads_batch`: llama-cpp-python's default,
every logical core, waits on a busy core), the floor that our router, session and display add to. Kernel start-up is in neither figure. The load average is
printed: on a shared 2-core machine it moves the figures more than anything measured here.
Target (issue 23): median < 1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, fmt, median, summary, table, target  # noqa: E402

ROOT = HERE.parent
QUESTION = "What is the capital of France?"
TARGET = 1.0

BY_HAND = f"""\
import llama_cpp
from farm_jupyter import embedded
llm = llama_cpp.Llama(model_path=str(embedded.find()[0]), n_ctx=2048, verbose=False@THREADS@)
for chunk in llm.create_chat_completion(
    messages=[{{"role": "user", "content": {QUESTION!r}}}], stream=True, temperature=0.0, max_tokens=8
):
    if chunk["choices"][0]["delta"].get("content"):
        print("ANSWER:", chunk["choices"][0]["delta"]["content"])
        break
"""

THREADS = max((os.cpu_count() or 2) // 2, 1)  # llama-cpp-python's n_threads default, and our batch default
VARIANTS = {
    "llama.cpp by hand: import to first token": [BY_HAND.replace("@THREADS@", "")],
    "llama.cpp by hand, n_threads_batch as ours": [BY_HAND.replace("@THREADS@", f", n_threads_batch={THREADS}")],
    "farm: %load_ext to first token": ["%load_ext farm_jupyter", f"%%farm_chat --max-tokens 8\n{QUESTION}"],
}


def _environment(home: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "FARM_MODELS_DIR")
    environ = {k: v for k, v in os.environ.items() if k in keep}
    environ |= {"HOME": str(home), "PYTHONPATH": str(ROOT), "IPYTHONDIR": str(home / "ipython")}
    return environ


def _answer_text(msg: dict[str, Any]) -> str:
    """The answer text a message shows: after the notice's blank line, or a printed ANSWER."""
    content = msg["content"]
    if msg["msg_type"] == "stream":
        text: str = content.get("text", "")
        return text.split("ANSWER:", 1)[1].strip() if "ANSWER:" in text else ""
    if msg["msg_type"] in ("display_data", "update_display_data"):
        plain = str(content.get("data", {}).get("text/plain", ""))
        if plain.startswith(("ollama ", "openai ")) and "answered by" in plain.split("\n", 1)[0]:
            plain = plain.split("\n\n", 1)[1] if "\n\n" in plain else ""
        return plain.strip()
    return ""


def run_once(cells: list[str]) -> float:
    from jupyter_client.manager import start_new_kernel

    with tempfile.TemporaryDirectory(prefix="first-answer-") as tmp:
        home = Path(tmp)
        km, kc = start_new_kernel(kernel_name="python3", env=_environment(home), cwd=str(home))
        try:
            start = time.perf_counter()
            ids = [kc.execute(cell) for cell in cells]
            while True:
                msg = kc.get_iopub_msg(timeout=120)
                if msg["parent_header"].get("msg_id") != ids[-1]:
                    continue
                if msg["msg_type"] == "error":
                    raise RuntimeError("\n".join(msg["content"]["traceback"]))
                if _answer_text(msg):
                    return time.perf_counter() - start
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    raise RuntimeError(f"no answer from {cells[-1]!r}")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 11434)) == 0:
            sys.exit("something listens on Ollama's default port: this measures the machine with no Ollama")
    before = os.getloadavg()
    for cells in VARIANTS.values():
        run_once(cells)  # warm-up: page cache, bytecode caches
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.runs):
        for name, cells in VARIANTS.items():
            times[name].append(run_once(cells))
    after = os.getloadavg()
    ours = median(times, "farm: %load_ext to first token")
    load = f"load average {before[0]:.2f} before, {after[0]:.2f} after, on {os.cpu_count()} cores"
    text = table(
        f"First answer in a fresh kernel, nothing configured ({args.runs} runs each)",
        times,
        "llama.cpp by hand: import to first token",
        notes=[load, f"target: median < {fmt(TARGET)} on 2 cores"],
    )
    emit(
        text,
        {
            "times": summary(times),
            "load": [before, after],
            "targets": [target("%load_ext to first token < 1 s", fmt(ours), ours < TARGET)],
        },
    )


if __name__ == "__main__":
    main()
