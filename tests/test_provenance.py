"""Provenance in the saved notebook (issue 25): every answer output carries where it came from,
and `%farm why` / `farm.explain` show the request body byte for byte as the server received it.

A real kernel runs a notebook through nbclient against a loopback OpenAI server; the notebook is
saved and read back, and its outputs' metadata checked against the server's request log."""

from __future__ import annotations

from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

import farm_jupyter
from farm_jupyter.sessions import Session
from farm_jupyter.testing import OllamaServer, OpenAIServer
from farm_jupyter.testing.pytest_plugin import loopback_settings
from farm_jupyter.testing.servers import TEST_API_KEY

pytestmark = pytest.mark.timeout(180)
CHAT = "/v1/chat/completions"

CELLS = [
    "%load_ext farm_jupyter",
    "%%farm_chat -m openai:gpt-4o-mini --temperature 0.5\nWhere do answers come from?",
    "%farm why",
    "import farm_jupyter as farm\nrows = farm.map(['a', 'b'], 'Say {}', model='openai', progress=False)\nrows",
    "rows[['item', 'answer']]",
    "farm.compare(['q'], ['openai:gpt-4o-mini', 'openai:gpt-4o'], progress=False)",
]


def _run(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, server: OpenAIServer) -> nbformat.NotebookNode:
    for key, value in {
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "FARM_AI_PROVIDER": "openai",
        "FARM_FALLBACK": "",
        "FARM_CACHE": "memory",
    }.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / "saved.ipynb")
    return nbformat.read(tmp_path / "saved.ipynb", as_version=4)


def test_a_saved_notebook_says_where_every_answer_came_from(tmp_path, monkeypatch):
    with OpenAIServer(api_key=TEST_API_KEY) as server:
        nb = _run(tmp_path, monkeypatch, server)
        chats = [r for r in server.requests if r.path == CHAT]
    cells = nb.cells
    answer = [o for o in cells[1].outputs if o.output_type == "display_data"]
    assert answer and all("farm_jupyter" in o.metadata for o in answer), [o.get("metadata") for o in answer]
    meta = answer[-1].metadata["farm_jupyter"]
    assert meta["provider"] == "openai" and meta["model"] == "gpt-4o-mini"
    assert meta["params"] == {"temperature": 0.5} and meta["notice"] is None
    assert meta["cache"]["hit"] is False and len(meta["cache"]["key"]) >= 16
    assert meta["usage"]["completion_tokens"] > 0 and meta["version"] == farm_jupyter.__version__
    assert meta["seconds"] > 0

    # %farm why: the body of the cell's request, exactly as the server's log has it
    why = [o for o in cells[2].outputs if o.output_type == "display_data"]
    assert "the request body sent to openai:gpt-4o-mini" in why[0].data["text/plain"]
    assert why[1].data["text/plain"] == chats[0].body.decode()
    assert TEST_API_KEY not in why[1].data["text/plain"]

    for index in (3, 4):  # the map table, and a slice of it
        table = next(o for o in cells[index].outputs if o.output_type == "execute_result")
        provenance = table.metadata["farm_jupyter"]
        assert provenance["models"] == ["openai:gpt-4o-mini"] and provenance["rows"] == 2
        assert provenance["cache"] == {"hits": 0, "misses": 2} and provenance["version"] == farm_jupyter.__version__
    compared = next(o for o in cells[5].outputs if o.output_type == "execute_result")
    assert compared.metadata["farm_jupyter"]["models"] == ["openai:gpt-4o", "openai:gpt-4o-mini"]


def test_explain_shows_the_body_the_server_received_and_says_when_nothing_was_sent():
    with OllamaServer() as ollama, OpenAIServer(api_key=TEST_API_KEY) as oai:
        s = Session(loopback_settings(ollama, oai))
        try:
            for model, server, path in (("openai", oai, CHAT), ("ollama", ollama, "/api/chat")):
                streamed = s.stream("héllo {braces}", model, temperature=0.2).result()
                assert s.explain(streamed).body == server.requests[-1].body.decode()
                whole = s.chat("whole", model, seed=3)
                assert s.explain().body == server.requests[-1].body.decode()  # the last answer
                assert server.requests[-1].path == path and whole.params == {"seed": 3}
            again = s.chat("whole", "openai", seed=3)
            assert again.cached and again.sent is None and "nothing was sent" in str(s.explain(again))
        finally:
            s.close()
