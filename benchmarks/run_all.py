"""Run every benchmark and write benchmarks/RESULTS.md: the machine, the targets, the tables.

    python benchmarks/run_all.py [--with-anchors] [--only startup,streaming] [--output PATH]

Each script runs in its own process with --json (its figures, its targets and its markdown
tables); a script that fails gets its error in RESULTS.md instead of its tables, and the others
still run. With --only, the sections (and target rows) of the scripts not run are kept from the
existing output, each marked with the run it came from, so that one file holds every figure. --with-anchors installs jupyter-ai-magics and litellm into their own venvs under
benchmarks/.cache/anchors on first use (minutes) and adds their rows.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import targets_table  # noqa: E402
from anchors import installed_versions  # noqa: E402

# (script, takes --with-anchors, what it answers)
SCRIPTS = [
    ("startup.py", True, "Start-up: `%load_ext farm_jupyter` vs bare IPython, jupyter-ai-magics, litellm"),
    ("load_ext.py", False, "`%load_ext farm_jupyter` alone (the magics' own benchmark)"),
    (
        "overhead_ab.py",
        False,
        "Per-request overhead in microseconds next to the server's own time, A/B against earlier commits",
    ),
    ("router_overhead.py", False, "Per-request overhead, Ollama protocol, and where it goes"),
    ("request_overhead.py", True, "Per-request overhead, OpenAI protocol, with litellm and jupyter-ai's %%ai"),
    ("streaming.py", False, "Streaming relay rate and screen updates"),
    ("cache_latency.py", False, "Cache hit latency: memory, disk, Redis"),
    ("concurrency.py", False, "Concurrent requests"),
    ("batch.py", True, "Batch: 1,000 prompts through farm.map vs the ideal, the raw SDK and litellm"),
    ("local_model.py", False, "Local model: SmolLM2-135M-Instruct on llama.cpp and transformers"),
    ("first_answer.py", False, "First answer in a fresh kernel with nothing configured"),
    ("local_quality.py", False, "Do the embedded model's defaults answer? Accuracy and loops"),
    ("structured.py", False, "Structured answers on the embedded model: constrained vs unconstrained, per engine"),
    ("server_memory.py", False, "Jupyter server extension: memory under bodies at and over the limit"),
    (
        "completion.py",
        False,
        "Inline completion: what the server's route adds to the first ghost text, and a cache hit",
    ),
    ("server_load.py", False, "Jupyter server extension: a burst of 200 chats, and the probe's bodies refused"),
]
PACKAGES = [
    "farm-jupyter",
    "httpx",
    "openai",
    "pydantic",
    "ipython",
    "ipykernel",
    "ipywidgets",
    "redis",
    "torch",
    "transformers",
    "anyio",
]
TIMEOUT = 600
# The scripts that take longer, with the arguments run_all gives them.
# structured.py at full size on both engines: about 11 min on llama.cpp and 55 on transformers (2 cores).
LONGER = {"structured.py": 6000, "local_quality.py": 2400}
ARGS = {
    "structured.py": ["--engines", "llamacpp,huggingface"],
    "local_quality.py": ["--engine", "llamacpp,huggingface"],
}


def machine() -> list[tuple[str, str]]:
    def read(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    mem_kb = read("/proc/meminfo", "MemTotal").split()[0]
    rows = [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", read("/proc/cpuinfo", "model name") if Path("/proc/cpuinfo").exists() else platform.processor()),
        ("cores", f"{os.cpu_count()} (usable here: {len(os.sched_getaffinity(0))})"),
        ("RAM", f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "?"),
        ("GPU", _gpu()),
        ("OS", platform.platform()),
        ("Python", sys.version.split()[0] + f" ({platform.python_implementation()})"),
        ("packages", ", ".join(f"{p} {_version(p)}" for p in PACKAGES)),
        ("redis-server", _redis()),
        ("commit", _git()),
    ]
    for name in ("jupyter-ai", "litellm"):
        found = installed_versions(name)
        rows.append(
            (f"anchor venv {name}", ", ".join(f"{k} {v}" for k, v in found.items()) if found else "not installed")
        )
    return rows


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _gpu() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none"
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
    )
    return "; ".join(out.stdout.strip().splitlines()) or "none"


def _redis() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not on PATH (Redis rows skipped)"
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


def _git() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return f"{head or '?'}{' (with uncommitted changes)' if dirty else ''}"


def run(script: str, anchors: bool) -> dict[str, Any]:
    """The script's JSON, or {"error": ...}."""
    cmd = [
        sys.executable,
        str(HERE / script),
        "--json",
        *ARGS.get(script, []),
        *(["--with-anchors"] if anchors else []),
    ]
    timeout = LONGER.get(script, TIMEOUT)
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "seconds": timeout}
    seconds = time.perf_counter() - start
    lines = out.stdout.strip().splitlines()
    try:
        data = dict(json.loads(lines[-1]))
    except (IndexError, ValueError):
        return {"error": f"exit {out.returncode}, no JSON; stderr:\n{out.stderr[-3000:]}", "seconds": seconds}
    if script == "load_ext.py":  # its own format: render its table and its target here
        import load_ext

        data = {
            "markdown": load_ext.table(data),
            "targets": [
                {
                    "target": "`%load_ext farm_jupyter` adds < 0.15 s",
                    "measured": f"{data['added_wall_s'] * 1e3:.0f} ms wall, {data['added_load_ext_s'] * 1e3:.1f} ms in the call",
                    "met": bool(data["ok"]),
                }
            ],
            "figures": data,
        }
    data["seconds"] = seconds
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--with-anchors", action="store_true")
    parser.add_argument("--only", help="comma-separated script names (without .py)")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()

    only = {f"{s.strip()}.py" for s in args.only.split(",")} if args.only else None
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for script, takes_anchors, _ in SCRIPTS:
        if only is not None and script not in only:
            continue
        if not (HERE / script).exists():
            results[script] = {"error": "not in this checkout", "seconds": 0.0}
            continue
        print(f"[run_all] {script} ...", file=sys.stderr, flush=True)
        results[script] = run(script, takes_anchors and args.with_anchors)
        print(
            f"[run_all] {script}: {results[script]['seconds']:.0f} s{' FAILED' if 'error' in results[script] else ''}",
            file=sys.stderr,
            flush=True,
        )
    total = time.perf_counter() - started
    load_after = os.getloadavg()

    rows = machine() + [
        ("load average (1, 5, 15 min)", f"before {_load(load_before)}; after {_load(load_after)}"),
        (
            "run",
            f"`python benchmarks/run_all.py{' --with-anchors' if args.with_anchors else ''}"
            f"{f' --only {args.only}' if args.only else ''}`, {total:.0f} s",
        ),
    ]
    targets = []
    for script, data in results.items():
        for t in data.get("targets", []):
            targets.append({**t, "target": f"{t['target']} ({script})"})
        if "error" in data:
            targets.append({"target": f"{script} ran", "measured": data["error"].splitlines()[0], "met": False})
    parts = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run_all.py`; do not edit by hand. How to read and rerun: benchmarks/README.md.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        targets_table(targets, title="Targets").replace("### Targets", "## Targets"),
    ]
    about = {script: text for script, _, text in SCRIPTS}
    for script, data in results.items():
        parts += ["", f"## {about[script]} (`{script}`, {data['seconds']:.0f} s)", ""]
        if "error" in data:
            parts += ["```", data["error"], "```"]
        else:
            parts.append(data["markdown"])
    if only is not None:
        parts += kept(Path(args.output), set(results))
    Path(args.output).write_text("\n".join(parts) + "\n")
    print(f"[run_all] wrote {args.output} in {total:.0f} s", file=sys.stderr)


def kept(path: Path, ran: set[str]) -> list[str]:
    """The sections of `path` (an earlier RESULTS.md) for scripts not in `ran`, and their target
    rows, marked as kept; the earlier file's machine table named its run (a section may say it
    was added later, by hand)."""
    if not path.exists():
        return []
    old = path.read_text()
    date = next((line.split("|")[2].strip() for line in old.splitlines() if line.startswith("| date |")), "?")
    commit = next((line.split("|")[2].strip() for line in old.splitlines() if line.startswith("| commit |")), "?")
    sections = old.split("\n## ")[1:]
    out: list[str] = []
    # Target rows name their script: `| target (script.py) | measured | met? |`, in either table.
    rows = [
        line
        for line in dict.fromkeys(old.splitlines())
        if (found := re.search(r"\(([\w.]+\.py)\) \| ", line)) and found.group(1) not in ran
    ]
    out += [
        "",
        "## Kept from the earlier RESULTS.md (not run this time)",
        "",
        f"Its machine table said: {date}, commit {commit}; sections may say they were added later.",
    ]
    if rows:
        out += ["", "### Targets kept", "", "| target | measured | met? |", "|---|---|:---:|", *rows]
    for section in sections:
        head = section.splitlines()[0]
        script = head.rsplit("(`", 1)[-1].split("`", 1)[0] if "(`" in head else ""
        if script.endswith(".py") and script not in ran:
            body = section.split("\n", 1)[1] if "\n" in section else ""
            note = " (kept from the earlier RESULTS.md)"
            out += ["", f"## {head}{'' if note in head else note}", body.rstrip()]
    return out


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    main()
