"""Many requests at once (issue 17): `map` over rows, `compare` over prompts x models, usage and
budget. Over the loopback servers, asserting on their request logs."""

from __future__ import annotations

import csv
import os
import signal
import threading

import pytest

from farm_jupyter.errors import ConfigError, ModelNotFound
from farm_jupyter.ledger import BudgetExceeded
from farm_jupyter.testing import Fault

pytestmark = pytest.mark.timeout(180)
CHAT = "/api/chat"


def test_a_map_over_200_rows_with_faults_accounts_for_every_row_in_order(make_session, ollama_server):
    s = make_session(ollama_server, retry={"max_retries": 12, "backoff": 0.001})
    ollama_server.add_fault(Fault(kind="status", status=503, times=7, path=CHAT))  # retried: answered
    ollama_server.add_fault(Fault(kind="drop", after=1, times=5, path=CHAT))  # retried: answered
    items = [f"row {i}" for i in range(200)]
    rows = s.map(items, "Say: {}", model="ollama", concurrency=16, progress=False)
    assert list(rows.item) == items
    assert list(rows.answer) == [f"Echo: Say: row {i}" for i in range(200)]
    assert rows.error.isna().all() and (rows.provider == "ollama").all()
    assert int(rows.retries.sum()) == 12
    assert ollama_server.count(CHAT) == 212


def test_failed_rows_are_kept_and_a_rerun_asks_only_for_them(make_session, ollama_server):
    s = make_session(ollama_server)
    ollama_server.add_fault(Fault(kind="status", status=400, times=10, path=CHAT))  # the caller's: not retried
    items = [{"id": i, "text": f"t{i}"} for i in range(60)]
    first = s.map(items, "{text}", concurrency=4, progress=False)
    failed = first[first.error.notna()]
    assert len(failed) == 10 and (failed.answer.isna()).all()
    assert all("answered 400" in e for e in failed.error)
    assert ollama_server.count(CHAT) == 60

    again = s.map(items, "{text}", concurrency=4, progress=False)
    assert ollama_server.count(CHAT) == 70  # the 50 answered rows came from the cache
    assert again.error.isna().all() and list(again.answer) == [f"Echo: t{i}" for i in range(60)]
    assert int(again.cached.sum()) == 50


def test_a_pandas_series_keeps_its_index_and_a_function_builds_messages(make_session, ollama_server):
    import pandas as pd

    s = make_session(ollama_server)
    series = pd.Series(["a", "b", "c"], index=["x", "y", "z"])
    rows = s.map(series, lambda v: [{"role": "user", "content": f"letter {v}"}], progress=False)
    assert list(rows.index) == ["x", "y", "z"]
    assert list(rows.answer) == ["Echo: letter a", "Echo: letter b", "Echo: letter c"]


def test_mistakes_fail_once_not_per_row(make_session, ollama_server):
    s = make_session(ollama_server)
    with pytest.raises(ConfigError, match="cannot be filled"):
        s.map([{"a": 1}], "{missing}")
    with pytest.raises(ConfigError, match="concurrency"):
        s.map(["a"], concurrency=0)
    with pytest.raises(ConfigError, match="temperature"):
        s.map(["a", "b"], temperature=7)
    assert ollama_server.count() == 0
    with pytest.raises(ModelNotFound, match='no provider "nosuch"'):
        s.map([f"r{i}" for i in range(50)], model="nosuch:x", concurrency=4)  # said once for all
    assert ollama_server.count(CHAT) <= 4 + 4  # at most what was in flight, not one per row


def interrupt_at(server, nth: int) -> None:
    """The server answers with an echo; at its `nth` request the kernel's interrupt comes, as a
    real SIGINT (a blocking wait in the caller's thread is broken only by a signal, NOTES.md)."""
    seen = []

    def reply(body):
        seen.append(body)
        if len(seen) == nth:
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        return "Echo: " + body["messages"][-1]["content"]

    server.reply = reply
    server.latency = 0.1


