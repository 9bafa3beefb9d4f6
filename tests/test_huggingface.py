"""The HuggingFace provider against a real (tiny, random) model loaded with from_pretrained."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from farm_jupyter import embedded, providers
from farm_jupyter.config import load_settings
from farm_jupyter.errors import BadRequest, ModelNotFound, ServerError
from farm_jupyter.gpu import best_device
from farm_jupyter.providers.huggingface import HuggingFaceProvider
from farm_jupyter.runtime import get_runtime
from farm_jupyter.tiny_model import MARKER, build_tiny_model, is_built
from farm_jupyter.types import ChatMessage, ChatRequest, Chunk, GenerationParams

pytestmark = pytest.mark.timeout(120)

THREAD_PREFIX = "farm-hf-generate"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-chat")


def make_provider(path: Path | str | None, **hf: Any) -> HuggingFaceProvider:
    section = dict(hf)
    if path is not None:
        section["default_model"] = str(path)
    settings = load_settings(use_file=False, environ={}, overrides={"huggingface": section})
    provider = providers.create("huggingface", settings)
    assert isinstance(provider, HuggingFaceProvider)
    return provider


@pytest.fixture
def provider(tiny_model_path: Path) -> Iterator[HuggingFaceProvider]:
    p = make_provider(tiny_model_path)
    yield p
    get_runtime().run(p.aclose())


def request(model: str, n: int = 8, content: str = "hello there", **params: Any) -> ChatRequest:
    extra = params.pop("extra", {})
    return ChatRequest(
        messages=[ChatMessage(role="user", content=content)],
        model=model,
        params=GenerationParams(max_tokens=n, extra={"min_new_tokens": n, **extra}, **params),
    )


def generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def wait_no_generate_threads(timeout: float = 10.0) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while (alive := generate_threads()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive


def wait_runtime_idle(timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while (pending := get_runtime().pending_tasks()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pending


def model_of(provider: HuggingFaceProvider, name: str) -> Any:
    return provider._models[name].model


class ForwardCounter:
    """A real torch forward hook: counts decoding steps, and can slow them or fail one."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None, error: BaseException | None = None):
        self.calls = 0
        self.delay = delay
        self.fail_at = fail_at
        self.error = error

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            assert self.error is not None
            raise self.error
        if self.delay:
            time.sleep(self.delay)


def load(provider: HuggingFaceProvider, name: str) -> list[str]:
    async def go() -> list[str]:
        return [p.status async for p in provider.load_model(name)]

    return get_runtime().run(go())


# -- streaming ---------------------------------------------------------------------------------


def test_stream_yields_text_then_done_with_token_counts(provider: HuggingFaceProvider) -> None:
    chunks: list[Chunk] = list(get_runtime().iterate(provider.astream(request(provider.default_model, 12))))

    sent = [c.sent for c in chunks if c.sent is not None]  # what it ran, for `%farm why`: said once
    assert len(sent) == 1 and sent[0].endswith("<|user|>\nhello there<|end|>\n<|assistant|>\n")
    *texts, last = [c for c in chunks if c.sent is None]
    assert texts and all(c.text and not c.done for c in texts)
    assert last.done and last.text == ""
    assert last.usage is not None and last.usage.completion_tokens == 12
    tokenizer = provider._models[provider.default_model].tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello there"}], add_generation_prompt=True, return_dict=True
    )
    assert last.usage.prompt_tokens == len(prompt["input_ids"])
    assert last.finish_reason == "length"
    assert wait_no_generate_threads() == []


def test_finish_reason_stop_when_eos_comes_first(provider: HuggingFaceProvider) -> None:
    load(provider, provider.default_model)
    tokenizer = provider._models[provider.default_model].tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|end|>")
    everything_but_eos = [i for i in range(len(tokenizer)) if i != eos]
    req = ChatRequest(
        messages=[ChatMessage(role="user", content="hi")],
        model=provider.default_model,
        params=GenerationParams(max_tokens=20, extra={"suppress_tokens": everything_but_eos}),
    )
    response = provider.chat(req)
    assert response.finish_reason == "stop"
    assert response.usage.completion_tokens == 0  # the end of the turn is no token of the answer (as on llama.cpp)
    assert response.text == ""


