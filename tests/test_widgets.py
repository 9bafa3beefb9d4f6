"""The widgets without a browser: their state and the comm messages they send, the ipywidgets way.

A recording comm stands in for the kernel's (as in ipywidgets' own `widgets/tests/utils.py`):
every widget gets one, and each records the messages the widget sends, so a test can count the
updates a stream caused. The sessions point at loopback servers; every wait is a bounded poll.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import comm
import ipywidgets as W
import pytest
from traitlets import TraitError

from farm_jupyter.errors import ConfigError
from farm_jupyter.sessions import Session
from farm_jupyter.testing import OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import loopback_settings
from farm_jupyter.types import GPUDevice, GPUProcess, GPUStats
from farm_jupyter.widgets import ChatWidget, CompareWidget, Dashboard, GPUGauge, HealthBoard, ModelPicker
from farm_jupyter.widgets._base import FarmBox, Throttle

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


# -- the recording comm -------------------------------------------------------------------------


class RecordingComm:
    """A comm that records what a widget sends (ipywidgets' DummyComm, with an id per widget)."""

    kernel = "Truthy"  # `Widget._send` only sends when the comm has a kernel

    def __init__(self, **kwargs: Any) -> None:
        self.comm_id = uuid.uuid4().hex
        self.opened_with = kwargs
        self.messages: list[dict[str, Any]] = []
        self.closed = False
        self._lock = threading.Lock()

    def open(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send(self, data: Any = None, buffers: Any = None, **kwargs: Any) -> None:
        with self._lock:
            self.messages.append(data)

    def close(self, *args: Any, **kwargs: Any) -> None:
        self.closed = True

    def updates(self, key: str | None = None) -> int:
        with self._lock:
            return sum(
                1 for m in self.messages if m.get("method") == "update" and (key is None or key in m.get("state", {}))
            )


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingComm]]:
    made: list[RecordingComm] = []

    def create_comm(**kwargs: Any) -> RecordingComm:
        c = RecordingComm(**kwargs)
        made.append(c)
        return c

    monkeypatch.setattr(comm, "create_comm", create_comm)
    yield made
    W.Widget.close_all()


def comm_of(widget: W.Widget) -> RecordingComm:
    assert isinstance(widget.comm, RecordingComm)
    return widget.comm


