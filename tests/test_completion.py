"""Inline completion over a real Jupyter server: `GET complete` and `POST complete`.

A `jupyter server` with the extension runs in a subprocess (as in test_server.py), its Ollama and
OpenAI-compatible upstreams loopback servers in this process; the tests read what the upstream was
sent (fill-in-the-middle with `suffix`, or a chat prompt), what came back as server-sent events,
and the upstream's record of clients that went away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_server import (
    _BODIES,
    _SCALARS,
    FARM_TOML,
    JupyterServer,
    _no_500,
    _start_jupyter,
    _stop,
    _wait_for,
    error_of,
    read_events,
)

from farm_jupyter.server.completion import CompletionMemory, Unfenced, decide, mask_secrets
from farm_jupyter.server.schema import MAX_FILL_CELLS, MAX_FILL_CHARS, CompletionDone
from farm_jupyter.sessions import Session
from farm_jupyter.testing import Fault, OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import TEST_API_KEY
from farm_jupyter.testing.servers.answers import filled
from farm_jupyter.types.fim import FILL_SYSTEM

CODER = "qwen2.5-coder:0.5b"
KEY = "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0"
TOML = FARM_TOML.replace("failures = 1000", "failures = 1") + f'\n[completion]\nmodel = "ollama:{CODER}"\n'


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer(models=("llama3.1:latest", CODER)) as server:
        yield server


@pytest.fixture(scope="module")
def openai() -> Iterator[OpenAIServer]:
    with OpenAIServer(models=["gpt-4o-mini", "codestral"], api_key=TEST_API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def jupyter(
    tmp_path_factory: pytest.TempPathFactory, ollama: OllamaServer, openai: OpenAIServer
) -> Iterator[JupyterServer]:
    server = _start_jupyter(tmp_path_factory.mktemp("jupyter"), ollama, openai, cache="memory", toml=TOML)
    yield server
    _stop(server.proc)
    log = server.log.read_text(errors="replace")
    for sign in ("Traceback", "Exception in callback", "Task was destroyed", "never retrieved"):
        assert sign not in log, f"{sign!r} in the Jupyter server's log:\n{log[-4000:]}"


@pytest.fixture
def api(jupyter: JupyterServer, ollama: OllamaServer, openai: OpenAIServer) -> Iterator[httpx.Client]:
    ollama.clear()
    openai.clear()
    with jupyter.client() as client:
        yield client
    ollama.chunk_delay = ollama.latency = 0.0
    ollama.tokens = None


def _complete(api: httpx.Client, **body: object) -> tuple[str, CompletionDone]:
    with api.stream("POST", "complete", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    texts = [e.json()["text"] for e in events if e.name == "message" and e.data != "[DONE]"]
    done = [CompletionDone.model_validate_json(e.data) for e in events if e.name == "done"]
    assert len(done) == 1, events
    assert "".join(texts) == done[0].text
    return "".join(texts), done[0]


def test_a_code_model_on_ollama_fills_in_the_middle_with_the_cells_above_and_secrets_masked(
    api: httpx.Client, ollama: OllamaServer
) -> None:
    cells = [f'api_key = "{KEY}"', "import math"]
    text, done = _complete(api, prefix="def area(r):\n    return ", suffix="\n\nprint(area(2))", cells=cells)
    sent = [r for r in ollama.requests if r.path == "/api/generate"]
    assert len(sent) == 1
    body = sent[0].json or {}
    assert body["suffix"] == "\n\nprint(area(2))"
    assert body["model"] == CODER
    assert body["prompt"] == 'api_key = "***"\n\nimport math\n\ndef area(r):\n    return '
    assert KEY[8:16] not in json.dumps(body)
    assert text == filled(body["prompt"], body["suffix"])
    assert done.model == f"ollama:{CODER}" and not done.cached


def test_a_model_without_fim_gets_a_chat_prompt(api: httpx.Client, ollama: OllamaServer) -> None:
    text, done = _complete(api, prefix="x = 1\ny = ", suffix="", model="ollama:llama3.1")
    assert ollama.count("/api/generate") == 0
    (chat,) = [r for r in ollama.requests if r.path == "/api/chat"]
    messages = (chat.json or {})["messages"]
    assert messages[0] == {"role": "system", "content": FILL_SYSTEM}
    assert "x = 1\ny = <CURSOR>" in messages[1]["content"]
    assert text.startswith("Echo: The cell:") and done.model == "ollama:llama3.1"


def test_an_openai_compatible_server_gets_v1_completions_with_the_suffix(
    api: httpx.Client, openai: OpenAIServer
) -> None:
    text, done = _complete(api, prefix="for i in ", suffix=":\n    pass", model="openai:codestral")
    (sent,) = openai.requests
    assert sent.path == "/v1/completions"
    assert (sent.json or {})["suffix"] == ":\n    pass" and (sent.json or {})["stream"] is True
    assert text == filled("for i in ", ":\n    pass") and done.model == "openai:codestral"


def test_the_same_context_is_answered_from_memory(api: httpx.Client, ollama: OllamaServer) -> None:
    body = {"prefix": "total = sum(", "suffix": ")", "cells": ["values = [1, 2]"]}
    first, done = _complete(api, **body)
    again, hit = _complete(api, **body)
    assert ollama.count("/api/generate") == 1
    assert (again, hit.model, hit.cached, done.cached) == (first, done.model, True, False)
    _complete(api, **{**body, "suffix": ") + 1"})  # another context is asked again
    assert ollama.count("/api/generate") == 2


def test_a_client_that_goes_away_cancels_the_upstream_request_and_is_not_a_failure(
    api: httpx.Client, ollama: OllamaServer
) -> None:
    ollama.tokens, ollama.chunk_delay = 200, 0.05
    with api.stream("POST", "complete", json={"prefix": "slow = ", "suffix": ""}) as response:
        lines = response.iter_lines()
        assert read_events(lines, limit=2)[0].name == "message"
    _wait_for(lambda: len(ollama.disconnects) == 1, 10, "the upstream seeing the disconnect")
    assert ollama.disconnects[0].path == "/api/generate"
    assert ollama.count("/api/generate") == 1  # not retried
    # With `[breaker] failures = 1`, one counted failure would refuse the next request.
    ollama.tokens, ollama.chunk_delay = None, 0.0
    text, _ = _complete(api, prefix="slow = ", suffix="")
    assert text.startswith("fill_") and ollama.count("/api/generate") == 2


def test_an_upstream_failure_is_not_retried_and_says_what_failed(api: httpx.Client, ollama: OllamaServer) -> None:
    ollama.add_fault(Fault("status", path="/api/generate", status=500, times=1))
    response = api.post("complete", json={"prefix": "boom = ", "suffix": ""})
    assert response.status_code == 502
    assert "ollama" in error_of(response).error.lower()
    assert ollama.count("/api/generate") == 1
    # the breaker opened (failures = 1): the next one is refused without asking
    response = api.post("complete", json={"prefix": "boom = 2", "suffix": ""})
    assert response.status_code == 502 and "cooling down" in error_of(response).error
    assert ollama.count("/api/generate") == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prefix": "x" * (MAX_FILL_CHARS + 1)}, "prefix"),
        ({"prefix": "x", "suffix": "y" * (MAX_FILL_CHARS + 1)}, "suffix"),
        ({"prefix": "x", "cells": ["c"] * (MAX_FILL_CELLS + 1)}, "cells"),
        ({"prefix": "x", "cells": ["c" * (MAX_FILL_CHARS + 1)]}, "cells.0"),
        ({"prefix": 3}, "prefix"),
        ({"prefix": "x", "cells": "import os"}, "cells"),
        ({"prefix": "x", "model": "../etc"}, "model"),
        ({"prefix": "x", "temperature": 2}, "temperature"),
        ({"suffix": "x"}, "prefix"),
    ],
)
def test_a_body_out_of_bounds_or_of_the_wrong_type_is_400_and_sends_nothing(
    api: httpx.Client, ollama: OllamaServer, body: dict[str, object], field: str
) -> None:
    response = api.post("complete", json=body)
    assert response.status_code == 400, response.text
    assert error_of(response).field == field
    assert ollama.count() == 0


def test_get_says_on_with_the_lab_setting_winning(api: httpx.Client) -> None:
    state = api.get("complete").json()
    assert (state["enabled"], state["model"], state["locality"]) == (True, f"ollama:{CODER}", "loopback")
    state = api.get("complete", params={"model": "openai:codestral"}).json()
    assert (state["enabled"], state["model"], state["reason"]) == (True, "openai:codestral", None)
    assert api.get("complete", params={"model": "nosuch:thing"}).status_code == 400


def test_a_remote_provider_is_off_until_enabled_and_nothing_is_sent(tmp_path: Path) -> None:
    remote = {"openai": {"base_url": "https://llm.example.com/v1", "api_key": TEST_API_KEY}}
    off = decide(Session(config=remote | {"provider": "openai"}), None)
    assert (off.enabled, off.locality) == (False, "remote")
    assert off.reason is not None and "[completion] enabled = true" in off.reason
    on = decide(Session(config=remote | {"provider": "openai", "completion": {"enabled": True}}), None)
    assert (on.enabled, on.reason) == (True, None)
    local = decide(Session(config={"completion": {"model": "huggingface:x"}}), None)
    assert (local.enabled, local.locality) == (True, "local")
    banned = decide(Session(config={"completion": {"enabled": False}}), None)
    assert not banned.enabled


def test_secrets_are_masked_in_every_form_we_know() -> None:
    lines = [
        f'key = "{KEY}"',
        'client = OpenAI(api_key="short-one")',
        "PASSWORD: str = 'hunter22'",
        'os.environ["HF_TOKEN"] = "hf-12345"',
        'settings = {"token": "abc123"}',
        'monkey = "banana"',
    ]
    text = mask_secrets("\n".join(lines))
    for secret in (KEY, "short-one", "hunter22", "hf-12345", "abc123"):
        assert secret not in text
    assert text.endswith('monkey = "banana"')


def test_a_fence_around_a_chat_answer_is_dropped_as_it_streams() -> None:
    fence = Unfenced()
    pieces = ["``", "`python\nre", "turn x", "\n```", "\nmore"]
    assert "".join(fence.feed(p) for p in pieces) + fence.flush() == "return x\n"
    plain = Unfenced()
    assert "".join(plain.feed(p) for p in ["a", "b + c"]) + plain.flush() == "ab + c"


def test_the_rate_window_admits_rpm_a_minute() -> None:
    state = CompletionMemory()
    assert [state.wait(2, t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 58.0]
    assert state.wait(2, 60.5) == 0.0


# -- no body makes a 500 (hypothesis, as over the other routes in test_server.py) ----------------

_TEXT = st.text(max_size=30) | _SCALARS
_COMPLETION_BODIES = _BODIES | st.fixed_dictionaries(
    {"prefix": _TEXT},
    optional={
        "suffix": _TEXT,
        "cells": st.lists(_TEXT, max_size=4) | _SCALARS,
        "model": st.sampled_from(["ollama:llama3.1", f"ollama:{CODER}", "nosuch:foo", "small", "../x", "", "custom:x"])
        | _SCALARS,
        "language": _TEXT,
        "temperature": _SCALARS,
    },
).map(lambda body: json.dumps(body).encode())


@given(body=_COMPLETION_BODIES)
def test_fuzz_completion_bodies_never_make_a_500(api: httpx.Client, body: bytes) -> None:
    _no_500(api.post("complete", content=body, headers={"Content-Type": "application/json"}))


@given(query=st.dictionaries(st.sampled_from(["model", "x"]) | st.text(max_size=5), st.text(max_size=12), max_size=3))
def test_fuzz_the_completion_state_query_never_makes_a_500(api: httpx.Client, query: dict[str, str]) -> None:
    _no_500(api.get("complete", params=query))


# -- through the Session: fallback and pools (no Jupyter server needed) -------------------------


def _fill(session: Session, target: str | None, prefix: str = "x = ") -> tuple[str, str]:
    from farm_jupyter.types import FillRequest

    async def go() -> list[Any]:
        return [c async for c in session.aio.complete(FillRequest(prefix=prefix, suffix=")"), target)]

    chunks = asyncio.run(go())
    answered = [c.status for c in chunks if c.status and not c.text]
    return "".join(c.text for c in chunks), answered[-1]


def test_an_unreachable_provider_falls_back_to_the_next_one_named_in_the_chain(openai: OpenAIServer) -> None:
    from farm_jupyter.testing.pytest_plugin import loopback_settings

    with OllamaServer(models=(CODER,)) as down:
        settings = loopback_settings(down, openai, openai={"default_model": "codestral"})
        down.refuse()
        openai.clear()
        session = Session(settings)
        try:
            text, answered = _fill(session, f"ollama:{CODER}")
        finally:
            session.close()
    assert answered == "openai:codestral"
    assert text == filled("x = ", ")")
    assert [r.path for r in openai.requests] == ["/v1/completions"]


def test_a_pool_of_ollama_servers_fills_in_the_middle_on_the_one_that_is_up() -> None:
    from farm_jupyter.testing.pytest_plugin import loopback_settings

    with OllamaServer(models=(CODER,)) as up, OllamaServer(models=(CODER,)) as down:
        down.refuse()
        session = Session(loopback_settings(up, ollama={"hosts": [down.url, up.url]}))
        try:
            text, answered = _fill(session, f"ollama:{CODER}")
        finally:
            session.close()
        fim = [r.json or {} for r in up.requests if r.path == "/api/generate"]
    assert answered == f"ollama:{CODER}" and text == filled("x = ", ")")
    assert len(fim) == 1 and fim[0]["suffix"] == ")"


def test_the_embedded_model_completes_with_a_chat_prompt_and_is_on_by_default() -> None:
    """SmolLM2-135M on llama.cpp has no fill-in-the-middle tokens: it gets the chat prompt, runs in
    the server's process (`local`), and so completes without `[completion] enabled`."""
    from test_local_model import _needs, local_settings

    from farm_jupyter import embedded

    _needs("llamacpp")
    session = Session(local_settings("llamacpp", completion={"model": f"llamacpp:{embedded.NAME}", "max_tokens": 16}))
    try:
        state = decide(session, None)
        assert (state.enabled, state.locality) == (True, "local")
        list(session.load(f"llamacpp:{embedded.NAME}"))
        import llama_cpp

        llm = session._engine.router.provider("llamacpp")._models[embedded.NAME].llm
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        assert llama_cpp.llama_vocab_fim_pre(vocab) == -1  # no FIM tokens: hence the chat prompt
        from farm_jupyter.types import FillRequest

        chunks = _filled_chunks(session, state.model, FillRequest(prefix="def add(a, b):\n    return ", max_tokens=16))
    finally:
        session.close()
    assert chunks[0].status == state.model
    (sent,) = [c.sent for c in chunks if c.sent]
    assert f"<|im_start|>system\n{FILL_SYSTEM}<|im_end|>" in sent and "def add(a, b):\n    return <CURSOR>" in sent
    assert "fim" not in sent
    assert "".join(c.text or "" for c in chunks).strip()  # a real model's few tokens; what they say is its own


