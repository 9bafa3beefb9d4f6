"""The Jupyter server extension over real HTTP.

One `jupyter server` runs in a subprocess for the module, started the way a user's is: the
extension enabled by the shipped jupyter-config file, a farm.toml in its working directory, and
OLLAMA_HOST / OPENAI_BASE_URL / FARM_ENV / FARM_FALLBACK / FARM_CACHE in its environment pointing
at loopback servers in this process. Each test talks to it with httpx and the server's token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from farm_jupyter.errors import ConfigError
from farm_jupyter.magics.ollama_serve import stop_process
from farm_jupyter.server.schema import (
    ChatBody,
    ErrorBody,
    HealthResponse,
    LoadStarted,
    LoadStatus,
    ModelsResponse,
    StatsResponse,
    json_schema,
    write_schema,
)
from farm_jupyter.server.typescript import SchemaError, typescript
from farm_jupyter.sessions import Session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY, loopback_settings
from farm_jupyter.types import ChatResponse, GenerationOptions, GenerationParams, GPUStats

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "/farm-test/"
STARTUP_LIMIT = 60.0
FARM_TOML = """\
[retry]
backoff = 0.01
backoff_max = 0.05

[timeouts]
connect = 2.0
first_token = 10.0
total = 30.0

[breaker]
failures = 1000  # fault tests must not open the circuit for the tests after them

