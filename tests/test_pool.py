"""Several servers for one provider (issue 17): least busy first, one breaker per server, a dead
server loses no request. Three real loopback servers; assertions on their request logs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from farm_jupyter.sessions import Session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import loopback_settings
from farm_jupyter.testing.servers import TEST_API_KEY

pytestmark = pytest.mark.timeout(120)
CHAT = "/api/chat"


@pytest.fixture
def three():
    servers = [OllamaServer().start() for _ in range(3)]
    yield servers
    for srv in servers:
        srv.stop()


def pooled(servers, **overrides) -> Session:
    settings = loopback_settings(servers[0], ollama={"hosts": [s.url for s in servers]}, **overrides)
    return Session(settings)


def ask_all(s: Session, n: int, *, streamed: bool = False):
    async def one(i: int):
        if streamed:
            return await s.stream(f"q{i}", "ollama", no_cache=True).aresult()
        return await s.aio.chat(f"q{i}", "ollama", no_cache=True)

    async def many():
        return await asyncio.gather(*(one(i) for i in range(n)))

    return asyncio.run(many())


def test_three_servers_share_the_load_least_busy_first(three):
    # Every server answers only once all 30 requests are in flight: the spread is then decided by
    # the picks alone, and least-busy-first spreads 30 over 3 evenly.
    barrier = threading.Barrier(30, timeout=30)
    for srv in three:
        srv.reply = lambda body: (barrier.wait(), "Echo: " + body["messages"][-1]["content"])[1]
    s = pooled(three, retry={"max_retries": 0})
    answers = ask_all(s, 30)
    assert [a.text for a in answers] == [f"Echo: q{i}" for i in range(30)]
    assert [srv.count(CHAT) for srv in three] == [10, 10, 10]
    rows = s.health(["ollama"])
    assert sorted(r.url for r in rows) == sorted(srv.url for srv in three)
    s.close()


def test_a_server_killed_mid_run_loses_nothing_and_its_breaker_opens_alone(three):
    for srv in three:
        srv.tokens, srv.chunk_delay = 20, 0.01
    victim = three[1]
    victim.add_fault(Fault(kind="drop", after=3, times=None, path=CHAT))  # dies mid-answer, every time
    s = pooled(three)
    answers = ask_all(s, 30, streamed=True)  # streamed: a cut comes after text was shown
    assert all(a.text == "".join(f"tok{i} " for i in range(20)) for a in answers)
    assert sum(srv.count(CHAT) for srv in three) == 30 + victim.count(CHAT)
    assert all(a.provider == "ollama" and a.notice is None for a in answers)  # no other provider
    cut = [a for a in answers if a.restarted]
    # Each answer it cut was finished elsewhere; one may have been cut twice before its breaker opened.
    assert 1 <= len(cut) <= victim.count(CHAT)
    pool = s._engine.router.provider("ollama")
    states = {m.provider.url: m.breaker.state for m in pool.members}  # type: ignore[attr-defined]
    assert states[victim.url] == "open"
    assert [states[srv.url] for srv in three if srv is not victim] == ["closed", "closed"]
    assert s._engine.router.breaker("ollama").state == "closed"  # the provider as a whole stays up
    health = {r.url: r.state for r in s.health(["ollama"])}
    assert health[victim.url] in ("cooling_down", "unhealthy")
    assert [health[srv.url] for srv in three if srv is not victim] == ["healthy", "healthy"]
    s.close()


def test_openai_compatible_base_urls_pool_too():
    servers = [OpenAIServer(api_key=TEST_API_KEY).start() for _ in range(2)]
    try:
        s = Session(
            loopback_settings(
                None,
                servers[0],
                openai={"base_urls": [srv.url + "/v1" for srv in servers]},
            )
        )
        servers[0].refuse()
        answers = [s.chat(f"q{i}", "openai", no_cache=True) for i in range(4)]
        assert all(a.text.startswith("Echo: q") and a.notice is None for a in answers)
        assert servers[1].count("/v1/chat/completions") == 4
        s.close()
    finally:
        for srv in servers:
            srv.stop()
