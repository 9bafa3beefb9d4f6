"""Secrets never leave in full: with OPENAI_API_KEY, HF_TOKEN and a password in OLLAMA_HOST set to
canaries, nothing a user or a log can see holds them (reprs, settings, errors, monitor records,
logs, the disk cache, every magic's output, widget state, a saved executed notebook), even where a
server echoes them back (the `echo` fault); the disk cache is owner-only.

The canaries contain "SECRET", and their masked forms (`sk-...cdef`, `...7890`, `***`) do not, so
every check looks for that word, and for every 8-character piece of each canary (and of the basic
auth header that carries the password): a partial leak (a prefix, a middle) is caught as well as a
whole one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm_jupyter.config import load_settings, mask
from farm_jupyter.errors import AllProvidersFailed, FarmError
from farm_jupyter.sessions import Session, set_session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer

OPENAI_KEY = "sk-SECRET-canary-1234567890abcdef"
HF_TOKEN = "hf_SECRETcanary1234567890"
OLLAMA_USER, OLLAMA_PASSWORD = "farmer", "pw-SECRET-ollama-4242"
WORD = "SECRET"  # in every canary, in no masked form
MASKED_KEY = "sk-...cdef"
CANARIES = [
    OPENAI_KEY,
    HF_TOKEN,
    OLLAMA_PASSWORD,
    base64.b64encode(f"{OLLAMA_USER}:{OLLAMA_PASSWORD}".encode()).decode(),
]
PIECES = {c[i : i + 8] for c in CANARIES for i in range(len(c) - 7)}


def leaked(text: str) -> bool:
    return WORD in text or any(piece in text for piece in PIECES)


pytestmark = pytest.mark.timeout(120)


class Seen:
    """Everything collected for the final scan, with where it came from."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, value: Any) -> None:
        if not isinstance(value, str | bytes):
            value = json.dumps(value, default=repr) if isinstance(value, dict | list | tuple) else repr(value)
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        self.items.append((where, text))

    def check(self) -> None:
        leaks = [where for where, text in self.items if leaked(text)]
        assert not leaks, f"a secret appears in: {leaks}"
        assert len(self.items) > 10


@pytest.fixture
def servers() -> Iterator[tuple[OllamaServer, OpenAIServer, OpenAIServer]]:
    with (
        OllamaServer() as ollama,
        OpenAIServer(api_key=OPENAI_KEY) as good,
        OpenAIServer(api_key="sk-another-key-0000000000000000") as wrong,
    ):
        yield ollama, good, wrong


