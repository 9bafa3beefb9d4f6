"""The provider x feature matrix (issue 21): every cell of the table either works, tested, or is
refused in one line before anything is sent, tested.

"Works" is read in the provider's own wire field in the loopback servers' request logs (Ollama
`options.stop`, OpenAI `stop`, ...), in what a custom provider was passed, or, for a local engine,
in its effect (a stop string ends the text, a seed repeats the answer) on the tiny random model
(transformers) and the embedded SmolLM2 (llama.cpp). The expectation of each cell is the table's
own (`Capabilities.cell`), so a row that changes is tested as it now says.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from farm_jupyter import embedded, providers
from farm_jupyter.config import load_settings
from farm_jupyter.errors import ConfigError, Unsupported
from farm_jupyter.providers import Provider, capability_table, register_provider, unregister_provider
from farm_jupyter.sessions import Session
from farm_jupyter.structured import SchemaMismatch
from farm_jupyter.testing import OllamaServer, OpenAIServer
from farm_jupyter.testing.servers import TEST_API_KEY
from farm_jupyter.tiny_model import build_tiny_model
from farm_jupyter.types import Capabilities, Chunk, ImagePart, PullProgress, Usage
from farm_jupyter.types.capabilities import FEATURES

pytestmark = pytest.mark.timeout(300)

LOCAL = ("huggingface", "llamacpp")
# A function provider declaring all it may, one declaring nothing; the same for a class.
CUSTOM = ("fn", "fn_all", "cls", "cls_all")
PROVIDERS = ("ollama", "openai", *LOCAL, *CUSTOM)
CHAT, COMPLETIONS = "/api/chat", "/v1/chat/completions"
PNG = ImagePart(data="iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABh6FO1AAAAABJRU5ErkJggg==")
SEEN: list[dict[str, Any]] = []  # what each custom provider was passed, in order


def shout(messages: list[dict[str, Any]], **params: Any) -> Iterator[str]:
    SEEN.append({"messages": messages, **params})
    yield from _answer(params)


def _answer(params: dict[str, Any]) -> list[str]:
    """What a custom provider says: JSON when it is given a schema to follow, else a number."""
    return ['{"answer": ', "4}"] if params.get("response_schema") else ["4", " "]


class Recorder(Provider):
    """A class provider that keeps what it is asked."""

    async def astream(self, request: Any) -> Any:
        SEEN.append({"messages": [m.model_dump() for m in request.messages], **request.params.model_dump()})
        for piece in _answer(SEEN[-1]):
            yield Chunk(text=piece)
        yield Chunk(done=True, usage=Usage(completion_tokens=2), finish_reason="stop")

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        SEEN.append({"embed": texts})
        return [[1.0, 0.0] for _ in texts]

    async def load_model(self, model: str) -> Any:
        SEEN.append({"load": model})
        yield PullProgress(status="success")

    async def unload_model(self, model: str) -> None:
        SEEN.append({"unload": model})


class RecorderAll(Recorder):
    capabilities = Capabilities(frozenset(FEATURES))


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer(models=("llama3.1:latest", "llava:latest", "gemma2:2b", "nomic-embed-text:latest")) as server:
        yield server


@pytest.fixture(scope="module")
def openai() -> Iterator[OpenAIServer]:
    with OpenAIServer(
        models=("gpt-4o-mini", "text-only-model", "text-embedding-3-small"), api_key=TEST_API_KEY
    ) as server:
        yield server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    return build_tiny_model(tmp_path_factory.mktemp("caps") / "tiny-chat")


def _settings(ol: OllamaServer, oa: OpenAIServer, tiny: Path | None, **more: Any) -> Any:
    layer = {
        "env": "test",
        "fallback": [],
        "retry": {"max_retries": 0},
        "timeouts": {"connect": 2.0, "first_token": 240.0, "total": 240.0},
        "ollama": {"host": ol.url, "default_model": "llama3.1"},
        "openai": {"base_url": oa.url + "/v1", "api_key": TEST_API_KEY, "default_model": "gpt-4o-mini"},
        "huggingface": {"device": "cpu", "dtype": "float32", **({"default_model": str(tiny)} if tiny else {})},
        **more,
    }
    return load_settings(layer, environ={}, use_file=False)


@pytest.fixture(scope="module")
def s(ollama: OllamaServer, openai: OpenAIServer, tiny: Path) -> Iterator[Session]:
    register_provider("fn", shout)
    register_provider("fn_all", shout, capabilities=providers.FunctionProvider.TAKES)
    register_provider("cls", Recorder)
    register_provider("cls_all", RecorderAll)
    session = Session(_settings(ollama, openai, tiny))
    yield session
    session.close()
    for name in CUSTOM:
        unregister_provider(name)


def cell(name: str, feature: str) -> str:
    row = providers.declared(name)
    assert row is not None
    return row.cell(feature)


def works(name: str, feature: str) -> bool:
    return cell(name, feature) in ("yes", "per model", "per model (else as text)")


def sent(server: OllamaServer | OpenAIServer, path: str) -> list[dict[str, Any]]:
    return [r.json for r in server.requests if r.path == path]


def refused(s: Session, name: str, feature: str, ask: Any, model: str | None = None) -> None:
    """`ask()` is refused in one line naming the provider and feature, and nothing was sent."""
    before = (len(SEEN), len(s_servers(s)[0].requests), len(s_servers(s)[1].requests))
    with pytest.raises(Unsupported) as caught:
        ask()
    said = str(caught.value)
    who = f"{name}:{model}" if model else name
    assert said.startswith(f"{who} cannot do {feature} here: ") and "\n" not in said, said
    assert f"drop {FEATURES[feature]}" in said
    after = (len(SEEN), len(s_servers(s)[0].requests), len(s_servers(s)[1].requests))
    if model is None:  # a model's own refusal asked /api/show what it can do, and nothing else
        assert after == before
    else:
        assert after[0] == before[0] and after[2] == before[2]
        assert [r.path for r in s_servers(s)[0].requests[before[1] :]] in ([], ["/api/show"])


_SERVERS: dict[int, tuple[OllamaServer, OpenAIServer]] = {}


def s_servers(s: Session) -> tuple[OllamaServer, OpenAIServer]:
    return _SERVERS[id(s)]


@pytest.fixture(autouse=True)
def _known(s: Session, ollama: OllamaServer, openai: OpenAIServer) -> None:
    _SERVERS[id(s)] = (ollama, openai)


def ask(s: Session, name: str, model: str | None = None, **kw: Any) -> Any:
    target = f"{name}:{model}" if model else name
    if works(name, "max_tokens"):
        kw.setdefault("max_tokens", 6)
    return s.chat("What is 2 + 2? Answer with the number.", target, no_cache=True, fallback=False, **kw)


def last(name: str, s: Session) -> dict[str, Any]:
    ollama, openai = s_servers(s)
    if name == "ollama":
        return sent(ollama, CHAT)[-1]
    if name == "openai":
        return sent(openai, COMPLETIONS)[-1]
    return SEEN[-1]


# -- the README prints the table the code declares ----------------------------------------------


def test_the_readme_table_is_the_one_the_providers_declare() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert capability_table() in readme, "README.md: paste providers.capability_table() under ## Providers"


def test_a_function_cannot_declare_what_it_is_never_passed() -> None:
    for feature in ("tools", "think", "embed", "load", "fim"):
        with pytest.raises(ConfigError, match=f"a function provider cannot do {feature}"):
            register_provider("nope", shout, capabilities=[feature])
    with pytest.raises(ConfigError, match="unknown feature 'telepathy'"):
        register_provider("nope", shout, capabilities=["telepathy"])
    assert not providers.is_known("nope")


# -- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
def test_stream(s: Session, name: str) -> None:
    assert cell(name, "stream") == "yes"
    stream = s.stream("Count: one two three", name, no_cache=True, fallback=False)
    pieces = [c.text for c in stream if c.text]
    assert len(pieces) > 1 and stream.response is not None and stream.response.text == "".join(pieces)
    if name in ("ollama", "openai"):
        assert last(name, s)["stream"] is True


class Four(BaseModel):
    answer: int


@pytest.mark.parametrize("name", PROVIDERS)
def test_schema(s: Session, name: str) -> None:
    how = cell(name, "schema")
    if how == "yes":
        if name == "huggingface":  # the tiny random model: each token it may write fits the grammar,
            try:  # but it may never end its number
                r = s.chat("2 + 2?", name, schema=Four, no_cache=True, fallback=False, max_reasks=0, max_tokens=12)
                text = r.text
                assert isinstance(r.parsed, Four)
            except SchemaMismatch as exc:
                assert "cut at max_tokens=12" in str(exc)
                text = exc.response.text
            assert re.fullmatch(r'\{"answer": -?[0-9]+\}?', text), text
            return
        r = s.chat("2 + 2?", name, schema=Four, no_cache=True, fallback=False, max_reasks=0)
        if name in LOCAL:  # constrained by a grammar: its effect is a valid answer on the first try
            assert isinstance(r.parsed, Four)
            return
        body = last(name, s)
        wire = {
            "ollama": lambda: body["format"],
            "openai": lambda: body["response_format"]["json_schema"]["schema"],
        }.get(name, lambda: body["response_schema"])()
        assert wire["properties"]["answer"]["type"] == "integer"
        assert isinstance(r.parsed, Four)
        return
    assert how == "validated + re-ask"
    # Said in the prompt, validated here, asked again: never sent as a schema nor dropped unsaid.
    try:
        r = s.chat("What is 2 + 2? Answer with the number only.", name, schema=int, max_reasks=0, **_small(name))
        assert r.parsed == 4
    except SchemaMismatch as exc:
        assert "did not match" in str(exc) or "cut at max_tokens" in str(exc)
    if name in CUSTOM:
        assert "response_schema" not in SEEN[-1] or SEEN[-1]["response_schema"] is None
        assert any("JSON" in str(m["content"]) for m in SEEN[-1]["messages"])
    # `format="json"` alone has nothing to validate it: refused where it is not sent.
    refused(s, name, "schema", lambda: ask(s, name, format="json"))


def _small(name: str) -> dict[str, Any]:
    return {"max_tokens": 8, "no_cache": True, "fallback": False} if works(name, "max_tokens") else {"no_cache": True}


def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("name", PROVIDERS)
def test_tools(s: Session, name: str) -> None:
    if not works(name, "tools") and cell(name, "tools") == "no":
        return refused(s, name, "tools", lambda: ask(s, name, tools=[weather]))
    r = s.chat("Weather in Paris?", name, tools=[weather], no_cache=True, fallback=False, max_steps=1)
    if name == "ollama":
        assert sent(s_servers(s)[0], CHAT)[-2]["tools"][0]["function"]["name"] == "weather"
        assert [run.name for run in r.tool_runs] == ["weather"]
        # Ollama says per model: gemma2 has no tools, refused before its chat is sent.
        return refused(s, name, "tools", lambda: ask(s, name, "gemma2:2b", tools=[weather]), model="gemma2:2b")
    if name == "openai":
        assert sent(s_servers(s)[1], COMPLETIONS)[-2]["tools"][0]["function"]["name"] == "weather"
        assert [run.name for run in r.tool_runs] == ["weather"]
        return None
    if name in LOCAL:  # a call under a grammar, run in the kernel (tests/test_local_structured.py)
        return None
    assert last(name, s)["tools"][0]["name"] == "weather"  # a class that declares it gets it
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_tool_choice(s: Session, name: str) -> None:
    if cell(name, "tool_choice") == "no":  # the first feature it cannot do is the one said
        first = "tools" if cell(name, "tools") == "no" else "tool_choice"
        return refused(s, name, first, lambda: ask(s, name, tools=[weather], tool_choice="required"))
    r = s.chat("Weather in Paris?", name, tools=[weather], tool_choice="weather", no_cache=True, max_steps=1)
    if name in LOCAL:
        assert [run.name for run in r.tool_runs] == ["weather"]  # the grammar allowed only that call
        return None
    assert last(name, s)["tool_choice"] == "weather"  # a class that declares it gets it
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_think(s: Session, name: str) -> None:
    if cell(name, "think") == "no":
        return refused(s, name, "think", lambda: ask(s, name, think=True))
    if name == "ollama":
        r = ask(s, name, think=True)
        assert last(name, s)["think"] is True and r.thinking
        return refused(s, name, "think", lambda: ask(s, name, "gemma2:2b", think=True), model="gemma2:2b")
    if name == "openai":
        r = ask(s, name, think="low")
        assert last(name, s)["reasoning_effort"] == "low" and r.thinking
        return None
    ask(s, name, think="high")
    assert last(name, s)["think"] == "high"
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_images(s: Session, name: str) -> None:
    how = cell(name, "images")
    seeing = {"ollama": "llava", "openai": "gpt-4o-mini"}.get(name)
    if seeing is not None:
        ask(s, name, seeing, images=[PNG])
        body = last(name, s)
        if name == "ollama":
            assert body["messages"][-1]["images"] == [PNG.data]
        else:
            assert body["messages"][-1]["content"][1]["image_url"]["url"].endswith(PNG.data)
    if how == "if declared" or how == "yes":
        ask(s, name, images=[PNG])
        assert last(name, s)["messages"][-1]["images"][0]["data"] == PNG.data
        return
    # A model that cannot see gets the image's one-line stand-in, and the footer says so.
    blind = {"ollama": "llama3.1", "openai": "text-only-model"}.get(name)
    r = ask(s, name, blind, images=[PNG])
    assert r.notes and "1 image sent as text" in r.notes[0]
    if name in CUSTOM:
        assert not SEEN[-1]["messages"][-1].get("images")


def _text(s: Session, name: str, **kw: Any) -> Any:
    return s.chat("Tell me a story about a lighthouse.", name, no_cache=True, fallback=False, **kw)


@pytest.mark.parametrize("name", PROVIDERS)
def test_stop(s: Session, name: str) -> None:
    if cell(name, "stop") == "no":
        return refused(s, name, "stop", lambda: ask(s, name, stop=["\n\n"]))
    if name not in LOCAL:
        ask(s, name, stop=["END"])
        body = last(name, s)
        assert (body["options"]["stop"] if name == "ollama" else body["stop"]) == ["END"]
        return None
    # Sampled with a seed (the tiny random model's greedy answer is blank lines): the same seed
    # gives the same text up to the stop string, where it ends.
    whole = _text(s, name, max_tokens=24, temperature=1.0, seed=5).text
    words = re.findall(r"\S{2,}", whole[len(whole) // 3 :])
    assert words, whole
    stop = words[0][:2]
    cut = _text(s, name, max_tokens=24, temperature=1.0, seed=5, stop=[stop])
    assert len(cut.text) < len(whole), (whole, cut.text)  # the stop string ended it
    assert cut.text.split(stop)[0].strip() == whole[: whole.index(stop)].strip()
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_seed(s: Session, name: str) -> None:
    if cell(name, "seed") == "no":
        return refused(s, name, "seed", lambda: ask(s, name, seed=7))
    if name not in LOCAL:
        ask(s, name, seed=7)
        body = last(name, s)
        assert (body["options"]["seed"] if name == "ollama" else body["seed"]) == 7
        return None
    first = _text(s, name, max_tokens=10, temperature=1.0, seed=7).text
    again = _text(s, name, max_tokens=10, temperature=1.0, seed=7).text
    assert first == again  # sampled, yet the seed repeats it
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_temperature(s: Session, name: str) -> None:
    if cell(name, "temperature") == "no":
        return refused(s, name, "temperature", lambda: ask(s, name, temperature=0.3))
    if name not in LOCAL:
        ask(s, name, temperature=0.3)
        body = last(name, s)
        assert (body["options"]["temperature"] if name == "ollama" else body["temperature"]) == 0.3
        return None
    greedy = _text(s, name, max_tokens=10, temperature=0.0, seed=3).text
    assert _text(s, name, max_tokens=10, temperature=0.0, seed=4).text == greedy  # 0 is greedy: no seed matters
    assert _text(s, name, max_tokens=10, temperature=2.0, seed=3).text != greedy  # a high one samples
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_max_tokens(s: Session, name: str) -> None:
    if cell(name, "max_tokens") == "no":
        return refused(s, name, "max_tokens", lambda: ask(s, name, max_tokens=3))
    r = _text(s, name, max_tokens=3)
    if name == "ollama":
        assert last(name, s)["options"]["num_predict"] == 3
    elif name == "openai":
        assert last(name, s)["max_tokens"] == 3
    elif name in LOCAL:
        assert r.usage.completion_tokens == 3 and r.finish_reason == "length"
    else:
        assert last(name, s)["max_tokens"] == 3
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_embed(s: Session, name: str) -> None:
    if cell(name, "embed") == "no":
        return refused(s, name, "embed", lambda: s.embed(["hello"], name))
    model = {"ollama": "ollama:nomic-embed-text", "openai": "openai:text-embedding-3-small"}.get(name, name)
    vectors = s.embed(["hello", "world"], model)
    assert len(vectors) == 2 and len(vectors[0]) > 0
    if name == "ollama":
        assert sent(s_servers(s)[0], "/api/embed")[-1]["input"] == ["hello", "world"]
    elif name == "openai":
        assert sent(s_servers(s)[1], "/v1/embeddings")[-1]["input"] == ["hello", "world"]
    return None


@pytest.mark.parametrize("name", PROVIDERS)
def test_load_and_unload(s: Session, name: str) -> None:
    if cell(name, "load") == "no":  # nothing to load: said, and nothing sent
        before = (len(SEEN), len(s_servers(s)[0].requests), len(s_servers(s)[1].requests))
        assert s.load(name) is None and s.unload(name) is False
        assert (len(SEEN), len(s_servers(s)[0].requests), len(s_servers(s)[1].requests)) == before
        return
    progress = list(s.load(name))
    assert progress
    s.unload(name)
    if name == "ollama":
        paths = [r.path for r in s_servers(s)[0].requests[-3:]]
        assert "/api/pull" in paths and sent(s_servers(s)[0], CHAT)[-1]["keep_alive"] == 0
    elif name in LOCAL:
        assert not s._engine.router.provider(name)._models  # noqa: SLF001 - the weights are gone
    else:
        assert SEEN[-2:] == [{"load": "default"}, {"unload": "default"}]


@pytest.mark.parametrize("name", PROVIDERS)
def test_fallback(ollama: OllamaServer, openai: OpenAIServer, tiny: Path, s: Session, name: str) -> None:
    """Each provider answers as a fallback, announced, when the first route cannot be reached."""
    assert cell(name, "fallback") == "yes"
    first = "openai" if name == "ollama" else "ollama"
    dead = {"ollama": {"host": "http://127.0.0.1:9"}, "openai": {"base_url": "http://127.0.0.1:9/v1"}}[first]
    chain = Session(_settings(ollama, openai, tiny, provider=first, fallback=[name], **{first: dead}))
    try:
        r = chain.chat("hello", **{**_small(name), "fallback": True})
    finally:
        chain.close()
    assert r.provider == name and r.notice is not None and r.notice.endswith(f"answered by {r.address}")


def test_a_fallback_that_cannot_do_the_feature_is_skipped_with_a_note(
    ollama: OllamaServer, openai: OpenAIServer, tiny: Path, s: Session
) -> None:
    dead = {"host": "http://127.0.0.1:9", "default_model": "llama3.1"}
    chain = Session(_settings(ollama, openai, tiny, fallback=["huggingface", "openai"], ollama=dead))
    try:
        r = chain.chat("Why is the sky blue?", think="low", no_cache=True)
        assert r.provider == "openai" and r.thinking
        assert "huggingface cannot do think" in (r.notice or ""), r.notice
        assert any(a.provider == "huggingface" and a.error_type == "Unsupported" for a in r.attempts)
        # The first route is the one asked: what it cannot do is the caller's error, never a fallback.
        with pytest.raises(Unsupported, match="^huggingface cannot do think here: use ollama or "):
            chain.chat("Why?", "huggingface", think="low", no_cache=True)
    finally:
        chain.close()


@pytest.mark.parametrize("name", PROVIDERS)
def test_fim(s: Session, name: str) -> None:
    """Native fill-in-the-middle where the row says so; everywhere else the same request goes as a
    chat prompt (tests/test_completion.py runs both over the Jupyter server's route)."""
    if works(name, "fim") or cell(name, "fim").startswith("per model"):
        assert s._engine.router.require(name, "fim") is not None
        return None
    assert cell(name, "fim") in ("chat prompt", "if declared (else chat prompt)", "no"), cell(name, "fim")
    refused(s, name, "fim", lambda: s._engine.router.require(name, "fim"))
    return None


def test_every_cell_is_tested() -> None:
    """Each feature of the table has its test above, over every provider."""
    tested = {n.removeprefix("test_") for n in globals() if n.startswith("test_")}
    assert {f if f != "load" else "load_and_unload" for f in FEATURES} <= tested


def test_a_refused_request_sends_nothing_even_to_a_model_that_is_not_there(s: Session) -> None:
    """The check comes before the model is even looked for: a missing GGUF file is not loaded."""
    refused(s, "huggingface", "think", lambda: ask(s, "huggingface", "/no/such/model", think=True))
    assert embedded.NAME  # the embedded model stays the default


def test_a_memory_cache_hit_is_no_way_around_the_refusal(s: Session) -> None:
    """The caller's-thread fast path for cache hits checks the row too."""
    refused(s, "fn", "stop", lambda: s.chat("hello", "fn", stop=["x"]))
    refused(s, "huggingface", "think", lambda: s.chat("hello", "huggingface", think=True))


def test_without_llguidance_transformers_states_a_schema_and_refuses_tools_before_loading(tmp_path: Path) -> None:
    """The `hf` extra brings llguidance; without it the row says what is left: a schema is said in
    the prompt and validated (the stand-in), tools are refused in one line naming the extra, and
    nothing is loaded (the model path does not exist)."""
    script = tmp_path / "no_llguidance.py"
    script.write_text(
        "import sys\n"
        "sys.modules['llguidance'] = None  # as if it were not installed\n"
        "from farm_jupyter.config import load_settings\n"
        "from farm_jupyter.errors import Unsupported\n"
        "from farm_jupyter.providers import declared\n"
        "from farm_jupyter.sessions import Session\n"
        "row = declared('huggingface')\n"
        "print(row.cell('schema'), row.cell('tools'), row.cell('tool_choice'), sep='|')\n"
        "s = Session(load_settings(environ={}, use_file=False))\n"
        "def weather(city: str) -> str:\n"
        "    return 'sunny'\n"
        "try:\n"
        "    s.chat('weather in Paris?', 'huggingface:/no/such/model', tools=[weather])\n"
        "except Unsupported as exc:\n"
        "    print(exc)\n"
        "finally:\n"
        "    s.close()\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cells, refusal = done.stdout.strip().splitlines()
    assert cells == "validated + re-ask|no|no"
    assert refusal.startswith("huggingface cannot do tools here")
    assert 'pip install "farm-jupyter[hf]"' in refusal
    assert "\n" not in refusal