def test_ctrl_c_stops_a_map_and_keeps_the_finished_rows(make_session, ollama_server):
    s = make_session(ollama_server)
    interrupt_at(ollama_server, 6)
    with pytest.raises(KeyboardInterrupt) as caught:
        s.map([f"q{i}" for i in range(100)], concurrency=2, progress=False)
    kept = s.last_batch  # what farm.map returns, partial: every row, the stopped ones saying so
    assert len(kept) == 100 and list(kept.item) == [f"q{i}" for i in range(100)]
    done = kept[kept.error.isna()]
    assert 5 <= len(done) < 100 and all(a == f"Echo: {q}" for q, a in zip(done.item, done.answer, strict=True))
    assert set(kept.error.dropna()) == {"stopped before it was asked"}
    said = f"farm.map stopped after {len(done)} of 100 rows: they are in farm.session().last_batch"
    assert caught.value._render_traceback_() == [f"KeyboardInterrupt: {said}"] and str(caught.value) == said
    asked = ollama_server.count(CHAT)
    ollama_server.reply = None
    rest = s.map([f"q{i}" for i in range(100)], concurrency=8, progress=False)
    assert rest.error.isna().all() and s.last_batch is rest  # the very object returned
    assert ollama_server.count(CHAT) - asked == 100 - len(done)  # finished rows came from the cache


def test_ctrl_c_in_a_cell_is_one_line_and_the_cell_ends_interrupted(make_session, ollama_server):
    # Was: a 25-line traceback with no word of where the rows are.
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from farm_jupyter.sessions import set_session

    shell = InteractiveShell.instance()
    s = make_session(ollama_server)
    old = set_session(s)
    interrupt_at(ollama_server, 4)
    try:
        with capture_output() as io:
            result = shell.run_cell(
                "import farm_jupyter as farm\nrows = farm.map([f'q{i}' for i in range(50)], concurrency=2)"
            )
    finally:
        set_session(old)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # the cell failed: Run All stops here
    shown = [line for line in (io.stdout + io.stderr).splitlines() if "KeyboardInterrupt" in line or "File " in line]
    assert len(shown) == 1 and "they are in farm.session().last_batch" in shown[0], io.stdout + io.stderr
    assert "Traceback" not in io.stdout + io.stderr and len(s.last_batch) == 50