def test_over_the_rate_window_is_429_with_retry_after_and_nothing_sent(
    tmp_path: Path, ollama: OllamaServer, openai: OpenAIServer
) -> None:
    server = _start_jupyter(tmp_path, ollama, openai, cache="memory", toml=TOML + "rpm = 2\n")
    try:
        with server.client() as api:
            ollama.clear()
            for i in range(2):
                _complete(api, prefix=f"n{i} = ")
            response = api.post("complete", json={"prefix": "n2 = "})
            assert response.status_code == 429
            assert 1 <= int(response.headers["retry-after"]) <= 60
            assert "[completion] rpm" in error_of(response).error
            _complete(api, prefix="n0 = ")  # the cache answers without counting against the window
    finally:
        _stop(server.proc)
    assert ollama.count("/api/generate") == 2


# -- llama.cpp: a GGUF model with FIM tokens gets them; SmolLM2 (none) gets the chat prompt ------


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: one token per byte, so any text tokenizes without merges."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = iter(range(256, 512))
    shown = {b: chr(b) if b in kept else chr(next(moved)) for b in range(256)}
    return [shown[b] for b in range(256)]


FIM_SPECIALS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"]


@pytest.fixture(scope="module")
def fim_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random one-layer Llama of 100 KB whose vocabulary has FIM tokens, named in the file's
    metadata as a converted Qwen2.5-Coder's are (`tokenizer.ggml.fim_*_token_id`)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path_factory.mktemp("gguf") / "tiny-fim.gguf"
    tokens = [*_byte_tokens(), *FIM_SPECIALS]
    ids = {name: 256 + i for i, name in enumerate(FIM_SPECIALS)}
    d, ff = 32, 64
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(d)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(d // 2)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * len(FIM_SPECIALS))
    writer.add_token_merges(["Ā ā"])  # one merge, of two bytes that never meet here: llama.cpp wants the list
    writer.add_eos_token_id(ids["<|endoftext|>"])
    writer.add_add_bos_token(False)
    for key, name in [("PRE", "<|fim_prefix|>"), ("SUF", "<|fim_suffix|>"), ("MID", "<|fim_middle|>")]:
        writer.add_uint32(getattr(gguf.Keys.Tokenizer, f"FIM_{key}_ID"), ids[name])
    writer.add_uint32(gguf.Keys.Tokenizer.FIM_PAD_ID, ids["<|fim_pad|>"])
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", weights(len(tokens), d))
    writer.add_tensor("output_norm.weight", np.ones(d, np.float32))
    writer.add_tensor("output.weight", weights(len(tokens), d))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(d, np.float32))
    for name in ("q", "k", "v", "output"):
        writer.add_tensor(f"blk.0.attn_{name}.weight", weights(d, d))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(d, np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", weights(ff, d))
    writer.add_tensor("blk.0.ffn_up.weight", weights(ff, d))
    writer.add_tensor("blk.0.ffn_down.weight", weights(d, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _filled_chunks(session: Session, target: str, request: Any) -> list[Any]:
    async def go() -> list[Any]:
        return [c async for c in session.aio.complete(request, target, fallback=False)]

    return asyncio.run(go())


def test_a_gguf_model_with_fim_tokens_gets_the_fim_prompt_built_from_them(fim_gguf: Path) -> None:
    from test_local_model import _needs, local_settings

    from farm_jupyter.types import FillRequest

    _needs("llamacpp")
    target = f"llamacpp:{fim_gguf}"
    session = Session(local_settings("llamacpp", completion={"model": target}))
    request = FillRequest(prefix="def area(r):\n    return ", suffix="\n\nprint(area(2))", context="import math")
    try:
        chunks = _filled_chunks(session, target, request.model_copy(update={"max_tokens": 8, "temperature": 0.0}))
    finally:
        session.close()
    (sent,) = [c.sent for c in chunks if c.sent]
    params, prompt = sent.split("\n", 1)
    assert (
        prompt == "<|fim_prefix|>import math\n\ndef area(r):\n    return <|fim_suffix|>\n\nprint(area(2))<|fim_middle|>"
    )
    assert json.loads(params) == {"max_tokens": 8, "temperature": 0.0}
    assert chunks[0].status == target and chunks[-1].done


def test_text_that_spells_a_fim_token_stays_text(fim_gguf: Path) -> None:
    """A cell that contains `<|fim_suffix|>` cannot move the cursor: only the three marks are special."""
    from test_local_model import _needs

    from farm_jupyter.providers._infill import fim_prompt, fim_tokens
    from farm_jupyter.types import FillRequest

    _needs("llamacpp")
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(fim_gguf), n_ctx=256, verbose=False)
    try:
        marks = fim_tokens(llm)
        assert marks is not None
        tokens = fim_prompt(llm, FillRequest(prefix="s = '<|fim_suffix|>'", suffix="<|fim_middle|>"), marks)
    finally:
        llm.close()
    assert [t for t in tokens if t in marks] == list(marks)
