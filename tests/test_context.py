"""The notebook as context (issue 16): objects described in prompts, figures as images, structured
answers, kernel functions as tools, thinking. Over the loopback servers, asserting the wire bodies
in their request logs."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from farm_jupyter.context import CHARS_PER_TOKEN, describe
from farm_jupyter.errors import BadRequest, ConfigError
from farm_jupyter.sessions import Session
from farm_jupyter.structured import SchemaMismatch
from farm_jupyter.testing import OllamaServer, OpenAIServer, Said, example_of
from farm_jupyter.testing.pytest_plugin import loopback_settings
from farm_jupyter.testing.servers import TEST_API_KEY
from farm_jupyter.types import ImagePart

pytestmark = pytest.mark.timeout(120)
CHAT, COMPLETIONS = "/api/chat", "/v1/chat/completions"


@pytest.fixture
def ollama():
    with OllamaServer(models=("llama3.1:latest", "llava:latest")) as server:
        yield server


@pytest.fixture
def openai():
    with OpenAIServer(models=("gpt-4o-mini", "text-only-model"), api_key=TEST_API_KEY) as server:
        yield server


@pytest.fixture
def s(ollama, openai):
    session = Session(loopback_settings(ollama, openai))
    yield session
    session.close()


def bodies(server, path):
    return [r.json for r in server.requests if r.path == path]


def user_text(body):
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, str) else " ".join(p["text"] for p in content if p["type"] == "text")


# -- context: objects described ------------------------------------------------------------------


def test_a_dataframe_goes_as_shape_dtypes_and_first_rows_within_the_budget(s, ollama):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"city": [f"city{i}" for i in range(5000)], "sales": [i * 1.5 for i in range(5000)]})
    s.chat("Summarise {df}", context={"df": df}, context_budget=200)
    text = user_text(bodies(ollama, CHAT)[-1])
    described = text.removeprefix("Summarise ")
    assert described.startswith("pandas DataFrame `df`: 5000 rows x 2 columns")
    assert "columns (dtype): city (object), sales (float64)" in described or "city (str)" in described
    assert "first " in described and " of 5000 rows" in described and "city0" in described
    assert len(described) <= 200 * CHARS_PER_TOKEN
    assert "city4999" not in described  # not the whole frame

    s.chat("Summarise {df}", context={"df": df}, context_budget=2000)  # a bigger budget, more rows
    more = user_text(bodies(ollama, CHAT)[-1])
    assert 200 * CHARS_PER_TOKEN < len(more) <= 2000 * CHARS_PER_TOKEN + len("Summarise ")


def test_objects_describe_themselves_first_then_the_defaults():
    np = pytest.importorskip("numpy")

    class Own:
        def _repr_llm_(self):
            return "a model-friendly description"

        def __str__(self):
            return "not this"

    class Bundle:
        def _ai_repr_(self, **kwargs):
            return {"text/plain": "plain", "text/llm+plain": "for the model"}

    assert describe(Own()).text == "a model-friendly description"
    assert describe(Bundle()).text == "for the model"
    assert describe(Own).text.startswith("<class")  # a class is not its instances
    arr = describe(np.arange(12.0).reshape(3, 4), name="arr").text
    assert arr.startswith("numpy array `arr`: shape (3, 4), dtype float64")
    assert "min 0, max 11, mean 5.5" in arr
    try:
        {}["missing"]
    except KeyError as exc:
        err = describe(exc).text
    assert err.startswith("Traceback (most recent call last)") and err.endswith("KeyError: 'missing'")
    long = describe(list(range(10_000)), budget=40).text
    assert long.startswith("list: 10000 items\n[0, 1, 2,") and len(long) <= 40 * CHARS_PER_TOKEN
    assert "more characters cut: 40-token budget, estimated at 4 characters a token" in long
    assert describe(list(range(10_000)), budget=1).text == "list: 10000 items"  # what it is, always
    assert describe("a plain string, as it is " * 100, budget=1).text.count("plain") == 100  # str untouched


def test_a_mistake_in_the_template_is_one_line(s, ollama):
    with pytest.raises(ConfigError, match="not in context"):
        s.chat("{nope}", context={"df": 1})
    with pytest.raises(ConfigError, match="starting with '_'"):
        s.chat("{x.__class__}", context={"x": 1})
    with pytest.raises(ConfigError, match="images= takes figures"):
        s.chat("look", images=[42])
    assert ollama.count(CHAT) == 0


# -- figures and pictures as images -------------------------------------------------------------


def figure(title="Sales"):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([1, 2, 3], [3, 1, 2], label="units")
    ax.set_title(title)
    ax.set_xlabel("month")
    plt.close(fig)
    return fig


def test_a_figure_goes_as_base64_png_to_a_vision_model_and_as_one_line_to_a_text_only_one(s, ollama, openai):
    fig = figure()
    r = s.chat("What trend does {fig} show?", "ollama:llava", context={"fig": fig})
    body = bodies(ollama, CHAT)[-1]
    (image,) = body["messages"][-1]["images"]
    png = base64.b64decode(image)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "[image 1: matplotlib figure, 100x75 px; axes 1 title 'Sales' x 'month' lines 'units']" in user_text(body)
    assert r.text.endswith("[1 image]") and r.notes == []

    r = s.chat("What trend does {fig} show?", "ollama:llama3.1", context={"fig": fig})
    body = bodies(ollama, CHAT)[-1]
    assert "images" not in body["messages"][-1]
    assert "[image 1: matplotlib figure" in user_text(body)
    assert r.notes == ["1 image sent as text (llama3.1 takes no images)"]
    assert "1 image sent as text" in r.footer()

    s.chat("What trend does {fig} show?", "openai:gpt-4o-mini", context={"fig": fig})
    parts = bodies(openai, COMPLETIONS)[-1]["messages"][-1]["content"]
    assert parts[0]["type"] == "text" and "[image 1:" in parts[0]["text"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}


def test_the_cache_key_covers_the_image_bytes(s, ollama):
    PIL = pytest.importorskip("PIL.Image")
    red, blue = PIL.new("RGB", (4, 4), "red"), PIL.new("RGB", (4, 4), "blue")
    assert describe(red).text == describe(blue).text  # the same stand-in text...
    s.chat("Colour?", "ollama:llava", images=[red])
    s.chat("Colour?", "ollama:llava", images=[blue])
    assert ollama.count(CHAT) == 2  # ...but not the same answer
    again = s.chat("Colour?", "ollama:llava", images=[red])
    assert again.cached and ollama.count(CHAT) == 2
    part = ImagePart(data=base64.b64encode(b"not really a png").decode(), alt="[image: a test]")
    s.chat("Colour?", "ollama:llava", images=[part])
    assert bodies(ollama, CHAT)[-1]["messages"][-1]["images"] == [part.data]


def test_images_stay_with_their_question_in_a_conversation(s, ollama):
    PIL = pytest.importorskip("PIL.Image")
    s.chat("What is it?", "ollama:llava", images=[PIL.new("L", (2, 2))], conversation=s.history)
    s.chat("And its size?", "ollama:llava", conversation=s.history)
    first, follow = bodies(ollama, CHAT)[-1]["messages"][0], bodies(ollama, CHAT)[-1]["messages"][-1]
    assert len(first["images"]) == 1 and "images" not in follow
    r = s.chat("In words?", "ollama:llama3.1", conversation=s.history)  # a text-only model: stand-ins only
    assert all("images" not in m for m in bodies(ollama, CHAT)[-1]["messages"])
    assert r.notes == []  # its own question had no image: nothing to say


# -- structured answers -------------------------------------------------------------------------


class City(BaseModel):
    name: str
    population: int


def test_a_schema_goes_to_both_protocols_and_comes_back_validated(s, ollama, openai):
    r = s.chat("The biggest city?", "ollama", schema=City)
    assert r.parsed == City(name="x", population=0) and json.loads(r.text) == {"name": "x", "population": 0}
    body = bodies(ollama, CHAT)[-1]
    assert body["format"] == City.model_json_schema()
    assert body["messages"][0]["role"] == "system" and '"population"' in body["messages"][0]["content"]

    r = s.chat("The biggest city?", "openai", schema=City)
    assert isinstance(r.parsed, City)
    assert bodies(openai, COMPLETIONS)[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "City", "schema": City.model_json_schema()},
    }
    r = s.chat("Three numbers", "ollama", schema=list[int])
    assert r.parsed == [0] and bodies(ollama, CHAT)[-1]["format"]["type"] == "array"
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    assert s.chat("Fine?", "openai", schema=schema).parsed == {"ok": False}


def test_an_answer_that_does_not_match_is_asked_again_and_each_try_is_in_attempts(make_session, ollama):
    answers = iter(['{"name": "Paris"}', "Sure! Here it is: not json", '{"name": "Paris", "population": 2100000}'])
    ollama.reply = lambda body: next(answers)
    s = make_session(ollama)
    stream = s.stream("The biggest city?", schema=City, max_reasks=2)
    chunks = list(stream)
    r = stream.response
    assert r.parsed == City(name="Paris", population=2100000)
    assert r.reasks == 2 and "2 re-asks" in r.footer()
    assert [a.step for a in r.attempts] == [None, "re-ask 1", "re-ask 2"]
    assert sum(1 for c in chunks if c.restart) == 2  # the invalid JSON shown is voided each time
    assert any("did not match City (population: Field required)" in (c.status or "") for c in chunks)
    third = bodies(ollama, CHAT)[-1]["messages"]
    assert third[-2] == {"role": "assistant", "content": "Sure! Here it is: not json"}
    assert third[-1]["role"] == "user" and "not JSON" in third[-1]["content"]
    assert stream.text == r.text == '{"name": "Paris", "population": 2100000}'


def test_when_every_try_fails_it_raises_and_leaves_history_and_cache_clean(make_session, ollama):
    ollama.reply = "never JSON"
    s = make_session(ollama)
    with pytest.raises(SchemaMismatch, match="did not match City after 2 tries") as caught:
        s.chat("The biggest city?", schema=City, max_reasks=1, conversation=s.history)
    assert caught.value.response.text == "never JSON" and caught.value.response.reasks == 1
    assert len(s.history) == 0
    assert ollama.count(CHAT) == 2
    with pytest.raises(SchemaMismatch):
        s.chat("The biggest city?", schema=City, max_reasks=1)
    assert ollama.count(CHAT) == 4  # refused answers were not kept: asked again, not replayed


def test_a_json_schema_is_checked_whole_and_what_breaks_it_is_asked_again(make_session, ollama):
    # Keywords no grammar enforces (uniqueItems, multipleOf, not) are checked after the answer.
    schema = {
        "type": "object",
        "properties": {
            "picks": {"type": "array", "items": {"type": "integer", "multipleOf": 5}, "uniqueItems": True},
            "code": {"type": "string", "not": {"const": "none"}},
        },
        "required": ["picks", "code"],
    }
    answers = iter(
        ['{"picks": [5, 5], "code": "a"}', '{"picks": [5, 7], "code": "none"}', '{"picks": [5, 10], "code": "a"}']
    )
    ollama.reply = lambda body: next(answers)
    s = make_session(ollama)
    r = s.chat("Pick two.", schema=schema, max_reasks=2)
    assert r.parsed == {"picks": [5, 10], "code": "a"} and r.reasks == 2
    said = [m["content"] for m in bodies(ollama, CHAT)[-1]["messages"] if m["role"] == "user"][1:]
    assert "$.picks: [5, 5] has non-unique elements" in said[0]
    assert "$.picks[1]: 7 is not a multiple of 5" in said[1] and "$.code: 'none' should not be valid" in said[1]


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "objekt"}, "the schema is not a valid JSON Schema (at type: 'objekt'"),
        (
            {"$ref": "http://169.254.169.254/latest/meta-data"},
            "$ref 'http://169.254.169.254/latest/meta-data' is not inside it",
        ),
        ({"properties": {"a": {"$ref": "other.json#/A"}}}, "$ref 'other.json#/A' is not inside it"),
    ],
)
def test_a_schema_that_is_wrong_or_points_elsewhere_is_refused_before_anything_is_sent(s, ollama, schema, words):
    with pytest.raises(ConfigError) as caught:
        s.chat("Fine?", "ollama", schema=schema)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert ollama.count(CHAT) == 0  # and no schema was fetched from anywhere


def test_a_ref_that_leads_nowhere_in_the_schema_fails_in_one_line_not_a_reask(s, ollama):
    ollama.reply = '{"a": 1}'
    with pytest.raises(ConfigError, match="the schema's \\$ref '#/\\$defs/Nope' leads nowhere in it"):
        s.chat("Fine?", "ollama", schema={"properties": {"a": {"$ref": "#/$defs/Nope"}}})
    assert ollama.count(CHAT) == 1


def test_a_map_takes_a_schema_too(make_session, ollama):
    s = make_session(ollama)
    rows = s.map(["a", "b"], "City {}", schema=City, progress=False)
    assert list(rows.parsed) == [City(name="x", population=0)] * 2
    assert all(b["format"] == City.model_json_schema() for b in bodies(ollama, CHAT))


# -- tools -----------------------------------------------------------------------------------------


def test_a_tool_round_trip_in_both_protocols_streamed_and_not(make_session, ollama, openai):
    ran_in = []

    def get_weather(city: str, days: int = 1) -> dict:
        """The forecast for a city.

        Args:
            city: the city's name
            days: how many days ahead
        """
        ran_in.append(threading.get_ident())
        return {"city": city, "sky": "sunny", "days": days}

    ollama.reply = openai.reply = lambda body: (
        f"It is {json.loads(body['messages'][-1]['content'])['sky']}."
        if body["messages"][-1]["role"] == "tool"
        else Said(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris", "days": "2"}}])
    )
    s = make_session(ollama, openai)
    for target, server, path in (("ollama", ollama, CHAT), ("openai", openai, COMPLETIONS)):
        for streamed in (False, True):
            if streamed:
                stream = s.stream("Weather in Paris?", target, tools=[get_weather], no_cache=True)
                runs = [c.tool_run for c in stream if c.tool_run]
                r = stream.response
                assert runs == r.tool_runs
            else:
                r = s.chat("Weather in Paris?", target, tools=[get_weather], no_cache=True)
            assert r.text == "It is sunny."
            (run,) = r.tool_runs
            assert run.name == "get_weather" and run.arguments == {"city": "Paris", "days": "2"}
            assert json.loads(run.result) == {"city": "Paris", "sky": "sunny", "days": 2}  # validated: "2" -> 2
            assert "1 tool call in 1 step" in r.footer()
            assert [a.step for a in r.attempts] == [None, "tool results 1"]
            first, second = bodies(server, path)[-2:]
            (spec,) = first["tools"]
            assert spec["type"] == "function" and spec["function"]["name"] == "get_weather"
            assert spec["function"]["description"] == "The forecast for a city."
            assert spec["function"]["parameters"]["properties"]["city"] == {
                "type": "string",
                "description": "the city's name",
            }
            assert spec["function"]["parameters"]["required"] == ["city"]
            call, result = second["messages"][-2:]
            if target == "ollama":
                assert call["tool_calls"] == [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": "2"}}}
                ]
                assert result["role"] == "tool" and result["tool_name"] == "get_weather"
            else:
                (tc,) = call["tool_calls"]
                assert call["content"] is None and tc["type"] == "function"
                assert json.loads(tc["function"]["arguments"]) == {"city": "Paris", "days": "2"}
                assert result["role"] == "tool" and result["tool_call_id"] == tc["id"]
            assert json.loads(result["content"])["sky"] == "sunny"
    assert set(ran_in) == {threading.get_ident()}  # every call ran in the caller's thread


def test_an_exception_goes_back_to_the_model_and_unknown_names_are_never_looked_up(make_session, ollama):
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    calls = iter(
        [
            [{"name": "divide", "arguments": {"a": 1, "b": 0}}, {"name": "exec", "arguments": {"code": "1"}}],
            [{"name": "divide", "arguments": {"a": "one"}}],
        ]
    )
    ollama.reply = lambda body: (
        Said(tool_calls=next(calls, []))
        if body["messages"][-1]["role"] != "tool" or len(body["messages"]) < 6
        else "done"
    )
    s = make_session(ollama)
    r = s.chat("Divide", tools=[divide])
    assert r.text == "done"
    boom, unknown, invalid = r.tool_runs
    assert boom.error == "ZeroDivisionError: float division by zero" and boom.step == 1
    assert unknown.error == "there is no tool named 'exec'; the tools are divide"
    assert invalid.step == 2 and invalid.error.startswith("invalid arguments: a: Input should be a valid number")
    sent = bodies(ollama, CHAT)[1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == [
        "Error: ZeroDivisionError: float division by zero",
        "Error: there is no tool named 'exec'; the tools are divide",
    ]
    assert "2 tool calls" not in r.footer() and "3 tool calls in 2 steps" in r.footer()


def test_the_step_limit_stops_a_model_that_keeps_calling(make_session, ollama):
    count = []

    def ping() -> str:
        """Ping."""
        count.append(1)
        return "pong"

    ollama.reply = lambda body: Said(tool_calls=[{"name": "ping", "arguments": {}}])
    s = make_session(ollama)
    r = s.chat("Ping forever", tools=[ping], max_steps=3, conversation=s.history)
    assert len(count) == 3 and ollama.count(CHAT) == 4
    assert r.notes == ["stopped at the tool step limit (3): ping not run"]
    assert "3 tool calls in 3 steps" in r.footer() and "tool step limit" in r.footer()
    assert len(s.history) == 1  # an answer all the same, said as such


def test_tools_are_checked_before_anything_is_sent(s, ollama):
    with pytest.raises(ConfigError, match="no usable name"):
        s.chat("x", tools=[lambda: 1])
    with pytest.raises(ConfigError, match="not a function"):
        s.chat("x", tools=["print"])
    assert ollama.count() == 0


def test_the_default_loopback_model_calls_the_first_tool_then_reports(s, ollama):
    def lookup(key: str) -> str:
        """Look a key up."""
        return key.upper()

    r = s.chat("Look up", tools=[lookup])
    assert r.text == "Tool results: X" and r.tool_runs[0].arguments == {"key": "x"}
    again = s.chat("Look up", tools=[lookup])  # both steps from the cache; the tool runs again, here
    assert again.cached and again.text == "Tool results: X" and len(again.tool_runs) == 1
    assert ollama.count(CHAT) == 2


# -- thinking -------------------------------------------------------------------------------------


def test_thinking_streams_apart_and_stays_out_of_the_text_and_the_history(s, ollama, openai):
    stream = s.stream("Why is the sky blue?", "ollama", think=True, conversation=s.history)
    chunks = list(stream)
    assert bodies(ollama, CHAT)[-1]["think"] is True
    assert "".join(c.thinking for c in chunks) == "Thinking about: Why is the sky blue?"
    assert stream.thinking == stream.response.thinking == "Thinking about: Why is the sky blue?"
    assert stream.response.text == "Echo: Why is the sky blue?" and "Thinking" not in stream.text
    s.chat("And at sunset?", "ollama", think=True, conversation=s.history)
    sent = bodies(ollama, CHAT)[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": "Echo: Why is the sky blue?"}  # no thinking sent back

    s.history.reset()
    s.chat("Why?", "ollama", think=True, conversation=s.history, keep_thinking=True)
    s.chat("Sure?", "ollama", conversation=s.history)
    assert bodies(ollama, CHAT)[-1]["messages"][1]["thinking"] == "Thinking about: Why?"

    r = s.chat("Why?", "openai", think="high")
    assert bodies(openai, COMPLETIONS)[-1]["reasoning_effort"] == "high"
    assert r.thinking == "Thinking about: Why?" and r.text == "Echo: Why?"
    stream = s.stream("Why not?", "openai", think="low")
    assert [c.thinking for c in stream if c.thinking] == ["Thinking ", "about: ", "Why ", "not?"]
    again = s.chat("Why?", "openai", think="high")  # from the cache, reasoning included
    assert again.cached and again.thinking == "Thinking about: Why?"


def test_example_of_builds_the_smallest_matching_value():
    assert example_of(City.model_json_schema()) == {"name": "x", "population": 0}
    assert example_of({"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2}) == ["a", "a"]
    assert example_of({"anyOf": [{"type": "integer", "minimum": 3}, {"type": "null"}]}) == 3


def test_a_stream_cut_after_thinking_restarts_and_voids_the_thinking_shown(make_session, ollama):
    from farm_jupyter.testing import Fault

    s = make_session(ollama)
    ollama.add_fault(Fault(kind="drop", after=2, path=CHAT))  # two pieces of reasoning, then the cut
    stream = s.stream("Why?", think=True)
    chunks = list(stream)
    assert [c.restart for c in chunks].count(True) == 1
    assert stream.thinking == "Thinking about: Why?" and stream.response.thinking == "Thinking about: Why?"
    assert stream.response.retries == 1


def test_achat_runs_tools_and_schemas_on_the_callers_thread_too(make_session, ollama):
    import asyncio

    ran_in = []

    async def slow_lookup(key: str) -> str:
        """An async tool: awaited on the runtime loop."""
        await asyncio.sleep(0)
        return key * 2

    def lookup(key: str) -> str:
        """A plain tool."""
        ran_in.append(threading.get_ident())
        return key.upper()

    s = make_session(ollama)

    async def main() -> tuple:
        a = await s.aio.chat("Look up", tools=[lookup])
        b = await s.aio.chat("Look up", tools=[slow_lookup])
        c = await s.aio.chat("A city", schema=City)
        return a, b, c

    a, b, c = asyncio.run(main())
    assert a.text == "Tool results: X" and b.text == "Tool results: xx" and c.parsed == City(name="x", population=0)
    assert ran_in == [threading.get_ident()]
    assert s.chat("Look up", tools=[slow_lookup]).text == "Tool results: xx"  # the sync twin


def test_ipython_images_and_ai_repr_bundles_become_image_parts():
    from IPython.display import Image

    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (7).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"rest"
    found = describe(Image(data=png, format="png"))
    assert found.text == "[image 1: PNG image, 7x5 px]"
    assert base64.b64decode(found.images[0].data) == png and found.images[0].media_type == "image/png"

    class Chart:
        def _ai_repr_(self, **kwargs):
            return {"text/plain": "a chart of units", "image/png": png}

    chart = describe(Chart(), name="chart")
    assert chart.text == "a chart of units\n[image 1: from chart]" and len(chart.images) == 1


def test_a_map_with_tools_runs_them_off_the_runtime_loop(make_session, ollama):
    s = make_session(ollama)
    loop_thread = []

    def lookup(key: str) -> str:
        """Look a key up."""
        loop_thread.append(s.aio.runtime.in_loop())
        return key.upper()

    rows = s.map(["a", "b", "c"], "Look up {}", tools=[lookup], progress=False)
    assert list(rows.answer) == ["Tool results: X"] * 3
    assert loop_thread == [False, False, False]  # a worker thread each time, never the loop's


# -- budgets that say what they count (issue 21) ------------------------------------------------


def test_the_budget_is_estimated_at_the_ratio_the_models_last_usage_showed(s, openai):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"city": [f"city{i}" for i in range(5000)], "sales": [i * 1.5 for i in range(5000)]})
    model = "openai:gpt-4o-mini"
    s.chat("Summarise {df}", model, context={"df": df}, context_budget=100)
    first = user_text(bodies(openai, COMPLETIONS)[-1]).removeprefix("Summarise ")
    assert len(first) <= 100 * CHARS_PER_TOKEN and "100-token budget, estimated at 4 characters a token" in first

    s.chat("abcdefgh " * 80, model)  # the loopback server counts a word a token: 9 characters each
    s.chat("Summarise {df}", model, context={"df": df}, context_budget=100)
    learnt = user_text(bodies(openai, COMPLETIONS)[-1]).removeprefix("Summarise ")
    assert 100 * CHARS_PER_TOKEN < len(learnt) <= 100 * 9
    assert "100-token budget, estimated from openai:gpt-4o-mini's last usage: 9 characters a token" in learnt
    assert s._engine.budget("ollama").chars_per_token == CHARS_PER_TOKEN  # another model's usage says nothing


def test_a_context_window_error_names_the_budget_and_the_numbers(make_session):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"city": [f"city {i}" for i in range(5000)], "sales": range(5000)})
    with OpenAIServer(models=("gpt-4o-mini",), api_key=TEST_API_KEY, context_window=300) as server:
        s = make_session(None, server)
        with pytest.raises(BadRequest) as caught:
            s.chat("Summarise {df}", context={"df": df}, context_budget=1000)
        said = str(caught.value)
        assert "maximum context length is 300 tokens" in said and "\n" not in said
        assert "within --context-budget 1000 tokens each (estimated at 4 characters a token)" in said
        assert "the prompt was about 1,00" in said and "lower --context-budget" in said
        with pytest.raises(BadRequest, match="within --context-budget 1000 tokens each"):  # with a schema: steps
            s.chat("Summarise {df}", context={"df": df}, context_budget=1000, schema={"type": "object"})
        with pytest.raises(BadRequest) as plain:  # no objects described: the server's words alone
            s.chat("word " * 400)
        assert "--context-budget" not in str(plain.value)
        assert s.chat("Summarise {df}", context={"df": df}, context_budget=100).text  # a lower budget fits


def test_a_provider_that_counts_tokens_makes_the_budget_exact(ollama):
    from farm_jupyter.providers import register_provider, unregister_provider
    from farm_jupyter.providers.ollama import OllamaProvider

    class Counting(OllamaProvider):  # Ollama on the wire, with a tokenizer that counts words
        def count_tokens(self, prompt: Any, model: str | None = None, *, load: bool = True) -> int | None:
            counted.append(model)
            return len(str(prompt).split())

    counted: list[str] = []
    register_provider("counting", Counting)
    try:
        s = Session(loopback_settings(ollama, providers={"counting": {"host": ollama.url}}))
        s.chat("Sum {xs}", "counting:llama3.1", context={"xs": list(range(10_000))}, context_budget=50)
        text = user_text(bodies(ollama, CHAT)[-1]).removeprefix("Sum ")
        assert len(text.split()) <= 50 and "50-token budget, counted" in text and counted[0] == "llama3.1"
        s.close()
    finally:
        unregister_provider("counting")
