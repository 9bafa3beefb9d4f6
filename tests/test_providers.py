"""Each provider through its real client against a loopback server speaking its wire protocol."""

from __future__ import annotations

import asyncio

import pytest

from farm_jupyter import providers as registry
from farm_jupyter.errors import (
    AuthenticationError,
    BadRequest,
    ModelNotFound,
    NotConfigured,
    ProviderError,
    ProviderResponseError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from farm_jupyter.providers.ollama import POOLS
from farm_jupyter.runtime import get_runtime
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY, loopback_settings
from farm_jupyter.types import ChatMessage, ChatRequest, GenerationParams

pytestmark = pytest.mark.timeout(60)


def request(text: str = "hello there", model: str = "llama3.1", **params: object) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage(role="user", content=text)], model=model, params=GenerationParams(**params)
    )


@pytest.fixture
def ollama(ollama_server: OllamaServer):
    provider = registry.create("ollama", loopback_settings(ollama_server))
    yield provider
    get_runtime().run(provider.aclose())


@pytest.fixture
def openai(openai_server: OpenAIServer):
    provider = registry.create("openai", loopback_settings(openai_server=openai_server))
    yield provider
    get_runtime().run(provider.aclose())


def texts(provider, req: ChatRequest) -> tuple[str, object]:
    chunks = list(provider.stream(req))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks[-1]


# -- Ollama ---------------------------------------------------------------------------------------


def test_ollama_streams_a_chat_with_usage(ollama, ollama_server):
    text, final = texts(ollama, request())
    assert text == "Echo: hello there"
    assert final.usage.completion_tokens == len(text.split()) and final.usage.prompt_tokens > 0
    assert final.finish_reason == "stop" and final.provider_total is not None
    (sent,) = ollama_server.requests
    assert sent.path == "/api/chat" and sent.json["stream"] is True
    assert sent.json["messages"] == [{"role": "user", "content": "hello there"}]


def test_ollama_opens_another_connection_pool_only_while_the_others_are_busy(ollama, ollama_server):
    for _ in range(3):
        ollama.chat(request())
    assert len(ollama._clients) == 1  # one after another: one pool, its kept-alive connection
    ollama_server.latency = 0.2

    async def burst() -> list[str]:
        async def one(i: int) -> str:
            return "".join([c.text async for c in ollama.astream(request(f"q{i}"))])

        return await asyncio.gather(*(one(i) for i in range(12)))

    assert get_runtime().run(burst()) == [f"Echo: q{i}" for i in range(12)]
    assert len(ollama._clients) == POOLS and ollama_server.count("/api/chat") == 15


def test_ollama_chat_generate_and_params(ollama, ollama_server):
    response = ollama.chat(request(temperature=0.2, max_tokens=2, seed=7))
    assert response.text == "Echo: hello " and response.finish_reason == "length"
    assert ollama_server.requests[-1].json["options"] == {"temperature": 0.2, "num_predict": 2, "seed": 7}
    generated = ollama.generate("a prompt")
    assert generated.text == "Echo: a prompt"
    assert ollama_server.requests[-1].path == "/api/generate"
    assert "".join(c.text for c in ollama.generate_stream("streamed")) == "Echo: streamed"


def test_ollama_model_names_with_and_without_tag(ollama):
    assert ollama.normalize_model("llama3.1") == ollama.normalize_model("llama3.1:latest") == "llama3.1:latest"
    assert ollama.chat(request(model="llama3.1:latest")).text == ollama.chat(request(model="llama3.1")).text


def test_ollama_models_pull_load_unload_health_embed(ollama, ollama_server):
    rt = get_runtime()
    names = {m.name for m in rt.run(ollama.list_models())}
    assert "llama3.1:latest" in names
    progress = list(rt.iterate(ollama.load_model("phi3")))
    assert progress[0].status == "pulling manifest"
    assert any(p.total and p.completed is not None for p in progress)
    assert progress[-1].status == "loaded"
    models = {m.name: m for m in rt.run(ollama.list_models())}
    assert models["phi3:latest"].loaded
    rt.run(ollama.unload_model("phi3"))
    assert ollama_server.requests[-1].json["keep_alive"] == 0
    assert not {m.name: m for m in rt.run(ollama.list_models())}["phi3:latest"].loaded
    status = rt.run(ollama.health())
    assert status.state == "healthy" and status.version and status.url == ollama_server.url
    vectors = rt.run(ollama.embed(["a", "b"]))
    assert len(vectors) == 2 and all(len(v) == len(vectors[0]) > 0 for v in vectors)


