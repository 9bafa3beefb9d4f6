"""Run a Python module with what its process reaches out to written down, one JSON line each.

    python -m farm_jupyter.testing.audit LOG MODULE [ARGS...]
    python -m farm_jupyter.testing.audit /tmp/out.jsonl jupyter_server --no-browser ...

An audit hook (`sys.addaudithook`) records every `socket.connect` to an internet address and
every `socket.getaddrinfo` of the process, and `importlib.metadata.entry_points` is wrapped to
count its scans of the installed distributions: a test reads `LOG` to assert that a server only
contacted its configured upstreams, or that a request did not rescan entry points.
"""

from __future__ import annotations

import importlib.metadata
import json
import runpy
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["install", "read"]


def install(log: str | Path) -> None:
    """From now on, record this process's outbound connections and entry-point scans into `log`."""
    out = Path(log).open("a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open for the process's life
    lock = threading.Lock()

    def write(record: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and len(address) >= 2:  # AF_INET, AF_INET6; not AF_UNIX paths
                write({"event": "connect", "host": str(address[0]), "port": int(address[1])})
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else args[0]
            write({"event": "getaddrinfo", "host": None if host is None else str(host), "port": args[1]})

    sys.addaudithook(hook)
    original = importlib.metadata.entry_points

    def entry_points(**params: Any) -> Any:
        write({"event": "entry_points", "group": params.get("group"), "name": params.get("name")})
        return original(**params)

    importlib.metadata.entry_points = entry_points  # type: ignore[assignment]


def read(log: str | Path) -> list[dict[str, Any]]:
    """The records written so far."""
    path = Path(log)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m farm_jupyter.testing.audit LOG MODULE [ARGS...]")
    log, module, *rest = argv
    install(log)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
