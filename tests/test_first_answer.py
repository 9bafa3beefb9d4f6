"""A fresh kernel with nothing configured: one try at Ollama's refused port, then the embedded
model answers; `%load_ext` says so in any kernel (issue 23). The time it takes is measured by
benchmarks/first_answer.py, never asserted here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from farm_jupyter import embedded
from farm_jupyter.config import load_settings
from farm_jupyter.config.settings import OllamaSettings
from farm_jupyter.errors import FarmError
from farm_jupyter.runtime import get_runtime
from farm_jupyter.sessions import Session

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]


def _refused_default_port() -> None:
    with socket.socket() as probe:
        if probe.connect_ex(embedded.OLLAMA_HOST) == 0:
            pytest.skip("an Ollama is running on this machine: its default port is not refused")


def _engine() -> str:
    engine = embedded.installed_engine()
    if engine is None or embedded.find() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have the embedded model and an engine for it (bash scripts/bootstrap)")
        pytest.skip("the embedded model or its engine is not installed")
    return engine


def test_the_banner_knows_ollamas_default_address() -> None:
    assert "http://{}:{}".format(*embedded.OLLAMA_HOST) == OllamaSettings().host


def test_a_refused_port_is_tried_once_when_nothing_is_configured() -> None:
    engine = _engine()
    _refused_default_port()
    s = Session(load_settings(environ={}, use_file=False))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    s._engine.router.sleep = sleep
    try:
        response = s.chat("What is the capital of France? Answer in one sentence.", max_tokens=24)
    finally:
        s.close()
    ollama = [a for a in response.attempts if a.provider == "ollama"]
    assert len(ollama) == 1 and ollama[0].retries == 0 and ollama[0].error_type == "ProviderUnavailable"
    assert waits == []  # no retry ladder was waited out
    assert response.provider == engine and response.model == embedded.NAME and "Paris" in response.text
    assert response.fell_back_from[0].startswith("ollama:")


def test_a_configured_ollama_that_refuses_is_still_retried(make_session, ollama_server) -> None:
    s = make_session(ollama_server)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    s._engine.router.sleep = sleep
    ollama_server.refuse()
    with pytest.raises(FarmError, match="not reachable"):
        s.chat("hello")
    assert len(waits) == s._engine.router.settings.retry.max_retries  # the user's server may be restarting


# -- the banner ---------------------------------------------------------------------------------

LOAD = (
    "from IPython.core.interactiveshell import InteractiveShell\n"
    "ip = InteractiveShell.instance()\n"
    "ip.run_line_magic('load_ext', 'farm_jupyter')\n"
    "import sys\n"
    "print('heavy:', [m for m in ('pydantic', 'httpx', 'llama_cpp', 'torch') if m in sys.modules])\n"
)


def _load_ext(tmp_path: Path, **extra: str) -> str:
    """`%load_ext` in a fresh interpreter with nothing of ours in its environment, in `tmp_path`."""
    keep = ("PATH", "PYTHONPATH", "FARM_MODELS_DIR", "LANG")
    environ = {k: v for k, v in os.environ.items() if k in keep}
    environ |= {"HOME": str(tmp_path), "IPYTHONDIR": str(tmp_path / "ipython"), **extra}
    out = subprocess.run(
        [sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environ
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_load_ext_says_which_model_answers_when_nothing_is_configured(tmp_path: Path) -> None:
    engine = _engine()
    _refused_default_port()
    said = _load_ext(tmp_path)
    lines = [line for line in said.splitlines() if line.startswith("farm_jupyter:")]
    assert len(lines) == 1, said
    where = "llama.cpp" if engine == "llamacpp" else "transformers"
    assert embedded.NAME in lines[0] and f"on {where}" in lines[0] and "11434" in lines[0]
    assert "heavy: []" in said  # the banner is found without the settings, httpx or the engine


@pytest.mark.parametrize(
    "extra", [{"OPENAI_API_KEY": "sk-test-0123456789"}, {"OLLAMA_HOST": "127.0.0.1:9"}, {"FARM_AI_PROVIDER": "ollama"}]
)
def test_no_banner_once_something_is_configured(tmp_path: Path, extra: dict[str, str]) -> None:
    _engine()
    _refused_default_port()
    said = _load_ext(tmp_path, **extra)
    assert "farm_jupyter:" not in said and "sk-test" not in said


def test_no_banner_beside_a_farm_toml(tmp_path: Path) -> None:
    _engine()
    _refused_default_port()
    (tmp_path / "farm.toml").write_text('provider = "openai"\n')
    assert "farm_jupyter:" not in _load_ext(tmp_path)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"FARM_CACHE_DIR": "/tmp/x", "FARM_MODELS_DIR": "/tmp/y", "HOME": "/home/me"},
        {"OPENAI_API_KEY": "sk-test-0123456789"},
        {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"},
        {"OLLAMA_HOST": "127.0.0.1:9"},
        {"OLLAMA_URL": "http://127.0.0.1:9"},
        {"FARM_FALLBACK": "openai"},
        {"AI_PROVIDER": "ollama"},
        {"FARM_ENV": "production"},
        {"FARM_HF_MODEL": "/my/model"},
        {"FARM_OLLAMA_MODEL": "qwen2.5"},
        {"FARM_CACHE": "disk"},
    ],
)
def test_untouched_never_says_so_when_the_settings_disagree(tmp_path: Path, environ: dict[str, str]) -> None:
    """The cheap check may doubt (say False), never claim nothing is configured when it is."""
    if embedded.untouched(environ, tmp_path):
        assert load_settings(environ=environ, start=tmp_path).embedded_fallback is not None


def test_untouched_reads_the_config_files_upward(tmp_path: Path) -> None:
    inner = tmp_path / "project" / "notebooks"
    inner.mkdir(parents=True)
    assert embedded.untouched({}, inner)
    (tmp_path / "pyproject.toml").write_text('[tool.farm]\nprovider = "openai"\n')
    assert not embedded.untouched({}, inner)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert embedded.untouched({}, inner)
    (inner / ".env").write_text("OPENAI_API_KEY=sk-test-0123456789\n")
    assert not embedded.untouched({}, inner)


def test_llamacpp_reads_the_prompt_on_as_many_threads_as_it_generates() -> None:
    """llama-cpp-python's default reads the prompt on every logical core; they wait for each other,
    and one core busy elsewhere made the first token 5x later (benchmarks/first_answer.py)."""
    if _engine() != "llamacpp":
        pytest.skip("llama.cpp is not installed")
    from farm_jupyter.providers import create

    for options, threads in (({}, max((os.cpu_count() or 2) // 2, 1)), ({"n_threads": 3}, 3)):
        settings = load_settings({"providers": {"llamacpp": options}} if options else None, environ={}, use_file=False)
        provider = create("llamacpp", settings)
        try:
            params = provider._load(embedded.NAME).llm.context_params
            assert params.n_threads == params.n_threads_batch == threads
        finally:
            get_runtime().run(provider.aclose())


# -- the embedded model's defaults (benchmarks/local_quality.py chose them) ------------------------


def test_the_penalty_spares_the_prompt_and_json_punctuation() -> None:
    np = pytest.importorskip("numpy")
    from farm_jupyter.providers._constrain import Penalty

    spared = np.array([False, False, False, True])  # token 3 is, say, `",`
    penalty = Penalty(spared, 2.0)
    prompt = [0, 1]
    scores = np.array([4.0, 4.0, 4.0, 4.0])
    assert penalty(prompt, scores.copy()).tolist() == [4.0, 4.0, 4.0, 4.0]  # the prompt is not the answer
    after = penalty([*prompt, 2, 3, 2], np.array([4.0, 4.0, -4.0, 4.0]))
    assert after.tolist() == [4.0, 4.0, -8.0, 4.0]  # said once or more: pushed down, whatever its sign


def test_the_embedded_model_answers_the_capital_of_france_without_looping() -> None:
    if _engine() != "llamacpp":
        pytest.skip("the default penalty is llama.cpp's")
    s = Session(load_settings({"env": "test", "provider": "llamacpp", "fallback": []}, environ={}, use_file=False))
    try:
        r = s.chat("What is the capital of France?", max_tokens=128)
        explicit = s.chat("What is the capital of France?", max_tokens=64, extra={"repeat_penalty": 1.0})
    finally:
        s.close()
    assert "paris" in r.text.lower() and r.finish_reason == "stop", r.text
    assert explicit.finish_reason == "length" and "paris" not in explicit.text.lower()  # the loop it replaced