def test_under_a_grammar_the_models_own_repetition_penalty_is_off(provider: HuggingFaceProvider) -> None:
    """A penalty from the model's generation config would push a JSON answer off its `"` and `,`."""
    pytest.importorskip("llguidance")
    name = provider.default_model
    load(provider, name)
    model_of(provider, name).generation_config.repetition_penalty = 1.3  # as some models ship

    def ran(**params: Any) -> dict[str, Any]:
        req = ChatRequest(messages=[ChatMessage(role="user", content="ok?")], model=name,
                          params=GenerationParams(max_tokens=8, **params))  # fmt: skip
        sent = [c.sent for c in get_runtime().iterate(provider.astream(req)) if c.sent is not None]
        return dict(json.loads(sent[0].split("\n", 1)[0]))

    assert ran()["repetition_penalty"] == 1.3
    assert ran(response_schema={"type": "boolean"})["repetition_penalty"] == 1.0
    assert ran(response_schema={"type": "boolean"}, extra={"repetition_penalty": 1.2})["repetition_penalty"] == 1.2


def test_chat_is_derived_from_the_stream(provider: HuggingFaceProvider) -> None:
    req = request(provider.default_model, 10)
    streamed = "".join(c.text for c in provider.stream(req))
    response = provider.chat(req)
    assert response.text == streamed  # greedy: the same text both ways
    assert response.provider == "huggingface" and response.model == provider.default_model
    assert response.usage.completion_tokens == 10
    assert response.finish_reason == "length"
    assert response.timings.first_token is not None


def test_generate_and_generate_stream(provider: HuggingFaceProvider) -> None:
    response = provider.generate("def main():", max_tokens=6, extra={"min_new_tokens": 6})
    assert response.usage.completion_tokens == 6
    chunks = list(provider.generate_stream("def main():", max_tokens=6, extra={"min_new_tokens": 6}))
    assert chunks[-1].done and "".join(c.text for c in chunks) == response.text


def test_sampling_with_a_seed_is_reproducible(provider: HuggingFaceProvider) -> None:
    req = request(provider.default_model, 16, temperature=1.5, top_p=0.95, seed=7)
    assert provider.chat(req).text == provider.chat(req).text


def test_explain_shows_the_templated_prompt_and_the_sampling_it_ran(tiny_model_path: Path) -> None:
    from farm_jupyter.sessions import Session

    section = {"default_model": str(tiny_model_path), "device": "cpu", "dtype": "float32"}
    layer = {"env": "test", "provider": "huggingface", "fallback": [], "huggingface": section}
    session = Session(load_settings(layer, environ={}, use_file=False))
    try:
        greedy = session.chat("hello there", no_cache=True, max_tokens=4)
        found = session.explain(greedy)
        assert found.line.startswith(f"huggingface:{tiny_model_path} runs in this process")
        assert found.body is not None
        first, prompt = found.body.split("\n", 1)
        assert prompt == "<|user|>\nhello there<|end|>\n<|assistant|>\n"  # the tiny model's template, applied
        tokenizer = session._engine.router.provider("huggingface")._models[str(tiny_model_path)].tokenizer
        assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == greedy.usage.prompt_tokens
        params = json.loads(first)
        assert params["do_sample"] is False and params["max_new_tokens"] == 4 and "temperature" not in params
        assert params["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|end|>")  # where it stops
        sampled = session.chat("hello there", no_cache=True, max_tokens=4, temperature=1.5, top_p=0.9, seed=7)
        body = session.explain(sampled).body
        assert body is not None and body.endswith(prompt)
        params = json.loads(body.split("\n", 1)[0])
        assert {k: params[k] for k in ("do_sample", "temperature", "top_p", "seed")} == {
            "do_sample": True,
            "temperature": 1.5,
            "top_p": 0.9,
            "seed": 7,
        }
    finally:
        session.close()


# -- cancellation and errors -------------------------------------------------------------------


def test_closing_the_stream_stops_generation(provider: HuggingFaceProvider) -> None:
    name = provider.default_model
    load(provider, name)
    counter = ForwardCounter(delay=0.005)
    handle = model_of(provider, name).register_forward_hook(counter)
    try:
        stream = get_runtime().iterate(provider.astream(request(name, 400)))
        assert next(c for c in stream if c.sent is None).text
        stream.close()
        assert wait_no_generate_threads() == []
        assert counter.calls < 400  # stopped early, not run to the end in the background
        calls = counter.calls
        time.sleep(0.05)
        assert counter.calls == calls
    finally:
        handle.remove()
    assert wait_runtime_idle() == []


def test_cancelling_the_future_stops_generation(provider: HuggingFaceProvider) -> None:
    name = provider.default_model
    load(provider, name)
    counter = ForwardCounter(delay=0.005)
    handle = model_of(provider, name).register_forward_hook(counter)
    try:
        future = get_runtime().submit(provider.achat(request(name, 400)))
        deadline = time.monotonic() + 10
        while counter.calls < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert future.cancel()
        assert wait_no_generate_threads() == []
        assert counter.calls < 400
    finally:
        handle.remove()
    assert wait_runtime_idle() == []


