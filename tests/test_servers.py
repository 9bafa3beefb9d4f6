"""The loopback Ollama and OpenAI servers, seen from real clients (httpx, the openai SDK)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import farm_jupyter.testing as testing
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer, RecordedRequest

pytestmark = pytest.mark.timeout(60)

TIMEOUT = httpx.Timeout(5.0)
CHAT = {"model": "llama3.1", "messages": [{"role": "user", "content": "hello there world"}]}
OA_MESSAGES: Any = [{"role": "user", "content": "hello there world"}]
OA_CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": OA_MESSAGES}
KEY = "sk-test-0123456789abcdef"


def _server_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("farm-")}


def _wait_no_server_threads(before: set[threading.Thread], timeout: float = 5.0) -> set[threading.Thread]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        extra = _server_threads() - before
        if not extra:
            return set()
        time.sleep(0.02)
    return _server_threads() - before


@pytest.fixture
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer() as srv:
        yield srv


@pytest.fixture
def oai() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def _ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line]


def _sse(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_exports() -> None:
    assert sorted(testing.__all__) == [
        "Fault",
        "OllamaServer",
        "OpenAIServer",
        "RecordedRequest",
        "Said",
        "example_of",
        "wait_until",
    ]
    for name in testing.__all__:
        assert getattr(testing, name).__module__.startswith("farm_jupyter.testing.")


# Ollama: protocol


def test_ollama_root_version_and_head(ollama: OllamaServer, client: httpx.Client) -> None:
    assert ollama.url == f"http://{ollama.host_port}"
    assert ollama.host_port.startswith("127.0.0.1:")
    root = client.get(ollama.url)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    head = client.head(ollama.url)
    assert head.status_code == 200 and head.content == b""
    assert client.get(f"{ollama.url}/api/version").json() == {"version": "0.6.0"}


def test_ollama_chat_stream_framing_and_stats(ollama: OllamaServer, client: httpx.Client) -> None:
    with client.stream("POST", f"{ollama.url}/api/chat", json=CHAT) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["transfer-encoding"] == "chunked"
        lines = _ndjson(r)
    *parts, final = lines
    assert [p["message"]["content"] for p in parts] == ["Echo: ", "hello ", "there ", "world"]
    assert all(p["done"] is False and p["model"] == "llama3.1" for p in parts)
    assert all(p["message"]["role"] == "assistant" and p["created_at"].endswith("Z") for p in parts)
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 4 and final["prompt_eval_count"] == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert final["total_duration"] >= final["load_duration"] + final["prompt_eval_duration"]


def test_ollama_chat_non_stream(ollama: OllamaServer, client: httpx.Client) -> None:
    r = client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False})
    body = r.json()
    assert r.headers["content-type"].startswith("application/json")
    assert body["message"] == {"role": "assistant", "content": "Echo: hello there world"}
    assert body["done"] is True and body["done_reason"] == "stop" and body["eval_count"] == 4


def test_ollama_generate_stream_and_non_stream(ollama: OllamaServer, client: httpx.Client) -> None:
    request = {"model": "qwen2.5:0.5b", "prompt": "why is the sky blue"}
    with client.stream("POST", f"{ollama.url}/api/generate", json=request) as r:
        lines = _ndjson(r)
    assert "".join(line["response"] for line in lines) == "Echo: why is the sky blue"
    assert lines[-1]["done"] is True and lines[-1]["response"] == "" and lines[-1]["prompt_eval_count"] == 5
    whole = client.post(f"{ollama.url}/api/generate", json={**request, "stream": False}).json()
    assert whole["response"] == "Echo: why is the sky blue" and whole["done_reason"] == "stop"


def test_ollama_reply_string_callable_and_tokens(client: httpx.Client) -> None:
    with OllamaServer(reply="fixed  answer\nhere") as srv:
        with client.stream("POST", f"{srv.url}/api/chat", json=CHAT) as r:
            parts = [line["message"]["content"] for line in _ndjson(r)][:-1]
        assert parts == ["fixed  ", "answer\n", "here"]
    with OllamaServer(reply=lambda body: body["model"].upper()) as srv:
        body = client.post(f"{srv.url}/api/chat", json={**CHAT, "stream": False}).json()
        assert body["message"]["content"] == "LLAMA3.1"
    with OllamaServer(tokens=50) as srv:
        with client.stream("POST", f"{srv.url}/api/chat", json=CHAT) as r:
            lines = _ndjson(r)
        assert [line["message"]["content"] for line in lines[:-1]] == [f"tok{i} " for i in range(50)]
        assert lines[-1]["eval_count"] == 50


def test_ollama_num_predict_truncates(ollama: OllamaServer, client: httpx.Client) -> None:
    request = {**CHAT, "options": {"num_predict": 2, "temperature": 0}}
    with client.stream("POST", f"{ollama.url}/api/chat", json=request) as r:
        lines = _ndjson(r)
    assert [line["message"]["content"] for line in lines[:-1]] == ["Echo: ", "hello "]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 2
    roomy = client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False, "options": {"num_predict": 99}})
    assert roomy.json()["done_reason"] == "stop"


def test_ollama_model_names_and_unknown_model(ollama: OllamaServer, client: httpx.Client) -> None:
    for name in ("llama3.1", "llama3.1:latest"):
        r = client.post(f"{ollama.url}/api/chat", json={**CHAT, "model": name, "stream": False})
        assert r.status_code == 200 and r.json()["model"] == name
    for path in ("/api/chat", "/api/generate"):
        r = client.post(f"{ollama.url}{path}", json={"model": "nope", "prompt": "x", "messages": []})
        assert r.status_code == 404
        assert r.json() == {"error": 'model "nope" not found, try pulling it first'}


def test_ollama_load_unload_and_ps(ollama: OllamaServer, client: httpx.Client) -> None:
    assert ollama.loaded == set()
    assert client.get(f"{ollama.url}/api/ps").json() == {"models": []}
    client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False})
    assert ollama.loaded == {"llama3.1:latest"}
    (running,) = client.get(f"{ollama.url}/api/ps").json()["models"]
    assert running["name"] == running["model"] == "llama3.1:latest"
    for key in ("size", "digest", "details", "expires_at", "size_vram"):
        assert key in running
    unload = client.post(f"{ollama.url}/api/chat", json={"model": "llama3.1", "messages": [], "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload" and unload.json()["message"]["content"] == ""
    assert ollama.loaded == set()
    load = client.post(f"{ollama.url}/api/generate", json={"model": "qwen2.5:0.5b"}).json()
    assert load["done_reason"] == "load" and ollama.loaded == {"qwen2.5:0.5b"}
    gone = client.post(f"{ollama.url}/api/generate", json={"model": "qwen2.5:0.5b", "keep_alive": 0}).json()
    assert gone == {**gone, "response": "", "done": True, "done_reason": "unload"}
    assert ollama.loaded == set()


def test_ollama_tags_and_show(ollama: OllamaServer, client: httpx.Client) -> None:
    models = client.get(f"{ollama.url}/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["llama3.1:latest", "qwen2.5:0.5b"]
    for m in models:
        assert m["model"] == m["name"] and len(m["digest"]) == 64 and m["size"] > 0
        assert m["details"]["format"] == "gguf" and m["details"]["quantization_level"] == "Q4_K_M"
    assert models[1]["details"]["parameter_size"] == "0.5B"
    show = client.post(f"{ollama.url}/api/show", json={"model": "llama3.1"}).json()
    assert {"modelfile", "parameters", "template", "details", "model_info"} <= set(show)
    assert show["capabilities"] == ["completion", "tools", "thinking"]  # "vision" for llava and its kind
    missing = client.post(f"{ollama.url}/api/show", json={"model": "nope"})
    assert missing.status_code == 404 and "error" in missing.json()


def test_ollama_pull_progress_and_missing(ollama: OllamaServer, client: httpx.Client) -> None:
    with client.stream("POST", f"{ollama.url}/api/pull", json={"model": "phi3:mini"}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = _ndjson(r)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [line for line in lines if "digest" in line]
    assert len({line["digest"] for line in layers}) == 2
    assert all(0 <= line["completed"] <= line["total"] for line in layers)
    assert layers[-1]["completed"] == layers[-1]["total"]
    assert "phi3:mini" in ollama.models
    with client.stream("POST", f"{ollama.url}/api/pull", json={"model": "missing-model"}) as r:
        bad = _ndjson(r)
    assert bad[-1] == {"error": "pull model manifest: file does not exist"}
    assert "missing-model:latest" not in ollama.models
    quiet = client.post(f"{ollama.url}/api/pull", json={"model": "gemma2", "stream": False})
    assert quiet.json() == {"status": "success"} and "gemma2:latest" in ollama.models


def test_ollama_embed(ollama: OllamaServer, client: httpx.Client) -> None:
    one = client.post(f"{ollama.url}/api/embed", json={"model": "llama3.1", "input": "alpha"}).json()
    two = client.post(f"{ollama.url}/api/embed", json={"model": "llama3.1", "input": ["alpha", "beta"]}).json()
    assert len(one["embeddings"]) == 1 and len(two["embeddings"]) == 2
    assert one["embeddings"][0] == two["embeddings"][0] != two["embeddings"][1]
    for vector in two["embeddings"]:
        assert len(vector) == 8 and math.isclose(math.fsum(x * x for x in vector), 1.0)
    assert {"total_duration", "load_duration", "prompt_eval_count"} <= set(one)
    assert client.post(f"{ollama.url}/api/embed", json={"model": "x", "input": "a"}).status_code == 404


def test_ollama_unknown_path_and_bad_json(ollama: OllamaServer, client: httpx.Client) -> None:
    r = client.get(f"{ollama.url}/api/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.post(f"{ollama.url}/api/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert ollama.requests[-1].json is None


def test_latency_and_chunk_delay(client: httpx.Client) -> None:
    with OllamaServer(latency=0.3, chunk_delay=0.05, tokens=4) as srv:
        assert client.get(f"{srv.url}/api/tags").status_code == 200  # latency is model time only
        started = time.monotonic()
        with client.stream("POST", f"{srv.url}/api/chat", json=CHAT) as r:
            first = time.monotonic()
            lines = _ndjson(r)
        done = time.monotonic()
    assert len(lines) == 5
    assert first - started >= 0.3
    assert done - started >= 0.3 + 3 * 0.05 - 0.01  # three gaps between four chunks


# faults


def test_status_fault_with_retry_after_and_times(ollama: OllamaServer, client: httpx.Client) -> None:
    fault = ollama.add_fault(Fault("status", path="/api/chat", status=503, retry_after=2))
    first = client.post(f"{ollama.url}/api/chat", json=CHAT)
    assert first.status_code == 503 and first.headers["retry-after"] == "2"
    assert "error" in first.json()
    assert client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False}).status_code == 200
    assert fault.hits == 1


def test_status_fault_always_and_path_filter(ollama: OllamaServer, client: httpx.Client) -> None:
    ollama.add_fault(Fault("status", path="/api/chat", times=None, status=500, body={"error": "boom"}))
    for _ in range(3):
        r = client.post(f"{ollama.url}/api/chat", json=CHAT)
        assert (r.status_code, r.json()) == (500, {"error": "boom"})
    assert "retry-after" not in r.headers
    assert client.get(f"{ollama.url}/api/tags").status_code == 200
    ollama.clear()
    assert ollama.faults == [] and ollama.requests == []
    assert client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False}).status_code == 200


def test_times_counts_and_any_path(ollama: OllamaServer, client: httpx.Client) -> None:
    fault = ollama.add_fault(Fault("status", times=2, status=502))
    codes = [client.get(f"{ollama.url}/api/tags").status_code for _ in range(4)]
    assert codes == [502, 502, 200, 200] and fault.hits == 2


def test_delay_fault(ollama: OllamaServer, client: httpx.Client) -> None:
    fault = ollama.add_fault(Fault("delay", path="/api/tags", delay=0.3))
    with pytest.raises(httpx.ReadTimeout):  # held for 0.3 s at least: longer than this client waits
        client.get(f"{ollama.url}/api/tags", timeout=httpx.Timeout(5.0, read=0.1))
    assert client.get(f"{ollama.url}/api/tags").status_code == 200
    assert fault.hits == 1  # the second request was not delayed


def test_drop_fault_breaks_stream(ollama: OllamaServer, client: httpx.Client) -> None:
    ollama.add_fault(Fault("drop", path="/api/chat", after=2))
    seen = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", f"{ollama.url}/api/chat", json=CHAT) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                seen.append(json.loads(line))
    assert [s["message"]["content"] for s in seen] == ["Echo: ", "hello "]
    assert client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False}).status_code == 200


def test_drop_fault_on_plain_json(ollama: OllamaServer, client: httpx.Client) -> None:
    ollama.add_fault(Fault("drop", path="/api/tags"))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{ollama.url}/api/tags")


def test_malformed_fault(ollama: OllamaServer, client: httpx.Client) -> None:
    ollama.add_fault(Fault("malformed", path="/api/chat", after=1))
    with client.stream("POST", f"{ollama.url}/api/chat", json=CHAT) as r:
        lines = list(r.iter_lines())
    assert json.loads(lines[0])["message"]["content"] == "Echo: "
    assert len(lines) == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1])


def test_error_line_fault_ollama(ollama: OllamaServer, client: httpx.Client) -> None:
    ollama.add_fault(Fault("error_line", path="/api/chat", after=3))
    with client.stream("POST", f"{ollama.url}/api/chat", json=CHAT) as r:
        lines = _ndjson(r)
    assert len(lines) == 4 and "error" in lines[-1] and "done" not in lines[-1]


def test_hang_fault_is_released_by_stop() -> None:
    before = _server_threads()
    srv = OllamaServer().start()
    srv.add_fault(Fault("hang"))
    with httpx.Client(timeout=httpx.Timeout(0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get(f"{srv.url}/api/tags")
    outcome: list[BaseException] = []

    def hung_request() -> None:
        srv.add_fault(Fault("hang"))
        try:
            with httpx.Client(timeout=TIMEOUT) as c:
                c.get(f"{srv.url}/api/tags")
        except httpx.HTTPError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=hung_request)
    waiter.start()
    deadline = time.monotonic() + 5
    while srv.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.stop()  # the hung request is cut, not waited for (the pytest timeout bounds a hang)
    waiter.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)
    assert _wait_no_server_threads(before) == set()


def test_probability_is_seeded() -> None:
    def pattern(seed: int) -> list[int]:
        with OllamaServer(seed=seed) as srv, httpx.Client(timeout=TIMEOUT) as c:
            srv.add_fault(Fault("status", times=None, probability=0.5))
            return [c.get(f"{srv.url}/api/version").status_code for _ in range(20)]

    first, again = pattern(7), pattern(7)
    assert first == again
    assert 500 in first and 200 in first


def test_refuse_then_accept(ollama: OllamaServer, client: httpx.Client) -> None:
    url = ollama.url
    assert client.get(url).status_code == 200
    ollama.refuse()
    with pytest.raises(httpx.ConnectError):
        client.get(url)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=2).close()
    ollama.accept()
    assert ollama.url == url
    assert client.get(url).text == "Ollama is running"
    ollama.accept()  # no-op when already accepting


def test_request_log(ollama: OllamaServer, client: httpx.Client) -> None:
    client.get(f"{ollama.url}/api/tags?x=1", headers={"X-Trace": "abc"})
    client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False})
    client.post(f"{ollama.url}/api/chat", json={**CHAT, "stream": False})
    tags, chat, _ = ollama.requests
    assert tags == RecordedRequest("GET", "/api/tags", None, tags.headers)
    assert tags.headers["x-trace"] == "abc" and all(k == k.lower() for k in tags.headers)
    assert chat.method == "POST" and chat.json == {**CHAT, "stream": False}
    assert ollama.count() == 3
    assert ollama.count("/api/chat") == 2
    assert ollama.count(method="GET") == 1
    assert ollama.count("/api/chat", method="GET") == 0
    with pytest.raises(AttributeError):
        chat.path = "/x"  # type: ignore[misc]


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probability"):
        Fault("drop", probability=2)


def test_max_connections_bound(client: httpx.Client) -> None:
    with OllamaServer(max_connections=1) as srv:
        held = socket.create_connection(("127.0.0.1", int(srv.host_port.split(":")[1])), timeout=2)
        try:
            deadline = time.monotonic() + 5
            while True:
                r = client.get(srv.url, headers={"connection": "close"})
                if r.status_code == 503 or time.monotonic() > deadline:
                    break
            assert r.status_code == 503
        finally:
            held.close()


# lifecycle and load


def test_concurrent_streams() -> None:
    n, tokens = 64, 200

    async def one(c: httpx.AsyncClient, url: str, i: int) -> list[str]:
        body = {**CHAT, "messages": [{"role": "user", "content": f"stream {i}"}]}
        async with c.stream("POST", f"{url}/api/chat", json=body) as r:
            return [json.loads(line)["message"]["content"] async for line in r.aiter_lines() if line]

    async def run(url: str) -> list[list[str]]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(timeout=httpx.Timeout(20.0), limits=limits) as c:
            return await asyncio.gather(*(one(c, url, i) for i in range(n)))

    before = _server_threads()
    with OllamaServer(tokens=tokens, chunk_delay=0.001) as srv:
        results = asyncio.run(asyncio.wait_for(run(srv.url), 30))
        assert srv.count("/api/chat") == n
    assert len(results) == n
    assert all(len(parts) == tokens + 1 and parts[-2] == f"tok{tokens - 1} " for parts in results)
    assert _wait_no_server_threads(before) == set()


def test_stop_closes_everything() -> None:
    before = _server_threads()
    srv = OllamaServer(tokens=1000, chunk_delay=0.05).start()
    url = srv.url
    idle = httpx.Client(timeout=TIMEOUT)
    streaming = httpx.Client(timeout=TIMEOUT)
    try:
        assert idle.get(url).status_code == 200  # leaves a keep-alive connection open
        with streaming.stream("POST", f"{srv.url}/api/chat", json=CHAT) as r:
            lines = r.iter_lines()
            next(lines)
            assert len(_server_threads() - before) >= 3
            srv.stop()  # cuts the 50 s stream: it ends in an error, not after its 1000 tokens
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in lines:
                    pass
        srv.stop()  # idempotent
        with pytest.raises(httpx.ConnectError):
            idle.get(url)
    finally:
        idle.close()
        streaming.close()
    assert _wait_no_server_threads(before) == set()
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.url


# OpenAI


def test_openai_auth(oai: OpenAIServer, client: httpx.Client) -> None:
    missing = client.get(f"{oai.url}/v1/models")
    assert missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]
    wrong_key = "sk-wrong-secret-key-9999"
    wrong = client.get(f"{oai.url}/v1/models", headers={"authorization": f"Bearer {wrong_key}"})
    error = wrong.json()["error"]
    assert wrong.status_code == 401
    assert error["message"] == "Incorrect API key provided: sk-...9999."
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "invalid_api_key")
    assert wrong_key not in wrong.text and KEY not in wrong.text and KEY not in repr(oai)
    ok = client.get(f"{oai.url}/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    with OpenAIServer(api_key=None) as open_srv:
        assert client.get(f"{open_srv.url}/v1/models").status_code == 200


def test_openai_sse_framing(oai: OpenAIServer, client: httpx.Client) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    with client.stream(
        "POST", f"{oai.url}/v1/chat/completions", json={**OA_CHAT, "stream": True}, headers=headers
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        raw = r.read()
    events = raw.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Echo: hello there world"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_openai_sdk_chat_and_stream_with_usage(oai: OpenAIServer) -> None:
    from openai import AsyncOpenAI

    async def run() -> None:
        async with AsyncOpenAI(base_url=oai.url + "/v1", api_key=KEY, max_retries=0, timeout=5) as c:
            whole = await c.chat.completions.create(model="gpt-4o-mini", messages=OA_MESSAGES)
            assert whole.choices[0].message.content == "Echo: hello there world"
            assert whole.choices[0].finish_reason == "stop"
            assert whole.usage is not None
            assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (3, 4, 7)
            stream = await c.chat.completions.create(
                model="gpt-4o-mini", messages=OA_MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
            assert chunks[0].choices[0].delta.role == "assistant"
            assert (
                "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Echo: hello there world"
            )
            assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
            assert chunks[-1].choices == [] and chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == 4
            assert all(ch.usage is None for ch in chunks[:-1])

    asyncio.run(asyncio.wait_for(run(), 20))


def test_openai_max_tokens_models_and_unknown_model(oai: OpenAIServer) -> None:
    from openai import AsyncOpenAI, NotFoundError

    async def run() -> None:
        async with AsyncOpenAI(base_url=oai.base_url, api_key=KEY, max_retries=0, timeout=5) as c:
            short = await c.chat.completions.create(model="gpt-4o-mini", messages=OA_MESSAGES, max_tokens=2)
            assert short.choices[0].message.content == "Echo: hello "
            assert short.choices[0].finish_reason == "length"
            newer = await c.chat.completions.create(model="gpt-4o-mini", messages=OA_MESSAGES, max_completion_tokens=1)
            assert newer.choices[0].finish_reason == "length" and newer.usage is not None
            assert newer.usage.completion_tokens == 1
            models = await c.models.list()
            assert [m.id for m in models.data] == ["gpt-4o-mini", "gpt-4o"]
            assert (await c.models.retrieve("gpt-4o")).id == "gpt-4o"
            with pytest.raises(NotFoundError) as info:
                await c.chat.completions.create(model="gpt-9", messages=OA_MESSAGES)
            assert info.value.code == "model_not_found"
            assert "The model `gpt-9` does not exist" in info.value.message

    asyncio.run(asyncio.wait_for(run(), 20))


def test_openai_embeddings(client: httpx.Client) -> None:
    from openai import AsyncOpenAI

    with OpenAIServer(models=("text-embedding-3-small",), api_key=KEY) as srv:

        async def run() -> None:
            async with AsyncOpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0, timeout=5) as c:
                result = await c.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
                assert [d.index for d in result.data] == [0, 1]
                assert len(result.data[0].embedding) == 8
                assert result.usage.prompt_tokens == 3
                as_floats = await c.embeddings.create(
                    model="text-embedding-3-small", input="a", encoding_format="float"
                )
                assert as_floats.data[0].embedding == pytest.approx(result.data[0].embedding)

        asyncio.run(asyncio.wait_for(run(), 20))
        raw = client.post(
            f"{srv.base_url}/embeddings",
            json={"model": "text-embedding-3-small", "input": "a", "encoding_format": "base64"},
            headers={"authorization": f"Bearer {KEY}"},
        ).json()
        packed = base64.b64decode(raw["data"][0]["embedding"])
        vector = struct.unpack(f"<{len(packed) // 4}f", packed)
        assert len(vector) == 8 and math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-5)


def test_openai_rate_limit_fault(oai: OpenAIServer) -> None:
    from openai import AsyncOpenAI, RateLimitError

    oai.add_fault(Fault("status", path="/v1/chat/completions", status=429, retry_after=1.5))

    async def run() -> None:
        async with AsyncOpenAI(base_url=oai.base_url, api_key=KEY, max_retries=0, timeout=5) as c:
            with pytest.raises(RateLimitError) as info:
                await c.chat.completions.create(model="gpt-4o-mini", messages=OA_MESSAGES)
            assert info.value.response.headers["retry-after"] == "1.5"
            assert info.value.type == "rate_limit_exceeded" and info.value.code == "rate_limit_exceeded"
            ok = await c.chat.completions.create(model="gpt-4o-mini", messages=OA_MESSAGES)
            assert ok.choices[0].message.content

    asyncio.run(asyncio.wait_for(run(), 20))


def test_openai_stream_faults_through_sdk(oai: OpenAIServer) -> None:
    from openai import APIConnectionError, APIError, AsyncOpenAI

    async def collect(c: AsyncOpenAI) -> list[str]:
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=OA_MESSAGES, stream=True)
        return [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]

    async def run() -> None:
        async with AsyncOpenAI(base_url=oai.base_url, api_key=KEY, max_retries=0, timeout=5) as c:
            oai.add_fault(Fault("error_line", after=2))
            with pytest.raises(APIError) as info:
                await collect(c)
            assert info.value.message == "The server had an error while processing your request."
            oai.add_fault(Fault("drop", after=1))
            with pytest.raises(APIConnectionError):
                await collect(c)
            oai.add_fault(Fault("malformed", after=0))
            with pytest.raises(json.JSONDecodeError):
                await collect(c)
            assert "".join(await collect(c)) == "Echo: hello there world"

    asyncio.run(asyncio.wait_for(run(), 20))


def test_openai_raw_error_line_and_status_body(oai: OpenAIServer, client: httpx.Client) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    oai.add_fault(Fault("error_line", after=1, body={"error": {"message": "overloaded", "type": "server_error"}}))
    with client.stream(
        "POST", f"{oai.url}/v1/chat/completions", json={**OA_CHAT, "stream": True}, headers=headers
    ) as r:
        events = _sse(r)
    assert json.loads(events[-1]) == {"error": {"message": "overloaded", "type": "server_error"}}
    assert "[DONE]" not in events
    oai.add_fault(Fault("status", status=503))
    r = client.get(f"{oai.url}/v1/models", headers=headers)
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    r = client.post(f"{oai.url}/v1/nothing", json={}, headers=headers)
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/nothing)"


# -- the same protocols on one asyncio loop (benchmarks/server_load.py's upstream) ----------------


def _answers(url: str) -> list[tuple[int, Any]]:
    """What a client sees of a few requests, timestamps and durations left out."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items() if not k.endswith(("_at", "_duration"))}
        return [plain(v) for v in obj] if isinstance(obj, list) else obj

    out: list[tuple[int, Any]] = []
    with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        for method, path, body in [
            ("GET", "/api/tags", None),
            ("POST", "/api/chat", {**CHAT, "stream": False}),
            ("POST", "/api/chat", CHAT),  # NDJSON
            ("POST", "/api/chat", {"model": "nosuch", "messages": CHAT["messages"]}),
        ]:
            response = c.request(method, path, json=body)
            lines = [plain(json.loads(line)) for line in response.text.splitlines() if line]
            out.append((response.status_code, lines))
    return out


def test_the_asyncio_server_speaks_the_same_protocol(ollama: OllamaServer) -> None:
    from farm_jupyter.testing.servers.one_loop import AsyncServer

    loop = asyncio.new_event_loop()
    served = AsyncServer(OllamaServer(latency=0.05))
    url = loop.run_until_complete(served.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert _answers(url) == _answers(ollama.url)
        assert served.protocol.count("/api/chat") == 3
    finally:
        asyncio.run_coroutine_threadsafe(served.aclose(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
