"""The configuration matrix (issue 21): every way to give a setting reaches the request.

Hypothesis draws a configuration shape: which provider answers and how it is chosen (a target,
FARM_AI_PROVIDER or the seed's AI_PROVIDER, farm.toml's `provider`, an `[environments.NAME]`
selected by FARM_ENV, `production`), where its server or servers are given (farm.toml or
pyproject's [tool.farm], `.env`, `.env.<env>`, the environment, explicit arguments; `host` or a
`hosts` list of 1 to 3 entries; OLLAMA_HOST or the seed's OLLAMA_URL), `user:password@` in the URLs,
a key in a file or the environment, a default model, and what lower layers said that must lose.
Real loopback servers answer; the assertions are on their request logs: which server got each
request, with which Authorization header, for which model. A key is never sent to a server the
user did not configure, and the public OpenAI URL is used only when no base URL is given anywhere.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from farm_jupyter.config import load_settings, shown_url
from farm_jupyter.errors import FarmError
from farm_jupyter.providers.openai import DEFAULT_BASE_URL
from farm_jupyter.sessions import Session
from farm_jupyter.testing import OllamaServer, OpenAIServer

pytestmark = pytest.mark.timeout(300)

# Lowest first, as load_settings layers them.
LAYERS = ("file", "dotenv", "dotenv_env", "environ", "overrides")
VARIABLES = ("dotenv", "dotenv_env", "environ")  # layers that hold variables, not tables
TABLES = ("file", "overrides")
ORG = "org-matrix-0123"
KEY, LOWER_KEY = "sk-matrix-winner-0123456789abcdef", "sk-matrix-loser-fedcba9876543210"
MODELS = {"ollama": ("llama3.1", "qwen2.5:0.5b"), "openai": ("gpt-4o-mini", "gpt-4o")}
OTHER = {"ollama": "openai", "openai": "ollama"}
SERVERS = 4  # of each kind: up to 3 configured, and others that must get nothing


@dataclass(frozen=True)
class Servers:
    ollama: list[OllamaServer]
    openai: list[OpenAIServer]

    def of(self, provider: str) -> list[Any]:
        return list(getattr(self, provider))

    def url(self, provider: str, index: int, credentials: bool = False) -> str:
        server = self.of(provider)[index]
        url = server.url if provider == "ollama" else server.base_url
        if credentials:
            url = url.replace("://", f"://u{index}:p{index}-secret@")
        return url


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    # OpenAI servers that take any key: the test reads the Authorization each one saw.
    found = Servers(
        [OllamaServer().start() for _ in range(SERVERS)], [OpenAIServer(api_key=None).start() for _ in range(SERVERS)]
    )
    yield found
    for server in [*found.ollama, *found.openai]:
        server.stop()


@dataclass(frozen=True)
class Shape:
    provider: str  # the one that must answer
    choose: str  # target | default | FARM_AI_PROVIDER | AI_PROVIDER | toml | environment | production
    choose_layer: str  # where the choice (or FARM_ENV) is given
    servers: tuple[int, ...]  # which of its servers are configured, in order; () only for openai
    credentials: bool  # user:password@ in each configured URL
    listed: bool  # `hosts`/`base_urls` rather than `host`/`base_url`
    layer: str  # where they are given
    seed_name: bool  # OLLAMA_URL rather than OLLAMA_HOST
    lower: tuple[str, int, bool] | None  # a lower layer's server (layer, index, listed): must lose
    key_layer: str | None  # where the OpenAI key is given
    lower_key: str | None  # a lower layer's key: must lose
    model_by: str | None  # own | seed | table: how the default model is given
    model_layer: str
    pyproject: bool  # [tool.farm] in pyproject.toml rather than farm.toml
    org_layer: str | None = None  # where OPENAI_ORG_ID is given


def _below(layer: str) -> list[str]:
    return list(LAYERS[: LAYERS.index(layer)])


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    provider = draw(st.sampled_from(["ollama", "openai"]))
    ways = ["target", "FARM_AI_PROVIDER", "AI_PROVIDER", "toml", "environment"]
    ways += ["default"] if provider == "ollama" else ["production"]
    choose = draw(st.sampled_from(ways))
    if choose in ("FARM_AI_PROVIDER", "AI_PROVIDER"):
        choose_layer = draw(st.sampled_from(VARIABLES))
    elif choose in ("environment", "production"):  # FARM_ENV; .env.<env> cannot name its own env
        choose_layer = draw(st.sampled_from(["file", "dotenv", "environ", "overrides"]))
    else:
        choose_layer = "file"
    listed = draw(st.booleans())
    count = draw(st.integers(1, 3)) if listed else 1
    servers = tuple(draw(st.permutations(range(SERVERS)))[:count])
    layer = draw(st.sampled_from(TABLES if listed else LAYERS))
    if provider == "openai" and not listed and draw(st.integers(0, 5)) == 0:
        servers, layer = (), "file"  # no base URL anywhere: the public API
    key_layer = draw(st.sampled_from([None, *LAYERS])) if provider == "openai" else None
    # user:password and a key both travel in the Authorization header: they cannot both be given.
    credentials = bool(servers) and key_layer is None and draw(st.booleans())
    lower = None
    spare = [i for i in range(SERVERS) if i not in servers]
    if servers and _below(layer) and draw(st.booleans()):
        lower_layer = draw(st.sampled_from(_below(layer)))
        lower = (lower_layer, spare[0], lower_layer in TABLES and draw(st.booleans()))
    lower_key = None
    if key_layer is not None and _below(key_layer) and draw(st.booleans()):
        lower_key = draw(st.sampled_from(_below(key_layer)))
    model_by = draw(st.sampled_from([None, "own", "table", *(["seed"] if choose != "target" else [])]))
    model_layer = draw(st.sampled_from(TABLES if model_by == "table" else VARIABLES))
    return Shape(
        provider,
        choose,
        choose_layer,
        servers,
        credentials,
        listed,
        layer,
        provider == "ollama" and draw(st.booleans()),
        lower,
        key_layer,
        lower_key,
        model_by,
        model_layer,
        draw(st.booleans()),
        draw(st.sampled_from([None, *LAYERS])) if provider == "openai" else None,
    )


class Layers:
    """The values of each layer, written out as the files and mappings load_settings reads."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {layer: {} for layer in LAYERS}

    def put(self, layer: str, variable: str, dotted: str, value: Any) -> None:
        if layer in VARIABLES:
            self.values[layer][variable] = value
            return
        *parents, leaf = dotted.split(".")
        node = self.values[layer]
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value

    def write(self, folder: Path, pyproject: bool, env: str) -> tuple[dict[str, str], dict[str, Any]]:
        table = self.values["file"]
        if pyproject:
            (folder / "pyproject.toml").write_text(_toml({"tool": {"farm": table}}, ""))
        else:
            (folder / "farm.toml").write_text(_toml(table, ""))
        for layer, name in (("dotenv", ".env"), ("dotenv_env", f".env.{env}")):
            lines = [f"{k}={v}" for k, v in self.values[layer].items()]
            if lines:
                (folder / name).write_text("\n".join(lines) + "\n")
        return dict(self.values["environ"]), self.values["overrides"]


