"""A judge that can be cited (issue 25): both orders, consistency, first-position preference,
Bradley-Terry scores with bootstrap intervals, kappa, the judge in the cache key, the budget.

The contestants and judges are real providers: a loopback OpenAI server scripted to answer per
model (its request log counts the calls), and a custom provider registered like any other."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from farm_jupyter.evaluate import Comparison
from farm_jupyter.ledger import BudgetExceeded
from farm_jupyter.pairwise import Judgement, bootstrap, bradley_terry, cohen_kappa, combine, scores, win_counts
from farm_jupyter.providers import register_provider, unregister_provider
from farm_jupyter.sessions import Session
from farm_jupyter.testing import OpenAIServer
from farm_jupyter.testing.pytest_plugin import loopback_settings
from farm_jupyter.testing.servers import TEST_API_KEY

pytestmark = pytest.mark.timeout(120)
CHAT = "/v1/chat/completions"
CONTESTANTS = ["strong", "middling", "weak"]
QUALITY = {"strong": 3, "middling": 2, "weak": 1}
PROMPTS = [f"question {i}" for i in range(12)]


def _answers(body: dict[str, Any]) -> tuple[str, str] | None:
    """The two answers of a judge prompt (the default template), or None for a contestant's."""
    found = re.search(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)\n\nWhich answer", body["messages"][-1]["content"], re.S)
    return (found.group(1), found.group(2)) if found else None


def _quality(answer: str) -> int:
    return QUALITY[answer.split()[0]]


def _scripted(judge: Any) -> Any:
    def reply(body: dict[str, Any]) -> str:
        pair = _answers(body)
        if pair is None:
            return f"{body['model']} answers {body['messages'][-1]['content']}"
        return judge(body["model"], *pair)

    return reply


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer([*CONTESTANTS, "judge-1", "judge-2"], api_key=TEST_API_KEY) as s:
        yield s


@pytest.fixture
def session(server: OpenAIServer) -> Iterator[Session]:
    s = Session(loopback_settings(None, server))
    yield s
    s.close()


def _models() -> list[str]:
    return [f"openai:{m}" for m in CONTESTANTS]


def _judge_calls(server: OpenAIServer, judge: str) -> int:
    return sum(1 for r in server.requests if r.path == CHAT and r.json and r.json["model"] == judge)


def test_a_judge_that_always_prefers_the_first_answer_gives_ties_and_shows_its_bias(session, server):
    server.reply = _scripted(lambda judge, a, b: "x")
    register_provider(
        "first-judge", lambda messages, **params: "A", capabilities=["temperature"]
    )  # as users write them
    try:
        result = session.compare(PROMPTS, _models(), judge="first-judge", progress=False)
    finally:
        unregister_provider("first-judge")
    assert len(result.judgements) == len(PROMPTS) * 3 * 2  # N(N-1) calls a prompt
    assert all(j.winner == j.first for j in result.judgements)
    assert result.verdicts == ["tie"] * len(PROMPTS)
    report = result.report()
    assert report is not None
    assert report.first_position == pytest.approx(1.0) and report.consistency == pytest.approx(0.0)
    for m in _models():
        assert report.score[m] == pytest.approx(0.5) and report.low[m] <= 0.5 <= report.high[m]
    assert "first-position preference 100%" in str(report)


def test_a_right_judge_gives_an_interval_above_one_half_to_the_model_that_wins_every_pair(session, server):
    server.reply = _scripted(lambda judge, a, b: "A" if _quality(a) > _quality(b) else "B")
    result = session.compare(PROMPTS, _models(), judge="openai:judge-1", progress=False)
    assert _judge_calls(server, "judge-1") == len(PROMPTS) * 6
    report = result.report()
    assert report is not None
    assert report.consistency == pytest.approx(1.0) and report.first_position == pytest.approx(0.5)
    assert report.low["openai:strong"] > 0.5 and report.high["openai:weak"] < 0.5
    assert report.score["openai:strong"] > report.score["openai:middling"] > report.score["openai:weak"]
    assert result.verdicts == ["openai:strong"] * len(PROMPTS)
    summary = {s["model"]: s for s in result.summary()}
    assert summary["openai:strong"]["wins"] == len(PROMPTS)
    assert summary["openai:strong"]["score_low"] == report.low["openai:strong"]
    frame = result.to_pandas()
    assert {"score", "score_low", "score_high", "judge_points"} <= set(frame.columns)
    assert (frame[frame.model == "openai:strong"].judge_points == 2.0).all()
    assert not result.warnings


def test_a_seeded_random_judge_gives_intervals_that_contain_one_half(session, server):
    def coin(judge: str, a: str, b: str) -> str:  # seeded by what it is shown: the same in any call order
        return random.Random(hashlib.sha256(f"{a}|{b}".encode()).digest()).choice(["A", "B"])

    server.reply = _scripted(coin)
    result = session.compare(PROMPTS, _models(), judge="openai:judge-1", progress=False, seed=7)
    report = result.report()
    assert report is not None
    for m in _models():
        assert report.low[m] < 0.5 < report.high[m], (m, report.low[m], report.high[m])
    again = session.compare(PROMPTS, _models(), judge="openai:judge-1", progress=False, seed=7).report()
    assert again is not None and again.low == report.low and again.high == report.high  # seeded: the same


