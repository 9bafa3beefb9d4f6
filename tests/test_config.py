"""Layered settings, environment names users already have, and one-line errors for bad values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import farm_jupyter
from farm_jupyter.config import load_settings, mask, normalize_url
from farm_jupyter.errors import ConfigError


def test_defaults():
    s = load_settings(environ={}, use_file=False)
    assert s.env == "development" and s.default_provider == "ollama"
    assert s.chain[:2] == ["ollama", "openai"]  # no random model: the embedded one, last, only when
    assert s.chain[2:] in ([], ["llamacpp"], ["huggingface"])  # nothing is configured (test_local_model.py)
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
        environ={},
        use_file=False,
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


def test_session_function_survives_importing_the_package():
    import farm_jupyter.sessions as module
    import farm_jupyter.sessions.door  # noqa: F401

    assert callable(farm_jupyter.session) and not isinstance(farm_jupyter.session, type(module))
    assert farm_jupyter.session() is module.session()
    assert isinstance(farm_jupyter.session(), farm_jupyter.Session)


@pytest.mark.parametrize(("name", "value"), [("FARM_HF_DEVICE", "toaster"), ("FARM_HF_DEVICE", "cuda:x")])
def test_bad_hf_device_is_named(name, value):
    with pytest.raises(ConfigError, match="huggingface.device"):
        load_settings(environ={name: value}, use_file=False)


# -- the seed project's names, and .env files -------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "ours", "read"),
    [
        ({"AI_PROVIDER": "openai"}, {"FARM_AI_PROVIDER": "huggingface"}, lambda s: s.default_provider),
        ({"OLLAMA_URL": "10.0.0.1"}, {"OLLAMA_HOST": "10.0.0.2"}, lambda s: s.ollama.host),
        ({"AI_FALLBACK_PROVIDER": "huggingface"}, {"FARM_FALLBACK": "openai"}, lambda s: s.chain[1:]),
        (
            {"HUGGINGFACE_TOKEN": "hf_seedseedseedseed"},
            {"HF_TOKEN": "hf_ourstokenourstoken"},
            lambda s: s.huggingface.token.get_secret_value(),
        ),
        ({"AI_DEFAULT_MODEL": "llama3.2"}, {"FARM_OLLAMA_MODEL": "qwen2.5"}, lambda s: s.ollama.default_model),
    ],
)
def test_seed_names_are_aliases_and_ours_win(seed, ours, read):
    alone = read(load_settings(environ=seed, use_file=False))
    both = read(load_settings(environ={**seed, **ours}, use_file=False))
    if "HUGGINGFACE_TOKEN" not in seed:
        assert alone != read(load_settings(environ={}, use_file=False))  # the alias took effect
    assert both == read(load_settings(environ=ours, use_file=False)) != alone


def test_seed_default_model_and_rate_limit_follow_the_default_provider():
    env = {"AI_PROVIDER": "openai", "AI_DEFAULT_MODEL": "gpt-4o", "AI_RATE_LIMIT": "30"}
    s = load_settings(environ=env, use_file=False)
    assert s.openai.default_model == "gpt-4o" and s.ollama.default_model == "llama3.1"
    assert s.rate_limits["openai"].rpm == 30 and "ollama" not in s.rate_limits
    s = load_settings(
        {"rate_limits": {"openai": {"rpm": 5, "tpm": 900}}, "openai": {"default_model": "o1"}},
        environ=env,
        use_file=False,
    )
    assert s.rate_limits["openai"].rpm == 5 and s.openai.default_model == "o1"  # arguments win
    s = load_settings({"rate_limits": {"openai": {"tpm": 900}}}, environ=env, use_file=False)
    assert (s.rate_limits["openai"].rpm, s.rate_limits["openai"].tpm) == (30, 900)
    s = load_settings(environ={"AI_PROVIDER": "mine", "AI_DEFAULT_MODEL": "m-1"}, use_file=False)
    assert s.providers["mine"]["default_model"] == "m-1"  # a custom provider's option
    for bad in ("fast", "0", "-3"):
        with pytest.raises(ConfigError, match=f"AI_RATE_LIMIT='{bad}' is not a number of requests per minute") as info:
            load_settings(environ={"AI_RATE_LIMIT": bad}, use_file=False)
        assert "\n" not in str(info.value) and "AI_RATE_LIMIT=60" in str(info.value)


def test_seed_environment_files(tmp_path, monkeypatch):
    """The seed's .env / .env.development / .env.production, read below the process environment."""
    (tmp_path / ".env").write_text("AI_PROVIDER=openai\nOPENAI_API_KEY=sk-from-dotenv-0000000000\nAI_RATE_LIMIT=10\n")
    (tmp_path / ".env.development").write_text("AI_DEFAULT_MODEL=gpt-4o\nAI_RATE_LIMIT=20\n")
    (tmp_path / ".env.production").write_text("AI_DEFAULT_MODEL=gpt-4.1\nOLLAMA_URL=http://prod-box:11434\n")
    before = dict(os.environ)
    s = load_settings(environ={}, start=tmp_path)
    assert s.default_provider == "openai" and s.openai.default_model == "gpt-4o"  # .env.development
    assert s.rate_limits["openai"].rpm == 20  # .env.<env> over .env
    assert s.openai.api_key.get_secret_value() == "sk-from-dotenv-0000000000"
    assert dict(os.environ) == before  # read, never exported
    s = load_settings(environ={"FARM_ENV": "production", "AI_RATE_LIMIT": "40"}, start=tmp_path)
    assert s.openai.default_model == "gpt-4.1" and s.ollama.host == "http://prod-box:11434"
    assert s.rate_limits["openai"].rpm == 40  # the process environment wins
    (tmp_path / ".env").write_text("FARM_ENV=production\nAI_PROVIDER=openai\n")
    assert load_settings(environ={}, start=tmp_path).openai.default_model == "gpt-4.1"  # FARM_ENV from .env
    (tmp_path / ".env").write_text("AI_PROVIDER=openai\n")
    (tmp_path / "farm.toml").write_text('env = "production"\n')
    assert load_settings(environ={}, start=tmp_path).openai.default_model == "gpt-4.1"  # else farm.toml's env
    assert load_settings({"env": "development"}, environ={}, start=tmp_path).openai.default_model == "gpt-4o"
    assert load_settings(environ={}, start=tmp_path, use_file=False).default_provider == "ollama"
    (tmp_path / "farm.toml").unlink()
    nested = tmp_path / "notebooks"
    nested.mkdir()
    assert load_settings(environ={}, start=nested).default_provider == "ollama"  # .env is not searched upward
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).default_provider == "openai"  # the current folder by default


