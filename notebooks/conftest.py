"""nbval runs every notebook here in the offline world of `--farm-loopback`. A notebook whose
metadata has `"farm_jupyter": {"embedded_default": true}` (the quickstart) gets, for its kernel,
what `farm-jupyter lab` sets on a machine with nothing configured: the embedded SmolLM2 model
answers, as it does in CI's main job, and its saved outputs are real answers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_saved: dict[str, str | None] = {}


def _wants_embedded(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text())["metadata"].get("farm_jupyter", {}).get("embedded_default"))
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Runs before nbval's own setup, which starts the notebook's kernel with os.environ.
    if item.path.suffix != ".ipynb" or _saved or not _wants_embedded(item.path):
        return
    from farm_jupyter.testing.environment import LoopbackEnvironment

    for key, value in LoopbackEnvironment.embedded_variables().items():
        _saved[key] = os.environ.get(key)
        os.environ[key] = value


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _saved and (nextitem is None or nextitem.path != item.path):
        for key, value in _saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _saved.clear()
