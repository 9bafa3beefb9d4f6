"""%%farm_chat with the notebook as context (issue 16): {df} and {fig} in a cell, --schema,
--tools, --think and --context-budget, in a real InteractiveShell against loopback servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from pydantic import BaseModel

from farm_jupyter.context import CHARS_PER_TOKEN
from farm_jupyter.sessions import Session, set_session
from farm_jupyter.testing import OllamaServer, OpenAIServer, Said
from farm_jupyter.testing.pytest_plugin import loopback_settings
from farm_jupyter.testing.servers import TEST_API_KEY

pytestmark = pytest.mark.timeout(60)
CHAT = "/api/chat"


@pytest.fixture
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer(models=("llama3.1:latest", "llava:latest")) as server:
        yield server


@pytest.fixture
def ip(ollama: OllamaServer) -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    before = set(shell.user_ns)
    shell.run_line_magic("load_ext", "farm_jupyter")
    with OpenAIServer(api_key=TEST_API_KEY) as openai:
        session = Session(loopback_settings(ollama, openai))
        old = set_session(session)
        yield shell
        set_session(old)
        session.close()
    shell.run_line_magic("unload_ext", "farm_jupyter")
    for name in set(shell.user_ns) - before:
        del shell.user_ns[name]


def run(ip: InteractiveShell, line: str, cell: str) -> str:
    """The cell's plain-text outputs, joined (what nbval and a saved notebook keep)."""
    outputs: list[dict[str, Any]] = []
    with capture_output() as io:
        ip.run_cell_magic("farm_chat", line, cell)
    outputs = [o.data for o in io.outputs]
    return "\n".join(o.get("text/plain", "") for o in outputs) + io.stdout


def last(server: OllamaServer) -> dict[str, Any]:
    body = server.requests[-1].json
    assert body is not None
    return body


def test_a_dataframe_in_a_cell_is_described_within_the_budget(ip, ollama):
    pd = pytest.importorskip("pandas")
    ip.user_ns["sales"] = pd.DataFrame({"month": range(1, 500), "units": range(499)})
    run(ip, "--context-budget 100", "Which month sold most? {sales}")
    text = last(ollama)["messages"][-1]["content"]
    assert text.startswith("Which month sold most? pandas DataFrame `sales`: 499 rows x 2 columns")
    assert len(text) <= len("Which month sold most? ") + 100 * CHARS_PER_TOKEN
    run(ip, "--new", "As text: {sales!s:.20}")  # a conversion or a spec: str.format as before
    assert last(ollama)["messages"][-1]["content"] == ("As text: " + str(ip.user_ns["sales"])[:20]).rstrip()
    with pytest.raises(UsageError, match="--context-budget must be a positive"):
        run(ip, "--context-budget 0", "{sales}")


def test_a_series_and_a_broken_repr_in_a_cell_are_described_not_a_failed_cell(ip, ollama):
    # Was: TypeError: Series.to_string() got an unexpected keyword argument 'max_colwidth'.
    pd = pytest.importorskip("pandas")

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    ip.user_ns["sales"] = pd.DataFrame({"month": range(1, 13), "units": range(12)})
    ip.user_ns["broken"] = Broken()
    run(ip, "", "Trend of {sales.units}? And {broken}?")
    text = last(ollama)["messages"][-1]["content"]
    assert text.startswith("Trend of pandas Series `sales.units`: 12 rows, dtype int64, name 'units'\nall rows:")
    assert text.endswith("And <Broken object: its repr raised RuntimeError>?")


def test_a_figure_in_a_cell_goes_as_an_image(ip, ollama):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.set_title("Units")
    plt.close(fig)
    ip.user_ns["fig"] = fig
    out = run(ip, "-m ollama:llava", "What does {fig} show?")
    message = last(ollama)["messages"][-1]
    assert len(message["images"]) == 1 and message["content"].count("[image 1: matplotlib figure, 20x20 px") == 1
    assert "[1 image]" in out
    out = run(ip, "-m ollama:llama3.1 --new", "What does {fig} show?")
    assert "images" not in last(ollama)["messages"][-1]
    assert "1 image sent as text (llama3.1 takes no images)" in out


