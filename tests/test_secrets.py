"""Configured secrets are masked wherever they turn up, with or without their prefix.

Servers here echo the credential they received (the `echo` fault of the loopback servers): in the
error body whole, without its `sk-` prefix, url-encoded and in part, and in WWW-Authenticate and
X-Echo-* headers. No 8-character piece of a secret may survive into an error (its whole `from`
chain included), an attempt, a health status, a log record at DEBUG or a cache file. The kernel and
saved-notebook side of the same scan is in test_security.py.
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from farm_jupyter import secrets
from farm_jupyter.config import load_settings
from farm_jupyter.errors import AllProvidersFailed, ConfigError, FarmError, ProviderError
from farm_jupyter.sessions import Session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer

KEY = "sk-proj-Zq7RtWm9XkVb3NcLp5HdJf2GsYa8Ue4"
HF = "hf_Mk4Rz9Qw2Lp7Xv3Nb8Tc5YdKe"
USER, PASSWORD = "alice", "Pw0rd/Tq8+Lm3=Xv9Rk2"  # characters that a URL has to encode
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
FORMS = [KEY, HF, PASSWORD, quote(PASSWORD, safe=""), BASIC]

pytestmark = pytest.mark.timeout(120)


def pieces(value: str) -> set[str]:
    return {value[i : i + 8] for i in range(len(value) - 7)}


ALL_PIECES = set().union(*(pieces(f) for f in FORMS))


def leaks(text: str) -> list[str]:
    return sorted(p for p in ALL_PIECES if p in text)


class Scan:
    """Everything a user or a log could see, with where it came from."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, value: Any) -> None:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif not isinstance(value, str):
            value = json.dumps(value, default=repr) if isinstance(value, dict | list | tuple) else repr(value)
        self.items.append((where, value))

    def error(self, where: str, error: BaseException) -> None:
        self.add(f"{where}: str", str(error))
        self.add(f"{where}: repr", repr(error))
        self.add(f"{where}: traceback, whole chain", "".join(traceback.format_exception(error)))
        if isinstance(error, AllProvidersFailed):
            self.add(f"{where}: attempts", [a.model_dump_json() for a in error.attempts])

    def check(self) -> None:
        found = {where: leaks(text) for where, text in self.items if leaks(text)}
        assert not found, f"secret pieces in: {found}"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.text.append(logging.Formatter("%(name)s %(message)s").format(record))


@pytest.fixture
def debug_logs() -> Iterator[Records]:
    """A handler at DEBUG on the root, and the HTTP libraries' loggers at DEBUG."""
    handler = Records()
    names = ["farm_jupyter", "httpx", "httpcore", "openai", "httpx2", "httpcore2"]
    old = {name: logging.getLogger(name).level for name in names}
    root = logging.getLogger()
    old_root = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_root)
    for name, level in old.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def servers() -> Iterator[tuple[OllamaServer, OpenAIServer]]:
    with OllamaServer(auth=(USER, PASSWORD)) as ollama, OpenAIServer(api_key=KEY) as openai:
        yield ollama, openai


def settings_for(ollama: OllamaServer, openai: OpenAIServer, tmp_path: Path, **extra: str) -> Any:
    """Settings as a user gets them: from environment variables (the seed's names for two)."""
    host = f"http://{USER}:{quote(PASSWORD, safe='')}@{ollama.host_port}"
    environ = {
        "OLLAMA_URL": host,
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": openai.base_url,
        "HUGGINGFACE_TOKEN": HF,
        "FARM_ENV": "test",
        "FARM_CACHE": f"disk:{tmp_path / 'cache.sqlite'}",
        **extra,
    }
    return load_settings({"retry": {"backoff": 0.01, "backoff_max": 0.02}}, environ=environ, use_file=False)


# -- redact ---------------------------------------------------------------------------------------


def test_redact_masks_every_form_and_piece() -> None:
    secrets.register(KEY)
    secrets.register_basic(USER, PASSWORD)
    bare = KEY.removeprefix("sk-proj-")
    for text in (
        f"key {KEY}",
        f"token={bare}",
        f"the key ...{KEY[10:20]}... is wrong",
        f"Authorization: Basic {BASIC}",
        f"password {PASSWORD}",
        f"encoded {quote(PASSWORD, safe='')}",
        f"{KEY}{KEY}",
        f"{bare},{PASSWORD}.",
    ):
        shown = secrets.redact(text)
        assert not leaks(shown), (text, shown)
    assert secrets.redact(f"token={bare}!") == f"token={secrets.mask(KEY)}!"
    assert secrets.redact(f"({KEY})") == f"({secrets.mask(KEY)})"
    assert secrets.redact("nothing secret here, sk-proj") == "nothing secret here, sk-proj"
    assert secrets.redact(KEY[:7]) == KEY[:7]  # 7 characters are not a leak