def test_an_error_inside_generate_surfaces_as_a_server_error(provider: HuggingFaceProvider) -> None:
    name = provider.default_model
    load(provider, name)
    handle = model_of(provider, name).register_forward_hook(
        ForwardCounter(fail_at=3, error=RuntimeError("kernel exploded"))
    )
    try:
        with pytest.raises(ServerError, match="kernel exploded") as info:
            provider.chat(request(name, 50))
    finally:
        handle.remove()
    assert info.value.provider == "huggingface"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert wait_no_generate_threads() == []


def test_out_of_memory_says_what_to_do(provider: HuggingFaceProvider) -> None:
    import torch

    name = provider.default_model
    load(provider, name)
    handle = model_of(provider, name).register_forward_hook(
        ForwardCounter(fail_at=1, error=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    )
    try:
        with pytest.raises(ServerError, match="out of GPU memory") as info:
            list(provider.stream(request(name, 20)))
    finally:
        handle.remove()
    assert info.value.hint and "smaller model" in info.value.hint
    assert wait_no_generate_threads() == []


def test_a_bad_generate_argument_is_refused_before_generate(provider: HuggingFaceProvider) -> None:
    # params.extra is closed (GenerationOptions): an unknown keyword never reaches generate().
    with pytest.raises(ValidationError, match="not_a_generate_kwarg"):
        provider.chat(request(provider.default_model, 4, extra={"not_a_generate_kwarg": 1}))
    with pytest.raises(BadRequest, match="local model"):  # what generate() itself refuses is a BadRequest
        provider.chat(request(provider.default_model, 4, extra={"num_beams": 2}))
    assert wait_no_generate_threads() == []


def test_after_an_error_the_model_can_still_be_freed(provider: HuggingFaceProvider) -> None:
    name = provider.default_model
    load(provider, name)
    model_ref = weakref.ref(model_of(provider, name))
    model_of(provider, name).register_forward_hook(ForwardCounter(fail_at=2, error=RuntimeError("boom")))
    with pytest.raises(ServerError) as info:  # info keeps the traceback alive on purpose
        provider.chat(request(name, 10))
    get_runtime().run(provider.unload_model(name))
    gc.collect()
    assert model_ref() is None
    assert info.value.__cause__ is not None


def test_a_missing_path_is_model_not_found_with_a_hint(provider: HuggingFaceProvider, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        provider.chat(request(str(tmp_path / "no-such-model"), 4))
    assert "HF_TOKEN" in str(info.value) and "local path" in str(info.value)
    with pytest.raises(ModelNotFound, match="could not be loaded"):
        provider.chat(request(str(tmp_path), 4))  # a folder, but not a model


def test_the_token_is_never_shown(tiny_model_path: Path, tmp_path: Path) -> None:
    secret = "hf_supersecretvalue1234567890"
    p = make_provider(tiny_model_path, token=secret)
    response = p.chat(request(p.default_model, 4))  # a local path loads fine with a token set
    with pytest.raises(ModelNotFound) as info:
        p.chat(request(str(tmp_path / "missing"), 4))
    status = get_runtime().run(p.health())
    shown = [repr(p), str(info.value), status.model_dump_json(), response.model_dump_json(), repr(p.settings)]
    assert all(secret not in text for text in shown)
    get_runtime().run(p.aclose())


# -- model management --------------------------------------------------------------------------


def test_load_then_unload_frees_the_model(provider: HuggingFaceProvider) -> None:
    name = provider.default_model
    statuses = load(provider, name)
    assert statuses == ["loading", f"loaded on {best_device()}"]
    model_ref = weakref.ref(model_of(provider, name))
    provider.chat(request(name, 4))
    get_runtime().run(provider.unload_model(name))
    assert name not in provider._models
    gc.collect()
    assert model_ref() is None
    get_runtime().run(provider.unload_model(name))  # unloading twice is fine


def test_list_models(provider: HuggingFaceProvider) -> None:
    default, *local = get_runtime().run(provider.list_models())
    assert (default.name, default.loaded, default.family) == (provider.default_model, False, "llama")
    # then the GGUF files and converted models on this machine, none loaded
    assert all(not m.loaded and m.details["kind"] in ("gguf", "converted from gguf") for m in local)
    load(provider, provider.default_model)
    after, *_ = get_runtime().run(provider.list_models())
    assert after.loaded and after.family == "llama" and after.provider == "huggingface"
    assert after.size == sum(p.numel() * p.element_size() for p in model_of(provider, after.name).parameters())
    assert after.details["device"] == best_device()


def test_health_and_the_device_auto_picks(provider: HuggingFaceProvider) -> None:
    import torch

    status = get_runtime().run(provider.health())
    assert status.healthy and status.models_loaded == []
    provider.chat(request(provider.default_model, 2))
    status = get_runtime().run(provider.health())
    device = best_device()
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert device == "cpu"
    assert status.healthy and status.url == f"local ({device})"
    assert status.models_loaded == [provider.default_model]
    param = next(model_of(provider, provider.default_model).parameters())
    assert str(param.device) == device or (device == "mps" and param.device.type == "mps")
    if device == "cpu":
        assert param.dtype == torch.float32


def test_an_explicit_device_and_dtype_are_used(tiny_model_path: Path) -> None:
    import torch

    p = make_provider(tiny_model_path, device="cpu", dtype="bfloat16")
    assert p.chat(request(p.default_model, 2)).usage.completion_tokens == 2
    param = next(model_of(p, p.default_model).parameters())
    assert (param.device.type, param.dtype) == ("cpu", torch.bfloat16)
    get_runtime().run(p.aclose())


def test_embed_shape_and_norm(provider: HuggingFaceProvider) -> None:
    texts = ["import os", "def main():\n    return 1", "a much longer sentence about notebooks and models"]
    vectors = get_runtime().run(provider.embed(texts))
    assert len(vectors) == 3 and all(len(v) == 64 for v in vectors)  # hidden_size of the tiny model
    for v in vectors:
        assert abs(sum(x * x for x in v) - 1.0) < 1e-4
    assert vectors[0] != vectors[1]
    again = get_runtime().run(provider.embed(texts[:1]))
    assert again[0] == pytest.approx(vectors[0], abs=1e-5)  # padding does not change a text's vector
    assert get_runtime().run(provider.embed([])) == []


def test_two_concurrent_first_requests_load_once(
    provider: HuggingFaceProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained
    calls: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        time.sleep(0.2)  # widen the window in which a second load could start
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counting)

    async def both() -> list[Any]:
        req = request(provider.default_model, 4)
        return await asyncio.gather(provider.achat(req), provider.achat(req))

    first, second = get_runtime().run(both())
    assert len(calls) == 1
    assert first.text == second.text and first.usage.completion_tokens == 4


def test_the_default_is_the_embedded_smollm2_never_the_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path))
    p = make_provider(None)
    assert p.default_model == embedded.NAME  # real weights; loading it: tests/test_local_model.py
    assert not (tmp_path / "tiny-chat").exists()  # the random model is built only where a test asks for it


