"""Failures classed right at the edges (issue 21): a server that is not Ollama (or not
OpenAI-compatible) at the configured URL is an availability failure that falls back, announced, and
counts for the breaker; `%farm health` says it in one line. A bare model name is looked up in every
configured provider; a mistyped one is still never a reason to fall back."""

from __future__ import annotations

from typing import Any

import pytest

from farm_jupyter.errors import AllProvidersFailed, AuthenticationError, ModelNotFound, WrongServer
from farm_jupyter.sessions import Session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import loopback_settings

pytestmark = pytest.mark.timeout(120)

# What answers at the URL instead: a web server's 404 page, an empty 404, an API that is not this one.
FOREIGN = {
    "html": {"kind": "foreign", "status": 404},
    "empty": {"kind": "foreign", "status": 404, "text": ""},
    "other json": {"kind": "status", "status": 404, "body": {"detail": "Not Found"}},
    "html 200": {"kind": "foreign", "status": 200},
    "other json 200": {"kind": "status", "status": 200, "body": {"detail": "OK"}},
}


def _foreign(server: Any, how: str) -> None:
    server.add_fault(Fault(**FOREIGN[how], times=None))


def _one_line(text: str | None) -> str:
    assert text and "\n" not in text and "<" not in text, text
    return text


@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("how", list(FOREIGN))
def test_not_an_ollama_server_falls_back_announced_and_opens_the_breaker(
    ollama_server: OllamaServer, openai_server: OpenAIServer, how: str, streamed: bool
) -> None:
    _foreign(ollama_server, how)
    s = Session(loopback_settings(ollama_server, openai_server))
    try:
        answer = s.stream("hi", no_cache=True).result() if streamed else s.chat("hi", no_cache=True)
        assert answer.provider == "openai" and answer.text == "Echo: hi"
        assert answer.notice == "ollama found another kind of server at its URL: answered by openai:gpt-4o-mini"
        assert ollama_server.count("/api/chat") == 1  # not retried: it would get the same page
        failed = answer.attempts[0]
        assert failed.error_type == "WrongServer"
        assert failed.error.startswith(f"not an Ollama server at {ollama_server.url}: POST /api/chat answered")
        assert s._engine.router.breaker("ollama").failures == 1
        for i in range(2):
            s.chat(f"again {i}", no_cache=True)
        assert s._engine.router.breaker("ollama").state == "open"
        s.chat("once more", no_cache=True)
        assert ollama_server.count("/api/chat") == 3  # the open breaker keeps it from being asked
        [row] = s.health(["ollama"])
        assert _one_line(row.error).startswith(f"not an Ollama server at {ollama_server.url}: GET /api/")
    finally:
        s.close()


@pytest.mark.parametrize("how", ["html", "empty", "other json"])  # an SDK's 200 is the SDK's to parse
def test_not_an_openai_compatible_server_falls_back_announced(
    ollama_server: OllamaServer, openai_server: OpenAIServer, how: str
) -> None:
    _foreign(openai_server, how)
    settings = loopback_settings(ollama_server, openai_server, provider="openai", fallback=["ollama"])
    s = Session(settings)
    try:
        answer = s.chat("hi", no_cache=True)
        assert answer.provider == "ollama" and answer.text == "Echo: hi"
        assert answer.notice == "openai found another kind of server at its URL: answered by ollama:llama3.1"
        assert openai_server.count("/v1/chat/completions") == 1
        assert answer.attempts[0].error.startswith(
            f"not an OpenAI-compatible server at {openai_server.base_url}: POST /v1/chat/completions answered 404"
        )
        [row] = s.health(["openai"])
        assert _one_line(row.error).startswith(f"not an OpenAI-compatible server at {openai_server.base_url}")
    finally:
        s.close()


def test_in_a_pool_the_foreign_server_is_passed_over_for_its_sibling() -> None:
    with OllamaServer() as good, OllamaServer() as bad:
        _foreign(bad, "html")
        s = Session(loopback_settings(good, ollama={"hosts": [bad.url, good.url]}, retry={"max_retries": 0}))
        try:
            answers = [s.chat(f"q{i}", no_cache=True) for i in range(4)]
            assert all(a.provider == "ollama" and a.notice is None for a in answers)
            assert bad.count("/api/chat") == 1 and good.count("/api/chat") == 4
            rows = {r.url: r for r in s.health(["ollama"])}
            assert _one_line(rows[bad.url].error).startswith(f"not an Ollama server at {bad.url}")
            assert rows[good.url].state == "healthy"
        finally:
            s.close()