@pytest.fixture
def env(
    servers: tuple[OllamaServer, OpenAIServer, OpenAIServer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Path:
    """The canaries in the environment, the servers behind the usual variables, a disk cache."""
    for name in list(os.environ):
        if name.startswith("FARM_") or name in ("OPENAI_BASE_URL", "OLLAMA_HOST"):
            monkeypatch.delenv(name)
    ollama, good, _ = servers
    cache = tmp_path / "cache" / "responses.sqlite"
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    # The loopback Ollama ignores the credentials; they still go out with every request.
    monkeypatch.setenv("OLLAMA_HOST", f"http://{OLLAMA_USER}:{OLLAMA_PASSWORD}@{ollama.host_port}")
    monkeypatch.setenv("OPENAI_BASE_URL", good.base_url)
    monkeypatch.setenv("FARM_ENV", "test")
    monkeypatch.setenv("FARM_FALLBACK", "openai")
    monkeypatch.setenv("FARM_CACHE", f"disk:{cache}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no farm.toml from anywhere else
    return cache


def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("farm_jupyter", "httpx", "httpcore", "openai", "urllib3", "transformers", "huggingface_hub"):
        caplog.set_level(logging.DEBUG, logger=name)


def add_logs(seen: Seen, caplog: pytest.LogCaptureFixture) -> None:
    seen.add("logs (formatted)", caplog.text)
    for record in caplog.records:
        seen.add(f"log record {record.name}", f"{record.getMessage()} {record.args!r} {record.exc_text or ''}")
    assert any(r.name.startswith(("httpx", "httpcore", "openai")) for r in caplog.records)  # DEBUG was on


def cache_files(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name)]


def test_session_settings_errors_monitor_logs_and_cache(
    env: Path, servers: Any, caplog: pytest.LogCaptureFixture, tiny_model_path: Path
) -> None:
    debug_logs(caplog)
    _, _, wrong = servers
    seen = Seen()
    session = Session()
    assert session.settings.openai.api_key is not None
    assert session.settings.openai.api_key.get_secret_value() == OPENAI_KEY  # really read from the environment
    assert session.settings.huggingface.token is not None

    # reprs and settings
    for where, value in [
        ("repr(session)", repr(session)),
        ("repr(settings)", repr(session.settings)),
        ("str(settings)", str(session.settings)),
        ("settings.public()", session.settings.public()),
        ("settings.model_dump()", session.settings.model_dump()),
        ("settings.model_dump_json()", session.settings.model_dump_json()),
        ("repr(openai provider)", repr(session._engine.router.provider("openai"))),
        ("repr(ollama provider)", repr(session._engine.router.provider("ollama"))),
        ("repr(huggingface provider)", repr(session._engine.router.provider("huggingface"))),
    ]:
        seen.add(where, value)
    public = session.settings.public()
    assert public["openai"]["api_key"] == MASKED_KEY == mask(OPENAI_KEY)
    assert public["huggingface"]["token"] == "...7890"

    # answers (the disk cache gets entries), models, health
    for how in ("chat", "stream"):
        for target in ("openai", "ollama"):
            stream = session.stream(f"{how} {target}", target)
            seen.add(f"{how} {target} chunks", [repr(c) for c in stream])
            assert stream.response is not None and stream.response.text == f"Echo: {how} {target}"
            seen.add(f"{how} {target} response", stream.response.model_dump_json())
    seen.add("models", [m.model_dump_json() for m in session.models("openai")])
    seen.add("health", [s.model_dump_json() for s in session.health()])
    seen.add("cache_info", session.usage("cache"))

    # the HF token goes to from_pretrained: a local model, and a folder that is not there
    answer = session.chat("hello", f"huggingface:{tiny_model_path}", max_tokens=4, fallback=False)
    seen.add("huggingface answer", answer.model_dump_json())
    with pytest.raises(FarmError) as missing:
        session.chat("hello", f"huggingface:{tiny_model_path}-missing", fallback=False)
    seen.add("huggingface error", "".join(traceback.format_exception(missing.value)))

    # a server that rejects the key and echoes it back, in every form: 401, every error path
    wrong.add_fault(Fault("echo", status=401, times=None))
    rejected = Session(load_settings({"openai": {"base_url": wrong.base_url}}))
    for ask in (
        lambda: rejected.chat("hi", "openai", fallback=False),
        lambda: list(rejected.stream("hi", "openai", fallback=False)),
        lambda: rejected.models("openai"),
    ):
        with pytest.raises(FarmError) as info:
            ask()
        error = info.value
        assert "401" in str(error) and "\n" not in str(error)
        seen.add("error str", str(error))
        seen.add("error repr", repr(error))
        seen.add("error traceback (whole chain)", "".join(traceback.format_exception(error)))
        if isinstance(error, AllProvidersFailed):
            seen.add("error attempts", [a.model_dump_json() for a in error.attempts])
    seen.add("health (401)", [s.model_dump_json() for s in rejected.health(["openai"])])
    assert wrong.faults[0].hits >= 4  # every path above met the echo
    ollama, _, _ = servers
    assert ollama.requests[-1].headers["authorization"] == "Basic " + CANARIES[3]  # OLLAMA_HOST's password was used
    ollama.add_fault(Fault("echo", path="/api/chat", status=401))
    with pytest.raises(FarmError) as echoed:
        session.chat("echo the password", "ollama", fallback=False, no_cache=True)
    seen.add("ollama echo error", "".join(traceback.format_exception(echoed.value)))

    # the monitor
    for s in (session, rejected):
        records = s._engine.monitor.records
        seen.add("monitor records", [repr(r) for r in records])
        seen.add("monitor summary", [m.model_dump_json() for m in s._engine.monitor.summary()])
    rejected.close()
    session.close()

    # the disk cache, byte for byte (journal files included, if any are left)
    files = cache_files(env)
    assert files and session.settings.cache.backend == "disk"
    for path in files:
        seen.add(f"cache file {path.name}", path.read_bytes())
    assert b"Echo: chat openai" in env.read_bytes()  # the scan read real entries

    add_logs(seen, caplog)
    seen.check()


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_disk_cache_files_are_owner_only(env: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        session = Session()
        session.chat("hello")
        session.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE(env.parent.stat().st_mode) == 0o700  # the folder we made, too
    for path in cache_files(env):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


# -- the notebook face ------------------------------------------------------------------------------


class RecordingComm:
    """Stands in for the kernel's comm: records every message a widget sends to the frontend."""

    kernel = "Truthy"

    def __init__(self, **kwargs: Any) -> None:
        self.comm_id = uuid.uuid4().hex
        self.opened_with = kwargs
        self.messages: list[Any] = []

    def open(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send(self, data: Any = None, buffers: Any = None, **kwargs: Any) -> None:
        self.messages.append(data)

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


SUBCOMMANDS = [
    "help",
    "models",
    "models openai",
    "use openai",
    "use",
    "use ollama",
    "health",
    "health openai",
    "gpu",
    "stats",
    "history",
    "cache",
    "cache info",
    "config",
    "pull llama3.1",
    "load qwen2.5:0.5b",
    "unload qwen2.5:0.5b",
    "reload qwen2.5:0.5b",
    "alias fast openai:gpt-4o-mini",
    "alias",
    "unalias fast",
    "error",
    "error openai",
    "ollama start",
    "ollama stop",
    "dashboard",
    "cache clear",
    "reset",
]


def test_magics_and_widgets(
    env: Path, servers: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comm
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from ipywidgets.widgets import widget as widget_module

    debug_logs(caplog)
    widgets_before = set(widget_module._instances)
    made: list[RecordingComm] = []
    monkeypatch.setattr(comm, "create_comm", lambda **kw: made.append(RecordingComm(**kw)) or made[-1])
    _, _, wrong = servers
    seen = Seen()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "farm_jupyter")
    sessions: list[Session] = []

    def new_session() -> Session:
        sessions.append(Session())
        set_session(sessions[-1])
        return sessions[-1]

    old = set_session(None)
    new_session()
    try:

        def run(label: str, code: str) -> Any:
            with capture_output() as cap:
                result = ip.run_cell(code)
            seen.add(f"{label}: stdout", cap.stdout)
            seen.add(f"{label}: stderr", cap.stderr)
            seen.add(f"{label}: outputs", [o.data for o in cap.outputs])
            seen.add(f"{label}: result", repr(result.result))
            for method in ("_repr_html_", "_repr_markdown_"):
                if hasattr(result.result, method):
                    seen.add(f"{label}: {method}", getattr(result.result, method)())
            if result.error_in_exec is not None:
                seen.add(f"{label}: error", "".join(traceback.format_exception(result.error_in_exec)))
            return result

        assert run("chat", "%%farm_chat\nSay hello").success
        assert run("chat openai", "%%farm_chat -p openai --no-cache\nSay hello again").success
        # A key the server rejects, echoing it back: the cell fails with one line, and %farm error
        # sends that line on.
        wrong.add_fault(Fault("echo", status=401, times=None))
        monkeypatch.setenv("OPENAI_BASE_URL", wrong.base_url)
        monkeypatch.setenv("FARM_AI_PROVIDER", "openai")
        monkeypatch.setenv("FARM_FALLBACK", "")  # no fallback to hide the failure
        new_session()
        failed = run("chat 401", "%%farm_chat -p openai --no-cache\nThis fails")
        assert isinstance(failed.error_in_exec, FarmError) and "401" in str(failed.error_in_exec)
        for line in SUBCOMMANDS:
            run(f"%farm {line}", f"%farm {line}")
        table = run("config", "%farm config").result
        assert dict(table.rows)["openai.api_key"] == MASKED_KEY
        assert dict(table.rows)["ollama.host"] == f"http://{OLLAMA_USER}:***@{servers[0].host_port}"

        # every widget: its repr, its text form, and everything it sent to the frontend
        from farm_jupyter.widgets import ChatWidget, CompareWidget, Dashboard, GPUGauge, HealthBoard, ModelPicker

        monkeypatch.setenv("OPENAI_BASE_URL", servers[1].base_url)
        monkeypatch.delenv("FARM_AI_PROVIDER")
        monkeypatch.setenv("FARM_FALLBACK", "openai")
        session = new_session()
        widgets = [
            cls(session=session) for cls in (ChatWidget, CompareWidget, Dashboard, GPUGauge, HealthBoard, ModelPicker)
        ]
        for w in widgets:
            seen.add(f"{type(w).__name__} mimebundle", w._repr_mimebundle_())
        chat, compare = widgets[0], widgets[1]
        chat.send("widget question")
        assert chat.wait(20)
        compare.run("compare question", ["ollama:llama3.1", "openai:gpt-4o-mini"])
        assert compare.wait(20)
        time.sleep(0.5)  # the health board and picker fetch in the background
        for w in widgets:
            seen.add(f"repr {type(w).__name__}", repr(w))
            seen.add(f"summary {type(w).__name__}", w.summary())
            seen.add(f"state {type(w).__name__}", w.get_state())
            w.close()
        assert chat.last_text == "Echo: widget question"
        for c in made:
            seen.add(f"comm {c.opened_with.get('target_name')}", [c.opened_with, *c.messages])
        assert made and sum(len(c.messages) for c in made) > 0
    finally:
        set_session(old)
        for s in sessions:
            s.close()
        ip.run_line_magic("unload_ext", "farm_jupyter")
        for model_id in set(widget_module._instances) - widgets_before:  # layouts and styles too
            if (leftover := widget_module._instances.get(model_id)) is not None:
                leftover.close()
    add_logs(seen, caplog)
    seen.check()


@pytest.mark.timeout(180)
def test_a_saved_executed_notebook(env: Path, servers: Any, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    _, good, _ = servers
    # Servers that echo the key and the password: in errors, health, and the DEBUG log printed
    # into the notebook (WWW-Authenticate and X-Echo-* headers, through httpcore and openai).
    good.add_fault(Fault("echo", path="/v1/models", status=401, times=None))
    servers[0].add_fault(Fault("echo", path="/api/version", status=401, times=None))
    cells = [
        "import logging, sys\nlogging.basicConfig(level=logging.DEBUG, stream=sys.stdout, force=True)",
        "%load_ext farm_jupyter",
        "%farm config",
        "%%farm_chat\nSay hello",
        "%%farm_chat -p openai\nAnd once more",
        "%farm health",
        "%farm models openai",
        "%farm stats",
        "import farm_jupyter\nfarm_jupyter.session()",
        "import os\nsorted(name for name in os.environ if name.startswith(('OPENAI', 'HF_')))",
        "%%farm_chat -m openai:no-such-model\nThis fails",
        "%farm error",
        "from farm_jupyter.widgets import HealthBoard\nHealthBoard()",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = NotebookClient(
        nb, timeout=60, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    saved = tmp_path / "executed.ipynb"
    nbformat.write(nb, saved)
    text = saved.read_text()
    assert not leaked(text), sorted(p for p in PIECES if p in text)
    assert "WWW-Authenticate" in text and "token=sk-...cdef" in text  # the echo was logged, masked
    assert good.faults[0].hits and servers[0].faults[0].hits
    assert MASKED_KEY in text  # %farm config ran and showed the masked form
    assert "Echo: Say hello" in text and "Echo: And once more" in text  # the answers were saved
    assert "'OPENAI_API_KEY'" in text  # the kernel had the key
