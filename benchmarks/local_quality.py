"""Do the embedded model's defaults answer? Accuracy and loops of SmolLM2-135M-Instruct on llama.cpp
and on transformers.

    python benchmarks/local_quality.py [--engine llamacpp,huggingface] [--limit N] [--max-tokens 128]
                                       [--variants a,b] [--json]

60 short questions written for this (factual, arithmetic, and small instructions), each with the
answers accepted: a whole word or number matched case-insensitively anywhere in the answer. A
loop is an answer that ran to the token cap while repeating itself (some 3-word run said three
times or more). Every variant is deterministic: greedy, or a fixed seed, because saved outputs,
recordings and cache keys depend on it.

The variants run on one `Llama` by hand (`create_chat_completion`, the same model file, chat
template and threads as the provider), so that the sampling settings alone differ; the last row
asks the same questions through the llamacpp provider with its defaults as they are in the code
now, which must match the row they were chosen from. With `--engine huggingface` the same runs on
the model the huggingface provider loads (the GGUF file dequantised, float32), by hand through
`generate`: greedy, with transformers' `repetition_penalty` (which, like llama.cpp's, counts the
prompt's tokens too), and "b" is the model's own generation config, nothing given.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import emit, target  # noqa: E402

# (question, accepted answers)
QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of the United Kingdom?", ("london",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Australia?", ("canberra",)),
    ("What is the largest planet in the solar system?", ("jupiter",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What is the chemical symbol for gold?", ("au",)),
    ("What is the chemical formula of water?", ("h2o", "h₂o")),
    ("What gas do plants take in from the air to make food?", ("carbon dioxide", "co2", "co₂")),
    ("How many days are there in a week?", ("seven", "7")),
    ("How many legs does a spider have?", ("eight", "8")),
    ("How many continents are there on Earth?", ("seven", "7")),
    ("At how many degrees Celsius does water boil at sea level?", ("100",)),
    ("At how many degrees Celsius does water freeze?", ("0", "zero")),
    ("Who wrote the play Romeo and Juliet?", ("shakespeare",)),
    ("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("What is the tallest mountain in the world?", ("everest",)),
    ("What is the longest river in Africa?", ("nile",)),
    ("Which animal is called the king of the jungle?", ("lion",)),
    ("What is the opposite of hot?", ("cold",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What do bees make?", ("honey",)),
    ("What is the largest mammal on Earth?", ("blue whale", "whale")),
    ("What is the currency of Japan?", ("yen",)),
    ("What language is mostly spoken in Brazil?", ("portuguese",)),
    ("What is the closest star to the Earth?", ("sun",)),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    ("What is the square root of 81?", ("9", "nine")),
    ("What is 7 times 8?", ("56", "fifty-six")),
    ("What is 12 plus 15?", ("27", "twenty-seven")),
    ("What is 100 divided by 4?", ("25", "twenty-five")),
    ("On which continent is Kenya?", ("africa",)),
    ("What fruit is the main ingredient of guacamole?", ("avocado", "avocados")),
    ("Who was the first person to walk on the Moon?", ("armstrong",)),
    ("What is the smallest prime number?", ("2", "two")),
    ("Which organ pumps blood through the human body?", ("heart",)),
    ("What is the freezing point of water in Fahrenheit?", ("32",)),
    ("How many sides does a triangle have?", ("three", "3")),
    ("Reply with only the word yes.", ("yes",)),
    ("Translate 'thank you' into French.", ("merci",)),
    ("Translate 'hello' into Spanish.", ("hola",)),
    ("What is the plural of mouse?", ("mice",)),
    ("Give one synonym for happy.", ("joyful", "glad", "cheerful", "content", "delighted", "pleased", "joyous")),
    ("Name one of the three primary colors of paint.", ("red", "blue", "yellow")),
    ("Complete the saying: the early bird catches the ...", ("worm",)),
    ("Is the Earth flat? Answer yes or no.", ("no",)),
    ("Which is bigger, an elephant or a mouse?", ("elephant",)),
    ("Write the number ten in digits.", ("10",)),
    ("Which day of the week comes after Monday?", ("tuesday",)),
    ("Which month comes after March?", ("april",)),
    ("How many meters are there in one kilometer?", ("1000", "1,000", "thousand")),
    ("What is the opposite of up?", ("down",)),
]

SYSTEM = "Answer the question briefly and accurately."
GREEDY: dict[str, Any] = {"temperature": 0.0}
# llama-cpp-python's create_chat_completion defaults (0.3.x), with a seed so the row repeats.
LLAMA_DEFAULTS: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "seed": 1234,
}

# name: (sampling keywords, system prompt or None)
VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "a. ours before (greedy, no penalty)": (GREEDY, None),
    "b. llama-cpp-python's defaults (T 0.2, seed 1234)": (LLAMA_DEFAULTS, None),
    "c1. greedy, repeat_penalty 1.1": ({**GREEDY, "repeat_penalty": 1.1}, None),
    "c2. greedy, repeat_penalty 1.2": ({**GREEDY, "repeat_penalty": 1.2}, None),
    "c3. greedy, repeat_penalty 1.3": ({**GREEDY, "repeat_penalty": 1.3}, None),
    "c4. greedy, system prompt": (GREEDY, SYSTEM),
    "c5. greedy, repeat_penalty 1.1, system prompt": ({**GREEDY, "repeat_penalty": 1.1}, SYSTEM),
    "c6. greedy, repeat_penalty 1.2, system prompt": ({**GREEDY, "repeat_penalty": 1.2}, SYSTEM),
    # The provider's own penalty (_constrain.Penalty): the answer's tokens only, JSON punctuation spared.
    "d1. greedy, answer-only penalty 1.2": ({**GREEDY, "answer_penalty": 1.2}, None),
    "d2. greedy, answer-only penalty 1.3": ({**GREEDY, "answer_penalty": 1.3}, None),
    "d3. greedy, answer-only penalty 1.5": ({**GREEDY, "answer_penalty": 1.5}, None),
    "d4. greedy, answer-only penalty 1.3, system prompt": ({**GREEDY, "answer_penalty": 1.3}, SYSTEM),
}
PROVIDER = "ours now (llamacpp provider, its defaults)"
DEFAULT_SET = ("a", "b", "c1", "c2", "c5", "d2")  # within run_all.py's 10 minutes; --variants all for every one
HF_DEFAULT_SET = ("a", "b", "c1")  # transformers in float32 decodes several times slower
# On transformers: the variants that mean something there (no llama.cpp defaults, no _Penalty).
HF_VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "a. greedy, no penalty": (GREEDY, None),
    "b. the model's generation config (nothing given)": ({}, None),
    "c1. greedy, repetition_penalty 1.1": ({**GREEDY, "repeat_penalty": 1.1}, None),
    "c2. greedy, repetition_penalty 1.2": ({**GREEDY, "repeat_penalty": 1.2}, None),
    "c3. greedy, repetition_penalty 1.3": ({**GREEDY, "repeat_penalty": 1.3}, None),
    "c5. greedy, repetition_penalty 1.1, system prompt": ({**GREEDY, "repeat_penalty": 1.1}, SYSTEM),
}
HF_PROVIDER = "ours now (huggingface provider, its defaults)"


def correct(answer: str, accepted: tuple[str, ...]) -> bool:
    text = answer.lower()
    return any(re.search(rf"(?<![\w]){re.escape(a)}(?![\w])", text) for a in accepted)


def looped(answer: str, finish: str | None) -> bool:
    """Ran to the cap repeating itself: some 3-word run three times or more."""
    if finish != "length":
        return False
    words = re.findall(r"\w+", answer.lower())
    runs = Counter(tuple(words[i : i + 3]) for i in range(len(words) - 2))
    return bool(runs) and max(runs.values()) >= 3


def ask_by_hand(loaded: Any, question: str, sampling: dict[str, Any], system: str | None, cap: int) -> tuple[str, str]:
    from farm_jupyter.providers._constrain import Penalty

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    sampling = dict(sampling)
    if (penalty := sampling.pop("answer_penalty", None)) is not None:
        sampling["logits_processor"] = [Penalty(loaded.structure(), penalty)]
    out = loaded.llm.create_chat_completion(messages=messages, max_tokens=cap, **sampling)
    choice = out["choices"][0]
    return choice["message"]["content"] or "", choice["finish_reason"]


def ask_hf(loaded: Any, question: str, sampling: dict[str, Any], system: str | None, cap: int) -> tuple[str, str]:
    """One question through `generate` on the provider's loaded model, by hand."""
    from farm_jupyter.providers._transformers import encode
    from farm_jupyter.types import ChatMessage

    said = [ChatMessage(role="system", content=system)] if system else []
    enc = encode(loaded.tokenizer, [*said, ChatMessage(role="user", content=question)]).to(loaded.device)
    kwargs: dict[str, Any] = {"max_new_tokens": cap}
    if "temperature" in sampling:
        kwargs["do_sample"] = False
    if "repeat_penalty" in sampling:
        kwargs["repetition_penalty"] = sampling["repeat_penalty"]
    out = loaded.model.generate(**enc, **kwargs)
    new = out[0, enc["input_ids"].shape[1] :]
    eos = loaded.model.generation_config.eos_token_id
    ended = len(new) > 0 and int(new[-1]) in (eos if isinstance(eos, list) else [eos])
    finish = "length" if len(new) >= cap and not ended else "stop"
    return loaded.tokenizer.decode(new, skip_special_tokens=True), finish


