"""Run inside an anchor's venv by request_overhead.py: time the anchor and the raw client there.

    <venv>/bin/python benchmarks/_anchor_requests.py litellm|jupyter-ai --openai URL --ollama URL --key K --runs N

Prints {table: {variant: [seconds, ...]}} as JSON. Each anchor is interleaved with the raw client
of its own venv (the same openai SDK / httpx it uses), which is its baseline. Standard library
plus what the venv has; farm_jupyter is not installed there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measure  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]


def raw_clients(openai_url: str, ollama_url: str, key: str) -> dict[str, Callable[[], str]]:
    import httpx
    import openai

    client = openai.OpenAI(base_url=openai_url + "/v1", api_key=key, max_retries=0)
    http = httpx.Client(base_url=ollama_url)
    body = {"model": "llama3.1", "messages": MESSAGES}

    def chat() -> str:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content or ""

    def stream() -> str:
        events = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        return "".join(e.choices[0].delta.content or "" for e in events if e.choices)

    def ollama_chat() -> str:
        return str(http.post("/api/chat", json={**body, "stream": False}).json()["message"]["content"])

    def ollama_stream() -> str:
        parts = []
        with http.stream("POST", "/api/chat", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if line:
                    parts.append(json.loads(line)["message"]["content"])
        return "".join(parts)

    return {"chat": chat, "stream": stream, "ollama_chat": ollama_chat, "ollama_stream": ollama_stream}


def litellm_tables(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of the price list
    import litellm

    litellm.telemetry = False
    raw = raw_clients(args.openai, args.ollama, args.key)
    openai_kw: dict[str, Any] = {"api_base": args.openai + "/v1", "api_key": args.key, "max_retries": 0}
    ollama_kw: dict[str, Any] = {"api_base": args.ollama, "max_retries": 0}

    def complete(model: str, **kw: Any) -> str:
        return str(litellm.completion(model=model, messages=MESSAGES, **kw).choices[0].message.content)

    def stream(model: str, **kw: Any) -> str:
        chunks = litellm.completion(model=model, messages=MESSAGES, stream=True, **kw)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    pairs = {
        "openai_chat": {
            "raw openai SDK (litellm venv)": raw["chat"],
            "litellm.completion openai/": lambda: complete("openai/gpt-4o-mini", **openai_kw),
        },
        "openai_stream": {
            "raw openai SDK stream (litellm venv)": raw["stream"],
            "litellm.completion openai/ stream": lambda: stream("openai/gpt-4o-mini", **openai_kw),
        },
        "ollama_chat": {
            "raw httpx (litellm venv)": raw["ollama_chat"],
            "litellm.completion ollama/": lambda: complete("ollama/llama3.1", **ollama_kw),
            "litellm.completion ollama_chat/": lambda: complete("ollama_chat/llama3.1", **ollama_kw),
        },
        "ollama_stream": {
            "raw httpx iter_lines (litellm venv)": raw["ollama_stream"],
            "litellm.completion ollama/ stream": lambda: stream("ollama/llama3.1", **ollama_kw),
            "litellm.completion ollama_chat/ stream": lambda: stream("ollama_chat/llama3.1", **ollama_kw),
        },
    }
    return {name: measure(fns, args.runs) for name, fns in pairs.items()}


def jupyter_ai_tables(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    os.environ["OPENAI_API_KEY"] = args.key  # jupyter-ai reads the key from the environment only
    raw = raw_clients(args.openai, args.ollama, args.key)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_ai_magics")
    # The "general interface" provider takes a base URL; its options must not contain spaces.
    options = json.dumps({"openai_api_base": args.openai + "/v1", "max_retries": 0}, separators=(",", ":"))
    line = f"openai-chat-custom:gpt-4o-mini -m {options}"

    def ai() -> str:
        with capture_output() as cap:
            result = ip.run_cell_magic("ai", line, "hi")  # a Markdown object, shown as the cell's result
        text = str(getattr(result, "data", result)) + cap.stdout
        if "tok0" not in text:
            raise RuntimeError(f"%%ai did not answer from the loopback server: {text[:300]!r}")
        return text

    return {
        "openai_chat": measure(
            {"raw openai SDK (jupyter-ai venv)": raw["chat"], "%%ai (jupyter-ai-magics)": ai}, args.runs
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("anchor", choices=["litellm", "jupyter-ai"])
    parser.add_argument("--openai", required=True)
    parser.add_argument("--ollama", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    tables = litellm_tables(args) if args.anchor == "litellm" else jupyter_ai_tables(args)
    print(json.dumps(tables))


if __name__ == "__main__":
    main()