def test_short_secrets_are_masked_whole_only() -> None:
    secrets.register("hunt3r", "abc")  # 6 characters: whole; 3: never (it would mangle any text)
    assert secrets.redact("pw hunt3r, abc") == "pw ***, abc"
    assert secrets.redact("hunt") == "hunt"


def test_settings_register_every_configured_secret() -> None:
    load_settings(
        {
            "cache": {"redis_url": "redis://:redis-Pass-7781x@cache:6379/0"},
            "providers": {
                "vllm": {
                    "api_key": "vllm-Key-0042-abcd",
                    "base_url": "http://u:vllm-Url-Pass-93@h:1/v1",
                    "auth": {"client_secret": "nested-Secret-5501"},
                }
            },
        },
        environ={"HUGGINGFACE_TOKEN": "hf_Seed-Token-66201"},
        use_file=False,
    )
    for value in (
        "redis-Pass-7781x",
        "vllm-Key-0042-abcd",
        "vllm-Url-Pass-93",
        "nested-Secret-5501",
        "hf_Seed-Token-66201",
    ):
        assert value[2:10] not in secrets.redact(f"a server says {value[2:]}"), value
    assert (
        str(ConfigError("echo " + "vllm-Key-0042-abcd"[4:])) == "echo ...abcd"
    )  # an 18-character key keeps no prefix: it would be a piece of the key


def test_farm_error_redacts_its_message_and_the_chain_it_is_raised_from() -> None:
    secrets.register(KEY)
    try:
        try:
            raise ValueError(f"server said: token={KEY[8:]}")
        except ValueError as exc:
            raise ProviderError(f"failed with {KEY}", provider="x", hint=f"not {KEY[3:20]}") from exc
    except ProviderError as caught:
        error = caught
    assert not leaks(str(error)) and not leaks("".join(traceback.format_exception(error)))
    assert secrets.mask(KEY) in str(error)


def test_the_log_filter_redacts_children_of_the_http_loggers(debug_logs: Records) -> None:
    secrets.register(KEY)
    header = [(b"WWW-Authenticate", f'Bearer error_description="token={KEY[8:]}"'.encode())]
    logging.getLogger("httpcore.http11").debug("receive_response_headers.complete return_value=%r", header)
    logging.getLogger("openai._base_client").debug("HTTP Response: %s", {"x-echo": KEY})
    logging.getLogger("farm_jupyter.a_late_child").info("made after the filter went on: %s", KEY)
    try:
        raise RuntimeError(KEY)
    except RuntimeError:
        logging.getLogger("httpx").exception("with a traceback")
    assert len(debug_logs.records) == 4
    for record in debug_logs.records:
        assert not leaks(f"{record.getMessage()} {record.args!r} {record.exc_text}")
    assert not leaks("\n".join(debug_logs.text))
    assert "token=sk-" in debug_logs.records[0].getMessage()
    assert "RuntimeError: sk-" in debug_logs.text[-1]  # the traceback is there, masked


# -- a user:password in a URL ------------------------------------------------------------------------


def test_ollama_url_credentials_are_sent_and_never_shown(servers: Any, tmp_path: Path) -> None:
    ollama, openai = servers
    settings = settings_for(ollama, openai, tmp_path)
    assert settings.ollama.host == ollama.url and settings.ollama.password is not None
    shown = f"http://{USER}:***@{ollama.host_port}"
    assert settings.public()["ollama"]["host"] == shown and settings.public()["ollama"]["password"] == "***"
    session = Session(settings)
    try:
        answer = session.chat("hi", "ollama", fallback=False)
        assert answer.text == "Echo: hi"
        assert ollama.requests[-1].headers["authorization"] == f"Basic {BASIC}"
        (status,) = session.health(["ollama"])
        assert status.healthy and status.url == shown
    finally:
        session.close()

    wrong = settings_for(ollama, openai, tmp_path, OLLAMA_URL=f"http://{USER}:not-the-Password-42@{ollama.host_port}")
    session = Session(wrong)
    try:
        with pytest.raises(FarmError) as info:
            session.chat("hi", "ollama", fallback=False, no_cache=True)
        message = str(info.value)
        assert "401" in message and "\n" not in message and "not-the-Password" not in message
        assert f"{USER}:***@" in message
    finally:
        session.close()