def frontend_sets(widget: W.Widget, **state: Any) -> None:
    """What the browser sends when the user changes a control."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


def until(check: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def no_pending(session: Session) -> bool:
    return until(lambda: session.aio.runtime.pending_tasks() == [], what="no pending tasks on the runtime")


# -- sessions over loopback servers --------------------------------------------------------------


@pytest.fixture
def make_session(comms: list[RecordingComm]) -> Iterator[Callable[..., Session]]:
    made: list[Session] = []

    def make(ollama: OllamaServer | None = None, openai: OpenAIServer | None = None, **overrides: Any) -> Session:
        session = Session(loopback_settings(ollama, openai, **overrides))
        made.append(session)
        return session

    yield make
    W.Widget.close_all()
    for session in made:
        no_pending(session)
        session.close()


@pytest.fixture
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer() as server:
        yield server


# -- import and text forms -----------------------------------------------------------------------


def test_import_is_light() -> None:
    code = (
        "import sys, farm_jupyter.widgets as w; "
        "print(sorted(m for m in ('openai', 'torch', 'transformers', 'markdown_it', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_every_widget_has_a_text_form_and_a_cheap_repr(
    make_session: Callable[..., Session], ollama: OllamaServer
) -> None:
    s = make_session(ollama)
    host = GPUStats(source="none", cpu_percent=5.0, ram_used=2**30, ram_total=4 * 2**30, reason="no NVIDIA driver")
    widgets: list[FarmBox] = [
        ChatWidget(s, load_models=False),
        ModelPicker(s, load_models=False),
        HealthBoard(s),
        GPUGauge(s, stats=lambda: host),
        CompareWidget("hi", ["ollama:llama3.1"], s, run=False),
    ]
    expected = [
        "ChatWidget: 0 turns, default ollama:llama3.1",
        "ModelPicker: ollama:llama3.1",
        "HealthBoard: ollama",
        "GPUGauge: no reading yet",
        "CompareWidget: 'hi' over 1 models",
    ]

    def waits(*args: object, **kwargs: object) -> None:
        raise AssertionError("a repr waited on the runtime loop")

    for widget, text in zip(widgets, expected, strict=True):
        s.aio.runtime.run = waits  # type: ignore[method-assign]  # cheap: a repr never blocks on a request
        try:
            assert repr(widget).startswith(f"<{text}")
        finally:
            del s.aio.runtime.run
        widget.stop()  # the bundle below starts the timers of a board or gauge, as display does
        bundle = widget._repr_mimebundle_()
        assert bundle is not None and bundle["text/plain"].startswith(text)
        assert "application/vnd.jupyter.widget-view+json" in bundle
        widget.close()
        assert "closed" in repr(widget)
    no_pending(s)


# -- ChatWidget ----------------------------------------------------------------------------------


def test_chat_streams_with_a_bounded_number_of_updates(make_session: Callable[..., Session]) -> None:
    with OllamaServer(tokens=2000, chunk_delay=0.0005) as server:
        s = make_session(server)
        chat = ChatWidget(s, load_models=False)
        start = time.monotonic()
        chat.send("count to two thousand")
        assert chat.busy and chat.stop_button.disabled is False  # send returned while streaming
        assert chat.wait(WAIT)
        elapsed = time.monotonic() - start
        view = chat.transcript.children[0]
        sent = comm_of(view).updates("value")
        assert chat.last_text.split() == [f"tok{i}" for i in range(2000)]
        assert sent <= 20 * elapsed + 5, (sent, elapsed)
        assert sent < 200
        assert chat.updates == sent - 1  # the first draw (the question, a spinner) is not a stream update
        response = chat.last_response
        assert response is not None and response.usage.completion_tokens == 2000
        html = view.value
        assert "ollama:llama3.1" in html and "TTFT" in html and "tok/s" in html and "2000 tokens" in html
        assert chat.turns == 1 and len(chat.conversation) == 1 and not chat.busy and not chat.error
        assert chat._repr_mimebundle_()["text/plain"] == "ChatWidget: 1 turn, default ollama:llama3.1"


def test_chat_renders_markdown_with_highlighted_code_and_escapes_html(make_session: Callable[..., Session]) -> None:
    answer = "Here:\n\n```python\ndef f(x):\n    return x\n```\n\n<script>alert(1)</script> **bold**"
    with OllamaServer(reply=answer) as server:
        chat = ChatWidget(make_session(server), load_models=False)
        chat.send("show code")
        assert chat.wait(WAIT)
        html = chat.transcript.children[0].value
        assert "<strong>bold</strong>" in html
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert '<span style="color: #008000; font-weight: bold">def</span>' in html  # pygments, inline styles


def test_chat_stop_keeps_the_partial_answer_and_leaves_nothing_running(make_session: Callable[..., Session]) -> None:
    with OllamaServer(tokens=400, chunk_delay=0.05) as server:
        s = make_session(server)
        chat = ChatWidget(s, load_models=False)
        chat.send("a long answer please")
        until(lambda: chat.last_text, what="the first chunk")
        chat.stop_button.click()
        assert chat.wait(WAIT)
        until(lambda: not chat.busy, what="the chat to go idle")
        no_pending(s)
        partial = chat.last_text
        assert partial.startswith("tok0") and len(partial.split()) < 400
        html = chat.transcript.children[0].value
        assert "stopped" in html and "not added to the history" in html
        assert len(chat.conversation) == 0 and chat.last_response is None
        assert chat.stop_button.disabled and not chat.send_button.disabled
        # the HTTP stream was closed: the server's writer hits the closed socket and gives up
        time.sleep(0.3)
        assert len(chat.last_text.split()) == len(partial.split())


def test_an_error_shows_inline_and_the_chat_keeps_working(make_session: Callable[..., Session]) -> None:
    with OllamaServer() as ollama, OpenAIServer(api_key="sk-test-0123456789abcdef") as openai:
        s = make_session(ollama, openai, breaker={"failures": 50}, retry={"max_retries": 0})
        chat = ChatWidget(s, load_models=False)
        ollama.refuse()
        openai.refuse()
        chat.send("is anyone there?")
        assert chat.wait(WAIT)
        until(lambda: chat.error, what="the error line")
        assert "no provider could answer" in chat.error
        assert ollama.url in chat.error and "ollama serve" in chat.error  # says what to do
        html = chat.transcript.children[0].value
        assert 'class="farm-error"' in html and "ollama serve" in html
        assert len(chat.conversation) == 0 and not chat.busy
        ollama.accept()
        chat.send("and now?")
        assert chat.wait(WAIT)
        assert chat.last_text == "Echo: and now? " or chat.last_text.startswith("Echo: and now?")
        assert chat.error == "" and len(chat.conversation) == 1
        assert len(chat.transcript.children) == 2
        # the failed turn was not sent as history
        assert [m["content"] for m in ollama.requests[-1].json["messages"]] == ["and now?"]


def test_a_failing_callback_is_shown_and_the_widget_survives(
    make_session: Callable[..., Session], ollama: OllamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_session(ollama)
    chat = ChatWidget(s, load_models=False)
    chat.input.value = "   "
    chat.send_button.click()
    assert chat.error == "the message is empty: write a question first"
    monkeypatch.setattr(s, "stream", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    chat.input.value = "hello"
    chat.send_button.click()  # the dispatcher catches it
    assert "RuntimeError: boom" in chat.error and "bug in farm_jupyter" in chat.error
    assert "traceback" in chat._error_view.value
    monkeypatch.undo()
    chat.send_button.click()
    assert chat.wait(WAIT)
    assert chat.last_text.startswith("Echo: hello") and chat.error == ""
    chat.model = "nosuchmodel"  # a model the server lacks: the error says how to get it
    chat.send("hi")
    assert chat.wait(WAIT)
    assert 'no model "nosuchmodel"' in chat.error and "%farm pull nosuchmodel" in chat.error
    assert len(chat.conversation) == 1


def test_chat_model_dropdown_is_filled_in_the_background(
    make_session: Callable[..., Session], ollama: OllamaServer
) -> None:
    chat = ChatWidget(make_session(ollama))
    until(lambda: len(chat.picker.options) == 3, what="the model list")
    assert [v for _, v in chat.picker.options] == ["", "ollama:llama3.1:latest", "ollama:qwen2.5:0.5b"]
    assert chat.picker.value == "" and chat.model == ""
    frontend_sets(chat.picker, index=2)
    assert chat.model == "ollama:qwen2.5:0.5b"
    chat.send("which model?")
    assert chat.wait(WAIT)
    assert ollama.requests[-1].json["model"] == "qwen2.5:0.5b"
    assert "ollama:qwen2.5:0.5b" in chat.transcript.children[0].value


# -- ModelPicker ---------------------------------------------------------------------------------


def test_picker_is_filled_from_the_ollama_tags_list(make_session: Callable[..., Session]) -> None:
    with OllamaServer(models=["llama3.1:latest", "qwen2.5:0.5b", "phi3:3.8b"]) as server:
        s = make_session(server)
        s.chat("warm up llama")  # the server now lists llama3.1 as loaded (/api/ps)
        picker = ModelPicker(s)
        until(lambda: picker.fills >= 1, what="the model list")
        assert server.count("/api/tags") >= 1
        labels = list(picker.model_dd.options)
        assert [v for _, v in labels] == ["llama3.1:latest", "qwen2.5:0.5b", "phi3:3.8b"]
        assert labels[0][0] == "llama3.1:latest · 4.8 GB · llama 8.0B · ● loaded"
        assert labels[1][0] == "qwen2.5:0.5b · 300.0 MB · qwen 0.5B"
        # the current default is shown, not changed
        assert picker.model_dd.value == "llama3.1:latest" and picker.value == "ollama:llama3.1"
        assert s._engine.router.default_target is None
        frontend_sets(picker.model_dd, index=2)
        assert picker.value == "ollama:phi3:3.8b"
        assert s.resolve(None) == "ollama:phi3:3.8b"
        picker.value = "ollama:qwen2.5:0.5b"  # from code: the dropdown follows
        assert picker.model_dd.value == "qwen2.5:0.5b" and s.resolve(None) == "ollama:qwen2.5:0.5b"
        assert picker.summary() == "ModelPicker: ollama:qwen2.5:0.5b (3 models from ollama)"


def test_picker_pull_fills_the_progress_bar(make_session: Callable[..., Session], ollama: OllamaServer) -> None:
    s = make_session(ollama)
    picker = ModelPicker(s)
    until(lambda: picker.fills >= 1, what="the model list")
    picker.pull_name.value = "tinyllama:1.1b"
    picker.pull_button.click()
    until(lambda: not picker.busy and picker.fills >= 2, what="the pull to finish")
    assert picker.error == ""
    assert ollama.count("/api/pull") == 1
    assert picker.progress.value == picker.progress.max and picker.progress.bar_style == "success"
    assert comm_of(picker.progress).updates("value") >= 3  # it moved, layer by layer
    assert "tinyllama:1.1b" in [v for _, v in picker.model_dd.options]
    assert "done" in picker.progress_label.value


def test_picker_errors_show_inline(make_session: Callable[..., Session], ollama: OllamaServer) -> None:
    s = make_session(ollama)
    picker = ModelPicker(s)
    until(lambda: picker.fills >= 1, what="the model list")
    picker.pull("missing-model")
    until(lambda: picker.error, what="the pull error")
    assert "file does not exist" in picker.error
    assert picker.progress.bar_style == "danger" and not picker.busy
    picker.pull_name.value = ""
    picker.pull_button.click()
    assert picker.error.startswith("write the model to pull")


def test_picker_load_and_unload(make_session: Callable[..., Session], ollama: OllamaServer) -> None:
    s = make_session(ollama)
    picker = ModelPicker(s)
    until(lambda: picker.fills >= 1, what="the model list")
    frontend_sets(picker.model_dd, index=1)
    picker.load_button.click()
    until(lambda: not picker.busy and picker.fills >= 2, what="the load")
    assert "qwen2.5:0.5b:latest" not in ollama.loaded and "qwen2.5:0.5b" in ollama.loaded
    assert "● loaded" in picker.model_dd.label
    picker.unload_button.click()
    until(lambda: not picker.busy and picker.fills >= 3, what="the unload")
    assert "qwen2.5:0.5b" not in ollama.loaded and "loaded" not in picker.model_dd.label


# -- HealthBoard ---------------------------------------------------------------------------------


def test_board_shows_a_cooled_down_provider(make_session: Callable[..., Session]) -> None:
    with OllamaServer() as ollama, OpenAIServer(api_key="sk-test-0123456789abcdef") as openai:
        s = make_session(ollama, openai, breaker={"failures": 1, "cooldown": 120}, retry={"max_retries": 0})
        board = HealthBoard(s, interval=60)
        assert [st.state for st in board.statuses] == ["healthy", "healthy"]  # checked when made
        ollama.refuse()
        response = s.chat("hello")  # ollama fails once: its breaker opens; openai answers
        assert response.provider == "openai"
        statuses = {st.provider: st for st in board.refresh()}
        assert statuses["ollama"].state == "cooling_down" and statuses["openai"].state == "healthy"
        html = board.table.value
        assert 'data-provider="ollama" data-state="cooling_down"' in html
        until_text = time.strftime("%H:%M:%S", time.localtime(statuses["ollama"].cooldown_until))
        assert f"cooling down until {until_text}" in html
        assert "ollama serve" in html and "Requests skip it until" in html  # the cause and what to do
        assert 'data-provider="openai" data-state="healthy"' in html
        assert openai.url in html and "sk-test" not in html  # URL shown, key never
        assert board.summary().startswith(f"HealthBoard: ollama cooling down until {until_text}, openai healthy (")
        assert board.checks == 2 and comm_of(board.table).updates("value") == 2


def test_board_refreshes_on_the_runtime_loop_and_after_a_failure(make_session: Callable[..., Session]) -> None:
    with OllamaServer() as ollama:
        s = make_session(ollama, breaker={"failures": 1, "cooldown": 120}, retry={"max_retries": 0})
        board = HealthBoard(s, interval=60)
        board.start()
        until(lambda: board.checks >= 1, what="the first check")
        assert board.statuses[0].state == "healthy"
        ollama.refuse()
        with pytest.raises(Exception, match="ollama serve"):
            s.chat("hello")
        # the failure is recorded by the monitor: the board refreshes without waiting 60 s
        until(
            lambda: board.checks >= 2 and board.statuses[0].state == "cooling_down", what="a refresh after the failure"
        )
        board.close()
        no_pending(s)
        assert board._unsubscribe is None and board._on_record not in s._engine.monitor._listeners


def test_board_interval_is_validated(make_session: Callable[..., Session], ollama: OllamaServer) -> None:
    board = HealthBoard(make_session(ollama))
    with pytest.raises(TraitError, match="more than 0"):
        board.interval = 0


# -- GPUGauge ------------------------------------------------------------------------------------


def test_gauge_no_gpu_state(make_session: Callable[..., Session], ollama: OllamaServer) -> None:
    host = GPUStats(
        source="none",
        cpu_percent=37.0,
        ram_used=6 * 2**30,
        ram_total=16 * 2**30,
        reason="no NVIDIA driver on this machine (NVML library not found)",
    )
    gauge = GPUGauge(make_session(ollama), stats=lambda: host)
    gauge.update()
    assert not gauge.has_gpu and gauge.updates == 1
    head = gauge.body.children[0].value
    assert "No GPU" in head and "NVML library not found" in head
    cpu, ram = gauge._bars[0]["util"], gauge._bars[0]["mem"]
    assert cpu.bar.value == 37.0 and "37%" in cpu.text.value
    assert ram.bar.value == pytest.approx(37.5) and "6.0 / 16.0 GiB" in ram.text.value
    assert gauge.summary() == (
        "GPUGauge: no GPU (no NVIDIA driver on this machine (NVML library not found)); CPU 37%, RAM 6.0/16.0 GiB"
    )
    assert "updated " in gauge.updated.value and " · 1" in gauge.updated.value
    with pytest.raises(TraitError):
        gauge.updates = 5  # read-only: only readings move it


def test_gauge_devices_and_processes(make_session: Callable[..., Session], ollama: OllamaServer) -> None:
    gpu = GPUStats(
        source="nvml",
        devices=[
            GPUDevice(
                index=0,
                name="NVIDIA H200",
                memory_used=40 * 2**30,
                memory_total=140 * 2**30,
                utilization=93.0,
                temperature=61.0,
                power=420.0,
                processes=[GPUProcess(pid=42, memory_used=39 * 2**30, name="python")],
            ),
            GPUDevice(index=1, name="NVIDIA H200", memory_used=0, memory_total=140 * 2**30),
        ],
    )
    readings = [gpu, GPUStats(source="none", cpu_percent=1.0, ram_used=1, ram_total=2)]
    gauge = GPUGauge(make_session(ollama), stats=lambda: readings[0])
    gauge.update()
    assert gauge.has_gpu and len(gauge._bars) == 2
    first = gauge._bars[0]
    assert (
        "NVIDIA H200" in first["head"].value and "61 &#176;C" in first["head"].value and "420 W" in first["head"].value
    )
    assert first["util"].bar.value == 93.0 and first["util"].bar.bar_style == "danger"
    assert "40.0 / 140.0 GiB" in first["mem"].text.value
    assert "python (42) 39.0 GiB" in first["procs"].value
    assert gauge._bars[1]["util"].text.value.count("n/a") == 1
    assert gauge.summary().startswith("GPUGauge: 2 GPUs: 0: NVIDIA H200 93% util, 40.0/140.0 GiB")
    old_bar = first["util"].bar
    readings[0] = readings[1]
    gauge.update()  # the GPU went away (driver reset): the gauge rebuilds for the host
    assert not gauge.has_gpu and old_bar.comm is None


def test_gauge_keeps_moving_while_the_kernel_thread_is_busy(
    make_session: Callable[..., Session], ollama: OllamaServer
) -> None:
    s = make_session(ollama)
    gauge = GPUGauge(s, interval=0.05)  # the real session.gpu(): no GPU here, CPU and RAM
    gauge.start()
    time.sleep(0.8)  # a cell computing: this thread does nothing for the gauge
    assert gauge.updates >= 4
    assert comm_of(gauge.updated).updates("value") == gauge.updates
    assert gauge.stats is not None and gauge.stats.cpu_percent is not None
    gauge.close()
    no_pending(s)
    n = gauge.updates
    time.sleep(0.2)
    assert gauge.updates == n


# -- CompareWidget -------------------------------------------------------------------------------


def test_compare_streams_columns_side_by_side_and_marks_the_fastest(make_session: Callable[..., Session]) -> None:
    with (
        OllamaServer(tokens=30) as fast,
        OpenAIServer(api_key="sk-test-0123456789abcdef", tokens=30, chunk_delay=0.02) as slow,
    ):
        s = make_session(fast, slow)
        compare = CompareWidget("race", ["ollama:llama3.1", "openai:gpt-4o-mini"], s)
        assert compare.running
        assert compare.wait(WAIT)
        until(lambda: not compare.running, what="the comparison")
        assert compare.grid.layout.grid_template_columns == "repeat(2, minmax(0, 1fr))"
        assert len(compare.grid.children) == 2
        assert compare.fastest == "ollama:llama3.1"
        left, right = compare.columns
        assert "fastest" in left.head.value and "fastest" not in right.head.value
        for column in compare.columns:
            assert column.response is not None and column.response.address == column.address
            foot = column.foot.value
            assert "TTFT" in foot and "total" in foot and "tok/s" in foot and "30 tokens" in foot
        assert compare.summary().startswith("CompareWidget: 'race' over 2 models; fastest ollama:llama3.1 (")
        compare.run()  # again: fresh numbers, not cache replays
        assert compare.wait(WAIT)
        assert fast.count("/api/chat") == 2 and not any(r and r.cached for r in compare.responses.values())


def test_compare_shows_a_failing_model_in_its_own_column(
    make_session: Callable[..., Session], ollama: OllamaServer
) -> None:
    compare = CompareWidget("hi", ["ollama:llama3.1", "ollama:nosuchmodel"], make_session(ollama))
    assert compare.wait(WAIT)
    good, bad = compare.columns
    assert good.response is not None and bad.response is None
    assert 'class="farm-error"' in bad.foot.value and "nosuchmodel" in bad.foot.value
    assert compare.fastest == "ollama:llama3.1"


# -- Dashboard and closing -----------------------------------------------------------------------


def test_dashboard_lays_out_every_part_and_close_stops_every_timer(
    make_session: Callable[..., Session], ollama: OllamaServer
) -> None:
    s = make_session(ollama)
    dash = Dashboard(s, health_interval=0.1, gpu_interval=0.05)
    assert {p.layout.grid_area for p in dash.parts} == {"picker", "gauge", "chat", "health"}
    bundle = dash._repr_mimebundle_()  # displaying starts the board and the gauge
    assert bundle is not None and bundle["text/plain"].startswith("Dashboard: default ollama:llama3.1 · 0 turns")
    until(lambda: dash.gauge.updates >= 2 and dash.health.checks >= 2, what="the timers")
    until(lambda: dash.picker.fills >= 1, what="the picker")
    frontend_sets(dash.picker.model_dd, index=1)
    assert dash.chat.model == "ollama:qwen2.5:0.5b"  # the chat follows the picker
    assert "qwen2.5:0.5b" in dash.title.value
    dash.chat.send("hello")
    assert dash.chat.wait(WAIT)
    assert dash.chat.last_text.startswith("Echo: hello")
    parts_comms = [comm_of(p) for p in dash.parts]
    dash.close()
    assert all(c.closed for c in parts_comms) and dash.comm is None
    assert all(p._closed for p in dash.parts)
    no_pending(s)
    g, h = dash.gauge.updates, dash.health.checks
    time.sleep(0.3)
    assert (dash.gauge.updates, dash.health.checks) == (g, h)
    assert dash.health._on_record not in s._engine.monitor._listeners  # the session's own listeners stay


def test_closing_a_busy_chat_cancels_its_stream(make_session: Callable[..., Session]) -> None:
    with OllamaServer(tokens=400, chunk_delay=0.05) as server:
        s = make_session(server)
        chat = ChatWidget(s)
        chat.send("long")
        until(lambda: chat.last_text, what="the first chunk")
        chat.close()
        no_pending(s)
        assert len(chat.conversation) == 0


# -- the throttle ----------------------------------------------------------------------------------


def test_throttle_flushes_at_most_once_per_interval_and_never_drops_the_last() -> None:
    import asyncio

    async def main() -> tuple[int, list[int]]:
        seen: list[int] = []
        state = {"n": 0}
        throttle = Throttle(lambda: seen.append(state["n"]), interval=0.05)
        start = asyncio.get_running_loop().time()
        for i in range(1, 2001):
            state["n"] = i
            throttle.poke()
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        elapsed = asyncio.get_running_loop().time() - start
        assert throttle.flushes <= elapsed / 0.05 + 2
        return throttle.flushes, seen

    flushes, seen = asyncio.run(main())
    assert seen[0] == 1 and seen[-1] == 2000 and flushes == len(seen) < 20


def test_compare_run_again_while_streaming_belongs_to_the_new_run(make_session: Callable[..., Session]) -> None:
    with OllamaServer(tokens=200, chunk_delay=0.01) as slow:
        s = make_session(slow)
        compare = CompareWidget("first", ["ollama:llama3.1", "ollama:qwen2.5:0.5b"], s)
        until(lambda: any(c.text for c in compare.columns), what="the first run streaming")
        compare.run("second", models=["ollama:llama3.1"])
        time.sleep(0.3)  # the first run's clean-up has run by now
        assert compare.running and not compare.stop_button.disabled and compare.run_button.disabled
        assert compare.wait(WAIT)
        until(lambda: not compare.running, what="the second run")
        assert compare.fastest == ""  # one column: no race, and never a column of the old run
        assert compare.summary().startswith("CompareWidget: 'second' over 1 models")
        assert until(lambda: no_pending(s), what="no tasks left")


# -- issue 12: what the faces got wrong, and the fallback notice ------------------------------------

NOTICE = "ollama was not reachable: answered by openai:gpt-4o-mini"


def notice_stream(session: Session, text: str = "from openai") -> Any:
    """The chunks the router sends for a fallback: the notice, then the other model's answer."""
    from farm_jupyter.sessions import ChatStream
    from farm_jupyter.types import ChatResponse, Chunk

    async def source() -> Any:
        yield Chunk(notice=NOTICE)
        yield Chunk(text=text)
        yield Chunk(done=True, response=ChatResponse(text=text, provider="openai", model="gpt-4o-mini", notice=NOTICE))

    return ChatStream(session.aio.runtime, source())


