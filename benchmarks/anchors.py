"""The competitors ("anchors"), each in its own virtual environment, never in ours.

    python benchmarks/anchors.py [NAME ...]     # install (or check) them; prints each python

`--with-anchors` on a benchmark calls `python_for(name)`, which creates
`benchmarks/.cache/anchors/<name>` with `pip install` on first use (a few minutes) and reuses it
afterwards. Without `--with-anchors` nothing is installed and the anchor rows say so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent / ".cache" / "anchors"

# What a user installs to get each tool (jupyter-ai's OpenAI models need langchain-openai).
PACKAGES = {
    "jupyter-ai": ["jupyter-ai-magics", "langchain-openai"],
    "litellm": ["litellm"],
    # Its Jupyter server extension serves inline completion over a websocket (benchmarks/completion.py).
    "notebook-intelligence": ["notebook-intelligence==6.2.0"],
}
NOT_RUN = "not run (use --with-anchors)"


def python_for(name: str, *, install: bool = True) -> Path | None:
    """The anchor venv's python, installing it when missing; None when not installed."""
    folder = ROOT / name
    python = folder / "bin" / "python"
    marker = folder / "installed.json"
    if marker.is_file() and python.is_file():
        return python
    if not install:
        return None
    print(f"[anchors] installing {' '.join(PACKAGES[name])} into {folder} (once; takes minutes)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES[name]],
        check=True,
        stdout=sys.stderr,
    )
    marker.write_text(json.dumps(versions(python, PACKAGES[name])))
    return python


def versions(python: Path, packages: list[str]) -> dict[str, str]:
    code = "import json, sys, importlib.metadata as m\nprint(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    names = [re.split(r"[<>=!~\[ ]", p, maxsplit=1)[0] for p in packages]  # a pinned requirement's name
    out = subprocess.run([str(python), "-c", code, *names], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def installed_versions(name: str) -> dict[str, str] | None:
    marker = ROOT / name / "installed.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


if __name__ == "__main__":
    for anchor in sys.argv[1:] or list(PACKAGES):
        print(anchor, python_for(anchor), installed_versions(anchor))