[aliases]
small = "ollama:qwen2.5:0.5b"
"""

MAX_LOAD_JOBS = 4
OTHER_EXTENSIONS = ("jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals")
ROUTES = [
    ("POST", "chat"),
    ("POST", "chat/stream"),
    ("GET", "complete"),
    ("POST", "complete"),
    ("GET", "models"),
    ("GET", "health"),
    ("POST", "models/llama3.1/load"),
    ("GET", "models/llama3.1/load"),
    ("POST", "models/llama3.1/unload"),
    ("GET", "stats"),
    ("GET", "gpu"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_environ() -> dict[str, str]:
    """This process's environment without any farm, provider or Jupyter path settings."""
    prefixes = ("FARM_", "OLLAMA_", "OPENAI_", "HF_", "JUPYTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _jupyter_dirs(tmp: Path) -> dict[str, str]:
    """JUPYTER_* folders under `tmp`; the config folder is a copy of the package's jupyter-config/."""
    config = tmp / "jupyter-config"
    shutil.copytree(ROOT / "jupyter-config", config)
    return {
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }


@dataclass
class JupyterServer:
    proc: subprocess.Popen[bytes]
    port: int
    token: str
    cache_path: Path
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_URL}farm-jupyter/api/"

    def client(self, token: str | None = "default", **kwargs: Any) -> httpx.Client:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"token {token}"} if token else {}
        kwargs.setdefault("timeout", 20.0)
        return httpx.Client(base_url=self.api, headers=headers, trust_env=False, **kwargs)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def _start_jupyter(
    tmp: Path,
    ollama: OllamaServer,
    openai: OpenAIServer | None = None,
    cache: str | None = None,
    toml: str = FARM_TOML,
    args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    launcher: tuple[str, ...] = ("-m", "jupyter_server"),
) -> JupyterServer:
    (tmp / "farm.toml").write_text(toml)
    cache_path = tmp / "cache" / "responses.sqlite"
    env = (
        _clean_environ()
        | _jupyter_dirs(tmp)
        | {
            "OLLAMA_HOST": ollama.url,
            "FARM_ENV": "test",
            "FARM_FALLBACK": "",
            "FARM_CACHE": cache or f"disk:{cache_path}",
        }
    )
    if openai is not None:
        env |= {"OPENAI_BASE_URL": openai.base_url, "OPENAI_API_KEY": TEST_API_KEY}
    env |= extra_env or {}
    token = os.urandom(12).hex()
    log = tmp / "jupyter.log"
    for _ in range(3):  # the free port can be taken between our probe and the server's bind
        port = _free_port()
        cmd = [
            sys.executable,
            *launcher,
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={BASE_URL}",
            f"--ServerApp.root_dir={tmp}",
            f"--IdentityProvider.token={token}",
            "--allow-root",
            # The other installed server extensions cost 3 s a start; ours stays enabled by its config file.
            "--ServerApp.jpserver_extensions=" + repr(dict.fromkeys(OTHER_EXTENSIONS, False)),
            *args,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        server = JupyterServer(proc, port, token, cache_path, log)
        deadline = time.monotonic() + STARTUP_LIMIT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with server.client() as client:
                    if client.get("stats").status_code == 200:
                        return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        _stop(proc)
        if "already in use" not in server.log_tail():
            break
    pytest.fail(f"jupyter server did not start:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)  # terminate, wait, kill: as `%farm ollama stop` does


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer() as server:
        yield server


@pytest.fixture(scope="module")
def slow_openai() -> Iterator[OpenAIServer]:
    """Only the disconnect tests use it: its connections are theirs alone."""
    with OpenAIServer(api_key=TEST_API_KEY, tokens=400, chunk_delay=0.05) as server:
        yield server


@pytest.fixture(scope="module")
def jupyter(
    tmp_path_factory: pytest.TempPathFactory, ollama: OllamaServer, slow_openai: OpenAIServer
) -> Iterator[JupyterServer]:
    server = _start_jupyter(
        tmp_path_factory.mktemp("jupyter"), ollama, slow_openai, args=(f"--FarmServer.max_load_jobs={MAX_LOAD_JOBS}",)
    )
    yield server
    _stop(server.proc)
    # Cancelled streams and failed providers must leave no traceback behind in the server's log.
    log = server.log.read_text(errors="replace")
    for sign in ("Traceback", "Exception in callback", "Task was destroyed", "never retrieved"):
        assert sign not in log, f"{sign!r} in the Jupyter server's log:\n{log[-4000:]}"


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> Iterator[None]:
    if "jupyter" not in request.fixturenames:
        yield
        return
    upstream: OllamaServer = request.getfixturevalue("ollama")
    upstream.clear()
    yield
    upstream.clear()
    upstream.chunk_delay, upstream.tokens = 0.0, None


@pytest.fixture
def api(jupyter: JupyterServer) -> Iterator[httpx.Client]:
    with jupyter.client() as client:
        yield client


@dataclass
class Event:
    name: str
    data: str
    at: float

    def json(self) -> Any:
        return json.loads(self.data)


def read_events(lines: httpx.Response | Iterator[str], limit: int | None = None) -> list[Event]:
    """Parse server-sent events as they arrive (line by line, timestamped).

    With a `limit`, pass `response.iter_lines()` and keep it: httpx closes the connection when a
    line iterator is dropped part-way, which is a client disconnect.
    """
    events: list[Event] = []
    name, data = "message", []
    for line in lines.iter_lines() if isinstance(lines, httpx.Response) else lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            events.append(Event(name, "\n".join(data), time.monotonic()))
            name, data = "message", []
            if limit is not None and len(events) >= limit:
                break
    return events


def error_of(response: httpx.Response) -> ErrorBody:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return ErrorBody.model_validate_json(response.content)


def _stats(api: httpx.Client) -> StatsResponse:
    return StatsResponse.model_validate_json(api.get("stats").content)


def _wait_for(condition: Any, limit: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit:
            pytest.fail(f"{what} did not happen within {limit} s")
        time.sleep(0.02)
    return time.monotonic() - start


# -- install ----------------------------------------------------------------------------------


def test_jupyter_config_enables_the_extension(tmp_path: Path) -> None:
    shipped = json.loads((ROOT / "jupyter-config/jupyter_server_config.d/farm_jupyter.json").read_text())
    assert shipped == {"ServerApp": {"jpserver_extensions": {"farm_jupyter.server": True}}}
    jupyter_bin = Path(sys.executable).with_name("jupyter")
    result = subprocess.run(
        [str(jupyter_bin), "server", "extension", "list"],
        env=_clean_environ() | _jupyter_dirs(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    listing = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert re.search(r"farm_jupyter\.server\s+enabled", listing), listing
    assert re.search(r"farm_jupyter\.server\s+OK", listing), listing


def test_the_wheel_installs_the_config_file() -> None:
    """pip install puts the file where Jupyter looks ({sys.prefix}/etc/jupyter/...)."""
    installed = Path(sys.prefix, "etc/jupyter/jupyter_server_config.d/farm_jupyter.json")
    assert installed.is_file(), f"{installed} is missing: reinstall the package (pip install -e .)"
    shipped = ROOT / "jupyter-config/jupyter_server_config.d/farm_jupyter.json"
    assert json.loads(installed.read_text()) == json.loads(shipped.read_text())


# -- auth and validation ----------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_every_route_needs_the_servers_token(jupyter: JupyterServer, ollama: OllamaServer, token: str | None) -> None:
    with jupyter.client(token=token) as client:
        for method, path in ROUTES:
            response = client.request(method, path, json={"prompt": "hi"} if method == "POST" else None)
            assert response.status_code == 403, (method, path, response.text)
            assert error_of(response).error.startswith("not authenticated: send the Jupyter server's token")
    assert ollama.count() == 0


@pytest.mark.parametrize("path", ["chat", "chat/stream"])
@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({}, "messages", "give a `prompt` or a list of `messages`"),
        ({"prompt": "   "}, "prompt", "the prompt is empty"),
        ({"prompt": 3}, "prompt", "valid string"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "messages", "not both"),
        ({"messages": [{"role": "robot", "content": "y"}]}, "messages.0.role", "'user'"),
        ({"messages": [{"role": "system", "content": "y"}]}, "messages", "no user message"),
        ({"prompt": "x", "params": {"temperature": 9}}, "params.temperature", "less than or equal to 2"),
        ({"prompt": "x", "temprature": 0.5}, "temprature", "unknown field"),
        ({"prompt": "x", "model": 5}, "model", "valid string"),
        ("not json", None, "Invalid JSON"),
        ([1, 2], None, "should be an object"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    api: httpx.Client, ollama: OllamaServer, path: str, body: Any, field: str | None, words: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = api.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error.field == field
    assert words in error.error
    assert "\n" not in error.error
    assert ollama.count() == 0


def test_unknown_provider_is_400_naming_the_query_field(api: httpx.Client) -> None:
    response = api.get("models", params={"provider": "nosuch"})
    assert response.status_code == 400
    error = error_of(response)
    assert (error.field, error.type) == ("provider", "UnknownProvider")
    assert "nosuch" in error.error


# -- chat -------------------------------------------------------------------------------------


def test_chat_answers_and_then_answers_from_the_cache(api: httpx.Client, ollama: OllamaServer) -> None:
    response = api.post("chat", json={"prompt": "hello over http"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = ChatResponse.model_validate_json(response.content)
    assert answer.text == "Echo: hello over http"
    assert (answer.provider, answer.model, answer.cached) == ("ollama", "llama3.1", False)
    assert answer.usage.completion_tokens == 4 and answer.usage.prompt_tokens == 3
    assert answer.timings.total > 0 and answer.timings.first_token is not None
    assert [(a.provider, a.ok) for a in answer.attempts] == [("ollama", True)]

    again = ChatResponse.model_validate_json(api.post("chat", json={"prompt": "hello over http"}).content)
    assert again.cached and again.text == answer.text
    assert ollama.count("/api/chat") == 1

    fresh = ChatResponse.model_validate_json(
        api.post("chat", json={"prompt": "hello over http", "refresh": True}).content
    )
    assert not fresh.cached
    assert ollama.count("/api/chat") == 2


def test_chat_takes_messages_system_params_and_aliases_from_farm_toml(api: httpx.Client, ollama: OllamaServer) -> None:
    body = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "Echo: first"},
            {"role": "user", "content": "second"},
        ],
        "system": "be brief",
        "model": "small",  # an alias defined in the server's farm.toml
        "params": {"temperature": 0.2, "max_tokens": 1},
        "no_cache": True,
    }
    response = api.post("chat", json=body)
    assert response.status_code == 200, response.text
    answer = ChatResponse.model_validate_json(response.content)
    assert (answer.model, answer.text, answer.finish_reason) == ("qwen2.5:0.5b", "Echo: ", "length")
    sent = ollama.requests[-1].json
    assert sent is not None
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][0]["content"] == "be brief"
    assert sent["options"] == {"temperature": 0.2, "num_predict": 1}


def test_a_missing_model_is_404_with_the_closest_names(api: httpx.Client, ollama: OllamaServer) -> None:
    for path in ("chat", "chat/stream"):
        response = api.post(path, json={"prompt": "hi", "model": "ollama:llama3.2"})
        assert response.status_code == 404, response.text
        error = error_of(response)
        assert (error.type, error.field) == ("ModelNotFound", "model")
        assert 'no model "llama3.2"' in error.error and "llama3.1" in error.error and "\n" not in error.error


def test_provider_failure_is_502_with_the_one_line_message(api: httpx.Client, ollama: OllamaServer) -> None:
    ollama.add_fault(Fault("status", path="/api/chat", status=503, times=None))
    response = api.post("chat", json={"prompt": "hi", "no_cache": True})
    assert response.status_code == 502, response.text
    error = error_of(response)
    assert error.type in ("ServerError", "AllProvidersFailed") and "503" in error.error
    assert "\n" not in error.error
    # The stream has spoken already (headers, a status per try): the failure is its error event.
    with api.stream("POST", "chat/stream", json={"prompt": "hi", "no_cache": True}) as response:
        assert response.status_code == 200
        events = read_events(response)
    statuses = [e.json()["status"] for e in events if e.name == "message" and e.data.startswith('{"status"')]
    assert statuses[0] == "asking ollama:llama3.1" and "retrying" in statuses[1]
    failed = [ErrorBody.model_validate_json(e.data) for e in events if e.name == "error"]
    assert len(failed) == 1 and "503" in failed[0].error and "\n" not in failed[0].error
    assert events[-1].data == "[DONE]"


# -- the stream -------------------------------------------------------------------------------


def test_stream_arrives_incrementally_then_done_then_DONE(api: httpx.Client, ollama: OllamaServer) -> None:
    ollama.tokens, ollama.chunk_delay = 20, 0.05
    with api.stream("POST", "chat/stream", json={"prompt": "count", "no_cache": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = read_events(response)
    assert events[0].json() == {"status": "asking ollama:llama3.1"}  # said before the model answers
    texts = [e for e in events if e.name == "message" and '"text"' in e.data]
    assert "".join(e.json()["text"] for e in texts) == "".join(f"tok{i} " for i in range(20))
    # 20 chunks 50 ms apart: each was flushed when it came, not all at the end.
    assert texts[-1].at - texts[0].at > 0.5
    done = [e for e in events if e.name == "done"]
    assert len(done) == 1
    final = ChatResponse.model_validate_json(done[0].data)
    assert final.usage.completion_tokens == 20 and final.timings.total > 0.5 and final.attempts[0].ok
    assert events[-1].data == "[DONE]" and events[-2].name == "done"


def test_stream_says_restart_when_a_broken_stream_is_retried(api: httpx.Client, ollama: OllamaServer) -> None:
    ollama.add_fault(Fault("drop", path="/api/chat", after=2))
    with api.stream("POST", "chat/stream", json={"prompt": "one two three four", "no_cache": True}) as response:
        assert response.status_code == 200
        events = read_events(response)
    data = [e.json() for e in events if e.name == "message" and e.data != "[DONE]"]
    restart = data.index({"restart": True})
    assert [d["text"] for d in data[:restart] if "text" in d] == ["Echo: ", "one "]
    assert "retrying ollama" in data[restart + 1]["status"]  # the restart says why, then what comes next
    assert "".join(d["text"] for d in data[restart:] if "text" in d) == "Echo: one two three four"
    final = ChatResponse.model_validate_json(next(e.data for e in events if e.name == "done"))
    assert final.restarted and final.text == "Echo: one two three four"
    assert final.attempts[0].retries == 1


def test_stream_failure_after_text_is_an_error_event(api: httpx.Client, ollama: OllamaServer) -> None:
    ollama.add_fault(Fault("error_line", path="/api/chat", after=1, times=None))
    with api.stream("POST", "chat/stream", json={"prompt": "a b c", "no_cache": True}) as response:
        assert response.status_code == 200
        events = read_events(response)
    assert [e.json() for e in events[:2]] == [{"status": "asking ollama:llama3.1"}, {"text": "Echo: "}]
    errors = [e for e in events if e.name == "error"]
    assert len(errors) == 1 and not any(e.name == "done" for e in events)
    error = ErrorBody.model_validate_json(errors[0].data)
    assert error.type == "AllProvidersFailed" and error.attempts and error.attempts[0].retries == 2
    assert events[-1].data == "[DONE]"


def _established(jupyter: JupyterServer, upstream: OpenAIServer) -> int:
    """Open connections from the Jupyter server to `upstream` (only the disconnect tests use it)."""
    port = int(upstream.host_port.rsplit(":", 1)[1])
    return sum(
        1
        for c in psutil.Process(jupyter.proc.pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


SLOW = {"prompt": "talk for 20 seconds", "model": "openai:gpt-4o-mini", "no_cache": True}  # 400 tokens, 50 ms apart


def test_client_disconnect_mid_stream_cancels_the_upstream_request(
    jupyter: JupyterServer, api: httpx.Client, slow_openai: OpenAIServer
) -> None:
    before = slow_openai.count("/v1/chat/completions")
    with jupyter.client() as client, client.stream("POST", "chat/stream", json=SLOW) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # held: dropping a line iterator closes the connection
        assert len(read_events(lines, limit=3)) == 3
        assert _stats(api).in_flight == 1
        streaming = _established(jupyter, slow_openai)
        assert streaming >= 1
    # The whole answer would take 20 s; the server lets go of it at once.
    _wait_for(lambda: _stats(api).in_flight == 0, 5.0, "the server dropping the request")
    _wait_for(lambda: _established(jupyter, slow_openai) < streaming, 5.0, "the upstream connection closing")
    assert slow_openai.count("/v1/chat/completions") == before + 1  # cancelled, not retried


def test_client_disconnect_cancels_a_plain_chat_too(
    jupyter: JupyterServer, api: httpx.Client, slow_openai: OpenAIServer
) -> None:
    """The request is sent by hand on a socket, closed once the upstream request has begun (a client
    read timeout raced the server's first OpenAI request on a loaded machine, and won)."""
    url = httpx.URL(jupyter.api).join("chat")
    body = json.dumps(SLOW).encode()
    head = (
        f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: token {jupyter.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((url.host, url.port), timeout=20) as conn:
        conn.sendall(head.encode() + body)
        _wait_for(lambda: _stats(api).in_flight == 1, 20.0, "the request reaching the server")
        _wait_for(
            lambda: slow_openai.count("/v1/chat/completions") > 0 and _established(jupyter, slow_openai) > 0,
            20.0,
            "the upstream request starting",
        )
        asking = _established(jupyter, slow_openai)
    # The whole answer would take 20 s; the server lets go of it at once.
    _wait_for(lambda: _stats(api).in_flight == 0, 5.0, "the server dropping the request")
    _wait_for(lambda: _established(jupyter, slow_openai) < asking, 5.0, "the upstream connection closing")


# -- models, health, load, stats, gpu ---------------------------------------------------------


def test_models_lists_live_models(api: httpx.Client, ollama: OllamaServer) -> None:
    for params in ({}, {"provider": "ollama"}):
        response = api.get("models", params=params)
        assert response.status_code == 200, response.text
        models = ModelsResponse.model_validate_json(response.content).models
        assert {(m.provider, m.name) for m in models} == {("ollama", name) for name in ollama.models}
        assert {"llama3.1:latest", "qwen2.5:0.5b"} <= {m.name for m in models}
    assert ollama.count("/api/tags") == 2


def test_health_reports_each_provider(api: httpx.Client, ollama: OllamaServer) -> None:
    health = HealthResponse.model_validate_json(api.get("health", params={"provider": "ollama"}).content)
    assert [(p.provider, p.state, p.version) for p in health.providers] == [("ollama", "healthy", "0.6.0")]
    assert health.providers[0].url == ollama.url
    every = HealthResponse.model_validate_json(api.get("health").content)
    assert every.providers[0].provider == "ollama"  # the chain first, then any provider used since
    both = HealthResponse.model_validate_json(
        api.get("health", params=[("provider", "ollama"), ("provider", "openai")]).content
    )
    assert [p.provider for p in both.providers] == ["ollama", "openai"]


def _load(api: httpx.Client, name: str) -> LoadStatus:
    response = api.post(f"models/{name}/load")
    assert response.status_code == 202, response.text
    started = LoadStarted.model_validate_json(response.content)
    assert response.headers["location"] == started.progress_url
    assert started.progress_url.startswith(f"{BASE_URL}farm-jupyter/api/models/")
    url = f"http://{api.base_url.host}:{api.base_url.port}{started.progress_url}"
    status: list[LoadStatus] = []

    def finished() -> bool:
        status[:] = [LoadStatus.model_validate_json(api.get(url).content)]
        return status[0].state != "running"

    _wait_for(finished, 10.0, f"loading {name}")
    return status[0]


def test_load_runs_in_the_background_with_progress_then_unload(api: httpx.Client, ollama: OllamaServer) -> None:
    assert api.get("models/tinyllama/load").status_code == 404
    status = _load(api, "tinyllama")
    assert (status.state, status.address, status.error) == ("done", "ollama:tinyllama", None)
    assert status.progress is not None and status.progress.status == "loaded"
    assert status.finished_at is not None and status.finished_at >= status.started_at
    assert "tinyllama:latest" in ollama.models and "tinyllama:latest" in ollama.loaded
    assert ollama.count("/api/pull") == 1

    response = api.post("models/ollama:tinyllama/unload")
    assert response.status_code == 200, response.text
    assert response.json() == {"model": "ollama:tinyllama", "address": "ollama:tinyllama", "unloaded": True}
    assert "tinyllama:latest" not in ollama.loaded


def test_load_failure_is_reported_through_progress(api: httpx.Client) -> None:
    status = _load(api, "missing-model")
    assert status.state == "error"
    assert status.error is not None and "file does not exist" in status.error
    assert status.progress is not None and status.progress.status == "pulling manifest"


def test_stats_summarises_requests(api: httpx.Client) -> None:
    api.post("chat", json={"prompt": "for the stats", "no_cache": True})
    stats = _stats(api)
    assert (stats.cache, stats.in_flight) == ("disk", 0)
    row = next(m for m in stats.models if m.address == "ollama:llama3.1")
    assert row.requests >= 1 and row.tokens_out > 0


def test_gpu(api: httpx.Client) -> None:
    response = api.get("gpu")
    assert response.status_code == 200, response.text
    stats = GPUStats.model_validate_json(response.content)
    assert stats.source in ("nvml", "torch", "none")
    assert stats.devices or stats.reason


# -- one cache for the server and the kernels -------------------------------------------------


def test_the_disk_cache_is_shared_with_kernel_sessions(
    jupyter: JupyterServer, api: httpx.Client, ollama: OllamaServer
) -> None:
    kernel = Session(loopback_settings(ollama, cache={"backend": "disk", "path": str(jupyter.cache_path)}))
    try:
        assert not kernel.chat("asked in a notebook first").cached
        served = ChatResponse.model_validate_json(
            api.post("chat", json={"prompt": "asked in a notebook first"}).content
        )
        assert served.cached and served.text == "Echo: asked in a notebook first"
        assert ollama.count("/api/chat") == 1

        served = ChatResponse.model_validate_json(api.post("chat", json={"prompt": "asked over http first"}).content)
        assert not served.cached
        again = kernel.chat("asked over http first")
        assert again.cached and again.text == served.text
        assert ollama.count("/api/chat") == 2
    finally:
        kernel.close()


def test_the_redis_cache_is_shared_with_kernel_sessions(tmp_path: Path, redis_url: str) -> None:
    with OllamaServer() as upstream:
        server = _start_jupyter(tmp_path, upstream, cache=redis_url)
        kernel = Session(loopback_settings(upstream, cache={"backend": "redis", "redis_url": redis_url}))
        try:
            assert not kernel.chat("asked in a notebook, kept in redis").cached
            with server.client() as api:
                assert _stats(api).cache == "redis"
                response = api.post("chat", json={"prompt": "asked in a notebook, kept in redis"})
            served = ChatResponse.model_validate_json(response.content)
            assert served.cached and served.text == "Echo: asked in a notebook, kept in redis"
            assert upstream.count("/api/chat") == 1
        finally:
            kernel.close()
            _stop(server.proc)


# -- the typed contract -----------------------------------------------------------------------


def test_checked_in_schema_files_match_the_types(tmp_path: Path) -> None:
    folder = ROOT / "schema"
    hint = "regenerate them: farm-jupyter schema"
    assert json.loads((folder / "farm_jupyter.schema.json").read_text()) == json_schema(), hint
    assert (folder / "farm_jupyter.d.ts").read_text() == typescript(json_schema()), hint
    written = write_schema(tmp_path)
    assert [p.name for p in written] == ["farm_jupyter.schema.json", "farm_jupyter.d.ts", "farm_jupyter_client.ts"]
    for path in written:
        assert path.read_text() == (folder / path.name).read_text()


def test_schema_covers_every_route_and_type() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    for name in (
        "ChatBody",
        "ChatMessage",
        "GenerationParams",
        "ChatResponse",
        "ModelInfo",
        "ProviderStatus",
        "GPUStats",
        "PullProgress",
        "ErrorBody",
        "LoadStatus",
        "LoadStarted",
        "StatsResponse",
        "StreamText",
        "StreamRestart",
        "StreamStatus",
    ):
        assert name in defs
    assert {(r["method"], r["path"]) for r in schema["x-routes"]} == {
        (m, p.replace("llama3.1", "{name}")) for m, p in ROUTES
    }
    # Responses carry every field, so every response property is required.
    assert set(defs["ChatResponse"]["required"]) == set(defs["ChatResponse"]["properties"])
    assert defs["ChatBody"].get("required", []) == []


def test_typescript_converter_handles_each_construct() -> None:
    schema = {
        "$defs": {
            "Thing": {
                "type": "object",
                "description": "A thing.",
                "properties": {
                    "id": {"type": "integer", "description": "Its number."},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "kind": {"enum": ["a", "b"]},
                    "always": {"const": True},
                    "maybe": {"anyOf": [{"$ref": "#/$defs/Other"}, {"type": "null"}]},
                    "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                    "listed": {"type": ["string", "null"]},
                    "mixed": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "map": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Other"}},
                    "free": {"type": "object", "additionalProperties": True},
                    "inline": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
                    "both": {"allOf": [{"$ref": "#/$defs/Other"}]},
                    "anything": {},
                    "with-dash": {"type": "boolean"},
                },
                "required": ["id", "kind"],
            },
            "Other": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "additionalProperties": {"type": "string"},
            },
            "Level": {"enum": ["low", "high"], "type": "string"},
        }
    }
    ts = typescript(schema)
    expected = [
        "/** A thing. */\nexport interface Thing {",
        "  /** Its number. */\n  id: number;",
        "  tags?: string[];",
        '  kind: "a" | "b";',
        "  always?: true;",
        "  maybe?: Other | null;",
        "  either?: string | number;",
        "  listed?: string | null;",
        "  mixed?: (string | number)[];",
        "  map?: Record<string, Other>;",
        "  free?: Record<string, unknown>;",
        "  inline?: {\n    x: number;\n  };",
        "  both?: Other;",
        "  anything?: unknown;",
        '  "with-dash"?: boolean;',
        "export interface Other {\n  n?: number;\n  [key: string]: string | number | undefined;\n}",
        'export type Level = "low" | "high";',
    ]
    for piece in expected:
        assert piece in ts, piece
    unsupported: list[dict[str, Any]] = [
        {"prefixItems": [{"type": "string"}]},
        {"patternProperties": {"^x": {}}},
        {"$ref": "#/nowhere/X"},
        {"type": "tuple"},
        {"not": {"type": "string"}},
    ]
    for bad in unsupported:
        with pytest.raises(SchemaError):
            typescript({"$defs": {"Bad": bad}})


def test_chat_body_builds_the_messages() -> None:
    body = ChatBody.model_validate({"prompt": "q", "system": "s"})
    assert [(m.role, m.content) for m in body.to_messages()] == [("system", "s"), ("user", "q")]
    body = ChatBody.model_validate({"messages": [{"role": "user", "content": "q"}]})
    assert [(m.role, m.content) for m in body.to_messages()] == [("user", "q")]


# -- the hardened surface: closed params, limits, names, hosts --------------------------------


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"options": "x"}, "params.extra", "'options' is not a generation option"),
        ({"model": "gpt-3.5-turbo"}, "params.extra", "belongs to the request"),
        ({"stream": False}, "params.extra", "belongs to the request"),
        ({"num_predict": 5000}, "params.extra", "use params.max_tokens"),
        ({"custom_generate": "/some/dir", "trust_remote_code": True}, "params.extra", "loads or runs code"),
        ({"zzz": 1}, "params.extra.zzz", "not a generation option"),
        ({"num_ctx": "big"}, "params.extra.num_ctx", "valid integer"),
        ({"top_k": -1}, "params.extra.top_k", "greater than or equal to 0"),
        ({"mirostat_tau": "INF"}, "params.extra.mirostat_tau", "valid number"),  # once a 500 (the fuzz found it)
        ({"logit_bias": {"50256": -100}}, "params.extra", "ollama takes no option 'logit_bias'"),
        ("x", "params.extra", "should be an object"),
    ],
)
def test_params_are_closed_and_typed(
    api: httpx.Client, ollama: OllamaServer, extra: Any, field: str, words: str
) -> None:
    response = api.post("chat", json={"prompt": "hi", "model": "ollama:llama3.1", "params": {"extra": extra}})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error.field == field and words in error.error and "\n" not in error.error
    assert ollama.count() == 0


def test_params_reach_the_provider_as_its_own_options(api: httpx.Client, ollama: OllamaServer) -> None:
    body = {
        "prompt": "with options",
        "model": "ollama:llama3.1",
        "no_cache": True,
        "params": {"max_tokens": 7, "extra": {"num_ctx": 4096, "top_k": 20}},
    }
    assert api.post("chat", json=body).status_code == 200
    sent = ollama.requests[-1].json or {}
    assert sent["model"] == "llama3.1" and sent["stream"] is True
    assert sent["options"] == {"num_predict": 7, "num_ctx": 4096, "top_k": 20}
    # Over HTTP an option the asked provider does not take is a mistake (HuggingFace's here).
    body["params"]["extra"]["min_new_tokens"] = 3  # type: ignore[index]
    response = api.post("chat", json=body)
    assert response.status_code == 400 and "ollama takes no option 'min_new_tokens'" in error_of(response).error


def test_code_loading_arguments_never_reach_a_local_model(api: httpx.Client, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    code = tmp_path / "custom"
    code.mkdir()
    (code / "generate.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    body = {
        "prompt": "hi",
        "model": "huggingface:some/model",
        "params": {"extra": {"custom_generate": str(code), "trust_remote_code": True}},
    }
    response = api.post("chat", json=body)
    assert response.status_code == 400 and "loads or runs code" in error_of(response).error
    assert not ran.exists()


def test_the_python_api_takes_the_same_closed_params(ollama: OllamaServer) -> None:
    kernel = Session(loopback_settings(ollama))
    try:
        with pytest.raises(ConfigError, match="trust_remote_code") as info:
            kernel.chat("hi", extra={"trust_remote_code": True})
        assert "\n" not in str(info.value)
        assert kernel.chat("hi", extra={"num_ctx": 2048}, no_cache=True).text == "Echo: hi"
    finally:
        kernel.close()


def test_an_unknown_provider_prefix_is_400_listing_the_providers(api: httpx.Client, ollama: OllamaServer) -> None:
    for path in ("chat", "chat/stream"):
        response = api.post(path, json={"prompt": "hi", "model": "nosuch:foo"})
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert (error.field, error.type) == ("model", "UnknownProvider")
        assert "nosuch" in error.error and "ollama, openai" in error.error
    response = api.post("models/nosuch:foo/load")
    assert response.status_code == 400 and error_of(response).field == "name"
    assert ollama.count() == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413_and_never_parsed(api: httpx.Client, ollama: OllamaServer, chunked: bool) -> None:
    body = b'{"prompt": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    content: Any = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    response = api.post("chat", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert "over the limit of 8388608 bytes" in error_of(response).error
    assert ollama.count() == 0
    assert api.get("stats").status_code == 200  # the connection pool and the server are fine


def test_messages_and_prompt_length_are_limited(api: httpx.Client, ollama: OllamaServer) -> None:
    many = [{"role": "user", "content": "hi"}] * 501
    response = api.post("chat", json={"messages": many})
    assert response.status_code == 400 and error_of(response).field == "messages"
    response = api.post("chat", json={"prompt": "y" * 2_000_001})
    assert response.status_code == 400 and error_of(response).field == "prompt"
    assert "over the limit of 2000000" in error_of(response).error
    assert ollama.count() == 0


@pytest.mark.parametrize("name", ["..%2F..%2Fapi%2Fdelete", "a%2F..%2Fb", "%2Fetc%2Fpasswd", "x%20y", "-rf"])
def test_model_names_are_checked_before_they_go_into_a_url(api: httpx.Client, ollama: OllamaServer, name: str) -> None:
    for method, action in (("POST", "load"), ("GET", "load"), ("POST", "unload")):
        response = api.request(method, f"models/{name}/{action}")
        assert response.status_code == 400, (method, action, response.text)
        assert error_of(response).field == "name" and "Location" not in response.headers
    response = api.post("chat", json={"prompt": "hi", "model": "../../etc"})
    assert response.status_code == 400 and error_of(response).field == "model"
    assert ollama.count() == 0


def test_load_jobs_are_bounded(api: httpx.Client) -> None:
    names = [f"gone-{i}" for i in range(MAX_LOAD_JOBS + 1)]
    for name in names:
        assert _load(api, name).state in ("done", "error")  # the loopback Ollama answers at once
    assert api.get(f"models/{names[0]}/load").status_code == 404  # the oldest finished job made room
    assert api.get(f"models/{names[-1]}/load").status_code == 200


def test_a_foreign_host_is_told_so_even_with_the_token(api: httpx.Client, ollama: OllamaServer) -> None:
    response = api.post("chat", json={"prompt": "hi"}, headers={"Host": "evil.example.com"})
    assert response.status_code == 403
    assert error_of(response).error.startswith("host 'evil.example.com' is not allowed")
    assert ollama.count() == 0


def test_load_jobs_expire_and_running_ones_are_never_dropped() -> None:
    from farm_jupyter.server.jobs import LoadJob, ServerState, TooManyLoads
    from farm_jupyter.server.traits import FarmServer

    now = [1000.0]
    state = ServerState(limits=FarmServer(max_load_jobs=2, load_job_ttl=60.0), clock=lambda: now[0])
    running = LoadJob(model="a", address="ollama:a", started_at=now[0])
    done = LoadJob(model="b", address="ollama:b", started_at=now[0], state="done", finished_at=now[0])
    state.add(running)
    state.add(done)
    with pytest.raises(TooManyLoads):
        state.add(LoadJob(model="c", address="ollama:c", started_at=now[0])) if done.state == "running" else None
        done.state = "running"
        state.add(LoadJob(model="c", address="ollama:c", started_at=now[0]))
    done.state = "done"
    state.add(LoadJob(model="c", address="ollama:c", started_at=now[0]))  # the finished job makes room
    assert set(state.jobs) == {"ollama:a", "ollama:c"}
    state.jobs["ollama:c"].finished_at, state.jobs["ollama:c"].state = now[0], "error"
    now[0] += 61
    assert state.job("ollama:c") is None and state.job("ollama:a") is running


def test_the_url_table_is_the_route_table() -> None:
    from farm_jupyter.server.handlers import HANDLERS, url_specs

    specs = url_specs("/base/farm-jupyter/api/")
    assert [h for _, h in specs] == HANDLERS
    with pytest.raises(ConfigError, match="no handler serves GET gpu"):
        url_specs("/", HANDLERS[:-1])


BREAKER_TOML = FARM_TOML.replace(
    "failures = 1000  # fault tests must not open the circuit for the tests after them", "failures = 2"
)


def test_caller_errors_never_open_the_breaker_and_a_cache_that_will_not_open_is_off(tmp_path: Path) -> None:
    """One server whose breaker opens after 2 availability failures and whose cache cannot open."""
    (tmp_path / "a-file").write_text("not a folder")
    with OllamaServer() as upstream, OpenAIServer(api_key=TEST_API_KEY) as openai:
        server = _start_jupyter(
            tmp_path, upstream, openai, cache=f"disk:{tmp_path}/a-file/cache/r.sqlite", toml=BREAKER_TOML
        )
        try:
            with server.client() as api:
                health = HealthResponse.model_validate_json(api.get("health").content)
                assert health.cache == "off: not a directory"
                assert _stats(api).cache == "off: not a directory"

                # The caller's errors, three times each: a missing model and a request refused upstream.
                for _ in range(3):
                    assert api.post("chat", json={"prompt": "hi", "model": "ollama:nope"}).status_code == 404
                openai.add_fault(Fault("status", path="/v1/chat/completions", status=400, times=3))
                for _ in range(3):
                    response = api.post("chat", json={"prompt": "hi", "model": "openai:gpt-4o-mini"})
                    assert response.status_code == 400 and error_of(response).type == "BadRequest"
                for model in ("ollama:llama3.1", "openai:gpt-4o-mini"):
                    response = api.post("chat", json={"prompt": "still served", "model": model})
                    assert response.status_code == 200, response.text
                    assert not ChatResponse.model_validate_json(response.content).cached  # no cache, no harm
                states = {
                    s.provider: s.state for s in HealthResponse.model_validate_json(api.get("health").content).providers
                }
                assert states["ollama"] == "healthy" and states["openai"] == "healthy"

                # Availability failures do open it: the breaker is live, it just ignores callers' mistakes.
                upstream.add_fault(Fault("status", path="/api/chat", status=503, times=None))
                for _ in range(2):
                    assert (
                        api.post(
                            "chat", json={"prompt": "hi", "model": "ollama:llama3.1", "fallback": False}
                        ).status_code
                        == 502
                    )
                states = {
                    s.provider: s.state for s in HealthResponse.model_validate_json(api.get("health").content).providers
                }
                assert states["ollama"] == "cooling_down"
            log = server.log_tail()
            assert "cache disk is off: not a directory" in log and "Traceback" not in log
        finally:
            _stop(server.proc)


# -- the generated TypeScript client, compiled and run with Node ------------------------------

NODE_DIR = ROOT / "tests" / "node"


def _compiled_client(out: Path) -> Path:
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists() or shutil.which("node") is None:
        pytest.fail(
            "Node and TypeScript are missing: run `bash scripts/bootstrap --test` (it runs npm ci in tests/node)"
        )
    result = subprocess.run(
        [str(tsc), "-p", str(NODE_DIR / "tsconfig.json"), "--outDir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "tests" / "node" / "client_check.js"


def test_the_typescript_client_compiles_and_talks_to_a_real_server(
    jupyter: JupyterServer, api: httpx.Client, ollama: OllamaServer, slow_openai: OpenAIServer, tmp_path: Path
) -> None:
    script = _compiled_client(tmp_path / "js")
    env = _clean_environ() | {
        "FARM_URL": f"http://127.0.0.1:{jupyter.port}{BASE_URL}",
        "FARM_TOKEN": jupyter.token,
        "FARM_SLOW_MODEL": SLOW["model"],
    }
    before = jupyter.log.read_text(errors="replace").count("went away")
    result = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])

    assert out["health"]["cache"] == "disk" and ["ollama", "healthy"] in out["health"]["providers"]
    assert out["healthOf"] == ["ollama", "openai"]  # the repeated `provider` query, typed
    assert out["chat"] == {"text": "Echo: hello from node", "address": "ollama:llama3.1"}
    assert "".join(out["stream"]["texts"]) == out["stream"]["done"] == "Echo: stream to the end"
    assert len(out["stream"]["texts"]) > 1
    assert out["cancelled"] == {"seen": 3}
    assert out["unknown"]["status"] == 400 and out["unknown"]["field"] == "model"
    assert "no provider named 'nosuch'" in out["unknown"]["error"]
    assert out["load"][-1] == "done" and set(out["load"]) <= {"running", "done"}
    assert out["unload"] is True and "llama3.1:latest" in out["models"]
    # The stream left early: the server saw the disconnect and closed the upstream request.
    _wait_for(lambda: jupyter.log.read_text(errors="replace").count("went away") > before, 10.0, "the server noticing")
    _wait_for(lambda: _established(jupyter, slow_openai) == 0, 10.0, "the upstream connection closing")
    _wait_for(lambda: _stats(api).in_flight == 0, 10.0, "the server dropping the request")


# -- no request body makes a 500 (hypothesis over every route) -----------------------------------
# Derandomized in the suite (tests/conftest.py); the issue's search is
# FARM_FUZZ_EXAMPLES=1000 pytest tests/test_server.py -k fuzz.

# Models that would load the embedded model (a local engine's bare default) or wait on the slow
# upstream: not what this fuzzes. Paths and hub ids for the local engines are fuzzed: the allowlist
# refuses them before anything loads.
_AVOID = re.compile(r'openai|smol|"(hf|huggingface|llama.?cpp):?"', re.IGNORECASE)
_LOCAL_DEFAULT = re.compile(r"(hf|huggingface|llama.?cpp):?", re.IGNORECASE)
_MODELS = [
    "ollama:llama3.1",
    "nosuch:foo",
    "small",
    "../x",
    "ollama:../x",
    "ollama:a/../../b",
    "ollama:10.0.0.5:6379/ns/model",
    "ollama:hf.co/org/model",
    "hf:/etc/passwd",
    "huggingface:/etc",
    "llamacpp:/etc/passwd",
    "hf:../../etc/passwd",
    "hf:some-org/some-hub-model",
    "ollama:%2e%2e%2fx",
]
_KEYS = [
    *ChatBody.model_fields,
    "role",
    "content",
    *GenerationParams.model_fields,
    *GenerationOptions.__annotations__,
    "options",
    "num_predict",
    "stream",
    "trust_remote_code",
]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["user", "system", "assistant", "json", *_MODELS])
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=16,
)
_BODIES = (
    _JSON.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda extra, prompt: json.dumps({"prompt": prompt, "params": {"extra": extra}}).encode(),
        st.dictionaries(st.sampled_from(_KEYS), _SCALARS, max_size=3),
        st.text(min_size=1, max_size=8),
    )
    | st.builds(
        lambda model, stop, bias: json.dumps(
            {"prompt": "hi", "model": model, "params": {"stop": stop, "extra": {"logit_bias": bias}}}
        ).encode(),
        st.sampled_from(_MODELS) | st.text(max_size=30),
        st.lists(st.text(max_size=300), max_size=20) | _SCALARS,
        st.dictionaries(st.text(max_size=4), st.integers(-200, 200), max_size=3) | _SCALARS,
    )
    | st.binary(max_size=40)
)


def _no_500(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code == 502, response.text[:500]
    if response.status_code >= 400:
        assert "\n" not in error_of(response).error


@pytest.mark.parametrize("path", ["chat", "chat/stream"])
@given(body=_BODIES)
def test_fuzz_chat_bodies_never_make_a_500(api: httpx.Client, path: str, body: bytes) -> None:
    assume(not _AVOID.search(body.decode(errors="replace")))
    _no_500(api.post(path, content=body, headers={"Content-Type": "application/json"}))


@pytest.mark.parametrize(("method", "action"), [("POST", "load"), ("GET", "load"), ("POST", "unload")])
@given(name=st.text(min_size=1, max_size=24), body=_BODIES)
def test_fuzz_model_routes_never_make_a_500(
    api: httpx.Client, method: str, action: str, name: str, body: bytes
) -> None:
    assume(not _AVOID.search(name) and not _LOCAL_DEFAULT.fullmatch(name))
    # Dots escaped too: httpx would resolve a `.` or `..` segment before sending it.
    escaped = quote(name, safe="").replace(".", "%2E")
    _no_500(api.request(method, f"models/{escaped}/{action}", content=body))


@pytest.mark.parametrize("path", ["models", "health", "stats", "gpu"])
@given(
    query=st.lists(
        st.tuples(
            st.sampled_from(["provider", "x"]) | st.text(max_size=5),
            st.sampled_from(["ollama", "hf", "huggingface", "nosuch", "ollama:x"]) | st.text(max_size=10),
        ),
        max_size=40,  # repeated providers, past the limit of 32 distinct ones
    ),
    body=_BODIES,
)
def test_fuzz_read_routes_never_make_a_500(
    api: httpx.Client, path: str, query: list[tuple[str, str]], body: bytes
) -> None:
    assume(not any(_AVOID.search(v) for _, v in query))
    # A GET with a body is odd but legal; it must not change the answer's kind.
    _no_500(api.request("GET", path, params=query, content=body))