def test_ollama_pull_error_line_is_an_error(ollama):
    with pytest.raises(ModelNotFound, match="file does not exist"):
        list(get_runtime().iterate(ollama.load_model("missing-model")))


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault(kind="status", status=500), ServerError, "answered 500"),
        (Fault(kind="status", status=429, retry_after=3), RateLimited, "answered 429"),
        (Fault(kind="status", status=400), BadRequest, "answered 400"),
        (Fault(kind="drop", after=2), StreamInterrupted, "closed the connection"),
        (Fault(kind="malformed", after=1), StreamInterrupted, "malformed line"),
        (Fault(kind="error_line", after=1), ServerError, "failed"),
    ],
)
def test_ollama_faults_map_to_error_classes(ollama, ollama_server, fault, error, message):
    ollama_server.add_fault(fault)
    with pytest.raises(error, match=message) as info:
        list(ollama.stream(request()))
    assert info.value.provider == "ollama"
    assert ollama_server.count("/api/chat") == 1
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 3


def test_ollama_unknown_model_says_pull_it(ollama):
    with pytest.raises(ModelNotFound, match=r"%farm pull nosuch"):
        ollama.chat(request(model="nosuch"))


def test_ollama_refused_says_how_to_start_it(ollama, ollama_server):
    ollama_server.refuse()
    with pytest.raises(ProviderUnavailable, match="ollama serve") as info:
        ollama.chat(request())
    assert ollama_server.url in str(info.value)
    assert "\n" not in str(info.value)


def test_ollama_timeout(ollama_server):
    settings = loopback_settings(ollama_server, timeouts={"total": 0.3})
    provider = registry.create("ollama", settings)
    ollama_server.add_fault(Fault(kind="delay", delay=2.0))
    with pytest.raises(ProviderTimeout):
        provider.chat(request())
    get_runtime().run(provider.aclose())


def test_ollama_host_without_scheme(ollama_server):
    from farm_jupyter.config import load_settings

    settings = load_settings(environ={"OLLAMA_HOST": ollama_server.host_port}, use_file=False)
    provider = registry.create("ollama", settings)
    assert provider.url == ollama_server.url
    assert provider.chat(request()).text == "Echo: hello there"
    get_runtime().run(provider.aclose())


# -- OpenAI ---------------------------------------------------------------------------------------


def test_openai_streams_with_usage(openai, openai_server):
    text, final = texts(openai, request(model="gpt-4o-mini"))
    assert text == "Echo: hello there"
    assert final.usage.completion_tokens > 0 and final.usage.prompt_tokens > 0
    assert final.finish_reason == "stop"
    sent = openai_server.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json["stream"] is True and sent.json["stream_options"] == {"include_usage": True}
    assert sent.headers["authorization"] == f"Bearer {TEST_API_KEY}"


def test_openai_params_models_embed_health(openai, openai_server):
    response = openai.chat(request(model="gpt-4o-mini", temperature=0, max_tokens=2))
    assert response.finish_reason == "length" and response.text == "Echo: hello "
    assert openai_server.requests[-1].json["max_tokens"] == 2
    rt = get_runtime()
    assert {m.name for m in rt.run(openai.list_models())} >= {"gpt-4o-mini"}
    assert rt.run(openai.health()).state == "healthy"
    assert len(rt.run(openai.embed(["x", "y"], model="gpt-4o-mini"))) == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(kind="status", status=500), ServerError),
        (Fault(kind="status", status=503), ServerError),
        (Fault(kind="status", status=429, retry_after=2), RateLimited),
        (Fault(kind="drop", after=2), StreamInterrupted),
        (Fault(kind="malformed", after=1), ProviderError),
        (Fault(kind="error_line", after=1), ProviderResponseError),
    ],
)
def test_openai_faults_map_to_error_classes(openai, openai_server, fault, error):
    openai_server.add_fault(fault)
    with pytest.raises(error) as info:
        openai.chat(request(model="gpt-4o-mini"))
    assert "\n" not in str(info.value)
    assert openai_server.count("/v1/chat/completions") == 1  # the SDK's own retries are off
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 2


