"""Structured answers on the embedded SmolLM2-135M: constrained (the grammar) against unconstrained
(the schema said in the prompt only), per engine.

    python benchmarks/structured.py [--prompts N] [--engines llamacpp,huggingface:10,llamacpp-gbnf]
                                    [--kinds year,person] [--max-tokens N] [--json]

Ten schemas, N prompts each (100 by default; `engine:N` gives one engine its own N: transformers
in float32 decodes at about 16 tokens/s on 2 cores, llama.cpp several times faster), every
prompt with the values it states: "3 apples"
must come back as `qty: 3`. For each side: the share of answers that validate on the first try
(no re-ask), the share of stated fields that came back right (over all answers; an invalid one
scores none), and the speed. Greedy, the same prompts on both sides, run back to back.
Goal: 100% valid constrained; tokens/s >= 0.8x.

Tokens/s is counted the same way on both sides: the answer's tokens after its first one, over the
time from the first text to the end (decoding). The whole request's tokens/s (completion tokens
over wall time, the first figure this benchmark gave) is shown too, but does not compare: the
prompt is read once per request on both sides, and a constrained answer (`{"qty": 3}`, ~8 tokens)
is far shorter than a free one (often to the cap), so reading the prompt weighed 5x more per token
on the constrained side; that, not the grammar, was most of the "0.06x" once measured.
`llamacpp-gbnf` is llama.cpp under its own JSON-Schema grammar, as it runs without llguidance.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit  # noqa: E402

NAMES = ["Alice", "Bob", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
FRUITS = ["apples", "pears", "plums", "lemons", "figs", "peaches", "limes", "cherries"]
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Quito"]
COLOURS = ["red", "green", "blue"]


class Purchase(BaseModel):
    fruit: str
    qty: int = Field(ge=0, le=100)


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)


class Trip(BaseModel):
    traveller: Person
    city: str


class Colour(BaseModel):
    colour: Literal["red", "green", "blue"]


class Mood(BaseModel):
    label: Literal["positive", "negative"]


class Rating(BaseModel):
    stars: int = Field(ge=1, le=5)


class Contact(BaseModel):
    name: str
    email: str | None = None


class Cities(BaseModel):
    cities: list[str] = Field(max_length=3)


class Flag(BaseModel):
    done: bool


class Year(BaseModel):
    year: int = Field(ge=1900, le=2100)


Case = tuple[str, dict[str, Any]]


def cases(n: int) -> dict[str, tuple[type[BaseModel], list[Case]]]:
    def many(fn: Callable[[int], Case]) -> list[Case]:
        return [fn(i) for i in range(n)]

    name = lambda i: NAMES[i % len(NAMES)]  # noqa: E731
    return {
        "purchase": (
            Purchase,
            many(lambda i: (f"{name(i)} bought {i % 20 + 1} {FRUITS[i % 8]}.", {"qty": i % 20 + 1})),
        ),
        "person": (
            Person,
            many(lambda i: (f"{name(i)} is {20 + i % 60} years old.", {"name": name(i), "age": 20 + i % 60})),
        ),
        "trip": (
            Trip,
            many(lambda i: (f"{name(i)}, aged {30 + i % 40}, flew to {CITIES[i % 8]}.", {"city": CITIES[i % 8]})),
        ),
        "colour": (
            Colour,
            many(lambda i: (f"The car {name(i)} drives is {COLOURS[i % 3]}.", {"colour": COLOURS[i % 3]})),
        ),
        "mood": (
            Mood,
            many(
                lambda i: (
                    (f"{name(i)}: I love it!", {"label": "positive"})
                    if i % 2
                    else (f"{name(i)}: I hate it.", {"label": "negative"})
                )
            ),
        ),
        "rating": (
            Rating,
            many(lambda i: (f"{name(i)} gave the film {i % 5 + 1} stars out of 5.", {"stars": i % 5 + 1})),
        ),
        "contact": (
            Contact,
            many(
                lambda i: (
                    f"Write to {name(i)} at {name(i).lower()}@example.com.",
                    {"email": f"{name(i).lower()}@example.com"},
                )
            ),
        ),
        "cities": (Cities, many(lambda i: (f"{name(i)} visited {CITIES[i % 8]} and {CITIES[(i + 3) % 8]}.", {}))),
        "flag": (
            Flag,
            many(
                lambda i: (
                    (f"Task {i}: finished.", {"done": True})
                    if i % 2
                    else (f"Task {i}: not started yet.", {"done": False})
                )
            ),
        ),
        "year": (Year, many(lambda i: (f"The bridge opened in {1950 + i % 70}.", {"year": 1950 + i % 70}))),
    }


def _right(parsed: BaseModel, expected: dict[str, Any]) -> int:
    data = parsed.model_dump()
    return sum(1 for k, v in expected.items() if str(data.get(k, "")).lower() == str(v).lower())


def run(engine: str, n: int, max_tokens: int, kinds: list[str] | None = None) -> list[dict[str, Any]]:
    from farm_jupyter.providers import _guidance

    kind = engine.removesuffix("-gbnf")
    installed = _guidance.available
    _guidance.available = (lambda: False) if engine.endswith("-gbnf") else installed  # as without llguidance
    try:
        return _run(engine, kind, n, max_tokens, kinds)
    finally:
        _guidance.available = installed


def _run(engine: str, kind: str, n: int, max_tokens: int, kinds: list[str] | None) -> list[dict[str, Any]]:
    from farm_jupyter import embedded
    from farm_jupyter.config import load_settings
    from farm_jupyter.providers import create
    from farm_jupyter.structured import Schema
    from farm_jupyter.types import ChatMessage, ChatRequest, GenerationParams

    settings = load_settings({"env": "test", "provider": kind, "fallback": []}, environ={}, use_file=False)
    provider = create(kind, settings)
    sides: dict[str, dict[str, float]] = {
        s: {"valid": 0, "right": 0, "fields": 0, "tokens": 0, "seconds": 0.0, "n": 0, "decoded": 0, "decoding": 0.0}
        for s in ("constrained", "unconstrained")
    }
    for name, (model, items) in cases(n).items():
        if kinds and name not in kinds:
            continue
        shape = Schema(model)
        for prompt, expected in items:
            messages = [shape.instruction(), ChatMessage(role="user", content=prompt)]
            for side in sides:
                schema = shape.json_schema if side == "constrained" else None
                request = ChatRequest(
                    messages=messages,
                    model=embedded.NAME,
                    params=GenerationParams(max_tokens=max_tokens, response_schema=schema),
                )
                start = time.perf_counter()
                first: float | None = None
                text, completion = "", 0
                for chunk in provider.stream(request):
                    if chunk.text:
                        first = first or time.perf_counter()
                        text += chunk.text
                    if chunk.done and chunk.usage is not None:
                        completion = chunk.usage.completion_tokens
                end = time.perf_counter()
                tally = sides[side]
                tally["seconds"] += end - start
                tally["tokens"] += completion
                if first is not None and completion > 1:
                    tally["decoded"] += completion - 1
                    tally["decoding"] += end - first
                tally["n"] += 1
                tally["fields"] += len(expected)
                try:
                    parsed = shape.parse(text)
                except ValueError:
                    continue
                tally["valid"] += 1
                tally["right"] += _right(parsed, expected)
    return [
        {
            "engine": engine,
            "side": side,
            "answers": int(t["n"]),
            "valid": t["valid"] / t["n"],
            "fields right": t["right"] / t["fields"] if t["fields"] else 0.0,
            "tokens/answer": t["tokens"] / t["n"],
            "tokens/s": t["decoded"] / t["decoding"] if t["decoding"] else 0.0,
            "whole tokens/s": t["tokens"] / t["seconds"] if t["seconds"] else 0.0,
        }
        for side, t in sides.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--engines", default="llamacpp")
    parser.add_argument("--kinds", default="", help="comma-separated schema names (default: all ten)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import os

    load = os.getloadavg()[0]
    kinds = [k for k in args.kinds.split(",") if k]
    sizes = {e.partition(":")[0]: int(e.partition(":")[2] or args.prompts) for e in args.engines.split(",")}
    engines = list(sizes)
    rows = [row for engine, n in sizes.items() for row in run(engine, n, args.max_tokens, kinds)]
    per = ", ".join(f"{e} {n}" for e, n in sizes.items())
    lines = [
        f"Structured answers, SmolLM2-135M, {len(kinds) or 10} schemas x N prompts ({per}), greedy"
        f" (load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores)",
        "",
        "| engine | side | answers | valid first try | fields right | tokens/answer | tokens/s (decoding) | whole request |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['side']} | {r['answers']} | {r['valid']:.0%} | {r['fields right']:.0%}"
            f" | {r['tokens/answer']:.1f} | {r['tokens/s']:.1f} | {r['whole tokens/s']:.1f} |"
        )
    targets = []
    for engine in engines:
        on = {r["side"]: r for r in rows if r["engine"] == engine}
        ratio = (
            on["constrained"]["tokens/s"] / on["unconstrained"]["tokens/s"] if on["unconstrained"]["tokens/s"] else 0.0
        )
        lines.append(f"\n{engine}: constrained tokens/s = {ratio:.2f}x unconstrained (goal >= 0.8x)")
        valid = on["constrained"]["valid"]
        targets += [
            {"target": f"{engine}: constrained answers valid on the first try = 100%",
             "measured": f"{valid:.1%} of {on['constrained']['answers']}", "met": valid == 1.0},
            {"target": f"{engine}: constrained decoding >= 0.8x unconstrained tokens/s (a goal)",
             "measured": f"{ratio:.2f}x", "met": ratio >= 0.8},
        ]  # fmt: skip
    emit("\n".join(lines), {"rows": rows, "load_average": load, "targets": targets})


if __name__ == "__main__":
    main()
