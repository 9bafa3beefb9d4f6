"""The HTTP surface owns what a request can aim at (issue 22), over a real Jupyter server.

One server for the module runs under `farm_jupyter.testing.audit`: every outbound connection and
name lookup it makes, and every scan of the installed entry points, lands in a log that the tests
read. Its farm.toml gives the local engines a models folder each; HF_HUB_OFFLINE is not set in
its environment, so nothing here leans on it. Assertions are on status, body, the upstream's
request log, the number of loaded copies and entry-point scans, and the order of events.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from test_server import FARM_TOML, JupyterServer, _free_port, _start_jupyter, _stats, _stop, _wait_for, error_of

from farm_jupyter.cache_guard import GuardedCache
from farm_jupyter.config import CacheSettings
from farm_jupyter.server.schema import HealthResponse, LoadStatus, ModelsResponse
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer, audit
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY
from farm_jupyter.types import ChatResponse

HEARTBEAT = 0.1  # seconds of silence before a `: keep-alive` comment (15 s in a real server)
SHADOW = """raise ImportError("No module named 'llama_cpp' (shadowed by the test)", name="llama_cpp")\n"""


def _toml(root: Path) -> str:
    return f"""\
[retry]
backoff = 0.01
backoff_max = 0.05

[breaker]
failures = 1000

[huggingface]
models_dir = "{root / "models"}"
default_model = "some-org/some-hub-model"
device = "cpu"

[providers.llamacpp]
models_dir = "{root / "gguf"}"

[aliases]
small = "ollama:qwen2.5:0.5b"
"""


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer() as server:
        yield server


@pytest.fixture(scope="module")
def openai() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key=TEST_API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """The server's folder: models/ (the tiny model, a link to it, a link out), gguf/, outside/."""
    root = tmp_path_factory.mktemp("guarded")
    models = root / "models"
    models.mkdir()
    shutil.copytree(tiny_model_path, models / "tiny")
    (models / "alias").symlink_to(models / "tiny")
    (root / "outside").mkdir()
    shutil.copytree(tiny_model_path, root / "outside" / "tiny")
    (models / "escape").symlink_to(root / "outside" / "tiny")
    (root / "gguf").mkdir()
    (root / "gguf" / "m.gguf").write_bytes(b"GGUF not really")
    shadow = root / "shadow" / "llama_cpp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(SHADOW)
    return root