def test_openai_bad_key_is_masked(openai_server):
    settings = loopback_settings(openai_server=openai_server, openai={"api_key": "sk-wrong-key-abcdef123456"})
    provider = registry.create("openai", settings)
    with pytest.raises(AuthenticationError) as info:
        provider.chat(request(model="gpt-4o-mini"))
    assert "sk-wrong-key-abcdef123456" not in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert "sk-wrong-key-abcdef123456" not in repr(provider)
    get_runtime().run(provider.aclose())


def test_openai_unknown_model(openai):
    with pytest.raises(ModelNotFound, match="farm models"):
        openai.chat(request(model="gpt-nope"))


def test_openai_without_key_says_set_it():
    from farm_jupyter.config import load_settings

    provider = registry.create("openai", load_settings(environ={}, use_file=False))
    with pytest.raises(NotConfigured, match="set OPENAI_API_KEY"):
        provider.chat(request(model="gpt-4o-mini"))


def test_openai_refused(openai, openai_server):
    openai_server.refuse()
    with pytest.raises(ProviderUnavailable, match="not reachable"):
        openai.chat(request(model="gpt-4o-mini"))


# -- custom providers -----------------------------------------------------------------------------


def test_custom_function_provider_is_a_provider():
    from farm_jupyter.config import load_settings

    async def reverse(messages, **params):
        for word in messages[-1]["content"].split()[::-1]:
            yield word + " "

    registry.register_provider("reverse", reverse)
    try:
        provider = registry.create("reverse", load_settings(environ={}, use_file=False))
        assert provider.chat(request("a b c")).text == "c b a "
        assert "reverse" in registry.available()
    finally:
        registry.unregister_provider("reverse")


def test_custom_provider_yielding_non_strings_is_a_clear_error():
    from farm_jupyter.config import load_settings

    registry.register_provider("numbers", lambda messages, **p: [1, 2])
    try:
        provider = registry.create("numbers", load_settings(environ={}, use_file=False))
        with pytest.raises(ProviderResponseError, match="yielded int, not str"):
            provider.chat(request())
    finally:
        registry.unregister_provider("numbers")


def test_custom_provider_that_fails_to_start():
    from farm_jupyter.config import load_settings
    from farm_jupyter.errors import ConfigError
    from farm_jupyter.providers.base import Provider

    class Broken(Provider):
        def __init__(self, name, settings, **options):
            raise RuntimeError("no licence")

        def astream(self, request):  # pragma: no cover - never built
            raise NotImplementedError

    registry.register_provider("broken", Broken)
    try:
        with pytest.raises(ConfigError, match="'broken' failed to start: RuntimeError: no licence"):
            registry.create("broken", load_settings(environ={}, use_file=False))
    finally:
        registry.unregister_provider("broken")


def test_unknown_provider_lists_the_known_ones():
    from farm_jupyter.config import load_settings
    from farm_jupyter.errors import UnknownProvider

    with pytest.raises(UnknownProvider, match="ollama"):
        registry.create("nope", load_settings(environ={}, use_file=False))


def test_a_blocking_sync_provider_does_not_stall_other_streams(ollama_server):
    """A plain `def` that blocks runs in a worker thread: the runtime loop keeps serving others."""
    import threading

    from farm_jupyter.sessions import Session
    from farm_jupyter.testing.pytest_plugin import loopback_settings

    release = threading.Event()
    events: list[str] = []

    def blocking(messages, **params):
        release.wait(30)  # e.g. a blocking HTTP client
        events.append("blocking answered")
        yield "done"

    registry.register_provider("blocking", blocking)
    s = Session(loopback_settings(ollama_server))
    try:
        slow = s.aio.runtime.submit(s.aio.chat("wait", "blocking:blocking", no_cache=True))
        ollama_server.tokens = 20
        answer = s.chat("meanwhile", "ollama", no_cache=True)  # would wait 30 s on a blocked loop
        events.append("ollama answered")
        release.set()
        assert slow.result(timeout=30).text == "done"
        assert events == ["ollama answered", "blocking answered"]
        assert answer.usage.completion_tokens == 20
    finally:
        release.set()
        registry.unregister_provider("blocking")
        s.close()
