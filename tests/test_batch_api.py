"""`farm.map(..., batch=True)` over the loopback OpenAI Batch API (issue 25): upload, polling,
partial failures, expiry, resuming after a restart, the budget before the upload. Through the
real openai SDK; assertions on the server's request log, never on time."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from farm_jupyter.batch_api import cancel
from farm_jupyter.errors import ConfigError
from farm_jupyter.ledger import BudgetExceeded
from farm_jupyter.sessions import Session
from farm_jupyter.testing import OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import loopback_settings
from farm_jupyter.testing.servers import TEST_API_KEY

pytestmark = pytest.mark.timeout(120)
ITEMS = [f"row {i}" for i in range(500)]


def _every_seventh(line: dict[str, Any]) -> int | None:
    return 500 if int(line["custom_id"].removeprefix("row-")) % 7 == 0 else None


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key=TEST_API_KEY, batch_polls=5, batch_failure=_every_seventh) as s:
        yield s


def _session(server: OpenAIServer, tmp_path: Any, **overrides: Any) -> Session:
    return Session(loopback_settings(None, server, batch={"dir": str(tmp_path), "poll": 0.0}, **overrides))


def _log(server: OpenAIServer) -> dict[str, int]:
    return {
        "upload": server.count("/v1/files", "POST"),
        "create": server.count("/v1/batches", "POST"),
        "chat": server.count("/v1/chat/completions"),
    }


def test_500_rows_through_upload_polling_and_partial_failures_in_order(server, tmp_path, capsys):
    s = _session(server, tmp_path)
    rows = s.map(ITEMS, "Say: {}", model="openai:gpt-4o-mini", batch=True, progress=False, temperature=0)
    assert _log(server) == {"upload": 1, "create": 1, "chat": 0}
    polls = [r for r in server.requests if r.method == "GET" and r.path.startswith("/v1/batches/")]
    assert len(polls) == 1 + 5  # validating, then five steps of 100 rows
    uploaded = next(r for r in server.requests if r.path == "/v1/files")
    assert b'"custom_id":"row-499"' in uploaded.body and b'"temperature":0' in uploaded.body
    assert list(rows.item) == ITEMS and len(rows) == 500
    for i, row in enumerate(rows.itertuples()):
        if i % 7 == 0:
            assert pd.isna(row.answer) and "answered 500" in row.error, i
        else:
            assert row.answer == f"Echo: Say: row {i}" and pd.isna(row.error), i
    assert s.last_batch is rows  # the very object map returned
    job = rows.attrs["farm_jupyter"]["batch"]
    assert job["status"] == "completed" and job["id"] in server.batches
    said = capsys.readouterr().out  # before submitting: the shipped price, halved, marked assumed
    assert "500 rows to openai:gpt-4o-mini: estimated at most $" in said and "assumed" in said
    s.close()


def test_an_expired_job_keeps_what_it_answered_and_says_why_for_the_rest(server, tmp_path):
    server.batch_failure = None
    server.batch_expire_after = 300
    s = _session(server, tmp_path)
    rows = s.map(ITEMS, "Say: {}", model="openai", batch=True, progress=False)
    assert list(rows.answer[:300]) == [f"Echo: Say: {item}" for item in ITEMS[:300]]
    late = rows[300:]
    assert late.answer.isna().all() and s.last_batch is rows
    assert all("completion window expired" in e for e in late.error)
    assert rows.attrs["farm_jupyter"]["batch"]["status"] == "expired"
    s.close()


def test_a_restart_mid_job_resumes_the_same_job(server, tmp_path, capsys):
    answered = []

    def reply(body: dict[str, Any]) -> str:
        answered.append(body)
        if len(answered) == 1:  # the kernel's interrupt, as a real SIGINT, while the job runs
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        return "ok: " + body["messages"][-1]["content"]

    server.reply = reply
    server.batch_failure = None
    server.batch_polls = 1000  # a slow job: it is still running when the cell is interrupted
    first = Session(loopback_settings(None, server, batch={"dir": str(tmp_path), "poll": 0.02}))
    with pytest.raises(KeyboardInterrupt):
        first.map(ITEMS, model="openai", batch=True, progress=False)
    ident = next(iter(server.batches))
    assert f"farm.cancel_batch('{ident}')" in capsys.readouterr().err
    first.close()  # the kernel is gone; the job is not

    server.batch_polls = 5
    again = _session(server, tmp_path)  # a new kernel, the same disk
    rows = again.map(ITEMS, model="openai", batch=True, progress=False)
    assert "resuming job " + ident in capsys.readouterr().out
    assert _log(server) == {"upload": 1, "create": 1, "chat": 0}  # the server saw one batch created
    assert list(rows.answer) == [f"ok: {item}" for item in ITEMS]
    rerun = again.map(ITEMS, model="openai", batch=True, progress=False)  # done: read back, not paid again
    assert _log(server)["create"] == 1 and list(rerun.answer) == list(rows.answer)
    again.close()


def test_a_kept_job_the_server_does_not_know_is_submitted_anew(server, tmp_path, capsys):
    server.batch_failure = None
    s = _session(server, tmp_path)
    s.map(ITEMS[:5], model="openai", batch=True, progress=False)
    server.batches.clear()  # another server on the same address, or one that forgot the job
    rows = s.map(ITEMS[:5], model="openai", batch=True, progress=False)
    assert "is unknown to" in capsys.readouterr().out and rows.error.isna().all()
    assert server.count("/v1/batches", "POST") == 2
    s.close()


def test_the_budget_refuses_before_the_upload(server, tmp_path, capsys):
    prices = {"openai:gpt-4o-mini": {"input": 100, "output": 100}}
    s = _session(server, tmp_path, prices=prices, budget={"usd": 0.5})
    with pytest.raises(BudgetExceeded, match="500 rows to openai:gpt-4o-mini"):
        s.map(ITEMS, model="openai", batch=True, progress=False, max_tokens=20)
    assert server.count() == 0
    assert "assumed: half the regular price" in capsys.readouterr().out
    cheap = {"openai:gpt-4o-mini": {"input": 100, "output": 100, "batch_input": 1, "batch_output": 1}}
    s = _session(server, tmp_path, prices=cheap, budget={"usd": 0.5})
    rows = s.map(ITEMS[:10], model="openai", batch=True, progress=False, max_tokens=20)
    assert len(rows) == 10 and "batch price from [prices]" in capsys.readouterr().out
    s.close()


def test_a_jobs_answered_rows_are_spent_at_the_batch_price_once(server, tmp_path):
    server.batch_failure = None
    prices = {"openai:gpt-4o-mini": {"input": 100, "output": 100, "batch_input": 10, "batch_output": 20}}
    s = _session(server, tmp_path, prices=prices, budget={"usd": 100})
    rows = s.map(ITEMS[:20], model="openai", batch=True, progress=False)
    usage = s.usage()
    (row,) = [r for r in usage if r.address == "openai:gpt-4o-mini"]
    tokens_in, tokens_out = rows.tokens_in.sum(), rows.tokens_out.sum()
    assert (row.requests, row.tokens_in, row.tokens_out) == (20, tokens_in, tokens_out) and tokens_out > 0
    assert usage.spent == pytest.approx((tokens_in * 10 + tokens_out * 20) / 1e6)
    assert "batch price from [prices]" in row.cost_text()
    s.map(ITEMS[:20], model="openai", batch=True, progress=False)  # the same finished job, read back
    assert s.usage().spent == pytest.approx(usage.spent) and server.count("/v1/batches", "POST") == 1
    s.close()


def test_what_a_batch_job_cannot_do_is_refused_in_one_line_before_anything_is_sent(server, tmp_path):
    s = _session(server, tmp_path)
    with pytest.raises(ConfigError, match=r"batch=True cannot take schema=, tools=: a batch job answers"):
        s.map(ITEMS[:3], model="openai", batch=True, schema={"type": "object"}, tools=[len])
    with pytest.raises(ConfigError, match=r"cannot take concurrency="):
        s.map(ITEMS[:3], model="openai", batch=True, concurrency=4)
    assert server.count() == 0
    s.close()


def test_a_provider_without_a_batch_api_is_refused_before_anything_is_sent(tmp_path):
    with OllamaServer() as ollama:
        s = Session(loopback_settings(ollama, batch={"dir": str(tmp_path)}))
        with pytest.raises(ConfigError, match="needs an OpenAI-compatible Batch API"):
            s.map(["a"], model="ollama", batch=True)
        assert ollama.count() == 0
        s.close()


def test_cancel_a_job_that_was_left_running(make_session, server, tmp_path):
    server.batch_polls = 1000
    calls = []

    def reply(body: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) == 1:
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        return "x"

    server.reply = reply
    s = make_session(None, server, batch={"dir": str(tmp_path), "poll": 0.02})
    with pytest.raises(KeyboardInterrupt):
        s.map(ITEMS[:50], model="openai", batch=True, progress=False)
    ident = next(iter(server.batches))
    assert cancel(s, ident) == "cancelling"
    assert server.count(f"/v1/batches/{ident}/cancel", "POST") == 1
    assert not list(tmp_path.glob("*.json"))  # a cancelled job is not resumed