def _toml(table: dict[str, Any], prefix: str) -> str:
    """A TOML document (strings, booleans, lists of strings, tables): enough for farm.toml."""
    plain = [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and plain else []) + plain
    for k, v in table.items():
        if isinstance(v, dict):
            out.append(_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


def configure(shape: Shape, servers: Servers) -> tuple[Layers, str]:
    """The layers for `shape`, and the environment whose `.env.<env>` is read."""
    layers = Layers()
    p = shape.provider
    env = "development"
    if shape.choose in ("FARM_AI_PROVIDER", "AI_PROVIDER"):
        layers.put(shape.choose_layer, shape.choose, "provider", p)
        if shape.choose == "FARM_AI_PROVIDER":  # the seed's name in the same layer loses to ours
            layers.put(shape.choose_layer, "AI_PROVIDER", "provider", OTHER[p])
    elif shape.choose == "toml":
        layers.put("file", "", "provider", p)
    elif shape.choose in ("environment", "production"):
        env = "lab" if shape.choose == "environment" else "production"
        if env == "lab":
            layers.put("file", "", "environments.lab", {"provider": p, "fallback": []})
        layers.put(shape.choose_layer, "FARM_ENV", "env", env)
    # The other provider points at a server of its own, which must get nothing.
    other = OTHER[p]
    layers.put("file", "", f"{other}.{'host' if other == 'ollama' else 'base_url'}", servers.url(other, SERVERS - 1))
    if shape.lower is not None:
        where, index, listed = shape.lower
        _put_servers(layers, shape, where, [servers.url(p, index)], listed)
    if shape.servers:
        urls = [servers.url(p, i, shape.credentials) for i in shape.servers]
        _put_servers(layers, shape, shape.layer, urls, shape.listed)
    if shape.lower_key is not None:
        layers.put(shape.lower_key, "OPENAI_API_KEY", "openai.api_key", LOWER_KEY)
    if shape.key_layer is not None:
        layers.put(shape.key_layer, "OPENAI_API_KEY", "openai.api_key", KEY)
    if shape.model_by is not None:
        model = MODELS[p][1]
        own = f"FARM_{p.upper()}_MODEL"
        if shape.model_by == "own":
            layers.put(shape.model_layer, own, "", model)
        elif shape.model_by == "seed":
            layers.put(shape.model_layer, "AI_DEFAULT_MODEL", "", model)
        else:
            layers.put(shape.model_layer, "", f"{p}.default_model", model)
    if shape.org_layer is not None:
        layers.put(shape.org_layer, "OPENAI_ORG_ID", "openai.organization", ORG)
    layers.put("overrides", "", "fallback", False)  # the provider asked answers, or the test fails
    layers.put("overrides", "", "retry.max_retries", 0)
    return layers, env


def _put_servers(layers: Layers, shape: Shape, layer: str, urls: list[str], listed: bool) -> None:
    if shape.provider == "ollama":
        variable = "OLLAMA_URL" if shape.seed_name else "OLLAMA_HOST"
        dotted = "ollama.hosts" if listed else "ollama.host"
    else:
        variable, dotted = "OPENAI_BASE_URL", "openai.base_urls" if listed else "openai.base_url"
    layers.put(layer, variable, dotted, urls if listed else urls[0])


def expected_auth(shape: Shape, index: int) -> str | None:
    if shape.credentials:
        return "Basic " + base64.b64encode(f"u{index}:p{index}-secret".encode()).decode()
    if shape.key_layer is not None:
        return f"Bearer {KEY}"
    return None


@settings(deadline=None)
@given(shapes())
@example(  # issue 21: a one-entry `hosts` list was dropped (requests went to 127.0.0.1:11434)
    Shape("ollama", "default", "file", (1,), False, True, "file", False, None, None, None, None, "file", False)
)
@example(  # issue 21: a one-entry `base_urls` list was dropped, and the key went to api.openai.com
    Shape("openai", "toml", "file", (2,), False, True, "file", False, None, "file", None, None, "file", False)
)
@example(  # OLLAMA_HOST in the environment over a farm.toml `hosts` list of two
    Shape(
        "ollama",
        "default",
        "file",
        (0,),
        True,
        False,
        "environ",
        False,
        ("file", 3, True),
        None,
        None,
        None,
        "file",
        False,
    )
)
def test_every_way_to_configure_reaches_the_request(servers: Servers, shape: Shape) -> None:
    p = shape.provider
    for server in [*servers.ollama, *servers.openai]:
        server.clear()
    layers, env = configure(shape, servers)
    with tempfile.TemporaryDirectory() as tmp:
        environ, overrides = layers.write(Path(tmp), shape.pyproject, env)
        s = Session(load_settings(overrides, environ=environ, start=Path(tmp)))
    try:
        target = p if shape.choose == "target" else None
        provider = s._engine.router.provider(p)
        if not shape.servers:  # nothing names a server: the public API, and only then
            assert provider.url == DEFAULT_BASE_URL
            assert sum(len(srv.requests) for srv in [*servers.ollama, *servers.openai]) == 0
            return
        model = MODELS[p][1] if shape.model_by else MODELS[p][0]
        for i in range(len(shape.servers)):  # least busy, then fastest: each server once
            answer = s.chat(f"question {i}", target, no_cache=True)
            assert (answer.provider, answer.text) == (p, f"Echo: question {i}")
        path = "/api/chat" if p == "ollama" else "/v1/chat/completions"
        for index, server in enumerate(servers.of(p)):
            asked = [r for r in server.requests if r.path == path]
            assert len(asked) == (index in shape.servers), (index, shape)
            for r in asked:
                assert r.json is not None and r.json["model"] == model
                assert r.headers.get("openai-organization") == (ORG if shape.org_layer else None)
                auth = r.headers.get("authorization")
                if expected_auth(shape, index) is not None:
                    assert auth == expected_auth(shape, index)
                else:  # no credential of this user's: OpenAI's SDK sends a placeholder
                    assert auth in (None, "Bearer not-needed")
        assert not servers.of(OTHER[p])[SERVERS - 1].requests
        # `%farm health` asks the servers the requests went to, and shows them without a password
        rows = s.health([p])
        shown = {shown_url(servers.url(p, i, shape.credentials)) for i in shape.servers}
        assert {r.url for r in rows} == shown and all(r.state == "healthy" for r in rows), rows
        for index, server in enumerate(servers.of(p)):
            if index not in shape.servers:
                assert not server.requests, (index, server.requests)
        for server in [*servers.ollama, *servers.openai]:
            for r in server.requests:  # a key goes only where the user sent it
                assert LOWER_KEY not in str(r.headers)
    finally:
        s.close()


def test_a_key_and_a_password_for_one_server_are_one_line_and_nothing_is_sent(servers: Servers) -> None:
    for server in servers.openai:
        server.clear()
    url = servers.url("openai", 0, credentials=True)
    s = Session(
        load_settings(
            {"openai": {"base_urls": [url], "api_key": KEY}, "provider": "openai"}, environ={}, use_file=False
        )
    )
    try:
        with pytest.raises(FarmError, match="has a user:password and an API key"):
            s.chat("hi", no_cache=True)
        assert not servers.openai[0].requests
    finally:
        s.close()


@pytest.mark.parametrize("provider", ["ollama", "openai"])
def test_a_one_entry_list_is_where_config_health_requests_and_errors_point(servers: Servers, provider: str) -> None:
    # issue 21: `%farm config` showed the entry, `%farm health` and the requests used the default
    # (127.0.0.1:11434; for OpenAI the public API, with the key) and the error said to set OLLAMA_HOST.
    with OllamaServer() as ollama, OpenAIServer(api_key=None) as openai:
        server: Any = ollama if provider == "ollama" else openai
        url = server.url if provider == "ollama" else server.base_url
        field = "hosts" if provider == "ollama" else "base_urls"
        config = {provider: {field: [url.replace("://", "://me:pw-secret@")]}, "provider": provider, "fallback": False}
        if provider == "openai":
            config["openai"]["default_model"] = "gpt-4o-mini"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "farm.toml").write_text(_toml(config, ""))
            s = Session(load_settings(environ={}, start=Path(tmp)))
        try:
            shown = url.replace("://", "://me:***@")
            assert s.settings.public()[provider][field] == [shown]  # `%farm config`, without the password
            assert s.chat("hi", no_cache=True).text == "Echo: hi"
            [asked] = [r for r in server.requests if r.method == "POST"]
            assert asked.headers["authorization"] == "Basic " + base64.b64encode(b"me:pw-secret").decode()
            [row] = s.health([provider])
            assert (row.url, row.state) == (shown, "healthy")
            server.refuse()
            with pytest.raises(FarmError) as info:
                s.chat("again", no_cache=True)
            assert shown in str(info.value) and "11434" not in str(info.value).replace(shown, "")
            assert "pw-secret" not in str(info.value)
        finally:
            s.close()