def test_picker_wait_waits_for_the_pull(make_session: Callable[..., Session]) -> None:
    with OllamaServer(chunk_delay=0.05) as server:  # the pull's progress lines come slowly
        picker = ModelPicker(make_session(server), load_models=False)
        picker.pull("tinyllama:1.1b")
        assert picker.busy
        assert picker.wait(WAIT)
        assert not picker.busy and server.count("/api/pull") == 1
        assert picker.progress.bar_style == "success" and "done" in picker.progress_label.value


def test_picker_load_of_a_remote_model_says_there_is_nothing_to_load(make_session: Callable[..., Session]) -> None:
    with OpenAIServer(api_key="sk-test-0123456789abcdef") as openai:
        picker = ModelPicker(make_session(None, openai), load_models=False)
        picker.load("openai:gpt-4o-mini")
        assert picker.wait(WAIT)
        assert "nothing to load: openai serves its models remotely" in picker.progress_label.value
        assert openai.requests == [] and picker.error == ""


def test_chat_queues_a_message_sent_while_answering(make_session: Callable[..., Session]) -> None:
    with OllamaServer(tokens=40, chunk_delay=0.02) as server:
        s = make_session(server)
        chat = ChatWidget(s, load_models=False)
        chat.send("first")
        chat.send("second")  # while the first streams
        assert chat.queued == 1 and not chat.error
        queued = chat.transcript.children[0]  # newest first
        assert (
            "second" in queued.value
            and "queued: sent to ollama:llama3.1 when the answer above is finished" in queued.value
        )
        assert chat.summary().endswith("streaming, 1 queued")
        assert chat.wait(WAIT)
        assert chat.queued == 0 and not chat.busy and len(chat.conversation) == 2
        assert "queued" not in queued.value and "tok39" in queued.value
        first, second = (r.json["messages"] for r in server.requests if r.path == "/api/chat")  # type: ignore[index]
        assert [m["content"] for m in first] == ["first"]
        assert [m["content"] for m in second][0::2] == ["first", "second"]  # asked after, with the first answer