@pytest.fixture(scope="module")
def jupyter(root: Path, ollama: OllamaServer, openai: OpenAIServer) -> Iterator[JupyterServer]:
    log = root / "audit.jsonl"
    server = _start_jupyter(
        root,
        ollama,
        openai,
        toml=_toml(root),
        args=("--FarmServer.max_load_jobs=3", f"--FarmServer.heartbeat={HEARTBEAT}"),
        extra_env={
            "FARM_FALLBACK": "openai",
            "PYTHONPATH": os.pathsep.join([str(root / "shadow"), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        },
        launcher=("-m", "farm_jupyter.testing.audit", str(log), "jupyter_server"),
    )
    with server.client() as client:
        assert client.get("health").status_code == 200  # at least the configured upstreams are reached
    yield server
    _stop(server.proc)
    # The outbound-connection audit: over the whole module, only the configured upstreams.
    upstreams = {int(ollama.url.rsplit(":", 1)[1]), int(openai.host_port.rsplit(":", 1)[1])}
    records = audit.read(log)
    connects = {(r["host"], r["port"]) for r in records if r["event"] == "connect"}
    lookups = {r["host"] for r in records if r["event"] == "getaddrinfo"}
    assert connects, "the audit recorded nothing: is the hook installed?"
    assert connects <= {("127.0.0.1", port) for port in upstreams}, connects
    assert lookups <= {"127.0.0.1", "localhost"}, lookups
    text = server.log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]


@pytest.fixture
def api(jupyter: JupyterServer, ollama: OllamaServer, openai: OpenAIServer) -> Iterator[httpx.Client]:
    ollama.clear()
    openai.clear()
    with jupyter.client(timeout=120.0) as client:
        yield client
    ollama.clear()
    openai.clear()


def _loaded(api: httpx.Client, provider: str) -> list[str]:
    health = HealthResponse.model_validate_json(api.get("health", params={"provider": provider}).content)
    return health.providers[0].models_loaded


def _scans(root: Path) -> int:
    return sum(1 for r in audit.read(root / "audit.jsonl") if r["event"] == "entry_points")


# -- 1. models by allowlist ---------------------------------------------------------------------


def test_a_model_outside_the_allowlist_gets_one_text_whatever_is_on_disk(api: httpx.Client, root: Path) -> None:
    names = [
        "hf:/etc/passwd",  # exists, a file
        "hf:/etc",  # exists, a folder
        "hf:/no/such/folder",  # does not exist
        f"hf:{root / 'outside' / 'tiny'}",  # a real model, outside models_dir
        "hf:escape",  # a link inside models_dir that leads out of it
        f"hf:{root / 'models' / 'escape'}",
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct",  # a hub id: never fetched
        "huggingface",  # its default is a hub id
        "llamacpp:/etc/passwd",  # was a 500 (MissingDependency before the file was looked at)
    ]
    texts = set()
    for name in names:
        response = api.post("chat", json={"prompt": "hi", "model": name})
        assert response.status_code == 404, (name, response.text)
        error = error_of(response)
        assert (error.type, error.field) == ("ModelNotFound", "model")
        shown = name.partition(":")[2] or "some-org/some-hub-model"
        said = re.sub(r"did you mean [^?]*\? ", "", error.error)  # suggestions follow the spelling, not the disk
        texts.add(said.replace(shown, "NAME").replace("llamacpp", "ENGINE").replace("huggingface", "ENGINE"))
        assert "/etc" not in error.error.replace(shown, "") and str(root) not in error.error.replace(shown, "")
    assert len(texts) == 1, texts
    (text,) = texts
    assert 'no model "NAME" on ENGINE that this server offers' in text


def test_suggestions_name_only_allowed_models(api: httpx.Client) -> None:
    error = error_of(api.post("chat", json={"prompt": "hi", "model": "hf:tinny"}))
    assert "did you mean" in error.error and "tiny" in error.error and "/" not in error.error.split("did you mean")[1]
    error = error_of(api.post("chat", json={"prompt": "hi", "model": "ollama:llama3.2"}))
    assert 'no model "llama3.2"' in error.error and "llama3.1:latest" in error.error


def test_models_lists_only_what_can_be_asked_for(api: httpx.Client, root: Path) -> None:
    listed = ModelsResponse.model_validate_json(api.get("models", params={"provider": "hf"}).content).models
    names = {m.name for m in listed}
    assert names <= {"SmolLM2-135M-Instruct", str((root / "models" / "tiny").resolve())}, names
    assert not any(".cache" in n or n.endswith(".gguf") for n in names)


def test_every_spelling_of_a_local_model_is_one_copy(api: httpx.Client, root: Path) -> None:
    spellings = ["hf:tiny", f"hf:{root / 'models' / 'tiny'}", "hf:alias", f"huggingface:{root / 'models' / 'alias'}"]
    for name in spellings:
        body = {"prompt": "hi", "model": name, "params": {"max_tokens": 2}, "no_cache": True}
        response = api.post("chat", json=body)
        assert response.status_code == 200, (name, response.text)
        assert ChatResponse.model_validate_json(response.content).model == str((root / "models" / "tiny").resolve())
    assert _loaded(api, "huggingface") == [str((root / "models" / "tiny").resolve())]
    # The chat's load was a load job like the route's: visible there, under any spelling.
    status = LoadStatus.model_validate_json(api.get("models/hf:alias/load").content)
    assert status.state == "done" and status.address == f"huggingface:{(root / 'models' / 'tiny').resolve()}"


def test_a_remote_provider_offers_its_listed_models_defaults_and_aliases(
    api: httpx.Client, ollama: OllamaServer, openai: OpenAIServer
) -> None:
    for name in ("ollama:llama3.1", "ollama:llama3.1:latest", "llama3.1", "small", "openai:gpt-4o-mini"):
        response = api.post("chat", json={"prompt": "listed", "model": name, "no_cache": True})
        assert response.status_code == 200, (name, response.text)
    response = api.post("chat", json={"prompt": "hi", "model": "openai:gpt-9"})
    assert response.status_code == 404 and 'no model "gpt-9" on openai' in error_of(response).error
    assert not any(r.path == "/v1/chat/completions" and (r.json or {}).get("model") == "gpt-9" for r in openai.requests)
    # The listing is kept (at most 60 s): six chats, one listing per provider.
    assert ollama.count("/api/tags") <= 1 and openai.count("/v1/models") <= 1


def test_a_missing_extra_is_a_4xx_naming_it(api: httpx.Client) -> None:
    """llama_cpp is shadowed in the server's process by a package that fails to import."""
    response = api.post("chat", json={"prompt": "hi", "model": "llamacpp:m.gguf"})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error.type == "MissingDependency" and 'pip install "farm-jupyter[llamacpp]"' in error.error
    response = api.post("models/llamacpp:m.gguf/load")
    assert response.status_code == 202
    _wait_for(lambda: api.get("models/llamacpp:m.gguf/load").json()["state"] != "running", 10.0, "the load failing")
    status = LoadStatus.model_validate_json(api.get("models/llamacpp:m.gguf/load").content)
    assert status.state == "error" and status.error is not None and "farm-jupyter[llamacpp]" in status.error


# -- 2. no outbound call a body can aim ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("POST", "models/ollama:%2e%2e%2fx/load", "name"),
        ("POST", "models/ollama:..%2Fx/load", "name"),
        ("POST", "models/ollama:10.0.0.5:6379%2Fns%2Fmodel/load", "name"),
        ("POST", "models/ollama:hf.co%2Forg%2Fmodel/load", "name"),
        ("POST", "models/ollama:localhost%2Fmodel/load", "name"),
        ("POST", "models/ollama:%2e%2e%2fx/unload", "name"),
        ("GET", "models/ollama:%2e%2e%2fx/load", "name"),
    ],
)
def test_a_model_name_cannot_aim_the_upstream(
    api: httpx.Client, ollama: OllamaServer, method: str, path: str, field: str
) -> None:
    response = api.request(method, path)
    assert response.status_code == 400, response.text
    assert error_of(response).field == field
    assert ollama.count() == 0