@pytest.mark.parametrize(
    ("environ", "dotenv", "file", "says"),
    [
        ({}, None, '[ollama]\nhost = "not a url"\n', "ollama.host='not a url' in {path}/farm.toml is not a URL"),
        ({"OLLAMA_URL": "ftp://x"}, None, '[ollama]\nhost = "h"\n', "OLLAMA_URL='ftp://x' is not an http(s) URL"),
        ({}, "OLLAMA_HOST=bad host\n", None, "OLLAMA_HOST='bad host' in {path}/.env is not a URL"),
        ({"OLLAMA_HOST": "http://u:hunter2pw@h:x"}, None, None, "OLLAMA_HOST='http://***@h:x' has a bad port"),
        ({}, None, '[openai]\nbase_url = "nope nope"\n', "openai.base_url='nope nope' in {path}/farm.toml"),
        ({"FARM_CACHE": "floppy"}, None, "[cache]\nttl = 1\n", "cache.backend (from FARM_CACHE)"),
        ({}, "FARM_CACHE=floppy\n", None, "cache.backend (from FARM_CACHE in {path}/.env)"),
        ({}, None, "[timeouts]\ntotal = -1\n", "timeouts.total (in {path}/farm.toml)"),
    ],
)
def test_a_bad_value_is_named_where_it_came_from(tmp_path, environ, dotenv, file, says):
    if file is not None:
        (tmp_path / "farm.toml").write_text(file)
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ, start=tmp_path)
    message = str(info.value)
    assert says.format(path=tmp_path.resolve()) in message and "\n" not in message
    assert "hunter2" not in message
    if file and "ollama" in file and "OLLAMA" not in str(environ):
        assert "OLLAMA_HOST" not in message


def test_credentials_in_urls_leave_the_url():
    s = load_settings(
        environ={
            "OLLAMA_HOST": "http://ann:p%40ss-word-1@gpu-box",
            "OPENAI_BASE_URL": "http://bob:s3cret-pw-22@vllm:8000/v1",
        },
        use_file=False,
    )
    assert (s.ollama.host, s.ollama.username, s.ollama.password.get_secret_value()) == (
        "http://gpu-box:11434",
        "ann",
        "p@ss-word-1",
    )
    assert (s.openai.base_url, s.openai.username) == ("http://vllm:8000/v1", "bob")
    public = s.public()
    assert public["ollama"]["host"] == "http://ann:***@gpu-box:11434" and public["ollama"]["password"] == "***"
    assert public["openai"]["base_url"] == "http://bob:***@vllm:8000/v1"
    for shown in (repr(s), str(public), s.model_dump_json()):
        assert "ss-word" not in shown and "s3cret" not in shown
    s.ollama.host = "http://carl:another-pw-33@other:1"  # an assignment is split the same way
    assert (s.ollama.host, s.ollama.username) == ("http://other:1", "carl")
    assert s.ollama.password.get_secret_value() == "another-pw-33"
