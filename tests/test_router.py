"""The router over real loopback servers: retries, fallback, breakers, rate limits, cache, cancel."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from farm_jupyter.errors import AllProvidersFailed, BadRequest, ConfigError, ModelNotFound
from farm_jupyter.sessions import Session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer, wait_until
from farm_jupyter.testing.pytest_plugin import loopback_settings

pytestmark = pytest.mark.timeout(120)


def make(ollama: OllamaServer | None = None, openai: OpenAIServer | None = None, **overrides) -> Session:
    return Session(loopback_settings(ollama, openai, **overrides))


# -- addresses ------------------------------------------------------------------------------------


def test_addresses_resolve(session):
    r = session._engine.router
    assert [str(x) for x in r.resolve()] == ["ollama:llama3.1", "openai:gpt-4o-mini"]
    assert str(r.resolve("openai:gpt-4o")[0]) == "openai:gpt-4o"
    assert str(r.resolve("llama3.1:latest")[0]) == "ollama:llama3.1:latest"  # a tag, not a provider
    assert str(r.resolve("qwen2.5")[0]) == "ollama:qwen2.5"  # bare model: default provider
    assert str(r.resolve("openai")[0]) == "openai:gpt-4o-mini"  # provider: its default model
    session.settings.aliases["fast"] = "openai:gpt-4o"
    assert str(r.resolve("fast")[0]) == "openai:gpt-4o"
    assert [str(x) for x in r.resolve("fast", fallback=False)] == ["openai:gpt-4o"]


def test_environment_picks_the_default_provider(make_session, ollama_server, openai_server):
    s = make_session(ollama_server, openai_server, env="production", fallback=None, provider=None)
    assert s._engine.router.resolve()[0].provider == "openai"
    assert s.chat("hi").provider == "openai"


# -- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_first_failures_are_retried_then_succeed(make_session, ollama_server, status):
    s = make_session(ollama_server)
    ollama_server.add_fault(Fault(kind="status", status=status, times=2, path="/api/chat"))
    response = s.chat("hello")
    assert response.text == "Echo: hello"
    assert ollama_server.count("/api/chat") == 3
    assert response.attempts[-1].retries == 2 and response.attempts[-1].ok


def test_retry_after_is_honoured(make_session, ollama_server):
    s = make_session(ollama_server)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    s._engine.router.sleep = sleep
    ollama_server.add_fault(Fault(kind="status", status=429, times=1, retry_after=0.6, path="/api/chat"))
    response = s.chat("hello")
    assert ollama_server.count("/api/chat") == 2
    assert waits == [pytest.approx(0.6, abs=0.01)]
    assert response.timings.waited == pytest.approx(0.6, abs=0.01)


def test_user_errors_are_not_retried(make_session, ollama_server):
    s = make_session(ollama_server)
    ollama_server.add_fault(Fault(kind="status", status=400, times=1, path="/api/chat"))
    with pytest.raises(BadRequest):
        s.chat("hello")
    assert ollama_server.count("/api/chat") == 1
    with pytest.raises(ModelNotFound, match="pull"):  # the caller's mistake: no other provider asked
        s.chat("hello", "ollama:nosuch")
    assert ollama_server.count("/api/chat") == 2


# -- fallback -------------------------------------------------------------------------------------


def test_refused_port_falls_back_for_chat_and_stream(session, ollama_server, openai_server):
    ollama_server.refuse()
    response = session.chat("hello")
    assert response.provider == "openai" and response.text == "Echo: hello"
    assert response.fell_back_from == ["ollama:llama3.1"]
    assert response.attempts[0].error_type == "ProviderUnavailable"
    assert "fell back from ollama:llama3.1" in response.footer()

    stream = session.stream("streamed", no_cache=True)
    chunks = list(stream)
    assert not any(c.restart for c in chunks)
    assert stream.text == "Echo: streamed" and stream.response.provider == "openai"
    assert openai_server.count("/v1/chat/completions") == 2


def test_mid_stream_drop_restarts_on_the_next_provider(make_session, ollama_server, openai_server):
    s = make_session(ollama_server, openai_server, retry={"max_retries": 0})
    ollama_server.add_fault(Fault(kind="drop", after=2, times=None, path="/api/chat"))
    stream = s.stream("one two three four five")
    chunks = list(stream)
    restart_at = next(i for i, c in enumerate(chunks) if c.restart)
    assert "".join(c.text for c in chunks[:restart_at])  # partial text was shown before
    assert stream.text == "Echo: one two three four five"  # and the caller sees one answer
    response = stream.response
    assert response.restarted and response.provider == "openai"
    assert response.attempts[0].error_type == "StreamInterrupted"
    assert response.attempts[0].chunks_before_failure == 2
    assert "restarted" in response.footer()


def test_every_provider_down_is_one_error_listing_the_attempts(session, ollama_server, openai_server):
    ollama_server.refuse()
    openai_server.refuse()
    with pytest.raises(AllProvidersFailed) as info:
        session.chat("hello")
    message = str(info.value)
    assert "ollama:llama3.1" in message and "openai:gpt-4o-mini" in message and "\n" not in message
    assert [a.provider for a in info.value.attempts] == ["ollama", "openai"]


def test_an_option_the_asked_provider_does_not_take_is_refused_and_a_fallback_leaves_it(
    make_session, ollama_server, openai_server
):
    s = make_session(ollama_server, openai_server, retry={"max_retries": 0})
    with pytest.raises(ConfigError, match="ollama takes no option 'min_new_tokens': its options are "):
        s.chat("hi", extra={"min_new_tokens": 3})  # a transformers option, asked of Ollama
    with pytest.raises(ConfigError, match="openai takes no option 'num_ctx'"):
        list(s.stream("hi", "openai", extra={"num_ctx": 4096}))
    assert ollama_server.count("/api/chat") == 0 and openai_server.count("/v1/chat/completions") == 0
    ollama_server.add_fault(Fault(kind="status", status=503, times=None, path="/api/chat"))
    response = s.chat("hi", extra={"num_ctx": 4096}, no_cache=True)
    assert response.provider == "openai" and response.fell_back_from
    assert ollama_server.requests[-1].json["options"]["num_ctx"] == 4096  # what it was for
    assert "num_ctx" not in openai_server.requests[-1].json


# -- circuit breaker ------------------------------------------------------------------------------


def test_breaker_cools_down_skips_then_probes(make_session, ollama_server, openai_server):
    s = make_session(ollama_server, openai_server, breaker={"failures": 2, "cooldown": 0.5}, retry={"max_retries": 0})
    ollama_server.add_fault(Fault(kind="status", status=500, times=None, path="/api/chat"))
    for _ in range(2):
        assert s.chat("hi", no_cache=True).provider == "openai"
    assert ollama_server.count("/api/chat") == 2
    assert s._engine.router.breaker("ollama").state == "open"

    response = s.chat("hi", no_cache=True)  # skipped while cooling down: no request at all
    assert ollama_server.count("/api/chat") == 2
    assert response.attempts[0].error_type == "CoolingDown"
    board = {st.provider: st for st in s.health()}
    assert board["ollama"].state == "cooling_down" and board["ollama"].cooldown_until

    time.sleep(0.6)
    ollama_server.clear()  # the provider recovered
    response = s.chat("hi", no_cache=True)  # the probe
    assert response.provider == "ollama" and ollama_server.count("/api/chat") == 1
    assert s._engine.router.breaker("ollama").state == "closed"


# -- rate limits ----------------------------------------------------------------------------------


def test_rate_limit_waits_and_says_so(make_session, ollama_server):
    """On a fake clock: the third request in a minute waits for the first to leave the window."""
    s = make_session(ollama_server, rate_limits={"ollama": {"rpm": 2}})
    now = [1000.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    s._engine.router.sleep = sleep
    limiter = s._engine.router.limiter("ollama")
    assert limiter is not None
    limiter.clock = lambda: now[0]
    for _ in range(2):
        s.chat("x", no_cache=True)
    now[0] += 59.5
    stream = s.stream("x", no_cache=True)
    chunks = list(stream)
    assert waits == [pytest.approx(0.5)]
    assert [c.status for c in chunks if c.status] == ["waiting 0.5s for ollama's rate limit"]
    assert stream.response.timings.waited == pytest.approx(0.5)
    assert "waited 0.5s" in stream.response.footer()
    assert ollama_server.count("/api/chat") == 3


# -- concurrency ----------------------------------------------------------------------------------


def test_fifty_concurrent_chats_over_two_providers(make_session, ollama_server, openai_server):
    # Each server answers only once all 25 of its requests are in: served one by one, they would
    # break the barrier (a 500 each) instead of answering. The deadlines are far off: on loaded
    # runs every Ollama answer came from OpenAI. One connect that misses a 2 s deadline (fifty at
    # once; the loopback default) opens Ollama's breaker, the requests not yet sent fall back, and
    # the barrier never fills (with `connect` at 0.02 s, every run shows that breaker open).
    for srv in (ollama_server, openai_server):
        barrier = threading.Barrier(25, timeout=60)
        srv.reply = lambda body, barrier=barrier: (barrier.wait(), f"Echo: {body['messages'][-1]['content']}")[1]
    s = make_session(
        ollama_server,
        openai_server,
        retry={"max_retries": 0},
        timeouts={"connect": 30, "first_token": 60, "total": 90},
    )

    async def many():
        return await asyncio.gather(
            *(s.aio.chat(f"q{i}", "ollama" if i % 2 else "openai", no_cache=True) for i in range(50))
        )

    responses = asyncio.run(many())
    assert [r.text for r in responses] == [f"Echo: q{i}" for i in range(50)]
    failed = [a.error for r in responses for a in r.attempts if not a.ok]
    assert [r.provider for r in responses] == ["openai", "ollama"] * 25, failed[:2]


# -- cache ----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "disk", "redis"])
def cache_layer(request, tmp_path):
    if request.param == "disk":
        return {"backend": "disk", "path": str(tmp_path / "c.sqlite")}
    if request.param == "redis":
        return {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    return {"backend": "memory"}


def test_cache_hit_replays_without_a_request(make_session, ollama_server, cache_layer):
    s = make_session(ollama_server, cache=cache_layer)
    if cache_layer["backend"] == "redis":
        s.reset(cache=True)
    first = s.stream("cache me", temperature=0).result()
    stream = s.stream("cache me", temperature=0)
    chunks = list(stream)
    assert ollama_server.count("/api/chat") == 1
    assert stream.response.cached and stream.text == first.text
    assert len([c for c in chunks if c.text]) == len(first.text.split())  # replayed as a stream
    assert "cached" in stream.response.footer()

    for change in ({"temperature": 0.5}, {"max_tokens": 1}, {"seed": 1}, {"system": "be brief"}):
        s.chat("cache me", **({"temperature": 0} | change))
    s.chat("cache me", "ollama:qwen2.5:0.5b", temperature=0)
    assert ollama_server.count("/api/chat") == 6  # every change missed

    s.chat("cache me", temperature=0, no_cache=True)
    s.chat("cache me", temperature=0, refresh=True)
    assert ollama_server.count("/api/chat") == 8


def test_errors_and_partial_streams_are_not_cached(make_session, ollama_server):
    s = make_session(ollama_server, retry={"max_retries": 0})
    ollama_server.add_fault(Fault(kind="drop", after=1, times=1, path="/api/chat"))
    with pytest.raises(AllProvidersFailed):
        s.chat("partial")
    assert s.usage("cache")["entries"] == 0
    assert s.chat("partial").text == "Echo: partial"
    assert s.usage("cache")["entries"] == 1


def test_an_answer_is_folded_once_and_cached_from_that_fold(make_session, ollama_server, openai_server, monkeypatch):  # noqa: E501
    """One Fold per answer, each chunk through it once: the screen's text, the response's and the
    cache entry's are that one fold's, a restart after a cut stream included; a cut try is never cached."""
    from farm_jupyter.router.fold import Fold

    folds: list[Fold] = []
    takes: list[str] = []
    real_init, real_take = Fold.__init__, Fold.take

    def init(self):
        folds.append(self)
        real_init(self)

    def take(self, chunk):
        takes.append(chunk.text)
        return real_take(self, chunk)

    monkeypatch.setattr(Fold, "__init__", init)
    monkeypatch.setattr(Fold, "take", take)
    s = make_session(ollama_server, openai_server, retry={"max_retries": 0})
    ollama_server.add_fault(Fault(kind="drop", after=2, times=1, path="/api/chat"))
    stream = s.stream("one two three four five")  # ollama cuts it; openai answers
    chunks = list(stream)
    assert len(folds) == 1 and [c.text for c in chunks] == takes  # each chunk folded once, in order
    assert stream.response.restarted and stream.text == stream.response.text == "Echo: one two three four five"
    shown = [c.text for c in chunks[next(i for i, c in enumerate(chunks) if c.restart) :] if c.text]
    folds.clear(), takes.clear()
    answer = s.chat("the whole thing")  # through result(): the fold runs on the runtime loop
    assert len(folds) == 1 and "".join(takes) == answer.text == "Echo: the whole thing"
    folds.clear(), takes.clear()
    again = s.stream("one two three four five", "openai")
    assert [c.text for c in again if c.text] == shown  # the entry holds the chunks the fold kept after the cut
    assert again.response.cached and len(folds) == 1
    assert s.chat("one two three four five", "ollama").cached is False  # the cut try was never cached


def test_cache_down_still_answers_with_a_warning(make_session, ollama_server, caplog):
    s = make_session(ollama_server, cache={"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"})
    with caplog.at_level("WARNING", logger="farm_jupyter"):
        assert s.chat("hello").text == "Echo: hello"
    assert "cache redis is off: " in caplog.text and "tried again every 30 s" in caplog.text


# -- monitor --------------------------------------------------------------------------------------


def test_monitor_records_and_summarises(session, ollama_server):
    session.chat("a")
    session.chat("a")
    ollama_server.add_fault(Fault(kind="status", status=404, times=1, path="/api/chat"))
    with pytest.raises(ModelNotFound):
        session.chat("b", "ollama:gone", fallback=False)
    records = list(session._engine.monitor.records)
    assert [r.ok for r in records] == [True, True, False]
    assert records[1].cached and records[0].usage.completion_tokens > 0
    (summary,) = [m for m in session._engine.monitor.summary() if m.address == "ollama:llama3.1"]
    assert summary.requests == 2 and summary.cache_hits == 1 and summary.p50 is not None


def test_monitor_is_bounded(make_session, ollama_server):
    s = make_session(ollama_server, monitor_size=5)
    for i in range(12):
        s.chat(f"m{i}")
    assert len(s._engine.monitor.records) == 5


# -- cancellation ---------------------------------------------------------------------------------


def _connections_to(port: int) -> int:
    import psutil

    return sum(
        1 for c in psutil.net_connections("tcp") if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
    )


def test_cancelling_a_stream_leaves_nothing_behind(ollama_server):
    ollama_server.chunk_delay = 0.05
    ollama_server.tokens = 500
    s = make(ollama_server)
    threads_before = {t.ident for t in threading.enumerate()}
    it = iter(s.stream("long"))
    assert next(it).text
    it.close()  # what Ctrl-C does: the generator closes and cancels the request
    assert wait_until(lambda: s.aio.runtime.pending_tasks() == [])
    port = int(ollama_server.url.rsplit(":", 1)[1])
    assert wait_until(lambda: _connections_to(port) == 0)
    assert s.history.turns == []
    assert s.usage("cache")["entries"] == 0
    s.close()

    def ours() -> list[str]:  # threads this test started, other than the loopback server's own
        return [
            t.name
            for t in threading.enumerate()
            if t.ident not in threads_before and t.is_alive() and not t.name.startswith(("farm-ollama", "farm-runtime"))
        ]

    assert wait_until(lambda: ours() == []), ours()


def test_keyboard_interrupt_cancels_a_blocking_chat(make_session, ollama_server):
    import os
    import signal

    ollama_server.latency = 30  # uninterrupted, the chat would answer; the pytest timeout bounds a hang
    s = make_session(ollama_server)
    # A real SIGINT, as the kernel's interrupt sends: it must break the blocking wait.
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        s.chat("slow")
    assert wait_until(lambda: s.aio.runtime.pending_tasks() == [])
    ollama_server.latency = 0
    assert s.chat("after").text == "Echo: after"  # the session is still usable


# -- conversation ---------------------------------------------------------------------------------


def test_conversation_turns_and_failures(session, ollama_server):
    conv = session.history
    session.chat("first", conversation=conv, turn_id="cell-1")
    session.chat("second", conversation=conv, turn_id="cell-2")
    assert [t.user.content for t in conv.turns] == ["first", "second"]
    sent = ollama_server.requests[-1].json["messages"]
    assert [m["content"] for m in sent] == ["first", "Echo: first", "second"]

    session.chat("first again", conversation=conv, turn_id="cell-1")  # re-run replaces its turn
    assert [t.user.content for t in conv.turns] == ["first again", "second"]
    assert [m["content"] for m in ollama_server.requests[-1].json["messages"]] == ["first again"]

    ollama_server.refuse()
    with pytest.raises(AllProvidersFailed):
        session.chat("lost", "ollama", conversation=conv, turn_id="cell-3", fallback=False)
    assert [t.user.content for t in conv.turns] == ["first again", "second"]


# -- sync/async parity ----------------------------------------------------------------------------


def test_sync_and_async_twins_agree(session):
    sync = session.chat("parity", no_cache=True)
    asyn = asyncio.run(session.aio.chat("parity", no_cache=True))
    assert (sync.text, sync.provider, sync.model) == (asyn.text, asyn.provider, asyn.model)

    async def collect():
        return [c.text async for c in session.stream("parity", no_cache=True)]

    assert "".join(asyncio.run(collect())) == "".join(c.text for c in session.stream("parity", no_cache=True))


def test_unknown_model_without_fallback_is_one_line(make_session, ollama_server):
    s = make_session(ollama_server)
    with pytest.raises(ModelNotFound) as info:
        s.chat("x", "ollama:nosuch", fallback=False)
    assert "%farm pull nosuch" in str(info.value) and "\n" not in str(info.value)


# -- found in review ------------------------------------------------------------------------------


def test_a_probe_closed_early_does_not_wedge_the_breaker(make_session, ollama_server):
    ollama_server.tokens = 50
    s = make_session(ollama_server, breaker={"failures": 1, "cooldown": 0.2}, retry={"max_retries": 0})
    ollama_server.add_fault(Fault(kind="status", status=500, times=1, path="/api/chat"))
    with pytest.raises(AllProvidersFailed):
        s.chat("x", no_cache=True)
    time.sleep(0.25)
    it = iter(s.stream("probe", no_cache=True))  # the half-open probe...
    assert next(it).text
    it.close()  # ...closed by the caller after its first chunk
    assert s.chat("after", no_cache=True).provider == "ollama"


def test_a_fallback_answer_is_cached_under_the_provider_that_gave_it(make_session, ollama_server, openai_server):
    s = make_session(ollama_server, openai_server)
    ollama_server.refuse()
    assert s.chat("where from?").provider == "openai"
    ollama_server.accept()
    asked = ollama_server.count("/api/chat")
    answer = s.chat("where from?", "ollama:llama3.1", fallback=False)
    assert answer.provider == "ollama" and not answer.cached
    assert ollama_server.count("/api/chat") == asked + 1


def test_two_servers_of_one_provider_do_not_share_answers(tmp_path):
    shared = {"backend": "disk", "path": str(tmp_path / "shared.sqlite")}
    with OllamaServer(reply="from A") as a, OllamaServer(reply="from B") as b:
        first, second = make(a, cache=shared), make(b, cache=shared)
        assert first.chat("same question").text == "from A"
        assert second.chat("same question").text == "from B"
        assert (a.count("/api/chat"), b.count("/api/chat")) == (1, 1)
        first.close()
        second.close()


def test_rate_limit_answers_do_not_open_the_breaker(make_session, ollama_server, openai_server):
    s = make_session(ollama_server, openai_server, breaker={"failures": 1, "cooldown": 30}, retry={"max_retries": 0})
    ollama_server.add_fault(Fault(kind="status", status=429, times=1, path="/api/chat"))
    assert s.chat("busy", no_cache=True).provider == "openai"  # fell back...
    assert s._engine.router.breaker("ollama").state == "closed"  # ...without calling ollama unhealthy
    assert s.chat("busy again", no_cache=True).provider == "ollama"


@pytest.mark.parametrize(("header", "seconds"), [("2", 2.0), ("soon", None), ("", None), ("-3", 0.0)])
def test_retry_after_header_forms(header, seconds):
    from farm_jupyter.providers._http import retry_after

    assert retry_after({"retry-after": header}) == seconds


def test_token_budget_counts_requests_in_flight(make_session, ollama_server):
    ollama_server.latency = 0.5
    s = make_session(ollama_server, rate_limits={"ollama": {"tpm": 500}})

    async def go() -> str | None:
        busy = [asyncio.ensure_future(s.aio.chat(f"q{i}", no_cache=True, max_tokens=200)) for i in range(2)]
        await asyncio.sleep(0.2)  # both admitted (about 200 tokens booked each) and still in flight
        note = None
        async for chunk in s.stream("third", no_cache=True, max_tokens=200):
            note = chunk.status
            break  # it has to wait for the window: that is all this test needs to see
        await asyncio.gather(*busy)
        return note

    assert "rate limit" in (asyncio.run(go()) or "")


def test_result_of_a_stream_closed_early_is_a_clear_error(session):
    from farm_jupyter.errors import FarmError

    stream = session.stream("partial please", no_cache=True)
    for _ in stream:
        break
    with pytest.raises(FarmError, match="ended before its answer was complete"):
        stream.result()


def test_a_model_and_its_latest_tag_share_a_cache_entry(make_session, ollama_server):
    s = make_session(ollama_server)
    s.chat("tagged", "ollama:llama3.1")
    assert s.chat("tagged", "ollama:llama3.1:latest").cached
    assert ollama_server.count("/api/chat") == 1


def test_an_unknown_fallback_name_is_an_attempt_that_says_so(make_session, ollama_server):
    s = make_session(ollama_server, fallback=["nosuch"], retry={"max_retries": 0})
    ollama_server.refuse()
    with pytest.raises(AllProvidersFailed, match="no provider named 'nosuch'"):
        s.chat("x")


def test_first_token_and_total_deadlines(make_session, ollama_server):
    s = make_session(ollama_server, timeouts={"first_token": 0.3, "total": 1.0}, retry={"max_retries": 0})
    ollama_server.latency = 2.0  # nothing for two seconds
    with pytest.raises(AllProvidersFailed, match="first-token timeout"):  # else it would answer in 2 s
        s.chat("slow start", no_cache=True)
    ollama_server.latency = 0.0
    ollama_server.tokens, ollama_server.chunk_delay = 100, 0.05  # starts at once, takes 5 s in all
    stream = s.stream("slow stream", no_cache=True)
    with pytest.raises(AllProvidersFailed, match="total timeout"):  # else it would answer in 5 s
        for _ in stream:
            pass
    assert wait_until(lambda: s.aio.runtime.pending_tasks() == [])