def test_chat_stop_stops_the_answer_and_the_queue_goes_on_clear_drops_it(make_session: Callable[..., Session]) -> None:
    with OllamaServer(tokens=400, chunk_delay=0.02) as server:
        s = make_session(server)
        chat = ChatWidget(s, load_models=False)
        chat.send("long")
        chat.send("next")
        until(lambda: chat.last_text or chat._turns[0].text, what="the first chunk")
        chat.stop()
        until(lambda: server.count("/api/chat") == 2, what="the queued message to be asked")
        assert chat._turns[0].stopped and chat.queued == 0
        chat.send("never asked")
        assert chat.queued == 1
        chat.clear()
        assert chat.wait(WAIT)
        no_pending(s)
        assert server.count("/api/chat") == 2 and chat.queued == 0 and not chat.busy


def test_board_checks_when_made_without_being_displayed(make_session: Callable[..., Session]) -> None:
    with OllamaServer() as ollama:
        board = HealthBoard(make_session(ollama), interval=60)
        assert not board.running  # no timer: it was never displayed
        assert [st.state for st in board.statuses] == ["healthy"]  # the first access waits for the check
        assert board.checks == 1 and ollama.count("/api/version") == 1
        assert board.summary().startswith("HealthBoard: ollama healthy (")


def test_board_counts_failures_by_class(make_session: Callable[..., Session]) -> None:
    with OllamaServer() as ollama, OpenAIServer(api_key="sk-test-0123456789abcdef") as openai:
        s = make_session(ollama, openai, retry={"max_retries": 0})
        board = HealthBoard(s, interval=60)
        ollama.refuse()
        assert s.chat("hello").provider == "openai"
        board.refresh()
        html = board.table.value
        assert ">failures<" in html
        row = html[html.index('data-provider="ollama"') : html.index('data-provider="openai"')]
        assert 'class="farm-failures"' in row and "unreachable 1" in row