def test_alone_it_is_one_line_that_says_what_to_check(ollama_server: OllamaServer) -> None:
    _foreign(ollama_server, "html")
    s = Session(loopback_settings(ollama_server))
    try:
        with pytest.raises(AllProvidersFailed) as info:
            s.chat("hi", no_cache=True)
        assert isinstance(info.value.last, WrongServer)
        text = _one_line(str(info.value))
        assert text == (
            f"not an Ollama server at {ollama_server.url}: POST /api/chat answered 404 with an HTML page: "
            "point OLLAMA_HOST (or [ollama] host) at `ollama serve` (port 11434 unless set otherwise)"
        )
    finally:
        s.close()


def test_a_real_missing_model_is_still_the_callers_error(ollama_server: OllamaServer) -> None:
    s = Session(loopback_settings(ollama_server))
    try:
        with pytest.raises(ModelNotFound, match=r'ollama has no model "llama3".*did you mean llama3.1:latest\?'):
            s.chat("hi", "ollama:llama3", no_cache=True)
        assert s._engine.router.breaker("ollama").failures == 0
    finally:
        s.close()


def test_a_bare_name_is_looked_up_in_every_configured_provider(
    ollama_server: OllamaServer, openai_server: OpenAIServer
) -> None:
    s = Session(loopback_settings(ollama_server, openai_server))
    try:
        with pytest.raises(ModelNotFound) as info:
            s.chat("hi", "gpt-4o-mini", no_cache=True)
        assert str(info.value) == 'ollama has no model "gpt-4o-mini": did you mean openai:gpt-4o-mini?'
        # A mistyped (here: misplaced) model is never a reason to fall back.
        assert openai_server.count("/v1/chat/completions") == 0
        assert openai_server.count("/v1/models") == 1
        # Named with its provider, nothing else is asked.
        with pytest.raises(ModelNotFound) as info:
            s.chat("hi", "ollama:gpt-4o-mini", no_cache=True)
        assert "openai:" not in str(info.value) and openai_server.count("/v1/models") == 1
    finally:
        s.close()


def test_no_close_match_lists_what_the_provider_has(ollama_server: OllamaServer, openai_server: OpenAIServer) -> None:
    s = Session(loopback_settings(ollama_server, openai_server))
    try:
        with pytest.raises(ModelNotFound) as info:
            s.chat("hi", "zzzz", no_cache=True)
        assert str(info.value) == (
            'ollama has no model "zzzz": ollama has llama3.1:latest, qwen2.5:0.5b; pull it with `%farm pull zzzz`'
        )
    finally:
        s.close()


def test_a_proxys_own_pages_are_said_for_what_they_are(
    ollama_server: OllamaServer, openai_server: OpenAIServer
) -> None:
    # A 502 page from a proxy whose Ollama is down is the server's trouble (retried, then fallen
    # back from); a proxy's 401 page is the caller's (no fallback). Neither shows the page.
    ollama_server.add_fault(Fault("foreign", status=502, times=None))
    s = Session(loopback_settings(ollama_server, openai_server))
    try:
        answer = s.chat("hi", no_cache=True)
        assert answer.provider == "openai" and ollama_server.count("/api/chat") == 3
        failed = answer.attempts[0]
        assert failed.error_type == "ServerError" and failed.retries == 2
        assert _one_line(failed.error).startswith(f"Ollama at {ollama_server.url} answered 502: an HTML page")
        ollama_server.clear()
        ollama_server.add_fault(Fault("foreign", status=401, times=None))
        with pytest.raises(AuthenticationError) as info:
            s.chat("hi again", no_cache=True)
        assert _one_line(str(info.value)).startswith(f"Ollama at {ollama_server.url} answered 401: an HTML page")
        assert openai_server.count("/v1/chat/completions") == 1  # only the first question's fallback
    finally:
        s.close()