@pytest.mark.parametrize("model", ["ollama:../x", "ollama:a/../../x", "ollama:10.0.0.5:6379/ns/model", "ollama:./x"])
def test_a_chat_model_cannot_aim_the_upstream(api: httpx.Client, ollama: OllamaServer, model: str) -> None:
    for path in ("chat", "chat/stream"):
        response = api.post(path, json={"prompt": "hi", "model": model})
        assert response.status_code == 400, response.text
        assert error_of(response).field == "model"
    assert ollama.count() == 0


def test_the_load_route_pulls_a_library_name(api: httpx.Client, ollama: OllamaServer) -> None:
    assert api.post("models/ollama:library%2Fphi3/load").status_code == 202
    _wait_for(lambda: api.get("models/ollama:library%2Fphi3/load").json()["state"] != "running", 10.0, "the pull")
    pulls = [r.json for r in ollama.requests if r.path == "/api/pull"]
    assert pulls == [{"model": "library/phi3", "stream": True}]


# -- 3. every request bounded before it costs ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"params": {"stop": ["x"] * 17}}, "params.stop", "17 stop strings, over the limit of 16"),
        ({"params": {"stop": ["x" * 257]}}, "params.stop", "257 characters"),
        ({"params": {"extra": {"logit_bias": {str(i): 1 for i in range(1025)}}}}, "params.extra.logit_bias", "1025"),
        ({"params": {"max_tokens": 10**30}}, "params.max_tokens", "over the limit of 32768"),
        ({"params": {"max_tokens": 32769}}, "params.max_tokens", "over the limit of 32768"),
        ({"params": {"seed": 2**64}}, "params.seed", "not in 0..4294967295"),
        ({"params": {"seed": -1}}, "params.seed", "not in 0..4294967295"),
        ({"no_cache": "yes"}, "no_cache", "valid boolean"),
        ({"params": {"temperature": "0.5"}}, "params.temperature", "valid number"),
        ({"params": {"max_tokens": "5"}}, "params.max_tokens", "valid integer"),
        ({"system": "s" * 2_000_001}, "system", "over the limit of 2000000"),
        (
            {"params": {"response_schema": json.loads("{" + '"a":{' * 40 + "}" * 41)}},
            "params.response_schema",
            "deeper",
        ),
        ({"params": {"response_schema": {"enum": ["x" * 100] * 1000}}}, "params.response_schema", "bytes as JSON"),
        ({"params": {"tools": [{"name": f"t{i}"} for i in range(65)]}}, "params.tools", "65 tools"),
    ],
)
def test_bodies_are_bounded_naming_the_field(
    api: httpx.Client, ollama: OllamaServer, body: dict[str, Any], field: str, words: str
) -> None:
    for path in ("chat", "chat/stream"):
        response = api.post(path, json={"prompt": "hi", "model": "ollama:llama3.1"} | body)
        assert response.status_code == 400, response.text[:300]
        error = error_of(response)
        assert (error.field, words in error.error) == (field, True), error.error[:300]
    assert ollama.count() == 0


