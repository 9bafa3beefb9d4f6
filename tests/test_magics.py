"""The notebook face: %%farm_chat and %farm in a real InteractiveShell, against loopback servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output
from traitlets import TraitError

from farm_jupyter.errors import AllProvidersFailed, FarmError
from farm_jupyter.magics import FarmMagics, Stopped, Table, extract_code, interpolate, parse_json
from farm_jupyter.magics.frontend import Frontend
from farm_jupyter.sessions import Session, set_session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY, loopback_settings

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    before = set(ip.user_ns)
    ip.run_line_magic("load_ext", "farm_jupyter")
    yield ip
    if "farm_jupyter" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "farm_jupyter")
    for name in set(ip.user_ns) - before:
        del ip.user_ns[name]
    ip.config.pop("FarmMagics", None)  # `%config FarmMagics.x = ...` in a test stays with the shell


@pytest.fixture
def farm(shell: InteractiveShell, farm_session: Session) -> Iterator[Session]:
    old = set_session(farm_session)
    yield farm_session
    set_session(old)


def magics(ip: InteractiveShell) -> FarmMagics:
    found = ip.magics_manager.registry["FarmMagics"]
    assert isinstance(found, FarmMagics)
    return found


class RecordingPublisher(CapturingDisplayPublisher):
    """What the kernel sends, in order, `clear_output` included (IPython's capturing publisher
    would empty its list at once, as no frontend does with `wait=True`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[dict[str, Any]] = []

    def publish(
        self,
        data: Any,
        metadata: Any = None,
        source: Any = None,
        *,
        transient: Any = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        self.events.append({"data": data, "transient": transient or {}, "update": update})
        super().publish(data, metadata=metadata, source=source, transient=transient, update=update)

    def clear_output(self, wait: bool = False) -> None:
        self.events.append({"clear": True, "wait": wait})


@dataclass
class Captured:
    events: list[dict[str, Any]]
    io: CapturedIO | None = None

    @property
    def stdout(self) -> str:
        return self.io.stdout if self.io is not None else ""


@contextmanager
def captured(ip: InteractiveShell) -> Iterator[Captured]:
    pub = RecordingPublisher(shell=ip)
    old, ip.display_pub = ip.display_pub, pub
    cap = Captured(pub.events)
    try:
        with capture_output(display=False) as io:
            cap.io = io
            yield cap
    finally:
        ip.display_pub = old


def chat(ip: InteractiveShell, line: str, cell: str) -> Captured:
    with captured(ip) as cap:
        ip.run_cell_magic("farm_chat", line, cell)
    return cap


def fresh(cap: Captured) -> list[dict[str, Any]]:
    """What the cell keeps in a frontend and a saved notebook (JupyterLab, nbclient): displays,
    updated in place by display id, and cleared by `clear_output(wait=True)` at the next one."""
    outputs: list[dict[str, Any]] = []
    clear = False
    for event in cap.events:
        if event.get("clear"):
            if event["wait"]:
                clear = True
            else:
                outputs.clear()
            continue
        display_id = event["transient"].get("display_id")
        if event["update"]:
            for output in outputs:
                if display_id is not None and output["id"] == display_id:
                    output["data"] = event["data"]
            continue
        if clear:
            outputs, clear = [], False
        outputs.append({"id": display_id, "data": event["data"]})
    return [o["data"] for o in outputs]


def nbval_sees(cap: Captured) -> list[dict[str, Any]]:
    """What nbval compares: every display's first value; it applies no update and no clear."""
    return [e["data"] for e in cap.events if "data" in e and not e["update"]]


def updates(cap: Captured) -> list[dict[str, Any]]:
    return [e["data"] for e in cap.events if "data" in e and e["update"]]


def last_prompt(server: OllamaServer) -> str:
    return server.requests[-1].json["messages"][-1]["content"]  # type: ignore[index]


# -- loading ----------------------------------------------------------------------------------------


def test_load_unload_reload(shell: InteractiveShell) -> None:
    assert shell.find_cell_magic("farm_chat") is not None
    assert shell.find_line_magic("farm") is not None
    instance = magics(shell)
    assert instance in shell.configurables
    shell.run_line_magic("unload_ext", "farm_jupyter")
    assert shell.find_cell_magic("farm_chat") is None
    assert shell.find_line_magic("farm") is None
    assert "FarmMagics" not in shell.magics_manager.registry
    assert instance not in shell.configurables
    assert instance.frontend.pre_run_cell not in shell.events.callbacks["pre_run_cell"]
    shell.run_line_magic("load_ext", "farm_jupyter")
    shell.run_line_magic("reload_ext", "farm_jupyter")
    assert shell.find_cell_magic("farm_chat") is not None
    assert sum(isinstance(c, FarmMagics) for c in shell.configurables) == 1
    assert (
        len(
            [cb for cb in shell.events.callbacks["pre_run_cell"] if getattr(cb, "__self__", None).__class__ is Frontend]
        )
        == 1
    )


def test_load_ext_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import sys
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "farm_jupyter")
        assert ip.find_cell_magic("farm_chat") is not None
        heavy = [m for m in ("openai", "torch", "transformers", "httpx", "pydantic", "farm_jupyter.sessions",
                             "farm_jupyter.router", "ipywidgets", "markdown_it", "tqdm") if m in sys.modules]
        print(heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_text(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    doc = shell.find_cell_magic("farm_chat").__doc__
    for option in (
        "--model",
        "--provider",
        "--temperature",
        "--max-tokens",
        "--system",
        "--format",
        "--out",
        "--no-cache",
        "--refresh",
        "--new",
        "--no-stream",
        "--raw",
        "--compare",
        "{Out[3]}",
        "{{",
    ):
        assert option in doc, option
    assert "markdown" in doc and "json" in doc and "code" in doc
    shell.run_cell("%%farm_chat?")
    assert "--compare" in capsys.readouterr().out
    table = shell.run_line_magic("farm", "help")
    commands = " ".join(table.column("command"))
    for sub in (
        "models",
        "use",
        "health",
        "gpu",
        "stats",
        "history",
        "reset",
        "cache",
        "config",
        "pull",
        "load",
        "unload",
        "reload",
        "alias",
        "unalias",
        "error",
        "ollama",
        "dashboard",
    ):
        assert f"%farm {sub}" in commands
    assert "<table>" in table._repr_html_()
    assert "%farm models" in repr(table)


def test_traitlets_are_config_and_apply_to_a_new_session(
    shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell.run_line_magic("config", "FarmMagics.update_rate = 5")
    m = magics(shell)
    assert m.update_rate == 5
    for name in ("default_model", "max_history", "update_rate", "cache_backend"):
        assert FarmMagics.class_traits()[name].metadata.get("config") is True
    monkeypatch.chdir(tmp_path)
    for var in ("OLLAMA_HOST", "OPENAI_API_KEY", "FARM_ENV", "FARM_CACHE", "FARM_AI_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    old = set_session(None)  # no kernel session yet: the settings below are read when it is made
    try:
        m.cache_backend = "none"
        m.max_history = 7
        m.default_model = "ollama:qwen2.5:0.5b"
        s = m.session()
        assert s.settings.cache.backend == "none"
        assert s.history.max_turns == 7
        assert s.resolve(None) == "ollama:qwen2.5:0.5b"
        assert m.session() is s
        s.close()
    finally:
        set_session(old)
    with pytest.raises(Exception, match="cache_backend"):
        m.cache_backend = "floppy"


# -- answering --------------------------------------------------------------------------------------


def test_answer_final_output_footer_and_out(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    ollama_server.reply = "The **answer** is 42."
    cap = chat(shell, "-o r", "What is the answer?")
    answer, footer = fresh(cap)  # the live output is gone: no empty output is saved
    assert answer == {"text/markdown": "The **answer** is 42.", "text/plain": "The **answer** is 42."}
    assert footer["text/plain"].startswith("ollama:llama3.1 · ")
    assert "tokens" in footer["text/plain"] and "<div" in footer["text/html"]
    assert {"clear": True, "wait": True} in cap.events  # it goes when the answer comes
    assert nbval_sees(cap)[-2:] == [answer, footer]  # nbval keeps the live output's first value too
    r = shell.user_ns["r"]
    assert r.text == "The **answer** is 42." and r.address == "ollama:llama3.1"
    assert footer["text/plain"] == r.footer()
    # the same question again comes from the cache, and the footer says so
    again = fresh(chat(shell, "-o r2 --new", "What is the answer?"))
    assert again[-1]["text/plain"].endswith("cached")
    assert ollama_server.count("/api/chat") == 1


def test_options_reach_the_provider(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, openai_server: OpenAIServer
) -> None:
    chat(shell, "-m qwen2.5:0.5b -t 0.3 --max-tokens 5 --no-cache", "hello")
    body = ollama_server.requests[-1].json
    assert body is not None
    assert body["model"] == "qwen2.5:0.5b"
    assert body["options"]["temperature"] == 0.3 and body["options"]["num_predict"] == 5
    with pytest.raises(UsageError, match="tone is not defined"):  # -s is interpolated too
        chat(shell, "-s 'Be {tone}.'", "hello")
    shell.user_ns["tone"] = "terse"
    chat(shell, "-p openai -m gpt-4o -s 'Be {tone}.'", "hello")
    sent = openai_server.requests[-1].json
    assert sent is not None and sent["model"] == "gpt-4o"
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}


def test_no_stream_and_text_format(shell: InteractiveShell, farm: Session, ollama_server: OllamaServer) -> None:
    ollama_server.reply = "plain *words*"
    cap = chat(shell, "--no-stream -f text", "hi")
    assert updates(cap) == []
    answer, footer = fresh(cap)
    assert answer == {"text/plain": "plain *words*"}
    assert "ollama:llama3.1" in footer["text/plain"]


def test_format_code_puts_the_code_in_a_new_cell(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(shell, "set_next_input", lambda s, replace=False: calls.append((s, replace)))
    ollama_server.reply = "Try:\n\n```bash\npip install x\n```\n\n```python\nimport x\nprint(x)\n```\n"
    cap = chat(shell, "-f code", "how?")
    assert calls == [("import x\nprint(x)", False)]
    answer = fresh(cap)[-2]
    assert answer["text/plain"] == "import x\nprint(x)"
    assert "code put in a new cell below" in fresh(cap)[-1]["text/plain"]
    assert extract_code("no fences here\n") == "no fences here"
    assert extract_code("```sh\nls\n```") == "ls"


def test_format_json(shell: InteractiveShell, farm: Session, ollama_server: OllamaServer) -> None:
    ollama_server.reply = '{"a": [1, 2]}'
    cap = chat(shell, "-f json --no-cache", "data please")
    answer = fresh(cap)[-2]
    assert answer["application/json"] == {"a": [1, 2]}
    assert json.loads(answer["text/plain"]) == {"a": [1, 2]}
    assert ollama_server.requests[-1].json["format"] == "json"  # type: ignore[index]
    ollama_server.reply = "not json at all"
    cap = chat(shell, "-f json --no-cache", "data please")
    assert fresh(cap)[-2] == {"text/plain": "not json at all"}
    assert "not valid JSON" in fresh(cap)[-1]["text/plain"]
    assert parse_json('Here:\n```json\n{"b": 1}\n```') == {"b": 1}


def test_terminal_prints_as_it_streams(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # no capture_output: a plain InteractiveShell's display publisher cannot update in place
    ollama_server.reply = "streamed words"
    shell.run_cell_magic("farm_chat", "", "hi")
    out = capsys.readouterr().out
    assert out.startswith("streamed words\nollama:llama3.1 · ")


# -- interpolation ----------------------------------------------------------------------------------


class Obj:
    attr = "attribute value"


def test_interpolation_and_escaping(shell: InteractiveShell, farm: Session, ollama_server: OllamaServer) -> None:
    shell.user_ns.update(x="world", obj=Obj(), d={"key": "dict value"}, items=[1, 2, 3], pi=3.14159)
    chat(shell, "", "hello {x}: {obj.attr}, {d[key]}, {items[-1]}, {pi:.2f}, {x!r}, {{literal}} {{x}}")
    assert last_prompt(ollama_server) == "hello world: attribute value, dict value, 3, 3.14, 'world', {literal} {x}"
    chat(shell, "--raw", "code: {'a': 1} and {x}")
    assert last_prompt(ollama_server) == "code: {'a': 1} and {x}"


def test_interpolation_of_in_and_out(shell: InteractiveShell, farm: Session, ollama_server: OllamaServer) -> None:
    result = shell.run_cell("6 * 7", store_history=True)
    n = result.execution_count
    chat(shell, "", f"Out: {{Out[{n}]}}; In: {{In[{n}]}}")
    assert last_prompt(ollama_server) == "Out: 42; In: 6 * 7"


def test_missing_name_is_a_one_line_usage_error(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    with pytest.raises(UsageError) as info:
        chat(shell, "", "tell me about {undefined_thing}")
    assert type(info.value) is UsageError
    assert str(info.value) == (
        "prompt uses {undefined_thing}, but undefined_thing is not defined in the notebook; "
        "define it or write {{undefined_thing}} for literal braces"
    )
    assert ollama_server.count("/api/chat") == 0


@pytest.mark.parametrize(
    "template",
    [
        "{x.__class__}",
        "{__import__('os').system('true')}",
        "{x()}",
        "{}",
        "{0}",
        "{'a': 1}",
        "{x",
        "x}",
        "{d[missing]}",
        "{x.nope}",
        "{x:zz}",
        "{x!q}",
        "{Out[999]}",
    ],
)
def test_interpolation_misuse(template: str) -> None:
    with pytest.raises(UsageError) as info:
        interpolate(template, {"x": "value", "d": {}, "Out": {}})
    assert type(info.value) is UsageError
    assert "\n" not in str(info.value)


class Trap:
    """Any call into it would be evaluation; the fuzz test checks nothing ever calls it."""

    called = False

    def __call__(self, *args: Any) -> None:
        Trap.called = True

    def method(self) -> None:
        Trap.called = True


@given(st.text(alphabet="{}[]().:!'\"_ -0123456789xdtrapOutmethodsr", max_size=30))
def test_interpolation_fuzz(template: str) -> None:
    namespace = {"x": "value", "d": {"k": 1, "0": "zero"}, "trap": Trap(), "Out": {1: "one"}, "items": [1, 2]}
    try:
        result = interpolate(template, namespace)
    except UsageError as exc:
        assert type(exc) is UsageError
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, str)
    assert not Trap.called


# -- conversation -----------------------------------------------------------------------------------


def test_cells_form_a_conversation_and_a_rerun_replaces_its_turn(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    shell.run_cell("%%farm_chat\nfirst question", cell_id="cell-a")
    shell.run_cell("%%farm_chat\nsecond question", cell_id="cell-b")
    assert [t.id for t in farm.history.turns] == ["cell-a", "cell-b"]
    sent = ollama_server.requests[-1].json["messages"]  # type: ignore[index]
    assert [m["content"] for m in sent] == ["first question", "Echo: first question", "second question"]
    # re-running the first cell replaces its turn, and sends only what came before it
    shell.run_cell("%%farm_chat\nfirst question, again", cell_id="cell-a")
    assert [t.id for t in farm.history.turns] == ["cell-a", "cell-b"]
    assert farm.history.turns[0].user.content == "first question, again"
    assert [m["content"] for m in ollama_server.requests[-1].json["messages"]] == ["first question, again"]  # type: ignore[index]
    history = shell.run_line_magic("farm", "history")
    assert history.column("turn") == ["cell-a", "cell-b"]
    assert "first question, again" in repr(history)
    shell.run_line_magic("farm", "reset")
    assert len(farm.history) == 0
    assert "no turns yet" in repr(shell.run_line_magic("farm", "history"))


def test_cell_id_from_the_kernel_parent_header(
    shell: InteractiveShell, farm: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell, "parent_header", {"metadata": {"cellId": "kernel-cell"}}, raising=False)
    chat(shell, "", "one")
    chat(shell, "", "one again")
    assert [t.id for t in farm.history.turns] == ["kernel-cell"]
    monkeypatch.setattr(shell, "parent_header", {}, raising=False)
    chat(shell, "", "no id")
    chat(shell, "", "no id either")
    assert len(farm.history) == 3
    chat(shell, "--new", "fresh start")
    assert len(farm.history) == 1


# -- streaming behaviour ----------------------------------------------------------------------------


def test_updates_are_coalesced(shell: InteractiveShell, farm: Session, ollama_server: OllamaServer) -> None:
    ollama_server.tokens = 2000
    start = time.monotonic()
    cap = chat(shell, "-o r", "go")
    elapsed = time.monotonic() - start
    text_updates = [u for u in updates(cap) if u.get("text/plain")]
    assert shell.user_ns["r"].usage.completion_tokens == 2000
    assert len(text_updates) <= elapsed * 20 + 3
    assert len(text_updates) < 200  # whatever the machine, far fewer than the 2000 tokens
    assert fresh(cap)[-2]["text/plain"].endswith("tok1999 ")
    assert magics(shell).chat.last_updates == len(updates(cap))


def test_update_rate_is_a_setting(shell: InteractiveShell, farm: Session, ollama_server: OllamaServer) -> None:
    ollama_server.tokens = 20
    ollama_server.chunk_delay = 0.02
    magics(shell).update_rate = 4
    start = time.monotonic()
    cap = chat(shell, "", "go")
    elapsed = time.monotonic() - start
    assert len([u for u in updates(cap) if u.get("text/plain")]) <= elapsed * 4 + 2


def test_ctrl_c_keeps_partial_text_and_stops_the_request(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    ollama_server.tokens = 200
    ollama_server.chunk_delay = 0.05  # 10 s in all
    main = threading.get_ident()
    sent = threading.Event()

    def interrupt_after_first_chunk() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            outputs = list(getattr(shell.display_pub, "outputs", []))
            if any("tok1" in (o.get("data") or {}).get("text/plain", "") for o in outputs):
                signal.pthread_kill(main, signal.SIGINT)
                sent.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=interrupt_after_first_chunk, daemon=True)
    with captured(shell) as cap:
        watcher.start()
        with pytest.raises(Stopped) as info:
            shell.run_cell_magic("farm_chat", "-o r", "count slowly")
    watcher.join(5)
    assert sent.is_set()
    assert isinstance(info.value, KeyboardInterrupt)
    assert len(info.value._render_traceback_()) == 1
    answer, footer = fresh(cap)[-2:]
    assert answer["text/plain"].startswith("tok0 tok1 ")
    assert answer["text/plain"].endswith("(stopped)")
    assert "tok199" not in answer["text/plain"]
    assert footer["text/plain"].endswith("stopped")
    assert shell.user_ns["r"].stopped is True
    assert len(farm.history) == 0  # a stopped answer is not history
    deadline = time.monotonic() + 5
    while farm.aio.runtime.pending_tasks() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert farm.aio.runtime.pending_tasks() == []
    # the session still works
    ollama_server.tokens, ollama_server.chunk_delay = None, 0.0
    cap = chat(shell, "", "after the stop")
    assert fresh(cap)[-2]["text/plain"] == "Echo: after the stop"
    assert len(farm.history) == 1


def test_restart_chunk_replaces_partial_text(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, openai_server: OpenAIServer
) -> None:
    ollama_server.tokens = 10
    ollama_server.add_fault(Fault("drop", path="/api/chat", after=3, times=None))
    openai_server.reply = "from openai"
    cap = chat(shell, "-o r", "hi")
    answer, footer = fresh(cap)[-2:]
    assert answer["text/plain"] == "from openai"
    assert "fell back from ollama:llama3.1" in footer["text/plain"]
    assert shell.user_ns["r"].restarted


# -- failures and misuse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "cell"),
    [
        ("--bogus", "hi"),
        ("-f yaml", "hi"),
        ("", "   \n  "),
        ("-p nosuch", "hi"),
        ("-t 5", "hi"),
        ("-t warm", "hi"),
        ("--max-tokens 0", "hi"),
        ("-o 1x", "hi"),
        ("-m 'unbalanced", "hi"),
        ("--compare ollama,openai -m llama3.1", "hi"),
        ("--compare ,", "hi"),
        ("--compare ollama,openai -f code", "hi"),
        ("--no-cache --refresh", "hi"),
    ],
)
def test_chat_misuse_is_a_usage_error(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, line: str, cell: str
) -> None:
    with pytest.raises(UsageError) as info:
        chat(shell, line, cell)
    assert type(info.value) is UsageError
    assert ollama_server.count("/api/chat") == 0


@pytest.mark.parametrize(
    "line",
    [
        "bogus",
        "models nosuch",
        "pull",
        "cache frob",
        "unalias nope",
        "use a b",
        "ollama dance",
        "alias x",
        "health nosuch",
        "history extra",
        "alias 'broken",
    ],
)
def test_farm_misuse_is_a_usage_error(shell: InteractiveShell, farm: Session, line: str) -> None:
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("farm", line)
    assert type(info.value) is UsageError


def test_usage_error_in_a_cell_is_one_line(
    shell: InteractiveShell, farm: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    result = shell.run_cell("%%farm_chat --bogus\nhi")
    assert type(result.error_in_exec) is UsageError
    err = capsys.readouterr().err.strip()
    assert err.startswith("UsageError:") and "\n" not in err


def test_provider_failure_fails_the_cell_with_one_line(
    shell: InteractiveShell,
    farm: Session,
    ollama_server: OllamaServer,
    openai_server: OpenAIServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ollama_server.refuse()
    openai_server.refuse()
    with pytest.raises(AllProvidersFailed):
        chat(shell, "", "hi")
    capsys.readouterr()
    result = shell.run_cell("%%farm_chat\nhi again")
    assert isinstance(result.error_in_exec, AllProvidersFailed)
    out = capsys.readouterr().out.strip()
    assert out.startswith("AllProvidersFailed: no provider could answer (ollama:llama3.1: ")
    assert "answered by" not in out  # the fallback it tried failed too: no notice of it
    assert "\n" not in out and "Traceback" not in out
    assert len(farm.history) == 0


# -- --compare --------------------------------------------------------------------------------------


def test_compare_two_providers_side_by_side(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, openai_server: OpenAIServer
) -> None:
    arrived = {name: threading.Event() for name in ("ollama", "openai")}
    met: list[bool] = []

    def replier(name: str, other: str, text: str) -> Any:
        def reply(body: dict[str, Any]) -> str:
            arrived[name].set()
            met.append(arrived[other].wait(10))  # each answers only once the other was asked: concurrent
            return text

        return reply

    ollama_server.reply = replier("ollama", "openai", "llama says hi")
    openai_server.reply = replier("openai", "ollama", "gpt says hi")
    ollama_server.chunk_delay = openai_server.chunk_delay = 0.4  # 3 chunks: 0.8 s each
    cap = chat(shell, "--compare ollama,openai:gpt-4o -o both", "say hi")
    final = fresh(cap)[-1]
    assert "ollama:llama3.1" in final["text/html"] and "openai:gpt-4o" in final["text/html"]
    assert "display:flex" in final["text/html"]
    plain = final["text/plain"]
    assert "── ollama:llama3.1 ──\nllama says hi" in plain and "── openai:gpt-4o ──\ngpt says hi" in plain
    assert plain.count("TTFT") == 2 and plain.count("tok/s") == 2
    both = shell.user_ns["both"]
    assert [r.text for r in both.values()] == ["llama says hi", "gpt says hi"]
    assert list(both) == ["ollama:llama3.1", "openai:gpt-4o"]
    assert met == [True, True]  # concurrent: both asked before either answered
    assert len([u for u in updates(cap) if "llama says" in u["text/plain"]]) >= 1  # columns stream live
    assert ollama_server.count("/api/chat") == 1 and openai_server.count("/v1/chat/completions") == 1
    assert len(farm.history) == 0  # a comparison is not a conversation turn


def test_compare_with_one_failure_shows_it_in_its_column(
    shell: InteractiveShell, farm: Session, openai_server: OpenAIServer
) -> None:
    openai_server.refuse()
    cap = chat(shell, "--compare ollama,openai -o both", "say hi")
    plain = fresh(cap)[-1]["text/plain"]
    assert "Echo: say hi" in plain and "[failed]" in plain
    assert isinstance(shell.user_ns["both"]["openai:gpt-4o-mini"], FarmError)


# -- %farm subcommands ------------------------------------------------------------------------------


def test_farm_models(shell: InteractiveShell, farm: Session) -> None:
    table = shell.run_line_magic("farm", "models")
    assert table.column("model") == [
        "ollama:llama3.1:latest",
        "ollama:qwen2.5:0.5b",
        "openai:gpt-4o-mini",
        "openai:gpt-4o",
    ]
    assert isinstance(table, Table) and "qwen2.5:0.5b" in table._repr_html_()
    only = shell.run_line_magic("farm", "models ollama")
    assert only.column("model") == ["ollama:llama3.1:latest", "ollama:qwen2.5:0.5b"]
    assert "4.8 GB" in repr(only)  # decimal units, as Ollama reports sizes (the picker says the same)


def test_farm_models_of_a_down_provider_is_one_farm_error(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    ollama_server.refuse()
    with pytest.raises(FarmError) as info:
        shell.run_line_magic("farm", "models ollama")
    assert len(info.value._render_traceback_()) == 1


def test_farm_health(shell: InteractiveShell, farm: Session, openai_server: OpenAIServer) -> None:
    openai_server.refuse()
    table = shell.run_line_magic("farm", "health")
    rows = {r["provider"]: r for r in table.to_dicts()}
    assert rows["ollama"]["state"] == "healthy"
    assert rows["openai"]["state"] == "unhealthy" and rows["openai"]["error"]


def test_farm_config_masks_secrets(shell: InteractiveShell, farm: Session) -> None:
    table = shell.run_line_magic("farm", "config")
    shown = table._repr_html_() + repr(table)
    assert TEST_API_KEY not in shown
    assert "sk-...cdef" in shown
    assert dict(table.rows)["openai.api_key"] == "sk-...cdef"
    assert dict(table.rows)["default"] == "ollama:llama3.1"


def test_farm_cache_info_and_clear(shell: InteractiveShell, farm: Session, capsys: pytest.CaptureFixture[str]) -> None:
    chat(shell, "", "cache me")
    info = dict(shell.run_line_magic("farm", "cache").rows)
    assert info["backend"] == "memory" and info["entries"] == "1"
    shell.run_line_magic("farm", "cache clear")
    assert "cache cleared" in capsys.readouterr().out
    assert dict(shell.run_line_magic("farm", "cache info").rows)["entries"] == "0"


def test_farm_use_alias_unalias(
    shell: InteractiveShell, farm: Session, openai_server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("farm", "use openai:gpt-4o")
    assert "default model: openai:gpt-4o" in capsys.readouterr().out
    assert farm.resolve(None) == "openai:gpt-4o"
    chat(shell, "", "who answers?")
    assert openai_server.requests[-1].json["model"] == "gpt-4o"  # type: ignore[index]
    shell.run_line_magic("farm", "use")
    assert "default model: openai:gpt-4o" in capsys.readouterr().out
    shell.run_line_magic("farm", "alias small ollama:qwen2.5:0.5b")
    assert "small -> ollama:qwen2.5:0.5b" in capsys.readouterr().out
    assert dict(shell.run_line_magic("farm", "alias").rows) == {"small": "ollama:qwen2.5:0.5b"}
    cap = chat(shell, "-m small -o r", "hi")
    assert shell.user_ns["r"].address == "ollama:qwen2.5:0.5b"
    assert fresh(cap)[-1]["text/plain"].startswith("ollama:qwen2.5:0.5b")
    shell.run_line_magic("farm", "unalias small")
    assert farm.settings.aliases == {}


def test_farm_pull_shows_progress(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("farm", "pull phi3:mini")
    out, err = capsys.readouterr()
    assert "ollama:phi3:mini: pulled and loaded" in out
    assert "pulling" in err and "100%" in err  # tqdm's bar on stderr
    assert ollama_server.count("/api/pull") == 1
    assert "ollama:phi3:mini" in shell.run_line_magic("farm", "models ollama").column("model")
    shell.run_line_magic("farm", "unload phi3:mini")
    shell.run_line_magic("farm", "reload phi3:mini")
    assert "reloaded" in capsys.readouterr().out
    with pytest.raises(FarmError):
        shell.run_line_magic("farm", "pull missing-model")


def test_farm_stats(shell: InteractiveShell, farm: Session) -> None:
    assert "no requests yet" in repr(shell.run_line_magic("farm", "stats"))
    chat(shell, "", "one")
    chat(shell, "--new", "one")  # cached
    rows = shell.run_line_magic("farm", "stats").to_dicts()
    assert rows[0]["model"] == "ollama:llama3.1"
    assert rows[0]["requests"] == "2" and rows[0]["cache hits"] == "1"


def test_farm_gpu(shell: InteractiveShell, farm: Session) -> None:
    table = shell.run_line_magic("farm", "gpu")
    assert isinstance(table, Table)
    assert table.title is not None and table.title.startswith("GPU (")
    assert len(table.rows) > 0 or (table.caption or "").startswith("no GPU")


def test_farm_error_explains_the_last_exception(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    shell.run_cell("def broken():\n    return {}['missing_key']\nbroken()")
    with captured(shell) as cap:
        shell.run_line_magic("farm", "error")
    prompt = last_prompt(ollama_server)
    assert "KeyError" in prompt and "missing_key" in prompt
    assert fresh(cap)[-2]["text/plain"].startswith("Echo: A cell in my Jupyter notebook failed")


def test_farm_dashboard(shell: InteractiveShell, farm: Session) -> None:
    widgets = pytest.importorskip("farm_jupyter.widgets")
    board = shell.run_line_magic("farm", "dashboard")
    try:
        assert isinstance(board, widgets.Dashboard)
    finally:
        board.close()


def test_farm_ollama_not_installed(
    shell: InteractiveShell, farm: Session, monkeypatch: pytest.MonkeyPatch, ollama_server: OllamaServer
) -> None:
    ollama_server.refuse()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FarmError) as info:
        shell.run_line_magic("farm", "ollama start")
    assert str(info.value) == "ollama is not installed: see https://ollama.com/download"
    with pytest.raises(FarmError, match="no Ollama was started"):
        shell.run_line_magic("farm", "ollama stop")


def test_farm_ollama_start_and_stop(
    shell: InteractiveShell,
    ollama_server: OllamaServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a stand-in `ollama` on PATH: `ollama serve` runs a loopback Ollama on OLLAMA_HOST's port
    port = int(ollama_server.url.rsplit(":", 1)[1])
    session = Session(loopback_settings(ollama_server, ollama={"auto_pull": ["phi3:mini"]}))
    ollama_server.stop()  # free the port for the fake `ollama serve`
    fake = tmp_path / "ollama"
    fake.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import os, signal, sys, threading
        assert sys.argv[1:] == ["serve"], sys.argv
        from farm_jupyter.testing.servers import OllamaServer
        port = int(os.environ["OLLAMA_HOST"].rsplit(":", 1)[1])
        server = OllamaServer(port=port).start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        print("listening", flush=True)
        stop.wait(60)
        server.stop()
        """)
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    old = set_session(session)
    try:
        shell.run_line_magic("farm", "ollama start")
        out = capsys.readouterr().out
        assert f"Ollama is running at http://127.0.0.1:{port}" in out
        assert "ollama:phi3:mini: pulled and loaded" in out
        proc = magics(shell).commands.kept.ollama
        assert proc is not None and proc.poll() is None
        shell.run_line_magic("farm", "ollama start")
        assert "already running" in capsys.readouterr().out
        shell.run_line_magic("farm", "ollama stop")
        assert "Ollama stopped" in capsys.readouterr().out
        assert proc.poll() is not None
    finally:
        proc = magics(shell).commands.kept.ollama
        if proc is not None and proc.poll() is None:
            proc.kill()
        set_session(old)
        session.close()


def test_table_text_and_html_escape() -> None:
    t = Table(["name", "value"], [("<b>", 1.23456), ("long name here", None), ("flag", True)], title="T", caption="c")
    text = repr(t)
    assert text.splitlines()[0] == "T"
    assert text.splitlines()[1] == "name            value"
    assert "long name here" in text and "1.23" in text and "yes" in text
    assert "&lt;b&gt;" in t._repr_html_() and "<b>T</b>" in t._repr_html_()


# -- found in review ------------------------------------------------------------------------------


def test_config_after_the_first_answer_takes_effect(
    shell: InteractiveShell, farm: Session, openai_server: OpenAIServer
) -> None:
    chat(shell, "", "first")
    shell.run_line_magic("config", "FarmMagics.default_model = 'openai:gpt-4o-mini'")
    shell.run_line_magic("config", "FarmMagics.max_history = 1")
    chat(shell, "", "second")
    assert farm.history.turns[-1].address == "openai:gpt-4o-mini"
    assert farm.history.max_turns == 1
    with pytest.raises(TraitError, match="restart the kernel"):
        magics(shell).cache_backend = "disk"


def test_provider_and_an_alias_model(shell: InteractiveShell, farm: Session, ollama_server: OllamaServer) -> None:
    farm.settings.aliases["fast"] = "ollama:qwen2.5:0.5b"
    chat(shell, "-p ollama -m fast", "hi")
    assert ollama_server.requests[-1].json["model"] == "qwen2.5:0.5b"
    with pytest.raises(UsageError, match="-p says 'openai'"):
        chat(shell, "-p openai -m fast", "hi")
    with pytest.raises(UsageError, match="--new has nothing to reset"):
        chat(shell, "--compare ollama:llama3.1,openai:gpt-4o-mini --new", "hi")


def test_dashboard_replaces_the_previous_one(shell: InteractiveShell, farm: Session) -> None:
    first = shell.run_line_magic("farm", "dashboard")
    second = shell.run_line_magic("farm", "dashboard")
    assert first is not second and magics(shell).commands.kept.dashboard is second
    assert first.comm is None  # closed: its timers stopped
    shell.run_line_magic("unload_ext", "farm_jupyter")  # closes the live one too
    assert second.comm is None


# -- issue 12: what the faces got wrong, and the fallback notice ------------------------------------

NOTICE = "ollama was not reachable: answered by openai:gpt-4o-mini"


def notice_stream(session: Session, text: str = "from openai", notice: str = NOTICE) -> Any:
    """The chunks the router sends for a fallback: the notice, then the other model's answer."""
    from farm_jupyter.sessions import ChatStream
    from farm_jupyter.types import ChatResponse, Chunk

    async def source() -> Any:
        yield Chunk(notice=notice)
        yield Chunk(text=text)
        yield Chunk(done=True, response=ChatResponse(text=text, provider="openai", model="gpt-4o-mini", notice=notice))

    return ChatStream(session.aio.runtime, source(), "ollama:llama3.1")  # the model asked


def test_a_notice_is_one_line_above_the_answer(
    shell: InteractiveShell, farm: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(farm, "stream", lambda *a, **k: notice_stream(farm))
    cap = chat(shell, "-o r", "hi")
    notice, answer, footer = fresh(cap)
    assert notice["text/plain"] == NOTICE and "&#9888;" in notice["text/html"]
    assert answer["text/plain"] == "from openai" and footer["text/plain"].startswith("openai:gpt-4o-mini")
    live = [u["text/markdown"] for u in updates(cap)]
    assert live and all(u.startswith(f"*&#9888; {NOTICE}*\n\n") for u in live)  # above the text as it streams
    assert nbval_sees(cap)[-3:] == [notice, answer, footer]
    # a terminal prints it once, above the text
    monkeypatch.setattr(magics(shell).frontend, "live", lambda: False)
    with captured(shell) as cap:
        shell.run_cell_magic("farm_chat", "", "hi")
    assert cap.stdout.startswith(f"{NOTICE}\nfrom openai\nopenai:gpt-4o-mini")


def test_compare_shows_a_notice_above_its_column(
    shell: InteractiveShell, farm: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = farm.stream
    monkeypatch.setattr(
        farm, "stream", lambda p, t=None, **k: notice_stream(farm) if t == "ollama" else real(p, t, **k)
    )
    final = fresh(chat(shell, "--compare ollama,openai", "say hi"))[-1]
    assert f"── ollama:llama3.1 ──\n{NOTICE}\nfrom openai\n[" in final["text/plain"]
    assert "── openai:gpt-4o-mini ──\nEcho: say hi" in final["text/plain"]
    assert final["text/plain"].count(NOTICE) == 1
    html = final["text/html"]
    assert html.index("ollama:llama3.1") < html.index(NOTICE) < html.index("from openai")


def test_fallback_notice_end_to_end(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, openai_server: OpenAIServer
) -> None:
    ollama_server.refuse()
    openai_server.reply = "openai answers"
    cap = chat(shell, "-o r", "hi")
    notice, answer, _ = fresh(cap)
    assert notice["text/plain"] == "ollama was not reachable: answered by openai:gpt-4o-mini"
    assert answer["text/plain"] == "openai answers"
    assert shell.user_ns["r"].notice == notice["text/plain"]
    assert ollama_server.count("/api/chat") == 0 and openai_server.count("/v1/chat/completions") == 1
    # the model asked for answers itself again: no notice
    ollama_server.accept()
    assert len(fresh(chat(shell, "--new", "hi"))) == 2


def test_the_saved_notebook_has_no_empty_output(ollama_server: OllamaServer, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    setup = textwrap.dedent(f"""\
        from farm_jupyter.sessions import Session, set_session
        set_session(Session(config={{"env": "test", "fallback": [], "ollama": {{"host": "{ollama_server.url}",
                                     "default_model": "llama3.1"}}}}))""")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(source)
        for source in (
            "%load_ext farm_jupyter",
            setup,
            "%%farm_chat\nSay hello",
            "%%farm_chat --compare ollama:llama3.1,ollama:qwen2.5:0.5b\nSay hi",
            "print('kept')\nget_ipython().run_cell_magic('farm_chat', '', 'in a loop')",
        )
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # the kernel imports this checkout
    outputs = [cell.outputs for cell in nb.cells]
    answer = [o for o in outputs[2] if o.output_type == "display_data"]
    assert [o.data["text/plain"] for o in answer][0] == "Echo: Say hello"
    assert len(answer) == 2 and answer[1].data["text/plain"].startswith("ollama:llama3.1 · ")
    assert len(outputs[3]) == 1 and "Echo: Say hi" in outputs[3][0].data["text/plain"]
    assert outputs[4][0].text == "kept\n"  # a cell that does more than ask keeps its other outputs
    assert [o.data["text/plain"] for o in outputs[4][1:]][0] == "Echo: in a loop"
    for cell_outputs in outputs:
        for output in cell_outputs:
            if output.output_type == "display_data":
                assert output.data.get("text/plain", "").strip(), output  # nothing empty is saved


def test_interpolation_errors_quote_the_field_as_written(shell: InteractiveShell, farm: Session) -> None:
    with pytest.raises(UsageError) as info:
        chat(shell, "", 'Parse {"a": 1} please')
    assert str(info.value) == (
        'prompt uses {"a": 1}, which is not a name from the notebook; write {{"a": 1}} for literal braces, '
        "or %%farm_chat --raw to send the cell as written"
    )
    with pytest.raises(UsageError) as info:
        chat(shell, "-s 'Answer as {persona!r:>10}.'", "hi")
    assert str(info.value).startswith("system text (-s) uses {persona!r:>10}, but persona is not defined")
    with pytest.raises(UsageError, match=r"^prompt uses \{w\}, but w is not defined"):  # the nested field
        interpolate("{x:{w}}", {"x": 1})
    with pytest.raises(UsageError, match=r"^prompt uses \{x:\{w\}\}, which failed: ValueError"):
        interpolate("{x:{w}}", {"x": 1, "w": "zz"})
    with pytest.raises(UsageError, match=r"^prompt uses \{d\[' k'\]\}"):
        interpolate("{{ok}} {d[' k']}", {"d": {}})
    with pytest.raises(UsageError, match=r"^prompt uses \{d\[}\]!r\}, but d has no item '}'"):  # `}` in brackets
        interpolate("{d[}]!r}", {"d": {}})


def test_interpolation_of_quoted_and_numeric_keys() -> None:
    ns = {"d": {"k": "string key", 0: "int key", "0": "string zero", "a b": "spaced"}, "items": ["x", "y"]}
    assert interpolate("""{d['k']} {d["k"]} {d[k]} {d[0]} {d['0']} {d[a b]} {items[-1]}""", ns) == (
        "string key string key string key int key string zero spaced y"
    )
    with pytest.raises(UsageError, match=r"has no item 'missing'"):
        interpolate("{d['missing']}", ns)


def test_farm_models_says_which_providers_are_down_and_why(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, openai_server: OpenAIServer
) -> None:
    openai_server.refuse()
    mixed = shell.run_line_magic("farm", "models")
    rows = mixed.to_dicts()
    assert [r["model"] for r in rows] == ["ollama:llama3.1:latest", "ollama:qwen2.5:0.5b", "openai"]
    assert rows[0]["error"] == "" and openai_server.url in rows[2]["error"]
    ollama_server.refuse()
    down = shell.run_line_magic("farm", "models")
    assert down.headers == ["provider", "error"]
    errors = dict(down.rows)
    assert list(errors) == ["ollama", "openai"]
    assert ollama_server.url in errors["ollama"] and "ollama serve" in errors["ollama"]
    assert openai_server.url in errors["openai"]
    assert "no models found" not in repr(down)


def test_farm_load_of_a_remote_model_says_there_is_nothing_to_load(
    shell: InteractiveShell, farm: Session, openai_server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for action in ("load", "pull", "unload", "reload"):
        shell.run_line_magic("farm", f"{action} openai:gpt-4o-mini")
        out = capsys.readouterr().out
        assert out == (
            f"openai:gpt-4o-mini: nothing to {action}: openai serves its models remotely; "
            "ask it with %%farm_chat -m openai:gpt-4o-mini\n"
        )
    assert openai_server.requests == []  # nothing was sent, nothing claimed


def test_farm_stats_counts_each_providers_failures_by_class(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    ollama_server.refuse()
    chat(shell, "", "one")  # ollama unreachable: openai answers
    table = shell.run_line_magic("farm", "stats")
    rows = {r["model"]: r for r in table.to_dicts()}
    assert "failures" in table.headers
    failures = farm._engine.monitor.failure_counts()["ollama"]
    assert failures.get("unreachable")
    assert rows["ollama"]["failures"] == " · ".join(
        f"{k} {n}" for k, n in sorted(failures.items(), key=lambda kv: -kv[1])
    )
    assert rows["openai:gpt-4o-mini"]["requests"] == "1" and rows["openai:gpt-4o-mini"]["failures"] == ""


def test_only_a_cell_that_is_the_magic_alone_is_cleared(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer
) -> None:
    with captured(shell) as cap:
        shell.run_cell("%%farm_chat\nhi")
    assert {"clear": True, "wait": True} in cap.events and fresh(cap)[0]["text/plain"] == "Echo: hi"
    with captured(shell) as cap:  # a loop of questions in one cell: earlier answers and prints stay
        shell.run_cell("print('mine')\nfor q in ('one', 'two'):\n    get_ipython().run_cell_magic('farm_chat', '', q)")
    assert not any(e.get("clear") for e in cap.events) and updates(cap) == []
    assert [o["text/plain"] for o in fresh(cap)][0::2] == ["Echo: one", "Echo: two"]
    assert cap.stdout == "mine\n"
    shell.run_cell("1 / 0")
    with captured(shell) as cap:
        shell.run_cell("# why?\n%farm error")
    assert {"clear": True, "wait": True} in cap.events


def test_no_fallback_asks_only_the_model_named(
    shell: InteractiveShell, farm: Session, ollama_server, openai_server
) -> None:
    ollama_server.refuse()
    with pytest.raises(AllProvidersFailed, match="Ollama is not reachable"):
        shell.run_cell_magic("farm_chat", "--no-fallback -m ollama:llama3.1", "hello")
    assert openai_server.count("/v1/chat/completions") == 0
    cap = chat(shell, "-m ollama:llama3.1", "hello again")  # without it, the fallback answers, and says so
    assert "ollama was not reachable: answered by openai:gpt-4o-mini" in cap.stdout + str(cap.events)


def test_farm_usage_is_a_table_per_model(shell: InteractiveShell, farm: Session) -> None:
    farm.chat("one two")
    farm.chat("one two")
    table = shell.run_line_magic("farm", "usage")
    (row,) = table.to_dicts()
    assert row["model"] == "ollama:llama3.1" and row["requests"] == "2" and row["cache hits"] == "1"
    assert row["cost"] == "price unknown"


def test_a_cell_builds_its_prompt_once(
    shell: InteractiveShell, farm: Session, ollama_server: OllamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One %%farm_chat cell that misses the cache: the target is resolved, the messages built and
    the cache key computed once each, the answer folded once, and the question committed is the
    message that was sent."""
    from farm_jupyter.router import core as router_core
    from farm_jupyter.router.core import Router
    from farm_jupyter.router.fold import Fold
    from farm_jupyter.sessions.conversation import Conversation
    from farm_jupyter.sessions.engine import Engine

    calls: Counter[str] = Counter()

    def counted(owner: Any, name: str, label: str, *, static: bool = False) -> None:
        real = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[label] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, staticmethod(wrapper) if static else wrapper)

    counted(Router, "resolve", "resolve the target")
    counted(Engine, "messages", "build the messages", static=True)
    counted(Conversation, "messages_for", "build the conversation's messages")
    counted(router_core, "cache_key", "compute the cache key")
    counted(Fold, "__init__", "fold the answer")
    chat(shell, "-m ollama:llama3.1 -o r", "Say hi once.")
    assert dict(calls) == {
        "resolve the target": 1,
        "build the messages": 1,
        "build the conversation's messages": 1,
        "compute the cache key": 1,
        "fold the answer": 1,
    }
    assert [r.path for r in ollama_server.requests if r.path == "/api/chat"] == ["/api/chat"]  # a miss: asked once
    response = shell.user_ns["r"]
    assert response.address == "ollama:llama3.1" and not response.cached
    assert farm.history.turns[-1].user is response.messages[-1]  # committed as sent, not built again
