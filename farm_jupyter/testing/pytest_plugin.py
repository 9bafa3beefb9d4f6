"""pytest fixtures for testing notebooks and code that use farm_jupyter, offline.

Installed as a pytest plugin (entry point `pytest11`), so any project that has farm-jupyter gets:

- `ollama_server`, `openai_server`: loopback servers speaking the real wire protocols;
- `farm_session`: a Session pointed at both (ollama first, openai as fallback), no config file;
- `tiny_model_path`: a tiny chat model built offline once per test session;
- `redis_url`: a real `redis-server` on a loopback port (skipped when the binary is missing);
- `--farm-loopback`: all of the above for kernels (nbval), through their environment;
- under pytest-xdist's `-n N`, a notebook's cells stay together on one worker, in order (nbval
  runs them on one kernel), while every other test goes to whichever worker is free.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from farm_jupyter.testing.servers import TEST_API_KEY

if TYPE_CHECKING:
    from farm_jupyter.sessions import Session
    from farm_jupyter.testing.servers import OllamaServer, OpenAIServer


@pytest.fixture
def ollama_server() -> Iterator[OllamaServer]:
    from farm_jupyter.testing.servers import OllamaServer

    with OllamaServer() as server:
        yield server


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    from farm_jupyter.testing.servers import OpenAIServer

    with OpenAIServer(api_key=TEST_API_KEY) as server:
        yield server


def loopback_settings(
    ollama_server: OllamaServer | None = None, openai_server: OpenAIServer | None = None, **overrides: Any
) -> Any:
    """Settings that point at the given loopback servers and read no file or environment."""
    from farm_jupyter.config import load_settings

    layer: dict[str, Any] = {
        "env": "test",
        "fallback": [],
        "retry": {"backoff": 0.01, "backoff_max": 0.05},
        # Far enough off for a starved machine opening many connections at once; a refused port
        # fails at once whatever the deadline.
        "timeouts": {"connect": 10.0, "first_token": 10.0, "total": 30.0},
    }
    if ollama_server is not None:
        layer["ollama"] = {"host": ollama_server.url, "default_model": "llama3.1"}
    if openai_server is not None:
        layer["openai"] = {
            "base_url": openai_server.url + "/v1",
            "api_key": TEST_API_KEY,
            "default_model": "gpt-4o-mini",
        }
        if ollama_server is not None:
            layer["fallback"] = ["openai"]
        else:
            layer["provider"] = "openai"
    return load_settings(_deep(layer, overrides), environ={}, use_file=False)


def _deep(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def farm_session(ollama_server: OllamaServer, openai_server: OpenAIServer) -> Iterator[Session]:
    from farm_jupyter.sessions import Session

    session = Session(loopback_settings(ollama_server, openai_server))
    yield session
    session.close()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from farm_jupyter.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-chat")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which may not be installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    # `--dist loadgroup` with marks would say the same, but xdist 3.8 renames the marked items in a
    # way that pytest 9.2 no longer reads: the cells were spread over the workers.
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.endswith(".ipynb") else nodeid

    return NotebooksWhole(config, log)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("farm_jupyter").addoption(
        "--farm-loopback",
        action="store_true",
        help="start loopback Ollama/OpenAI servers and point kernels at them (and at the embedded SmolLM2 "
        "model for local answers) through the environment (for running notebooks offline with nbval)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("farm_loopback", default=False):
        from farm_jupyter.testing.environment import LoopbackEnvironment

        env = LoopbackEnvironment().start()
        config.stash[_LOOPBACK] = (env, {k: os.environ.get(k) for k in env.variables})
        os.environ.update(env.variables)  # kernels started by nbval inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    found = config.stash.get(_LOOPBACK, None)
    if found is not None:
        env, saved = found
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        env.stop()


_LOOPBACK = pytest.StashKey[tuple[Any, dict[str, "str | None"]]]()