def test_max_tokens_is_bounded_by_a_known_window(api: httpx.Client) -> None:
    body = {"prompt": "hi", "model": "llamacpp:m.gguf", "params": {"max_tokens": 2049}}
    response = api.post("chat", json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error.field == "params.max_tokens" and "over the model's context window of 2048 tokens" in error.error


def test_the_kernel_api_stays_lax_where_http_is_strict() -> None:
    """numpy integers (a notebook's usual numbers) still work in the Python API."""
    import numpy as np

    from farm_jupyter.server.schema import ChatBody
    from farm_jupyter.types import GenerationParams

    params = GenerationParams(seed=np.int64(3), max_tokens=np.int32(5))  # type: ignore[arg-type]
    assert (params.seed, params.max_tokens) == (3, 5)
    with pytest.raises(ValueError, match="valid integer"):
        ChatBody.model_validate_json(b'{"prompt": "x", "params": {"seed": "3"}}', strict=True)


def test_the_message_count_is_checked_while_parsing(api: httpx.Client, ollama: OllamaServer) -> None:
    response = api.post("chat", json={"messages": [{"role": "user", "content": "x"}] * 100_000})
    assert response.status_code == 400
    error = error_of(response)
    assert error.field == "messages" and "100000 messages, over the limit of 500" in error.error
    assert ollama.count() == 0


def test_health_takes_only_providers_that_exist_without_a_rescan(api: httpx.Client, root: Path) -> None:
    assert api.get("health", params={"provider": "warm-up"}).status_code == 400  # the one scan a process makes
    before = _scans(root)
    many = [("provider", f"nosuch{i}") for i in range(900)]
    response = api.get("health", params=many)
    assert response.status_code == 400 and error_of(response).field == "provider"
    for name in ("nosuch", "x" * 300):
        response = api.get("health", params={"provider": name})
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert (error.field, error.type) == ("provider", "UnknownProvider") and "ollama" in error.error
    assert _scans(root) == before
    both = api.get("health", params=[("provider", "ollama"), ("provider", "ollama"), ("provider", "hf")])
    assert [p.provider for p in HealthResponse.model_validate_json(both.content).providers] == [
        "ollama",
        "huggingface",
    ]


# -- 7. truthful answers ----------------------------------------------------------------------------


def test_unload_says_whether_the_model_was_loaded(api: httpx.Client, ollama: OllamaServer) -> None:
    api.post("models/ollama:qwen2.5:0.5b/unload")  # loaded or not before, it is not now
    response = api.post("models/ollama:qwen2.5:0.5b/unload")
    assert response.status_code == 200
    assert response.json() == {"model": "ollama:qwen2.5:0.5b", "address": "ollama:qwen2.5:0.5b", "unloaded": False}
    response = api.post("models/ollama:never-pulled/unload")
    assert response.status_code == 200 and response.json()["unloaded"] is False


# -- 6. a stream that speaks at once ---------------------------------------------------------------


def _raw_stream(api: httpx.Client, body: dict[str, Any]) -> list[str]:
    """The stream's lines, comments included, as they came."""
    with api.stream("POST", "chat/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


def _said(lines: list[str]) -> list[str]:
    """`status:...`, `text`, `keep-alive`, `done`, `error` in the order the stream said them."""
    out: list[str] = []
    for line in lines:
        if line.startswith(":"):
            out.append("keep-alive")
        elif line.startswith("event:"):
            out.append(line[6:].strip())
        elif line.startswith("data:") and (out[-1:] not in (["done"], ["error"])):
            data = line[5:].strip()
            if data.startswith('{"status"'):
                out.append("status:" + json.loads(data)["status"])
            elif data.startswith('{"text"'):
                out.append("text")
    return out


def test_a_stream_speaks_before_the_model_does(api: httpx.Client, ollama: OllamaServer) -> None:
    ollama.add_fault(Fault("delay", path="/api/chat", delay=HEARTBEAT * 10))
    said = _said(_raw_stream(api, {"prompt": "slow to start", "no_cache": True}))
    assert said[0] == "status:asking ollama:llama3.1"
    first_text = said.index("text")
    assert "keep-alive" in said[1:first_text], said
    assert said[-1] == "done"


def test_a_stream_says_each_retry_and_the_fallback(api: httpx.Client, ollama: OllamaServer) -> None:
    ollama.add_fault(Fault("status", path="/api/chat", status=503, times=None))
    said = _said(_raw_stream(api, {"prompt": "fall back", "no_cache": True}))
    statuses = [s for s in said if s.startswith("status:")]
    assert statuses[0] == "status:asking ollama:llama3.1"
    assert [s for s in statuses if "retrying" in s][:2] and any("openai" in s for s in statuses[1:]), statuses
    assert said.index(next(s for s in statuses if "openai" in s)) < said.index("text") and said[-1] == "done"


def test_a_stream_says_its_rate_limit_wait_before_the_answer(tmp_path: Path) -> None:
    """One request a minute to Ollama: the second one waits for the first to leave the window,
    and its stream says so before any text. The server runs on a fake clock
    (`farm_jupyter.testing.clock`) that takes the minute at once and writes down what it skipped."""
    skipped = tmp_path / "skipped.txt"
    toml = FARM_TOML + "\n[rate_limits.ollama]\nrpm = 1\n"
    with OllamaServer() as upstream:
        server = _start_jupyter(
            tmp_path,
            upstream,
            toml=toml,
            extra_env={"FARM_SKIPPED_WAITS": str(skipped)},
            launcher=("-m", "farm_jupyter.testing.clock", "jupyter_server"),
        )
        try:
            with server.client(timeout=60.0) as api:
                first = api.post("chat", json={"prompt": "first in the minute", "no_cache": True})
                assert first.status_code == 200, first.text
                assert not skipped.exists()  # the first one did not wait
                lines = _raw_stream(api, {"prompt": "second in the minute", "no_cache": True})
        finally:
            _stop(server.proc)
    said = _said(lines)
    waits = [s for s in said if "rate limit" in s]
    assert said[0] == "status:asking ollama:llama3.1", said
    assert len(waits) == 1 and re.fullmatch(r"status:waiting \d+\.\ds for ollama's rate limit", waits[0]), said
    assert said.index(waits[0]) < said.index("text") and said[-1] == "done", said
    (waited,) = (float(s) for s in skipped.read_text().split())
    assert 30.0 < waited <= 60.0  # the rest of its minute, not a retry's back-off
    assert upstream.count("/api/chat") == 2
    done = ChatResponse.model_validate_json(lines[lines.index("event: done") + 1][5:])
    assert done.timings.waited == pytest.approx(waited)


# -- every load counted; the cache's truth (a server of their own) ---------------------------------


def test_a_chats_load_counts_against_max_load_jobs_and_an_unreachable_redis_is_off(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    (tmp_path / "models").mkdir()
    shutil.copytree(tiny_model_path, tmp_path / "models" / "tiny")
    toml = f'[huggingface]\nmodels_dir = "{tmp_path / "models"}"\ndevice = "cpu"\n'
    with OllamaServer() as upstream:
        server = _start_jupyter(
            tmp_path,
            upstream,
            cache=f"redis://127.0.0.1:{_free_port()}/0",  # nothing listens there
            toml=toml,
            args=("--FarmServer.max_load_jobs=1",),
        )
        try:
            with server.client() as api:
                health = HealthResponse.model_validate_json(api.get("health").content)
                assert health.cache.startswith("off: ") and "connect" in health.cache.lower(), health.cache
                # Asked again within 30 s: still off, and still said so.
                assert HealthResponse.model_validate_json(api.get("health").content).cache == health.cache

                upstream.add_fault(Fault("hang", path="/api/pull", times=None))
                assert api.post("models/ollama:stuck/load").status_code == 202  # the one load allowed runs
                for path in ("chat", "chat/stream"):
                    response = api.post(path, json={"prompt": "hi", "model": "hf:tiny"})
                    assert response.status_code == 429, response.text
                    assert "1 loads are running already" in error_of(response).error
                assert _loaded(api, "huggingface") == []
                # The chats went on without a cache, saying it once in the log, not per request.
                for _ in range(3):
                    assert api.post("chat", json={"prompt": "no cache", "model": "ollama:llama3.1"}).status_code == 200
        finally:
            _stop(server.proc)
    assert server.log.read_text(errors="replace").count("cache redis is off") == 1


def test_an_unreachable_redis_is_off_and_tried_again_every_30_seconds(tmp_path: Path) -> None:
    """A fake clock; a real redis-server that starts after the cache was found off, then stops."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/bootstrap --test installs it)")
    port = _free_port()
    now = [1000.0]
    cache = GuardedCache(CacheSettings(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0"), clock=lambda: now[0])
    assert cache.state == "redis"  # opening a Redis client connects to nothing: only a ping tells

    async def scenario() -> None:
        assert (await cache.check()).startswith("off: ")
        assert await cache.get("key") is None  # a miss while off, not an error
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for(lambda: _listening(port), 10.0, "redis-server listening")
            now[0] += 29.9
            assert (await cache.check()).startswith("off: ")  # up, but not tried before its 30 s
            now[0] += 0.1
            assert await cache.check() == "redis"
            assert await cache.get("key") is None and cache.state == "redis"
        finally:
            server.terminate()
            server.wait(10)
        assert await cache.get("key") is None  # it went away: a miss, and off again
        assert cache.state.startswith("off: ")
        await cache.aclose()

    asyncio.run(scenario())


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "nosuch"), ("GET", "models/"), ("POST", "models/x/frobnicate"), ("GET", "chat/stream/x"), ("PUT", "x")],
)
def test_a_malformed_subpath_is_a_json_404(api: httpx.Client, method: str, path: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 404, response.text[:300]
    assert error_of(response).error.startswith(f"no route {method} ")
    assert "POST chat" in error_of(response).error


def test_a_client_that_leaves_stops_a_local_generation(jupyter: JupyterServer, api: httpx.Client) -> None:
    """30,000 tokens asked of the tiny model; the client reads a few and leaves: the thread that
    generates them ends, long before the answer would have."""
    warm = {"prompt": "warm", "model": "hf:tiny", "params": {"max_tokens": 2}, "no_cache": True}
    assert api.post("chat", json=warm).status_code == 200  # loaded, its worker threads started
    server = psutil.Process(jupyter.proc.pid)
    before = {t.id for t in server.threads()}
    body = {
        "prompt": "talk",
        "model": "hf:tiny",
        "no_cache": True,
        "params": {"max_tokens": 30_000, "extra": {"min_new_tokens": 30_000}},
    }
    with jupyter.client() as client, client.stream("POST", "chat/stream", json=body) as response:
        lines = response.iter_lines()  # held: dropping a line iterator closes the connection
        texts = 0
        for line in lines:
            texts += line.startswith('data: {"text"')
            if texts >= 3:
                break
        generating = {t.id for t in server.threads()} - before
        assert generating  # the generate thread, at least
    # A stop is seen within a token; 30,000 tokens take the tiny model far longer than this bound.
    _wait_for(lambda: not generating & {t.id for t in server.threads()}, 10.0, "the generate thread ending")
    # The handler leaves /stats after the thread ends, on the event loop: a moment later under load.
    _wait_for(lambda: _stats(api).in_flight == 0, 10.0, "the server dropping the request")
