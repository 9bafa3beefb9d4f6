"""Start-up cost: `%load_ext farm_jupyter` versus a bare IPython, jupyter-ai's magics and litellm.

    python benchmarks/startup.py [--runs N] [--with-anchors] [--json]

Every variant runs in a fresh process (so nothing is already imported), interleaved with the
others, with bytecode caches as an installed package has them (load_ext.py's environment). The wall time of the whole process is measured from here, its peak RSS with `wait4`, and
the step itself (the `%load_ext`, the import) inside the child. Anchors run in their own venvs
(`anchors.py`) against a bare IPython / python of that venv, so the "added" figures compare alike.
Targets: `%load_ext farm_jupyter` adds < 0.15 s, and < 1/20 of what `%load_ext jupyter_ai_magics` adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit, measure, median, summary, table, target  # noqa: E402
from anchors import NOT_RUN, python_for  # noqa: E402
from load_ext import ENV  # noqa: E402  (the magics' benchmark: children keep their bytecode caches)

# Each child times its own step and prints it; the parent times the whole process.
_TIMED = "import time, json\nt0 = time.perf_counter()\n{step}\nprint(json.dumps(time.perf_counter() - t0))\n"
_IPYTHON = "from IPython.core.interactiveshell import InteractiveShell\nip = InteractiveShell.instance()\n"


def _ipython_then(step: str) -> str:
    return _IPYTHON + _TIMED.format(step=step)


VARIANTS: dict[str, tuple[str | None, str]] = {
    # name: (anchor venv or None for ours, code)
    "python": (None, _TIMED.format(step="pass")),
    "import httpx": (None, _TIMED.format(step="import httpx")),
    "import openai": (None, _TIMED.format(step="import openai")),
    "first use: Session() (pydantic, httpx, config)": (
        None,
        _TIMED.format(step="import farm_jupyter.sessions as s\ns.Session(config={})"),
    ),
    "bare IPython": (None, _TIMED.format(step=_IPYTHON)),
    "IPython + %load_ext farm_jupyter": (None, _ipython_then("ip.run_line_magic('load_ext', 'farm_jupyter')")),
    "bare IPython (jupyter-ai venv)": ("jupyter-ai", _TIMED.format(step=_IPYTHON)),
    "IPython + %load_ext jupyter_ai_magics": (
        "jupyter-ai",
        _ipython_then("ip.run_line_magic('load_ext', 'jupyter_ai_magics')"),
    ),
    "python (litellm venv)": ("litellm", _TIMED.format(step="pass")),
    "import litellm": ("litellm", _TIMED.format(step="import litellm")),
}
BASELINES = {
    "import httpx": "python",
    "import openai": "python",
    "first use: Session() (pydantic, httpx, config)": "python",
    "IPython + %load_ext jupyter_ai_magics": "bare IPython (jupyter-ai venv)",
    "import litellm": "python (litellm venv)",
}


def run_child(python: Path, code: str, env: dict[str, str], inner: list[float], rss: list[float]) -> None:
    proc = subprocess.Popen([str(python), "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"child failed ({proc.returncode}): {out[-2000:]}")
    inner.append(float(json.loads(out.strip().splitlines()[-1])))
    rss.append(usage.ru_maxrss / 1024)  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--with-anchors", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ipython_dir = HERE / ".cache" / "ipython"  # no user profile, config or startup files
    ipython_dir.mkdir(parents=True, exist_ok=True)
    env = {**ENV, "IPYTHONDIR": str(ipython_dir)}
    pythons: dict[str | None, Path | None] = {None: Path(sys.executable)}
    for anchor in ("jupyter-ai", "litellm"):
        pythons[anchor] = python_for(anchor) if args.with_anchors else None

    inner: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    fns = {}
    missing = {}
    for name, (anchor, code) in VARIANTS.items():
        python = pythons[anchor]
        if python is None:
            missing[name] = NOT_RUN
            continue
        inner[name], rss[name] = [], []
        fns[name] = lambda p=python, c=code, n=name: run_child(p, c, env, inner[n], rss[n])
    times = measure(fns, args.runs, warmup=1)
    for name in fns:  # drop the warm-up's figures
        inner[name], rss[name] = inner[name][-args.runs :], rss[name][-args.runs :]

    def added(name: str) -> float:
        return median(times, name) - median(times, BASELINES.get(name, "bare IPython"))

    ours = added("IPython + %load_ext farm_jupyter")
    ours_inner = statistics.median(inner["IPython + %load_ext farm_jupyter"])
    targets = [
        target(
            "`%load_ext farm_jupyter` adds < 0.15 s",
            f"{ours:.3f} s (in-process {ours_inner * 1e3:.1f} ms)",
            ours < 0.15,
        )
    ]
    theirs = (
        added("IPython + %load_ext jupyter_ai_magics") if "IPython + %load_ext jupyter_ai_magics" in times else None
    )
    if theirs is not None:
        targets.append(
            target(
                "< 1/20 of what `%load_ext jupyter_ai_magics` adds",
                f"{ours:.3f} s vs {theirs:.2f} s (1/{theirs / max(ours, 1e-9):.0f})",
                ours * 20 < theirs,
            )
        )
    else:
        targets.append(target("< 1/20 of what `%load_ext jupyter_ai_magics` adds", NOT_RUN, None))

    extra = {
        "step in-process": {n: _fmt(statistics.median(v)) for n, v in inner.items()},
        "peak RSS": {n: f"{statistics.median(v):.0f} MB" for n, v in rss.items()},
        "added RSS": {
            n: f"{statistics.median(v) - statistics.median(rss[BASELINES.get(n, 'bare IPython')]):+.0f} MB"
            for n, v in rss.items()
            if n in BASELINES or n == "IPython + %load_ext farm_jupyter"
        },
    }
    text = table(
        f"Start-up, each in a fresh process ({args.runs} runs after a warm-up)",
        times,
        "bare IPython",
        baselines=BASELINES,
        missing=missing,
        extra=extra,
        notes=[
            "median/min/max: wall time of the whole process; 'step in-process': the import or `%load_ext` timed inside it.",
            "rows marked [vs X] are compared with X (the same venv's bare python or IPython), not with our bare IPython.",
        ],
    )
    emit(text, {"times": summary(times), "inner": summary(inner), "rss_mb": summary(rss), "targets": targets})


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