def test_importing_the_provider_stays_light() -> None:
    code = (
        "import sys, farm_jupyter, farm_jupyter.tiny_model, farm_jupyter.providers.huggingface;"
        "from farm_jupyter.config import load_settings;"
        "from farm_jupyter.providers import create;"
        "p = create('hf', load_settings(use_file=False, environ={}));"
        "print(p.default_model);"
        "heavy = [m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)


# -- the tiny model ----------------------------------------------------------------------------


def test_tiny_model_is_built_once(tiny_model_path: Path) -> None:
    marker = json.loads((tiny_model_path / MARKER).read_text())
    assert marker["vocab"] > 1000
    before = (tiny_model_path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tiny_model_path) == tiny_model_path
    assert (tiny_model_path / "model.safetensors").stat().st_mtime_ns == before
    assert (tiny_model_path / "chat_template.jinja").is_file()
    config = json.loads((tiny_model_path / "generation_config.json").read_text())
    assert config["pad_token_id"] is not None and config["eos_token_id"] is not None


def test_an_unfinished_build_is_redone_and_concurrent_builders_agree(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "config.json").write_text("{}")  # what a killed build could leave: no marker
    results: list[Path | BaseException] = []

    def build() -> None:
        try:
            results.append(build_tiny_model(target))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == [target, target]
    assert is_built(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary folders left
    p = make_provider(target)
    assert p.chat(request(p.default_model, 2)).usage.completion_tokens == 2
    get_runtime().run(p.aclose())


def test_a_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("chosen", [None, "ACTIVE"])
def test_torch_is_imported_with_passive_openmp_threads_unless_the_user_chose(chosen: str | None) -> None:
    """OpenMP threads that spin made a busy machine decode 2-3x slower; a user's choice stands."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if chosen:
        env["OMP_WAIT_POLICY"] = chosen
    code = (
        "import os; from farm_jupyter.providers._transformers import imports; imports(); "
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (chosen or "PASSIVE")