class Answer(BaseModel):
    month: int
    reason: str


def test_schema_validates_and_shows_json(ip, ollama):
    ip.user_ns["Answer"] = Answer
    out = run(ip, "--schema Answer -o r", "Which month?")
    assert last(ollama)["format"] == Answer.model_json_schema()
    assert ip.user_ns["r"].parsed == Answer(month=0, reason="x")
    assert json.loads(out[: out.index("}") + 1]) == {"month": 0, "reason": "x"}  # shown as pretty JSON
    with pytest.raises(UsageError, match="--schema Nope: no such name"):
        run(ip, "--schema Nope", "Which month?")
    with pytest.raises(UsageError, match="--schema answers JSON"):
        run(ip, "--schema Answer -f code", "Which month?")

    answers = iter(['{"month": "May"}', '{"month": 5, "reason": "sun"}'])
    ollama.reply = lambda body: next(answers)
    out = run(ip, "--schema Answer -o r --new", "Which month, really?")
    assert ip.user_ns["r"].parsed == Answer(month=5, reason="sun") and "1 re-ask" in out


def test_tools_run_in_the_kernel_and_show_each_call(ip, ollama):
    ip.run_cell("def units(month: int) -> int:\n    '''Units sold in a month.'''\n    return month * 10\n")
    ollama.reply = lambda body: (
        "Done."
        if body["messages"][-1]["role"] == "tool"
        else Said(tool_calls=[{"name": "units", "arguments": {"month": 3}}])
    )
    out = run(ip, "--tools units", "How many in March?")
    assert "[tool] units(month=3) -> 30 (" in out and "Done." in out and "1 tool call in 1 step" in out
    assert last(ollama)["messages"][-1] == {"role": "tool", "content": "30", "tool_name": "units"}
    ip.user_ns["n"] = 3
    with pytest.raises(UsageError, match="--tools n: n is a int, not a function"):
        run(ip, "--tools units,n", "x")
    with pytest.raises(UsageError, match="--tools nope: nope is not defined"):
        run(ip, "--tools nope", "x")


def test_thinking_is_shown_folded_and_kept_out_of_the_answer(ip, ollama):
    with capture_output() as io:
        ip.run_cell_magic("farm_chat", "--think -o r", "Why?")
    bundles = [o.data for o in io.outputs]
    folded = [b for b in bundles if "<details>" in b.get("text/html", "")]
    assert len(folded) == 1 and "Thinking about: Why?" in folded[0]["text/html"]
    assert folded[0]["text/plain"] == "[thinking] Thinking about: Why?"
    assert last(ollama)["think"] is True
    assert ip.user_ns["r"].text == "Echo: Why?"
    run(ip, "", "And then?")
    assert [m.get("thinking") for m in last(ollama)["messages"]] == [None, None, None]
    with pytest.raises(UsageError, match="--think takes no value or one of low"):
        run(ip, "--think hard", "x")


def test_a_context_window_error_in_a_cell_names_context_budget(ip, ollama):
    pd = pytest.importorskip("pandas")
    from farm_jupyter.errors import BadRequest

    ip.user_ns["sales"] = pd.DataFrame({"city": [f"city {i}" for i in range(3000)], "units": range(3000)})
    with OpenAIServer(api_key=TEST_API_KEY, context_window=300) as small:
        session = Session(loopback_settings(ollama, small))
        old = set_session(session)
        try:
            with pytest.raises(BadRequest) as caught:
                run(ip, "-m openai:gpt-4o-mini --context-budget 800", "Which city? {sales}")
            said = str(caught.value)
            assert "maximum context length is 300 tokens" in said and "--context-budget 800 tokens each" in said
            assert "estimated at 4 characters a token" in said
            run(ip, "-m openai:gpt-4o-mini --new --context-budget 60", "Which city? {sales}")  # fits
        finally:
            set_session(old)
            session.close()