def test_chat_and_compare_show_a_notice_above_the_answer(
    make_session: Callable[..., Session], ollama: OllamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_session(ollama)
    monkeypatch.setattr(s, "stream", lambda *a, **k: notice_stream(s))
    chat = ChatWidget(s, load_models=False)
    chat.send("hi")
    assert chat.wait(WAIT)
    value = chat.transcript.children[0].value
    assert value.count(NOTICE) == 1 and value.index(NOTICE) < value.index("from openai")
    compare = CompareWidget("hi", ["ollama:llama3.1"], s)
    assert compare.wait(WAIT)
    body = compare.columns[0].body.value
    assert body.index(NOTICE) < body.index("from openai")


def test_chat_notice_end_to_end(make_session: Callable[..., Session]) -> None:
    with OllamaServer() as ollama, OpenAIServer(api_key="sk-test-0123456789abcdef", reply="openai answers") as openai:
        s = make_session(ollama, openai)
        ollama.refuse()
        chat = ChatWidget(s, load_models=False)
        chat.send("hi")
        assert chat.wait(WAIT)
        value = chat.transcript.children[0].value
        assert f"&#9888; {NOTICE}" in value and value.index(NOTICE) < value.index("openai answers")
        assert openai.count("/v1/chat/completions") == 1 and not chat.error


def test_chat_shows_thinking_folded_apart_from_the_answer(make_session: Callable[..., Session]) -> None:
    with OllamaServer() as server:
        chat = ChatWidget(make_session(server), load_models=False, think=True)
        chat.send("why?")
        assert chat.wait(WAIT)
        html = chat.transcript.children[0].value
        assert '<details class="farm-thinking"' in html and "<summary>thinking (3 words)</summary>" in html
        assert "Thinking about: why?" in html
        assert chat.last_text == "Echo: why?" and server.requests[-1].json["think"] is True


def saved_widget_state(comms: list[RecordingComm]) -> dict[str, Any]:
    """The widget state a notebook saved by nbclient holds (`metadata.widgets`): what each widget
    sent on its comm, fed to nbclient's own handler as the kernel's messages, written and read back."""
    import nbformat
    from nbclient import NotebookClient

    client = NotebookClient(nbformat.v4.new_notebook())
    for c in comms:
        opened = {"comm_id": c.comm_id, "target_name": c.opened_with["target_name"], "data": c.opened_with["data"]}
        client.handle_comm_msg([], {"msg_type": "comm_open", "content": opened}, 0)
        for data in list(c.messages):
            client.handle_comm_msg([], {"msg_type": "comm_msg", "content": {"comm_id": c.comm_id, "data": data}}, 0)
    client.set_widgets_metadata()
    saved = nbformat.reads(nbformat.writes(client.nb), as_version=4)
    return dict(saved.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"])


def test_chat_answers_carry_their_provenance_into_the_saved_notebook(
    make_session: Callable[..., Session], comms: list[RecordingComm]
) -> None:
    from farm_jupyter import __version__, provenance

    with OllamaServer() as server:
        s = make_session(server, breaker={"failures": 50}, retry={"max_retries": 0})
        chat = ChatWidget(s, load_models=False)
        chat.send("first")
        assert chat.wait(WAIT)
        first = chat.last_response
        server.refuse()
        chat.send("second")  # fails: no answer, so no provenance for its turn
        assert chat.wait(WAIT)
        until(lambda: chat.error, what="the error line")
        server.accept()
        chat.send("third")
        assert chat.wait(WAIT)
        third = chat.last_response
        assert first is not None and third is not None
        saved = saved_widget_state(comms)[chat.model_id]
        assert saved["model_name"] == "VBoxModel"
        entries = saved["state"]["provenance"]
        assert [e["turn"] for e in entries] == [1, 3]
        for entry, response in zip(entries, [first, third], strict=True):
            expected = provenance.answer(response)[provenance.KEY]
            assert set(entry) == {"turn", *expected}  # the same fields as a %%farm_chat output's metadata
            assert {k: entry[k] for k in ("provider", "model", "params", "notice", "cache", "usage")} == {
                k: expected[k] for k in ("provider", "model", "params", "notice", "cache", "usage")
            }
            assert entry["version"] == __version__ and entry["provider"] == "ollama" and entry["model"] == "llama3.1"
            assert (
                entry["cache"] == {"hit": False, "key": response.cache_key} and entry["usage"]["completion_tokens"] > 0
            )
        assert comm_of(chat).updates("provenance") == 2  # one per finished answer, none for the failure
        chat.clear()  # the transcript goes, and what it said of the turns with it
        assert saved_widget_state(comms)[chat.model_id]["state"]["provenance"] == []


def test_compare_over_prompts_keeps_picks_verdicts_and_a_scoreboard(
    make_session: Callable[..., Session], tmp_path: Any
) -> None:
    with OllamaServer() as ollama, OpenAIServer(api_key="sk-test-0123456789abcdef") as oai:
        # The judge (gpt-4o) names the answer "Sure." in whichever place it is shown; the others echo.
        def reply(body: dict[str, Any]) -> str:
            asked = body["messages"][-1]["content"]
            if "Which answer is better" not in asked:
                return "Sure."
            return "A" if "Answer A:\nSure." in asked else "B"

        oai.reply = reply
        s = make_session(ollama, oai)
        models = ["ollama:llama3.1", "openai:gpt-4o-mini"]
        compare = CompareWidget(models=models, prompts=["one", "two", "three"], session=s, judge="openai:gpt-4o")
        assert compare.wait(WAIT)
        until(lambda: not compare.running, what="the first prompt")
        assert compare.comparison is not None and compare.comparison.verdicts[0] == "openai:gpt-4o-mini"
        compare.pick("ollama:llama3.1")  # a person disagrees with the judge; the next prompt runs
        assert compare.index == 1 and compare.wait(WAIT)
        until(lambda: not compare.running, what="the second prompt")
        compare.pick("tie")
        assert compare.index == 2 and compare.wait(WAIT)
        until(lambda: not compare.running, what="the third prompt")
        compare.pick("openai:gpt-4o-mini")
        result = compare.comparison
        assert result.picks == ["ollama:llama3.1", "tie", "openai:gpt-4o-mini"]
        assert result.verdicts == ["openai:gpt-4o-mini"] * 3
        assert [r.answer for r in result.rows_of(1)] == ["Echo: two", "Sure."]
        board = compare.scoreboard.value
        table = board[: board.index("</table>")]
        assert "3 picked, 1 tie" in board and "50%" not in table and "33%" in table
        assert "consistency 100%" in board and "first-position preference 50%" in board
        assert "Cohen&#x27;s kappa 0.00 over 3 prompts" in board or "Cohen's kappa 0.00 over 3 prompts" in board
        report = result.report()
        assert report is not None and report.low["openai:gpt-4o-mini"] > 0.5
        summary = {row["model"]: row for row in result.summary()}
        assert summary["ollama:llama3.1"]["picked"] == 1 and summary["openai:gpt-4o-mini"]["wins"] == 3
        frame = result.to_pandas()
        assert list(frame.pick[:2]) == ["ollama:llama3.1", "ollama:llama3.1"] and len(frame) == 6
        result.to_csv(str(tmp_path / "eval.csv"))
        assert (tmp_path / "eval.csv").read_text().count("\n") == 7
        with pytest.raises(ConfigError, match="pick one of"):
            compare.pick("nosuch")
        compare.close()
