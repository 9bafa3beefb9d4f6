"""What every test module shares: hypothesis profiles, sessions that close themselves, and the `slow`
marker. (A bounded wait is `farm_jupyter.testing.wait_until`.)

- Hypothesis runs derandomized (profile `ci`, no example database): the suite gives the same
  examples on every machine and cannot fail at random on a fresh clone. The random search is its own
  command: `FARM_FUZZ_EXAMPLES=2000 pytest -m fuzz` (profile `fuzz`); pin each find with `@example`.
- `pytest -m "not slow" -n 4` is the inner loop: notebooks under nbval, the real browser, the real
  models and the soak tests are `slow`. Its tests mostly wait on loopback servers, so four xdist
  workers on two cores run it in 55 s against 130 s in one process (quiet machine).
- The whole suite runs under `-n 4` too: farm_jupyter's pytest plugin keeps each notebook's cells
  on one worker, in order (nbval runs them on one kernel).

None of this ships in the pytest plugin that users get (`farm_jupyter.testing.pytest_plugin`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from farm_jupyter.sessions import Session
from farm_jupyter.testing import OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import loopback_settings

# As the huggingface provider sets it in a kernel (providers/_transformers.imports), for the test
# modules that import torch before any provider does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_FUZZ = int(os.environ.get("FARM_FUZZ_EXAMPLES") or 0)
_QUIET = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
settings.register_profile("ci", derandomize=True, max_examples=50, **_QUIET)
settings.register_profile("fuzz", derandomize=False, max_examples=max(_FUZZ, 1), **_QUIET)
settings.load_profile("fuzz" if _FUZZ else "ci")

# Slow: a real browser, real models, Jupyter servers and kernels in other processes, mypy, soak runs.
_SLOW_FILES = {
    "test_browser.py",
    "test_local_model.py",
    "test_huggingface.py",
    "test_server.py",
    "test_cli.py",
    "test_lint.py",
    "test_server_limits.py",
    "test_completion.py",
    "test_lab.py",
    "test_capabilities.py",
    "test_local_structured.py",
    "test_provenance.py",
}
_SLOW_TESTS = {
    "test_recording.py::test_a_notebook_recorded_on_the_real_model_replays_under_nbval",
    "test_reliability.py::test_unloading_a_local_model_frees_its_memory",
    "test_security.py::test_a_saved_executed_notebook",
    "test_gpu.py::test_best_device_here_is_cpu",
    "test_batch.py::test_a_saved_notebook_keeps_the_finished_bars_text",
    "test_magics.py::test_the_saved_notebook_has_no_empty_output",
    "test_reliability.py::test_the_kernel_stays_responsive_while_streams_run",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: notebooks, the browser, real models and soak tests (-m 'not slow')")
    config.addinivalue_line("markers", "fuzz: hypothesis searches; FARM_FUZZ_EXAMPLES=N makes them random and N long")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = f"{item.path.name}::{item.originalname if isinstance(item, pytest.Function) else item.name}"
        if item.path.suffix == ".ipynb" or item.path.name in _SLOW_FILES or test in _SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if "fuzz" in item.name or getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.fuzz)
    # Under `-n N`, the long tests first (a stable sort: each file keeps its order), so that the
    # workers do not end waiting on one that began mypy or a real model last.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def make_session(request: pytest.FixtureRequest) -> Iterator[Callable[..., Session]]:
    """`make_session(ollama_server, openai_server, **overrides)`: a Session over loopback settings,
    closed when the test ends, whether it passed or not."""
    made: list[Session] = []

    def make(ollama: OllamaServer | None = None, openai: OpenAIServer | None = None, /, **overrides: Any) -> Session:
        session = Session(loopback_settings(ollama, openai, **overrides))
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def session(make_session: Callable[..., Session], ollama_server: OllamaServer, openai_server: OpenAIServer) -> Session:
    """A Session over both loopback servers: Ollama first, OpenAI as its fallback."""
    return make_session(ollama_server, openai_server)