def test_a_saved_notebook_keeps_the_finished_bars_text(ollama_server, tmp_path, monkeypatch):
    # Was: `farm.map:   0%|          | 0/3`, the text of the bar when it was first shown.
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    for name, value in {
        "OLLAMA_HOST": ollama_server.url,
        "FARM_ENV": "test",
        "FARM_FALLBACK": "",
        "FARM_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    cells = [
        "import farm_jupyter as farm\n%load_ext farm_jupyter",
        "rows = farm.map(['a', 'b', 'c'], model='ollama')",
        "%farm pull phi3:mini",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    bars = [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert len(bars) == 1 and "application/vnd.jupyter.widget-view+json" in bars[0].data
    text = bars[0].data["text/plain"]
    assert text.startswith("farm.map: 100%") and "3/3" in text, text
    assert ollama_server.count(CHAT) == 3
    pulled = [
        o.data["text/plain"]
        for o in nb.cells[2].outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert pulled and all("100%" in t for t in pulled), pulled  # each layer's bar, finished


# -- compare ---------------------------------------------------------------------------------------


def test_compare_over_prompts_with_a_judge(make_session, ollama_server, openai_server, tmp_path):
    s = make_session(ollama_server, openai_server)
    # A judge that always names answer B reads positions, not answers: both orders disagree, all ties.
    openai_server.reply = lambda body: "B" if "Which answer is better" in body["messages"][-1]["content"] else "Sure."
    result = s.compare(
        ["one", "two", "three"], ["ollama:llama3.1", "openai:gpt-4o"], judge="openai:gpt-4o-mini", progress=False
    )
    assert result.row(0, 0).answer == "Echo: one" and result.row(2, 1).answer == "Sure."
    assert result.verdicts == ["tie"] * 3
    report = result.report()
    assert report is not None and report.consistency == 0.0 and report.first_position == 0.0
    openai_server.reply = lambda body: "A" if "Answer A:\nSure." in body["messages"][-1]["content"] else "B"
    result = s.compare(
        ["one", "two", "three"], ["ollama:llama3.1", "openai:gpt-4o"], judge="openai:gpt-4o", progress=False
    )
    assert result.verdicts == ["openai:gpt-4o"] * 3
    summary = {row["model"]: row for row in result.summary()}
    assert summary["openai:gpt-4o"]["wins"] == 3 and summary["ollama:llama3.1"]["answered"] == 3
    frame = result.to_pandas()
    assert list(frame.columns[:3]) == ["prompt", "model", "answer"] and len(frame) == 6
    result.to_csv(tmp_path / "c.csv")
    with open(tmp_path / "c.csv", encoding="utf-8") as f:
        assert len(list(csv.reader(f))) == 7


def test_compare_never_falls_back(make_session, ollama_server, openai_server):
    s = make_session(ollama_server, openai_server)
    ollama_server.refuse()
    result = s.compare(["q"], ["ollama", "openai"], progress=False)
    assert not result.row(0, 0).ok and "not reachable" in result.row(0, 0).error
    assert result.row(0, 1).provider == "openai"
    assert openai_server.count("/v1/chat/completions") == 1  # only its own cell


# -- usage, prices, budget -------------------------------------------------------------------------


def test_usage_counts_tokens_savings_and_prices(make_session, ollama_server, openai_server):
    s = make_session(ollama_server, openai_server, prices={"openai:gpt-4o": {"input": 1_000_000, "output": 2_000_000}})
    s.chat("one two three", "openai:gpt-4o")
    s.chat("one two three", "openai:gpt-4o")  # a cache hit: saved, not paid
    s.chat("hello", "ollama")
    report = {r.address: r for r in s.usage()}
    gpt = report["openai:gpt-4o"]
    assert gpt.requests == 2 and gpt.cache_hits == 1 and gpt.saved_out == gpt.tokens_out > 0
    assert gpt.cost == pytest.approx(gpt.tokens_in * 1 + gpt.tokens_out * 2)
    assert report["ollama:llama3.1"].cost_text() == "price unknown"
    assert "shipped price as of" not in gpt.cost_text()
    assert "spent $" in repr(s.usage())


def test_a_budget_stops_the_next_request_before_it_is_sent(make_session, ollama_server, openai_server):
    s = make_session(
        ollama_server, openai_server, budget={"usd": 0.001}, prices={"openai:gpt-4o": {"input": 10, "output": 10}}
    )
    s.chat("hi", "openai:gpt-4o", max_tokens=10)  # at most (2 + 10) tokens at $10/M: well inside
    asked = openai_server.count("/v1/chat/completions")
    with pytest.raises(BudgetExceeded, match="budget"):
        s.chat("hi again", "openai:gpt-4o", max_tokens=100)  # could cost $0.001 more: refused
    assert openai_server.count("/v1/chat/completions") == asked
    assert s.chat("free", "ollama").provider == "ollama"  # an unpriced model is not stopped


def test_money_is_said_at_the_precision_it_was_given(make_session, ollama_server, openai_server):
    # Was: "the $0.00 budget" for usd = 0.0001, and "spent $0.0000" for a spend that is not nothing.
    prices = {"openai:gpt-4o-mini": {"input": 0.15, "output": 0.60}}
    s = make_session(ollama_server, openai_server, budget={"usd": 0.0001}, prices=prices)
    s.chat("one two three", "openai:gpt-4o-mini", max_tokens=5)  # 3 words in, 4 out: $0.00000285
    with pytest.raises(BudgetExceeded) as refused:
        s.chat("again", "openai:gpt-4o-mini", max_tokens=1000)  # up to 1001 tokens: $0.0006
    said = str(refused.value)
    assert "could cost up to $0.00060, and $0.0000028 of the $0.0001 budget is spent" in said
    assert repr(s.usage()).endswith("spent $0.0000028 on priced models of a $0.0001 budget")
    assert next(iter(s.usage())).cost_text() == "$0.0000028"


def test_a_bug_in_a_row_ends_the_run_instead_of_hanging_it():
    import asyncio

    from farm_jupyter.batch import _bounded

    async def fine() -> int:
        return 1

    async def broken() -> int:
        raise TypeError("a bug, not a row's failure")

    async def run() -> list[int]:
        return [r async for r in _bounded([fine, broken, fine, fine], concurrency=2)]

    with pytest.raises(TypeError, match="a bug"):
        asyncio.run(asyncio.wait_for(run(), 30))


def test_a_budget_holds_what_requests_in_flight_may_spend(make_session, ollama_server, openai_server):
    # Each request may cost up to $0.0004 (40 tokens at $10/M); $0.001 lets two be in flight.
    s = make_session(
        ollama_server, openai_server, budget={"usd": 0.001}, prices={"openai:gpt-4o": {"input": 10, "output": 10}}
    )
    openai_server.latency = 0.3
    rows = s.map(
        [f"q{i}" for i in range(8)], model="openai:gpt-4o", concurrency=8, max_tokens=40, progress=False, no_cache=True
    )
    assert s.last_batch is rows
    refused = rows[rows.error.str.contains("budget", na=False)]
    assert len(refused) >= 6 and openai_server.count("/v1/chat/completions") == 8 - len(refused) <= 2
    assert len(rows) == 8
