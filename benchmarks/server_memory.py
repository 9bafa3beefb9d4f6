"""Memory of the Jupyter server extension under request bodies at and over its limit.

    python benchmarks/server_memory.py [--runs N] [--json]

A real `jupyter server` with the extension (loopback Ollama in a process of its own), then rounds
of 4 concurrent requests while its RSS is sampled every 5 ms:
- at the limit: 4 bodies of just under 8 MiB (the default `FarmServer.max_body_size`), each one
  prompt: read, kept and parsed, then refused 400 by the prompt-length limit;
- over the limit: 4 bodies of 50 MB (the issue's probe): drained unkept, answered 413.
`peak` is the most RSS seen above the server's RSS before the round; `after` is what is still
above it 2 s after the round. Target: 4 at the limit keep the server under +100 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import httpx  # noqa: E402
import psutil  # noqa: E402
from _common import emit, target  # noqa: E402
from _servers import serve  # noqa: E402

MiB = 1024 * 1024
LIMIT = 8 * MiB
CONCURRENT = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_jupyter(tmp: Path, ollama_url: str) -> tuple[subprocess.Popen[bytes], str, str]:
    shutil.copytree(ROOT / "jupyter-config", tmp / "jupyter-config")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "OLLAMA_", "OPENAI_", "JUPYTER_"))}
    env |= {
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "OLLAMA_HOST": ollama_url,
        "FARM_ENV": "test",
        "FARM_FALLBACK": "",
        "FARM_CACHE": "none",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    port, token = _port(), os.urandom(8).hex()
    others = {"jupyterlab": False, "jupyter_lsp": False, "notebook_shim": False, "jupyter_server_terminals": False}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={tmp}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.jpserver_extensions={others!r}",
        ],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/farm-jupyter/api/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(api + "stats", headers={"Authorization": f"token {token}"}, trust_env=False).status_code
                == 200
            ):
                return proc, api, token
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the jupyter server did not start")


def one_round(proc: psutil.Process, api: str, token: str, body: bytes) -> dict[str, Any]:
    before = proc.memory_info().rss
    peak = before
    statuses: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.005)

    def send() -> None:
        with httpx.Client(headers={"Authorization": f"token {token}"}, trust_env=False, timeout=120) as client:
            statuses.append(
                client.post(api + "chat", content=body, headers={"Content-Type": "application/json"}).status_code
            )

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=send) for _ in range(CONCURRENT)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    time.sleep(2.0)
    stop.set()
    sampler.join()
    return {
        "peak": (peak - before) / MiB,
        "after": (proc.memory_info().rss - before) / MiB,
        "statuses": sorted(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    wrap = len(b'{"prompt": ""}')
    bodies = {
        f"{CONCURRENT} x {LIMIT - 64:,} bytes (at the limit: parsed, 400)": b'{"prompt": "'
        + b"x" * (LIMIT - 64 - wrap)
        + b'"}',
        f"{CONCURRENT} x 50,000,000 bytes (over: drained, 413)": b'{"prompt": "' + b"x" * (50_000_000 - wrap) + b'"}',
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in bodies}
    with tempfile.TemporaryDirectory() as tmp, serve("ollama") as ollama:
        jupyter, api, token = start_jupyter(Path(tmp), ollama.url)
        try:
            server = psutil.Process(jupyter.pid)
            with httpx.Client(headers={"Authorization": f"token {token}"}, trust_env=False) as client:
                client.post(api + "chat", json={"prompt": "warm up"})  # first use builds the Session
            start_rss = server.memory_info().rss / MiB
            for _ in range(args.runs):  # interleaved, so drift falls on both alike
                for name, body in bodies.items():
                    rows[name].append(one_round(server, api, token, body))
            end_rss = server.memory_info().rss / MiB
        finally:
            jupyter.terminate()
            jupyter.wait(15)

    lines = [
        f"### Jupyter server RSS under {CONCURRENT} concurrent bodies ({args.runs} rounds each, sampled every 5 ms)",
        "",
        "| requests | answers | peak above before: median | max | still above 2 s after: median | max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, runs in rows.items():
        peaks, afters = [r["peak"] for r in runs], [r["after"] for r in runs]
        answers = ", ".join(sorted({str(s) for r in runs for s in r["statuses"]}))
        lines.append(
            f"| {name} | {answers} | {statistics.median(peaks):.1f} MiB | {max(peaks):.1f} MiB | "
            f"{statistics.median(afters):.1f} MiB | {max(afters):.1f} MiB |"
        )
    lines += ["", f"- server RSS {start_rss:.0f} MiB after the warm-up request, {end_rss:.0f} MiB at the end."]
    at_limit = rows[next(iter(bodies))]
    worst = max(r["peak"] for r in at_limit)
    targets = [
        target(
            f"{CONCURRENT} concurrent requests at the body limit add < 100 MB RSS",
            f"{worst:.1f} MiB at most ({args.runs} rounds)",
            worst * MiB < 100e6,
        )
    ]
    emit("\n".join(lines), {"rows": rows, "targets": targets, "markdown": "\n".join(lines)})


if __name__ == "__main__":
    main()