def test_openai_base_url_credentials_are_basic_auth(tmp_path: Path) -> None:
    with OpenAIServer(api_key=None) as server:
        url = f"http://bob:{quote(PASSWORD, safe='')}@{server.host_port}/v1"
        settings = load_settings(
            {"provider": "openai"}, environ={"OPENAI_BASE_URL": url, "FARM_ENV": "test"}, use_file=False
        )
        session = Session(settings)
        try:
            assert session.chat("hi", "openai", fallback=False).text == "Echo: hi"
            sent = base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
            assert server.requests[-1].headers["authorization"] == f"Basic {sent}"
            assert session.health(["openai"])[0].url == f"http://bob:***@{server.host_port}/v1"
        finally:
            session.close()
        both = load_settings(
            {"provider": "openai"}, environ={"OPENAI_BASE_URL": url, "OPENAI_API_KEY": KEY}, use_file=False
        )
        session = Session(both)
        try:
            with pytest.raises(ConfigError, match="user:password and an API key") as info:
                session.chat("hi", "openai", fallback=False)
            assert "\n" not in str(info.value) and not leaks(str(info.value))
        finally:
            session.close()


# -- servers that echo the credential -------------------------------------------------------------


def test_echoed_credentials_reach_no_error_attempt_health_log_or_cache(
    servers: Any, tmp_path: Path, debug_logs: Records
) -> None:
    ollama, openai = servers
    scan = Scan()
    session = Session(settings_for(ollama, openai, tmp_path, FARM_FALLBACK="ollama"))
    try:
        for path in ("/v1/chat/completions", "/v1/models", "/v1/embeddings"):
            openai.add_fault(Fault("echo", path=path, status=401, times=None))
        failures = {
            "openai chat": lambda: session.chat("one", "openai", fallback=False),
            "openai stream": lambda: list(session.stream("two", "openai", fallback=False)),
            "openai models": lambda: session.models("openai"),
            "openai embed": lambda: session.embed(["three"], "openai:text-embedding-3-small"),
        }
        for where, call in failures.items():
            with pytest.raises(FarmError) as info:
                call()
            assert "\n" not in str(info.value)
            scan.error(where, info.value)
        scan.add("openai health", [s.model_dump_json() for s in session.health(["openai"])])

        # Fallen back from (a 401 is the caller's and never falls back; a 503 does): the echo is in
        # the answer's attempts, and the answer is cached.
        openai.clear()
        for path in ("/v1/chat/completions", "/v1/models", "/v1/embeddings"):
            openai.add_fault(Fault("echo", path=path, status=503, times=None))
        answer = session.chat("four", "openai")
        assert answer.text == "Echo: four" and answer.attempts and not answer.attempts[0].ok
        assert secrets.mask(KEY) in (answer.attempts[0].error or "")  # the echo arrived, masked
        scan.add("answer after fallback", answer.model_dump_json())
        streamed = session.stream("five", "openai")
        scan.add("streamed chunks", [repr(c) for c in streamed])
        assert streamed.response is not None
        scan.add("streamed answer", streamed.response.model_dump_json())

        for path in ("/api/chat", "/api/tags", "/api/version", "/api/embed"):
            ollama.add_fault(Fault("echo", path=path, status=401, times=None))
        for where, call in {
            "ollama chat": lambda: session.chat("six", "ollama", fallback=False, no_cache=True),
            "ollama stream": lambda: list(session.stream("seven", "ollama", fallback=False, no_cache=True)),
            "ollama models": lambda: session.models("ollama"),
            "ollama embed": lambda: session.embed(["eight"], "ollama:llama3.1"),
            "every provider": lambda: session.chat("nine", "openai", no_cache=True),
        }.items():
            with pytest.raises(FarmError) as info:
                call()
            scan.error(where, info.value)
        scan.add("ollama health", [s.model_dump_json() for s in session.health()])
        records = session._engine.monitor.records
        scan.add("monitor", [repr(r) for r in records])
        assert sum(f.hits for f in openai.faults + ollama.faults) >= 10
    finally:
        session.close()
    for record in debug_logs.records:
        scan.add(f"log {record.name}", f"{record.getMessage()} {record.args!r} {record.exc_text or ''}")
    scan.add("formatted logs", "\n".join(debug_logs.text))
    assert any(r.name.startswith("httpcore") for r in debug_logs.records)
    assert any("WWW-Authenticate" in t or "www-authenticate" in t for t in debug_logs.text)  # headers were logged
    files = [p for p in tmp_path.iterdir() if p.name.startswith("cache.sqlite")]
    assert files and b"Echo: four" in (tmp_path / "cache.sqlite").read_bytes()
    for path in files:
        scan.add(f"cache file {path.name}", path.read_bytes())
    scan.check()
