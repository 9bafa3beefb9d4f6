"""Layered settings, environment names users already have, and one-line errors for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

import farm_jupyter
from farm_jupyter.config import load_settings, mask, normalize_url
from farm_jupyter.errors import ConfigError


def test_defaults():
    s = load_settings(environ={}, use_file=False)
    assert s.env == "development" and s.default_provider == "ollama"
    assert s.chain[:3] == ["ollama", "openai", "huggingface"]  # then the embedded model's engine: test_local_model.py
    assert s.ollama.host == "http://127.0.0.1:11434"
    assert s.cache.backend == "memory"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("127.0.0.1:9999", "http://127.0.0.1:9999"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        ("https://ollama.example.org", "https://ollama.example.org:11434"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
    ],
)
def test_ollama_host_forms(value, expected):
    assert load_settings(environ={"OLLAMA_HOST": value}, use_file=False).ollama.host == expected


def test_environment_names():
    env = {
        "FARM_ENV": "production",
        "OPENAI_API_KEY": "sk-proj-abcdefghijklmnop1234",
        "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
        "HF_TOKEN": "hf_abcdefghijklmnopqrstu",
        "FARM_FALLBACK": "huggingface, ollama",
        "FARM_CACHE": "redis://127.0.0.1:6379/2",
        "FARM_HF_MODEL": "/models/tiny",
    }
    s = load_settings(environ=env, use_file=False)
    assert s.default_provider == "openai" and s.chain == ["openai", "huggingface", "ollama"]
    assert s.openai.base_url == "http://127.0.0.1:8000/v1"
    assert s.cache.backend == "redis" and s.cache.redis_url.endswith("/2")
    assert s.huggingface.default_model == "/models/tiny"
    assert load_settings(environ={"FARM_AI_PROVIDER": "huggingface"}, use_file=False).default_provider == "huggingface"
    assert load_settings(environ={"FARM_CACHE": "disk:/tmp/x.sqlite"}, use_file=False).cache.path == "/tmp/x.sqlite"


def test_secrets_are_masked_everywhere():
    key, token = "sk-proj-abcdefghijklmnop1234", "hf_abcdefghijklmnopqrstu"
    s = load_settings(environ={"OPENAI_API_KEY": key, "HF_TOKEN": token}, use_file=False)
    for shown in (repr(s), str(s), str(s.public()), s.model_dump_json()):
        assert key not in shown and token not in shown
    assert s.public()["openai"]["api_key"] == "sk-...1234"
    assert mask("short") == "***"


def test_secrets_in_urls_and_provider_options_are_masked():
    s = load_settings(
        {
            "cache": {"redis_url": "redis://:hunter2-redis-pass@cache:6379/0"},
            "providers": {"vllm": {"api_key": "sk-live-abcdef1234567890", "base_url": "http://u:pw-secret@h:1/v1"}},
        },
        environ={}, use_file=False,
    )
    for shown in (repr(s), str(s.public())):
        assert "hunter2" not in shown and "abcdef1234567890" not in shown and "pw-secret" not in shown
    assert s.public()["cache"]["redis_url"] == "redis://***@cache:6379/0"


def test_file_layers_under_environment(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.farm]\nenv = "production"\n[tool.farm.openai]\ndefault_model = "gpt-4o"\n'
        '[tool.farm.aliases]\nfast = "openai:gpt-4o-mini"\n'
    )
    nested = tmp_path / "notebooks" / "deep"
    nested.mkdir(parents=True)
    s = load_settings(environ={}, start=nested)
    assert s.env == "production" and s.openai.default_model == "gpt-4o"
    assert s.aliases == {"fast": "openai:gpt-4o-mini"} and s.source.endswith("pyproject.toml")
    assert load_settings(environ={"FARM_ENV": "development"}, start=nested).env == "development"
    (tmp_path / "notebooks" / "farm.toml").write_text('provider = "huggingface"\n')
    assert load_settings(environ={}, start=nested).default_provider == "huggingface"  # nearer file wins
    assert load_settings({"provider": "ollama"}, environ={}, start=nested).default_provider == "ollama"


@pytest.mark.parametrize(
    ("environ", "file", "match"),
    [
        ({"OLLAMA_HOST": "not a url"}, None, "OLLAMA_HOST='not a url' is not a URL"),
        ({"OLLAMA_HOST": "ftp://x"}, None, "not an http"),
        ({"FARM_CACHE": "floppy"}, None, "cache.backend"),
        ({}, "retry = 3\n", "retry"),
        ({}, "[timeouts]\ntotal = -1\n", "timeouts.total"),
        ({}, "this is = = not toml", "cannot read"),
        ({}, "[nonsense]\nx = 1\n", "nonsense"),
    ],
)
def test_bad_values_are_one_line_config_errors(tmp_path, environ, file, match):
    if file is not None:
        (tmp_path / "farm.toml").write_text(file)
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(environ=environ, start=tmp_path)
    assert "\n" not in str(info.value)


def test_unknown_environment_is_named():
    with pytest.raises(ConfigError, match="FARM_ENV='staging' is not a configured environment"):
        load_settings(environ={"FARM_ENV": "staging"}, use_file=False)
    staging = {"environments": {"staging": {"provider": "openai"}}}
    assert load_settings(staging, environ={"FARM_ENV": "staging"}, use_file=False).default_provider == "openai"


def test_normalize_url_rejects_spaces():
    with pytest.raises(ValueError):
        normalize_url("http://a b")


def test_all_is_true():
    for name in farm_jupyter.__all__:
        assert getattr(farm_jupyter, name) is not None, name
    assert sorted(farm_jupyter.__all__) == farm_jupyter.__all__


def test_import_is_light():
    code = (
        "import sys, farm_jupyter; farm_jupyter.Session; farm_jupyter.chat; "
        "heavy = [m for m in ('torch', 'transformers', 'openai') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_session_function_survives_importing_the_submodule():
    import farm_jupyter.session as module

    assert farm_jupyter.session() is module.session()
    assert isinstance(farm_jupyter.session(), farm_jupyter.Session)


@pytest.mark.parametrize(("name", "value"), [("FARM_HF_DEVICE", "toaster"), ("FARM_HF_DEVICE", "cuda:x")])
def test_bad_hf_device_is_named(name, value):
    with pytest.raises(ConfigError, match="huggingface.device"):
        load_settings(environ={name: value}, use_file=False)
