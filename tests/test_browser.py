"""One real-browser test: JupyterLab in headless Chromium shows the dashboard and streams a chat.

The test starts a loopback Ollama server and `jupyter lab` (fresh HOME, token, the server's URL
in OLLAMA_HOST, so the kernel inherits it), opens a generated notebook with Playwright for
Python driving Debian's chromium (`executable_path`; never `playwright install`), runs all
cells, and checks that the streamed answer reaches the widget's DOM and that the GPU gauge keeps
refreshing while another cell runs, and that a `%%farm_chat` cell ends with its answer and
footer only (the live output is cleared, not left empty). It leaves `test-output/dashboard.png` for the README.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from farm_jupyter.testing import OllamaServer

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"

CELLS = [
    'import os\nprint(os.environ["OLLAMA_HOST"], os.environ["FARM_ENV"])',
    "%load_ext farm_jupyter",
    "%%farm_chat\nhello from a cell",
    "from farm_jupyter.widgets import Dashboard\nd = Dashboard(gpu_interval=0.5)\nd",
    'd.chat.send("hello")',
    # Busy until the test has read the gauge twice (it writes `release`), however slow the machine;
    # bounded, so that a test that fails early leaves no cell running for long.
    "import pathlib, time\nfor _ in range(3000):\n    if pathlib.Path('release').exists(): break\n    time.sleep(0.1)",
]


def _need_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright; no `playwright install` needed)")
    if shutil.which("jupyter", path=str(Path(sys.executable).parent)) is None:
        missing.append("jupyterlab (pip install 'farm-jupyter[lab]')")
    if missing:
        message = "the browser test needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_notebook(folder: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    path = folder / "dashboard.ipynb"
    nbformat.write(nb, path)
    return path


@contextmanager
def running_lab(notebooks: Path, env: dict[str, str], log: Path, limit: float = 90) -> Iterator[tuple[str, str]]:
    """(base URL, token) of a JupyterLab serving `notebooks` with `env`, its output in `log`;
    stopped (its whole process group) when the block ends."""
    port, token = _free_port(), secrets.token_hex(16)
    command = [
        *(sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}"),
        *("--ServerApp.port_retries=0", f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1"),
        *(f"--ServerApp.root_dir={notebooks}", "--LabApp.expose_app_in_browser=True"),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=notebooks, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + limit
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"jupyter lab did not start within {limit:.0f} s:\n" + log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.2)
        yield base, token
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, OllamaServer, Path]]:
    """(base URL with token, the loopback Ollama server, the log file) of a running JupyterLab."""
    _need_browser()
    home, notebooks = tmp_path / "home", tmp_path / "notebooks"
    home.mkdir()
    notebooks.mkdir()
    _write_notebook(notebooks)
    log = tmp_path / "jupyter.log"
    with OllamaServer(chunk_delay=0.05) as ollama:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "FARM_", "OPENAI_", "OLLAMA_", "HF_"))
        }
        env.update(HOME=str(home), OLLAMA_HOST=ollama.url, FARM_ENV="test", FARM_FALLBACK="", PYTHONUNBUFFERED="1")
        with running_lab(notebooks, env, log) as (base, token):
            yield f"{base}/lab/tree/dashboard.ipynb?token={token}", ollama, log


def test_dashboard_streams_in_jupyterlab(lab: tuple[str, OllamaServer, Path]) -> None:
    from playwright.sync_api import sync_playwright

    url, ollama, log = lab
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.set_default_timeout(60_000)
            page.goto(url)
            # the kernel must be idle before Run All, or the request can be dropped
            page.wait_for_function(
                """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                        .some(e => e.textContent.includes('(ipykernel) | Idle'))""",
                timeout=90_000,
            )
            # not awaited: the command's promise settles only when every cell has run
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # the chat cell: the live output went when the answer came, so the answer and its footer are all
            chat_cell = page.locator(".jp-Notebook .jp-Cell").nth(CELLS.index("%%farm_chat\nhello from a cell"))
            page.wait_for_function(
                """(i) => { const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];
                            return c && c.innerText.includes('ollama:llama3.1 ·'); }""",
                arg=CELLS.index("%%farm_chat\nhello from a cell"),
                timeout=60_000,
            )
            outputs = chat_cell.locator(".jp-OutputArea-child")
            assert outputs.count() == 2, [outputs.nth(i).inner_text() for i in range(outputs.count())]
            assert "Echo: hello from a cell" in outputs.nth(0).inner_text()
            assert outputs.nth(1).inner_text().startswith("ollama:llama3.1 ·")

            dashboard = page.locator(".farm-dashboard").first
            dashboard.wait_for(state="visible", timeout=60_000)
            answer = page.locator(".farm-dashboard .farm-answer").first
            answer.wait_for(timeout=30_000)
            page.wait_for_function(
                """() => { const a = document.querySelector('.farm-dashboard .farm-answer');
                           return a && a.textContent.includes('Echo: hello') && a.textContent.includes('tok/s'); }""",
                timeout=30_000,
            )
            assert "Echo: hello" in answer.inner_text()
            assert "ollama:llama3.1" in answer.inner_text()
            assert ollama.count("/api/chat") >= 1

            # the waiting cell is running now: the gauge must still move, from the runtime thread
            stamp = page.locator(".farm-dashboard .farm-gauge-stamp").first
            stamp.wait_for(timeout=30_000)
            # The kernel's status says Busy, or the waiting cell's prompt says it runs (`[*]`).
            busy = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => e.textContent.includes('| Busy'))
                || ([...document.querySelectorAll('.jp-Notebook .jp-Cell .jp-InputPrompt')].pop()?.textContent || '').includes('*')"""
            # Between two cells the kernel is idle for a moment: wait (bounded) for the waiting cell to start.
            page.wait_for_function(busy, timeout=60_000)
            first = stamp.inner_text()
            page.wait_for_timeout(2000)
            second = stamp.inner_text()
            assert page.evaluate(busy), "the waiting cell ended before the second reading"
            (log.parent / "notebooks" / "release").touch()
            assert first != second, (first, second)
            assert "updated" in second

            # the board has checked the provider; the picker is filled from the server's list
            page.wait_for_function(
                "() => document.querySelector('.farm-dashboard [data-state=\"healthy\"]') !== null", timeout=30_000
            )
            page.wait_for_function(
                """() => [...document.querySelectorAll('.farm-dashboard .farm-picker select option')]
                        .some(o => o.textContent.includes('qwen2.5:0.5b'))""",
                timeout=30_000,
            )
            page.wait_for_timeout(300)  # let the last redraws land before the picture
            dashboard.scroll_into_view_if_needed()
            dashboard.screenshot(path=str(OUTPUT / "dashboard.png"))
        except Exception:
            print(log.read_text(errors="replace")[-4000:])
            raise
        finally:
            browser.close()
    assert (OUTPUT / "dashboard.png").stat().st_size > 10_000
