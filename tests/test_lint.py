"""The house style holds: ruff check and ruff format on everything, mypy on the package, the layers
(import-linter), small modules (STYLE.md, point 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def test_ruff():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "farm_jupyter", "tests", "benchmarks", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_format():
    """`ruff format` leaves every file as it is: one layout, no diffs about spacing."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "farm_jupyter", "tests", "benchmarks", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy():
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_layers():
    """Each layer imports only the ones below it (import-linter contracts in pyproject.toml)."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_modules_stay_small():
    """No module of the package over 500 lines: a reader finds one subject per room."""
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in (ROOT / "farm_jupyter").rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > 500}
