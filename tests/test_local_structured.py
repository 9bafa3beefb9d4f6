"""Structured answers and tools on the embedded SmolLM2-135M under a grammar, on both local
engines: llama.cpp (its JSON-Schema grammar) and transformers (llguidance).

Five schemas over twenty prompts each must give a valid `r.parsed` on the first try (no re-ask);
a tool call round trip must run with valid arguments, with the call required and in "auto". The
many-prompt tests take minutes on 2 cores: they carry the `slow` marker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from farm_jupyter import embedded
from farm_jupyter.config import load_settings
from farm_jupyter.providers._constrain import Constraint, Reader, strict, unenforced
from farm_jupyter.providers._guidance import available, grammar
from farm_jupyter.sessions import Session
from farm_jupyter.structured import SchemaMismatch

pytestmark = pytest.mark.timeout(900)
# What each engine needs beyond the model file.
ENGINES = {"llamacpp": "llama_cpp", "huggingface": "llguidance"}


@pytest.fixture(scope="module", params=list(ENGINES))
def model(request: pytest.FixtureRequest) -> str:
    pytest.importorskip(ENGINES[request.param])
    return f"{request.param}:{embedded.NAME}"


@pytest.fixture(scope="module")
def s() -> Iterator[Session]:
    if embedded.find() is None:
        pytest.skip("the embedded model is not installed (scripts/bootstrap)")
    settings = load_settings(
        {"env": "test", "provider": "llamacpp", "fallback": [], "cache": {"backend": "none"}},
        environ={},
        use_file=False,
    )
    session = Session(settings)
    yield session
    session.close()


# -- the five schemas ------------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int


class Order(BaseModel):  # a nested object
    customer: Person
    item: str


class Tags(BaseModel):  # a list with maxItems
    tags: list[str] = Field(max_length=3)


class Mood(BaseModel):  # an enum
    label: Literal["positive", "negative", "neutral"]


class Review(BaseModel):  # integers with minimum and maximum
    stars: int = Field(ge=1, le=5)
    year: int = Field(ge=1900, le=2100)


class Contact(BaseModel):  # an optional field
    name: str
    email: str | None = None


NAMES = ["Alice", "Bob", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun"]
THINGS = ["lamp", "book", "bicycle", "teapot", "guitar", "camera", "chair", "kite", "watch", "piano"]
MOODS = ["I love this!", "This is terrible.", "It is fine, nothing special.", "Best day ever!", "I hate waiting."]


def prompts(kind: str) -> list[str]:
    pairs = [(NAMES[i % 10], THINGS[(i * 3) % 10], 18 + i * 3) for i in range(20)]
    if kind == "order":
        return [f"{n}, aged {a}, ordered a {t}. Extract the order." for n, t, a in pairs]
    if kind == "tags":
        return [f"Give up to three tags for a blog post about a {t} that {n} bought." for n, t, _ in pairs]
    if kind == "mood":
        return [f"Classify the sentiment: {MOODS[i % 5]} ({NAMES[i % 10]})" for i in range(20)]
    if kind == "review":
        return [
            f"{n} gave the {t} {1 + i % 5} stars in {1990 + i}. Extract the review."
            for i, (n, t, _) in enumerate(pairs)
        ]
    return [
        f"{n} can be reached at {n.lower()}@example.com." if i % 2 else f"Our new colleague is called {n}."
        for i, (n, _, _) in enumerate(pairs)
    ]


SCHEMAS = {"order": Order, "tags": Tags, "mood": Mood, "review": Review, "contact": Contact}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_every_answer_matches_the_schema_on_the_first_try(s: Session, model: str, kind: str) -> None:
    schema = SCHEMAS[kind]
    for prompt in prompts(kind):
        r = s.chat(prompt, model, schema=schema, max_tokens=80, max_reasks=0)
        assert isinstance(r.parsed, schema), (prompt, r.text)
        assert r.reasks == 0 and len(r.attempts) == 1


def test_a_schema_answer_streams_as_its_json_grows(s: Session, model: str) -> None:
    stream = s.stream("Alice, aged 30, ordered a lamp. Extract the order.", model, schema=Order, max_tokens=80)
    pieces = [c.text for c in stream if c.text]
    assert len(pieces) > 5 and "".join(pieces).lstrip().startswith("{")
    assert isinstance(stream.response.parsed, Order)


def test_an_answer_cut_by_max_tokens_is_one_line_not_a_reask(s: Session, model: str) -> None:
    with pytest.raises(SchemaMismatch, match="cut at max_tokens=4") as caught:
        s.chat("Alice, aged 30, ordered a lamp. Extract the order.", model, schema=Order, max_tokens=4)
    assert caught.value.response.reasks == 0 and len(caught.value.response.attempts) == 1


def test_what_the_grammar_cannot_enforce_is_said_in_the_footer(s: Session, model: str) -> None:
    schema = {
        "type": "object",
        "properties": {"price": {"type": "number", "minimum": 0, "maximum": 100}},
        "required": ["price"],
    }
    r = s.chat("The lamp costs 12.5 dollars. Extract the price.", model, schema=schema, max_tokens=30)
    if available():  # llguidance, on either engine, enforces numeric bounds
        assert not any("does not enforce" in n for n in r.notes), r.notes
    else:  # llama.cpp's own grammar does not
        assert any("does not enforce minimum, maximum" in n for n in r.notes), r.notes
    assert r.parsed == {"price": 12.5}


def test_what_llguidance_leaves_to_the_validation_is_named() -> None:
    pytest.importorskip("llguidance")
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "uniqueItems": True}
    assert grammar(json.dumps(schema))[1] == "llguidance does not enforce uniqueItems: checked after the answer"
    assert grammar(json.dumps({"type": "integer", "minimum": 0, "maximum": 9}))[1] is None


# -- tools -------------------------------------------------------------------------------------------

CALLS: list[dict[str, Any]] = []


def get_weather(city: str) -> str:
    """The current weather in a city.

    Args:
        city: the city's name
    """
    CALLS.append({"city": city})
    return f"sunny, 21 degrees in {city}"


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_a_tool_round_trip_with_valid_arguments(s: Session, model: str, choice: str) -> None:
    CALLS.clear()
    r = s.chat("What is the weather in Paris?", model, tools=[get_weather], tool_choice=choice, max_tokens=60)
    assert CALLS == [{"city": "Paris"}]
    assert [(run.name, run.arguments, run.error) for run in r.tool_runs] == [("get_weather", {"city": "Paris"}, None)]
    assert r.finish_reason == "stop" and r.text.strip() and not r.text.lstrip().startswith("{")
    assert len(r.attempts) == 2  # the call, then the answer with its result


def test_auto_answers_without_a_call_when_no_tool_helps(s: Session, model: str) -> None:
    CALLS.clear()
    r = s.chat("What is 2 plus 3?", model, tools=[get_weather], max_tokens=40)
    assert CALLS == [] and r.tool_runs == []
    assert "5" in r.text


# -- the pieces, without a model -----------------------------------------------------------------


def test_strict_closes_objects_and_turns_small_integer_ranges_into_enums() -> None:
    schema = Review.model_json_schema()
    made = strict(schema, integer_enums=True)
    assert made["additionalProperties"] is False
    assert made["properties"]["stars"]["enum"] == [1, 2, 3, 4, 5]
    assert "minimum" not in made["properties"]["stars"]
    assert "additionalProperties" not in schema  # the caller's schema is left alone
    open_one = strict({"type": "object", "properties": {}, "additionalProperties": True})
    assert open_one["additionalProperties"] is True
    wide = strict({"type": "integer", "minimum": 0, "maximum": 10_000}, integer_enums=True)
    assert "enum" not in wide and unenforced(wide, ("minimum", "maximum")) == ["minimum", "maximum"]


def test_the_reader_streams_an_envelopes_text_unescaped_and_holds_a_call() -> None:
    pushed: list[tuple[str, Any]] = []
    shape = Constraint(schema={}, tools=("get_weather",), envelope="answer")
    reader = Reader(lambda kind, value: pushed.append((kind, value)), shape)
    for piece in ['{"name": "answer", ', '"arguments": {"text": "Line one\\', 'nSay \\"hi\\"', ' \\u00e9"}}']:
        reader.add(piece)
    assert reader.end("stop") == "stop"
    assert "".join(v for k, v in pushed if k == "text") == 'Line one\nSay "hi" é'
    pushed.clear()
    reader = Reader(lambda kind, value: pushed.append((kind, value)), shape)
    reader.add(json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}}))
    assert reader.end("stop") == "tool_calls" and pushed == []
    assert reader.call is not None and reader.call.arguments == {"city": "Oslo"}


def test_the_reader_streams_a_wrapped_schema_answer_as_its_json_grows() -> None:
    pushed: list[tuple[str, Any]] = []
    shape = Constraint(schema={}, tools=("get_weather",), envelope="answer", wrapped_json=True)
    reader = Reader(lambda kind, value: pushed.append((kind, value)), shape)
    pieces = ['{"name": "answer", "arguments": ', '{"name": "Al', 'ice", "age": ', "30}", "}"]
    shown = []
    for piece in pieces:
        reader.add(piece)
        shown.append("".join(v for k, v in pushed if k == "text"))
    assert shown[1:4] == ['{"name": "A', '{"name": "Alice", "age":', '{"name": "Alice", "age": 30']  # the last held
    assert reader.end("stop") == "stop"
    assert "".join(v for k, v in pushed if k == "text") == '{"name": "Alice", "age": 30}'


def test_the_reader_holds_half_a_surrogate_pair_until_its_other_half() -> None:
    pushed: list[tuple[str, Any]] = []
    shape = Constraint(schema={}, tools=("get_weather",), envelope="answer")
    reader = Reader(lambda kind, value: pushed.append((kind, value)), shape)
    for piece in ['{"name": "answer", "arguments": {"text": "ok \\ud83d', "\\ude00", ' done"}}']:
        reader.add(piece)
    assert reader.end("stop") == "stop"
    texts = [v for k, v in pushed if k == "text"]
    assert "".join(texts) == "ok \U0001f600 done" and all("\ud83d" not in t for t in texts)
    "".join(texts).encode()  # no lone surrogate: it would fail a cache write


def test_a_llamacpp_only_install_constrains_its_answers_too() -> None:
    """`pip install "farm-jupyter[llamacpp]"` brings llguidance but not transformers."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llguidance")
    if embedded.find() is None:
        pytest.skip("the embedded model is not installed (scripts/bootstrap)")
    script = """
import json, sys
sys.modules["transformers"] = None  # not installed
from farm_jupyter.config import load_settings
from farm_jupyter.sessions import Session
s = Session(load_settings({"env": "test", "provider": "llamacpp", "fallback": [], "cache": {"backend": "none"}},
                          environ={}, use_file=False))
schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
r = s.chat("Alice is 30 years old. Extract the person.", schema=schema, max_tokens=40, max_reasks=0)
print(json.dumps({"parsed": r.parsed, "sent": r.sent, "transformers": sys.modules.get("transformers") is not None}))
s.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(said["parsed"]) == {"name", "age"} and not said["transformers"]
    params = json.loads(said["sent"].split("\n", 1)[0])
    assert '"grammars"' in params["grammar"]  # llguidance's grammar, not llama.cpp's own (GBNF)


def test_logit_bias_holds_under_a_grammar_on_llamacpp(s: Session) -> None:
    """llama-cpp-python drops a logits-processor list given with `logit_bias` (`list.extend`
    returns None): the grammar went with it. The bias now runs as one of our processors."""
    llama_cpp = pytest.importorskip("llama_cpp")
    found = embedded.find()
    assert found is not None
    vocab = llama_cpp.Llama(model_path=str(found[0]), vocab_only=True, verbose=False)
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
    answers = {}
    for word in ("yes", "no"):
        (token,) = vocab.tokenize(word.encode(), add_bos=False, special=False)
        r = s.chat(
            "Is the sky blue?", f"llamacpp:{embedded.NAME}", schema=schema, max_tokens=20, max_reasks=0,
            extra={"logit_bias": {str(token): 30.0}},
        )  # fmt: skip
        answers[word] = r.parsed["answer"]
        params = json.loads((r.sent or "").split("\n", 1)[0])
        assert params["logit_bias"] == {str(token): 30.0} and params["grammar"]
    assert answers == {"yes": "yes", "no": "no"}