def score(rows: list[tuple[str, str, tuple[str, ...]]]) -> dict[str, Any]:
    right = sum(correct(a, acc) for a, _, acc in rows)
    loops = sum(looped(a, f) for a, f, _ in rows)
    capped = sum(f == "length" for _, f, _ in rows)
    return {"correct": right, "loops": loops, "capped": capped, "n": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="llamacpp", help="llamacpp, huggingface, or both: llamacpp,huggingface")
    parser.add_argument("--limit", type=int, default=len(QUESTIONS))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--variants", help="comma-separated name prefixes (a,c1,...), or all; each engine has a default set"
    )
    parser.add_argument("--no-provider", action="store_true", help="skip the row through the provider")
    parser.add_argument("--show", action="store_true", help="print every answer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    if unknown := [e for e in engines if e not in ("llamacpp", "huggingface")]:
        parser.error(f"unknown engine {unknown[0]!r}: llamacpp or huggingface")
    lines: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    targets: list[dict[str, Any]] = []
    for engine in engines:
        more_lines, more_results, more_targets = one_engine(engine, args)
        lines += [*(["", ""] if lines else []), *more_lines]
        results.update({f"{engine}: {name}": r for name, r in more_results.items()})
        targets += more_targets
    emit("\n".join(lines), {"results": results, "max_tokens": args.max_tokens, "targets": targets})


def one_engine(engine: str, args: argparse.Namespace) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """One engine's table lines, its rows' scores and its targets."""
    from farm_jupyter import embedded

    questions = QUESTIONS[: args.limit]
    defaults = HF_DEFAULT_SET if engine == "huggingface" else DEFAULT_SET
    wanted = [v.strip() for v in (args.variants or ",".join(defaults)).split(",") if v.strip()]
    table = HF_VARIANTS if engine == "huggingface" else VARIANTS
    variants = {k: v for k, v in table.items() if "all" in wanted or k.split(".")[0] in wanted}
    provider_name = HF_PROVIDER if engine == "huggingface" else PROVIDER
    if engine == "huggingface":
        from farm_jupyter.config import load_settings
        from farm_jupyter.providers.huggingface import HuggingFaceProvider

        settings = load_settings({"env": "test", "cache": {"backend": "none"}}, environ={}, use_file=False)
        hf = HuggingFaceProvider("huggingface", settings)
        loaded: Any = hf._load(embedded.NAME)
        ask = ask_hf
    else:
        import llama_cpp

        from farm_jupyter.providers.llamacpp import _Loaded

        threads = max((os.cpu_count() or 2) // 2, 1)
        path = embedded.locate("llamacpp")
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads_batch=threads, verbose=False)
        loaded = _Loaded(name=embedded.NAME, path=path, llm=llm)
        ask = ask_by_hand
    load = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    started = time.perf_counter()
    for name, (sampling, system) in variants.items():
        rows = []
        for question, accepted in questions:
            answer, finish = ask(loaded, question, sampling, system, args.max_tokens)
            rows.append((answer, finish, accepted))
        results[name] = score(rows)
        answers[name] = [a for a, _, _ in rows]
        print(f"{engine} {name}: {results[name]}", file=sys.stderr)  # progress; the table comes at the end
    if not args.no_provider:
        results[provider_name], answers[provider_name] = provider_row(questions, args.max_tokens, engine)
    elapsed = time.perf_counter() - started

    lines = [
        f"### SmolLM2-135M-Instruct (Q4_1) on {'transformers (dequantised, float32)' if engine == 'huggingface' else 'llama.cpp'}:"
        f" {len(questions)} questions, max_tokens {args.max_tokens}",
        "",
        "| variant | correct | accuracy | loops | cut at the cap |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['correct']}/{r['n']} | {r['correct'] / r['n']:.0%} | {r['loops']} | {r['capped']} |"
        )
    france = {name: a[0] for name, a in answers.items() if questions[0][0].endswith("France?")}
    lines += [
        "",
        f"- system prompt in c4-c6: {SYSTEM!r}; without one the chat template puts in SmolLM2's own.",
        f"- {elapsed:.0f} s in all; load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end,"
        f" on {os.cpu_count()} cores.",
    ]
    for name, text in france.items():
        lines.append(f"- {name.split('.')[0] if '.' in name else name}: {text[:90]!r}")
    if args.show:
        for name, said in answers.items():
            print(f"## {name}")
            for (q, acc), a in zip(questions, said, strict=True):
                print(f"{'ok ' if correct(a, acc) else 'NO '}{q} -> {a[:100]!r}")
    targets = []
    if provider_name in results and any(k.startswith("a.") for k in results):
        ours, before = results[provider_name], next(r for k, r in results.items() if k.startswith("a."))
        targets = [
            target(
                f"embedded defaults on {engine}: no loops (local_quality.py)",
                f"{ours['loops']} loops",
                ours["loops"] == 0,
            ),
            target(
                f"embedded defaults on {engine}: accuracy not below greedy alone (local_quality.py)",
                f"{ours['correct']}/{ours['n']} vs {before['correct']}/{before['n']}",
                ours["correct"] >= before["correct"],
            ),
        ]
    return lines, results, targets


def provider_row(
    questions: list[tuple[str, tuple[str, ...]]], cap: int, engine: str
) -> tuple[dict[str, Any], list[str]]:
    """The same questions through the provider with nothing set but the engine."""
    from farm_jupyter.config import load_settings
    from farm_jupyter.sessions import Session

    settings = load_settings({"env": "test", "provider": engine, "fallback": []}, environ={}, use_file=False)
    session = Session(settings)
    try:
        rows = []
        for question, accepted in questions:
            r = session.chat(question, max_tokens=cap, no_cache=True)
            rows.append((r.text, r.finish_reason, accepted))
    finally:
        session.close()
    return score(rows), [a for a, _, _ in rows]


if __name__ == "__main__":
    main()