def test_changing_the_judge_model_or_its_prompt_misses_the_cache(session, server):
    server.reply = _scripted(lambda judge, a, b: "A" if _quality(a) > _quality(b) else "B")
    session.compare(PROMPTS[:2], _models()[:2], judge="openai:judge-1", progress=False)
    assert _judge_calls(server, "judge-1") == 4
    session.compare(PROMPTS[:2], _models()[:2], judge="openai:judge-1", progress=False)
    assert _judge_calls(server, "judge-1") == 4  # the same judge and prompt: cache hits
    other = session.compare(PROMPTS[:2], _models()[:2], judge="openai:judge-2", progress=False)
    assert _judge_calls(server, "judge-2") == 4 and other.judge == "openai:judge-2"
    template = "Q: {question}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\nWhich answer wins? A, B or TIE."
    session.compare(PROMPTS[:2], _models()[:2], judge="openai:judge-1", judge_prompt=template, progress=False)
    assert _judge_calls(server, "judge-1") == 8


def test_a_judge_that_is_a_contestant_is_warned_about(session, server):
    server.reply = _scripted(lambda judge, a, b: "TIE")
    result = session.compare(PROMPTS[:2], _models()[:2], judge="openai:strong", progress=False)
    assert result.warnings and "also a contestant" in result.warnings[0]
    assert "also a contestant" in repr(result)


def test_the_judge_calls_are_in_the_estimate_and_the_budget_refuses_before_asking(server):
    prices = {f"openai:{m}": {"input": 1000, "output": 1000} for m in [*CONTESTANTS, "judge-1"]}
    s = Session(loopback_settings(None, server, budget={"usd": 1.0}, prices=prices))
    try:
        with pytest.raises(BudgetExceeded, match=r"9 answers and 18 judge calls"):
            s.compare(PROMPTS[:3], _models(), judge="openai:judge-1", max_tokens=50, progress=False)
        assert server.count(CHAT) == 0
        server.reply = _scripted(lambda judge, a, b: "A")
        small = s.compare(PROMPTS[:1], _models()[:2], max_tokens=5, progress=False)
        assert small.estimate is not None and small.estimate.judge_calls == 0
    finally:
        s.close()


def test_kappa_matches_a_hand_computed_value():
    picks = ["x", "x", "y", "tie", "y", "x"]
    judge = ["x", "y", "y", "tie", "x", "x"]
    # observed 4/6; chance (3*3 + 2*2 + 1*1) / 36 = 14/36; kappa = (24 - 14) / (36 - 14) = 10/22
    assert cohen_kappa(picks, judge) == (pytest.approx(10 / 22), 6)
    assert cohen_kappa(["x", None], ["x", "y"]) == (None, 1)  # one label only: chance explains it all
    assert cohen_kappa([None], ["x"]) == (None, 0)


def test_kappa_between_picks_and_the_judge_in_the_report():
    models = ["m1", "m2"]
    wins = ["m1", "m2", "m2", "m1"]  # the judge's pick per prompt, the same in both orders
    judgements = [Judgement(i, a, b, w, w) for i, w in enumerate(wins) for a, b in (("m1", "m2"), ("m2", "m1"))]
    from farm_jupyter.batch import BatchResult, Row

    result = Comparison(
        [f"p{i}" for i in range(4)],
        models,
        BatchResult(Row(k, "p") for k in range(8)),
        judgements=judgements,
        picks=["m1", "m1", "m2", None],
        judge="j",
    )
    report = result.report()
    assert report is not None and report.kappa_prompts == 3
    # observed 2/3; picks m1 2/3, m2 1/3; judge m1 1/3, m2 2/3: chance 4/9; (6/9-4/9)/(5/9) = 0.4
    assert report.kappa == pytest.approx(0.4)


def test_the_statistics_by_hand():
    assert combine("a", "a") == "a" and combine("a", "b") == "tie" and combine("a", None) is None
    import numpy as np

    # One clean sweep of b by a over one prompt, with the prior of one tie: 1.5 to 0.5, so 3 to 1.
    wins = np.array([[[0.0, 1.0], [0.0, 0.0]]])
    strength = bradley_terry(wins.sum(axis=0))
    assert strength[0] / strength[1] == pytest.approx(3.0)
    assert scores(strength) == pytest.approx([0.75, 0.25])
    low, high = bootstrap(np.repeat(wins, 5, axis=0), resamples=200, seed=1)
    assert low[0] == high[0] == pytest.approx(5.5 / 6)  # every resample is the same sweep
    from farm_jupyter.pairwise import Outcome

    counted = win_counts([Outcome(0, "a", "b", "tie"), Outcome(1, "a", "b", "b")], ["a", "b"], [0, 1])
    assert counted.tolist() == [[[0, 0.5], [0.5, 0]], [[0, 0], [1, 0]]]
