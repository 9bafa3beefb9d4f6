"""The `farm-jupyter` command: the main job's headless form and its offline default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from farm_jupyter.cli import STARTUP_NAME, main, offline_default

pytestmark = pytest.mark.timeout(240)


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farm_jupyter.cli", *args], env=env, capture_output=True, text=True, timeout=200
    )


@pytest.fixture
def env(tmp_path, ollama_server) -> dict[str, str]:
    return {
        **os.environ,
        "OLLAMA_HOST": ollama_server.url,
        "FARM_ENV": "test",
        "FARM_FALLBACK": "",
        "FARM_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }


def test_execute_passes_a_good_notebook(tmp_path, env):
    nb = notebook(
        tmp_path / "good.ipynb",
        "%load_ext farm_jupyter",
        "%%farm_chat -o answer\nhello from a notebook",
        "assert answer.text == 'Echo: hello from a notebook', answer.text",
    )
    result = run_cli("lab", "--execute", str(nb), env=env)
    assert result.returncode == 0, result.stderr
    assert "3 code cells ran without error" in result.stdout


def test_execute_fails_when_a_cell_fails(tmp_path, env):
    nb = notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('this cell fails')", "y = 2")
    result = run_cli("lab", "--execute", str(nb), env=env)
    assert result.returncode == 1
    assert "this cell fails" in result.stderr


def test_offline_default_when_nothing_answers(tmp_path, ollama_server, monkeypatch):
    from farm_jupyter import embedded

    if embedded.find() is None:
        pytest.skip("the embedded model is not installed (bash scripts/bootstrap)")
    ollama_server.refuse()
    environ = {"OLLAMA_HOST": ollama_server.url, "FARM_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    monkeypatch.chdir(tmp_path)
    banner = offline_default(environ)
    assert banner and "no Ollama" in banner and "135M parameters" in banner and "offline" in banner
    assert str(embedded.find()[0]) in banner  # where it came from
    assert environ["FARM_AI_PROVIDER"] == embedded.engine() and environ["FARM_HF_MODEL"] == embedded.NAME
    assert not (tmp_path / "tiny-chat").exists()  # the random model never answers a user


def test_no_offline_default_when_ollama_answers(tmp_path, ollama_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ = {"OLLAMA_HOST": ollama_server.url}
    assert offline_default(environ) is None and "FARM_AI_PROVIDER" not in environ
    assert offline_default({"OLLAMA_HOST": "127.0.0.1:1", "OPENAI_API_KEY": "sk-x-0123456789"}) is None


def test_enable_and_disable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    assert main(["enable"]) == 0
    startup = tmp_path / "ipython" / "profile_default" / "startup" / STARTUP_NAME
    assert "load_extension('farm_jupyter')" in startup.read_text()
    assert main(["disable"]) == 0
    assert not startup.exists()


def test_load_ext_says_when_the_embedded_default_answers():
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'farm_jupyter')\n"
    )
    env = {**os.environ, "FARM_EMBEDDED_DEFAULT": "1", "FARM_HF_MODEL": "/models/tiny"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "embedded offline model (/models/tiny)" in out
    env.pop("FARM_EMBEDDED_DEFAULT")
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout == ""
    )


def test_shipped_startup_file_is_what_enable_writes():
    shipped = Path(__file__).parent.parent / "jupyter-config/ipython/profile_default/startup" / STARTUP_NAME
    assert shipped.read_text() == __import__("farm_jupyter.cli", fromlist=["x"]).STARTUP_CODE


def test_a_notebook_that_raises_fails_the_suite(tmp_path):
    nb = notebook(tmp_path / "broken.ipynb", "%load_ext farm_jupyter", "1 / 0")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            str(nb),
        ],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "ZeroDivisionError" in result.stdout


def test_under_xdist_a_notebooks_cells_stay_on_one_worker_in_order(tmp_path):
    """Each cell needs the one before it; two notebooks and four workers: without the plugin's
    scheduler the cells were spread over the workers and failed with NameError."""
    for name in ("first", "second"):
        notebook(tmp_path / f"{name}.ipynb", "import os\nx = [os.getpid()]", *["x.append(os.getpid())"] * 4,
                 "assert len(set(x)) == 1 and len(x) == 5, x")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "4", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         "-p", "no:randomly", "-o", "addopts=", "-q", "first.ipynb", "second.ipynb"],
        capture_output=True, text=True, timeout=200, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert "12 passed" in result.stdout


@pytest.mark.parametrize("command", ["lab", "enable", "disable", "schema", "doctor"])
def test_every_subcommand_help_describes_it(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    described = out.split("\n\n")[1]  # after the usage: the description argparse shows only when given
    assert len(described.split()) >= 5 and not described.startswith(("options", "positional")), out


def test_disable_says_only_what_it_did(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    assert main(["disable"]) == 0  # never enabled
    said = capsys.readouterr().out
    assert "was not enabled" in said and "removed" not in said
    main(["enable"])
    capsys.readouterr()
    assert main(["disable"]) == 0
    assert capsys.readouterr().out.startswith("removed ")
