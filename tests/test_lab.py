"""The JupyterLab extension in a real browser: ghost text as you type, and the status bar item.

JupyterLab runs with the extension built from labextension/ (found through JUPYTER_PATH, so the
build in this checkout is the one tested) and a farm.toml whose `[completion]` model is a code
model on a loopback Ollama server; Playwright drives Debian's chromium (see test_browser.py).
The assertions read the DOM and the loopback server's record of requests and disconnects.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_browser, running_lab

from farm_jupyter.testing import OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "labextension" / "dist"
OUTPUT = ROOT / "test-output"
CODER = "qwen2.5-coder:0.5b"
BUSY = (
    "import pathlib, time\nfor _ in range(3000):\n    if pathlib.Path('release').exists(): break\n    time.sleep(0.1)"
)
CELLS = ["import math", BUSY, ""]
GHOST = ".jp-GhostText"


def _need_extension() -> None:
    if not (BUILT / "package.json").exists():
        message = "the JupyterLab extension is not built: run `bash scripts/bootstrap` (or `npm run build --prefix labextension`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _notebook(folder: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, folder / "typing.ipynb")


@contextmanager
def _lab(tmp: Path, toml: str, env: dict[str, str], cells: list[str] = CELLS) -> Iterator[tuple[str, Path]]:
    """(the notebook's URL with the token, the notebooks folder) of a running JupyterLab."""
    _need_browser()
    _need_extension()
    home, notebooks, paths = tmp / "home", tmp / "notebooks", tmp / "jupyter-path" / "labextensions"
    for folder in (home, notebooks, paths):
        folder.mkdir(parents=True)
    (paths / "farm-jupyter").symlink_to(BUILT, target_is_directory=True)
    (notebooks / "farm.toml").write_text(toml)
    _notebook(notebooks, cells)
    log = tmp / "jupyter.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "FARM_", "OPENAI_", "OLLAMA_", "HF_"))}
    clean.update(
        HOME=str(home),
        JUPYTER_PATH=str(paths.parent),
        FARM_ENV="test",
        FARM_FALLBACK="",
        PYTHONUNBUFFERED="1",
        NO_PROXY="*",
        no_proxy="*",
        **env,
    )
    with running_lab(notebooks, clean, log) as (base, token):
        try:
            yield f"{base}/lab/tree/typing.ipynb?token={token}", notebooks
        except Exception:
            print(log.read_text(errors="replace")[-4000:])
            raise


@contextmanager
def _page(url: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_function(
                """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                        .some(e => e.textContent.includes('(ipykernel) | Idle'))""",
                timeout=120_000,
            )
            yield page
        finally:
            browser.close()


def _type_in_cell(page: Any, index: int, text: str) -> None:
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content").click()
    page.keyboard.press("End")
    page.keyboard.type(text, delay=30)


def _source(page: Any, index: int) -> str:
    return str(
        page.evaluate(
            "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].model.sharedModel.getSource()", index
        )
    )


def _until(condition: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {limit} s")
        time.sleep(0.05)


LOOPBACK_TOML = f'[completion]\nmodel = "ollama:{CODER}"\ndebounce_ms = 100\n'


@pytest.fixture
def coder() -> Iterator[OllamaServer]:
    with OllamaServer(models=("llama3.1:latest", CODER)) as server:
        yield server


def test_ghost_text_from_fim_tab_accepts_typing_on_aborts_and_a_busy_cell_does_not_matter(
    tmp_path: Path, coder: OllamaServer
) -> None:
    with _lab(tmp_path, LOOPBACK_TOML, {"OLLAMA_HOST": coder.url}) as (url, notebooks), _page(url) as page:
        # the status bar item has asked the health route
        page.wait_for_function(
            "() => [...document.querySelectorAll('.farm-status')].some(e => e.textContent.includes('1 up'))"
        )
        # ghost text from the loopback server's fill-in-the-middle answer; Tab takes it
        _type_in_cell(page, 2, "r = math.")
        ghost = page.locator(GHOST).first
        ghost.wait_for(timeout=30_000)
        page.wait_for_function(f"() => document.querySelector('{GHOST}').textContent.includes('before')")
        fim = [r.json or {} for r in coder.requests if r.path == "/api/generate"]
        assert fim and fim[-1]["model"] == CODER and fim[-1]["suffix"] == ""
        assert fim[-1]["prompt"] == "\n\n".join([*CELLS[:2], "r = math."])  # the cells above, then the prefix
        shown = ghost.inner_text()
        assert shown.startswith("fill_")
        OUTPUT.mkdir(exist_ok=True)
        page.locator(".jp-Notebook .jp-Cell").nth(2).screenshot(path=str(OUTPUT / "ghost-text.png"))
        page.keyboard.press("Tab")
        _until(lambda: _source(page, 2).startswith("r = math.fill_"), 10, "Tab accepting the ghost text")
        assert page.locator(GHOST).count() == 0

        # a slow answer: typing on aborts it, and the loopback server sees the client go
        coder.chunk_delay = 0.4
        gone_before = len(coder.disconnects)
        _type_in_cell(page, 2, "\nq = ")
        page.locator(GHOST).first.wait_for(timeout=30_000)
        page.keyboard.type("1")
        _until(lambda: len(coder.disconnects) > gone_before, 15, "the upstream seeing the aborted request")
        assert coder.disconnects[-1].path == "/api/generate"
        coder.chunk_delay = 0.0

        # a running cell holds the kernel; completions come from the server all the same
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        busy = (
            "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => e.textContent.includes('| Busy'))"
        )
        page.wait_for_function(busy)
        asked = coder.count("/api/generate")
        _type_in_cell(page, 0, "\nn = math.")
        page.locator(GHOST).first.wait_for(timeout=30_000)
        assert coder.count("/api/generate") > asked
        assert page.evaluate(busy), "the busy cell should still be running"
        (notebooks / "release").touch()

        # the provider goes away: typing on says so once, and the status bar (on a click) shows it down
        coder.refuse()
        _type_in_cell(page, 2, "\nw = math.")
        notice = page.locator(".Toastify__toast", has_text="completions are off").first
        notice.wait_for(timeout=30_000)
        assert "not reachable" in notice.inner_text() or "ollama" in notice.inner_text().lower()
        page.keyboard.type("pi + math.", delay=30)
        status = page.locator(".farm-status").first
        status.click()
        page.wait_for_function(
            "() => document.querySelector('.farm-status').textContent.includes('ollama down')", timeout=30_000
        )
        board = page.locator(".farm-health-panel").first
        board.wait_for(timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('.farm-health-panel tr[data-state=\"unhealthy\"]') !== null", timeout=30_000
        )
        assert page.locator(".Toastify__toast", has_text="completions are off").count() == 1
        page.wait_for_timeout(300)  # let the board's last redraw land before the picture
        board.locator("table").screenshot(path=str(OUTPUT / "health-board.png"))
        page.locator(".jp-StatusBar-Widget").first.screenshot(path=str(OUTPUT / "status-bar.png"))


SIDEBAR_CELLS = ["import pandas as pd\ndf = pd.DataFrame({'city': ['Oslo', 'Lima'], 'visits': [3, 5]})", BUSY]
CHAT = "#jp-right-stack .farm-chat"


def test_the_side_panel_chat_fills_names_from_the_kernel_and_says_when_it_waits_for_a_cell(
    tmp_path: Path, coder: OllamaServer
) -> None:
    env = {"OLLAMA_HOST": coder.url}
    with _lab(tmp_path, LOOPBACK_TOML, env, SIDEBAR_CELLS) as (url, notebooks), _page(url) as page:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")  # the first, until it has run
        page.locator(".farm-chat-button").first.click()  # %farm sidebar in the notebook's kernel
        chat = page.locator(CHAT).first
        chat.wait_for(timeout=60_000)
        chat.locator("textarea").fill("Which city has most visits? {df}")
        chat.locator("button", has_text="Send").click()
        page.wait_for_function(
            f"() => {{ const c = document.querySelector('{CHAT}');"
            " return c && c.textContent.includes('Echo:') && c.textContent.includes('Lima'); }",
            timeout=60_000,
        )
        (asked,) = [r.json or {} for r in coder.requests if r.path == "/api/chat"]
        question = asked["messages"][-1]["content"]
        assert question.startswith("Which city has most visits?") and "Oslo" in question and "{df}" not in question
        assert page.locator(f"{CHAT} .farm-chat-waiting").count() == 0  # its own messages never say it
        OUTPUT.mkdir(exist_ok=True)
        page.locator("#jp-right-stack").first.screenshot(path=str(OUTPUT / "sidebar.png"))

        # the bounded busy cell holds the kernel: the chat says its messages wait, and they do
        page.evaluate(
            "() => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = 1;"
            " window.jupyterapp.commands.execute('notebook:run-cell'); }"
        )
        waiting = page.locator(f"{CHAT} .farm-chat-waiting").first
        waiting.wait_for(timeout=30_000)
        assert "waiting for the running cell" in waiting.inner_text()
        chat.locator("textarea").fill("And the fewest? {df}")
        chat.locator("button", has_text="Send").click()
        page.locator("#jp-right-stack").first.screenshot(path=str(OUTPUT / "sidebar-waiting.png"))
        assert coder.count("/api/chat") == 1, "a message cannot reach the kernel before the cell ends"
        (notebooks / "release").touch()
        waiting.wait_for(state="detached", timeout=60_000)
        page.wait_for_function(
            f"() => document.querySelector('{CHAT}').textContent.includes('Echo: And the fewest?')", timeout=60_000
        )
        assert coder.count("/api/chat") == 2


def _outward_address() -> str | None:
    """An address of this machine that is not loopback (a model there counts as remote)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize("enabled", [False, True])
def test_a_remote_model_completes_only_when_enabled(tmp_path: Path, enabled: bool) -> None:
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address but loopback: no model can be remote here")
    toml = 'provider = "openai"\n[completion]\nmodel = "openai:codestral"\ndebounce_ms = 100\n'
    toml += "enabled = true\n" if enabled else ""
    with OpenAIServer(models=["codestral"], api_key=TEST_API_KEY, host=address) as remote:
        env = {"OPENAI_BASE_URL": remote.base_url, "OPENAI_API_KEY": TEST_API_KEY}
        with _lab(tmp_path, toml, env) as (url, _), _page(url) as page:
            _type_in_cell(page, 2, "v = math.")
            # the status bar's health check lists the models (/v1/models): no cell text in that
            sent = lambda: [r.json for r in remote.requests if r.path != "/v1/models"]  # noqa: E731
            if enabled:
                page.locator(GHOST).first.wait_for(timeout=30_000)
                # One request, or more where typing on a loaded machine paused past the debounce.
                paths = [r.path for r in remote.requests if r.path != "/v1/models"]
                assert paths and set(paths) == {"/v1/completions"}, paths
                return
            notice = page.locator(".Toastify__toast", has_text="completions are off").first
            notice.wait_for(timeout=30_000)
            assert "[completion] enabled = true" in notice.inner_text()
            page.keyboard.type("pi + math.", delay=30)
            # the notice said it once; the Lab asked the server nothing more, and nothing left the machine
            page.wait_for_timeout(1000)
            assert page.locator(".Toastify__toast", has_text="completions are off").count() == 1
            assert page.locator(GHOST).count() == 0
            assert sent() == []


def test_jupyter_lists_the_built_extension_as_enabled(tmp_path: Path) -> None:
    _need_extension()
    labextensions = tmp_path / "labextensions"
    labextensions.mkdir()
    (labextensions / "farm-jupyter").symlink_to(BUILT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")} | {"JUPYTER_PATH": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("jupyter")), "labextension", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    listing = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert re.search(r"farm-jupyter v\d+\.\d+\.\d+ enabled\s+OK", listing), listing


def test_the_wheel_ships_the_prebuilt_extension(tmp_path: Path) -> None:
    """Users never run Node: the wheel carries labextension/dist as share/jupyter/labextensions/farm-jupyter."""
    _need_extension()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("farm_jupyter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    prefix = next(n for n in names if n.endswith(".data/data/share/jupyter/labextensions/farm-jupyter/package.json"))
    folder = prefix.removesuffix("package.json")
    built = {str(p.relative_to(BUILT)) for p in BUILT.rglob("*") if p.is_file()}
    assert {n.removeprefix(folder) for n in names if n.startswith(folder)} == built
    assert any(name.startswith("static/remoteEntry.") for name in built)
