"""The statistics of a pairwise judge, as pure functions: nothing here asks a model.

A judge sees each pair of answers twice, in both orders (A,B and B,A). The two verdicts make one
outcome: the same winner both times wins; anything else (a tie, or the judge changing its mind
with the order) is a tie. From the outcomes:

- consistency: how often the two orders agree (a judge that only reads positions agrees never);
- first-position preference: of the verdicts that named a winner, the share that named the answer
  shown first (0.5 is no bias; 1.0 a judge that always picks A);
- a Bradley-Terry fit per model (ties are half a win each way, plus a prior of one tie per pair so
  that a clean sweep stays finite), reported as the chance of beating an average other model, with
  a seeded bootstrap 95% interval over prompts;
- Cohen's kappa between two raters' labels (a person's picks and the judge's), chance-corrected.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

TIE = "tie"


@dataclass(frozen=True)
class Judgement:
    """One judge call: `first` was shown as answer A, `second` as B; `winner` is one of them,
    "tie", or None when the reply named no answer (or the judge could not be asked)."""

    prompt: int
    first: str
    second: str
    winner: str | None
    reply: str | None = None


@dataclass(frozen=True)
class Outcome:
    """One pair on one prompt, both orders read together: `a` and `b` in the models' order."""

    prompt: int
    a: str
    b: str
    winner: str | None  # a, b, "tie", or None when an order gave no verdict


def combine(ab: str | None, ba: str | None) -> str | None:
    """One pair's outcome from its two orders: the same verdict both times stands, any
    disagreement is a tie; None when either order gave no verdict."""
    if ab is None or ba is None:
        return None
    return ab if ab == ba else TIE


def outcomes(judgements: Sequence[Judgement], models: Sequence[str]) -> list[Outcome]:
    """Each (prompt, pair) judged in both orders, with its combined winner, in a stable order."""
    order = {m: i for i, m in enumerate(models)}
    seen: dict[tuple[int, str, str], str | None] = {}
    for j in judgements:
        seen[(j.prompt, j.first, j.second)] = j.winner
    found = []
    for (prompt, first, second), ab in seen.items():
        if order[first] < order[second] and (prompt, second, first) in seen:
            found.append(Outcome(prompt, first, second, combine(ab, seen[(prompt, second, first)])))
    return sorted(found, key=lambda o: (o.prompt, order[o.a], order[o.b]))


def consistency(judgements: Sequence[Judgement], models: Sequence[str]) -> float | None:
    """The share of pairs whose two orders gave the same verdict (ties included)."""
    by_order = {(j.prompt, j.first, j.second): j.winner for j in judgements}
    pairs = [
        (ab, by_order[(p, b, a)])
        for (p, a, b), ab in by_order.items()
        if models.index(a) < models.index(b) and (p, b, a) in by_order
    ]
    pairs = [(ab, ba) for ab, ba in pairs if ab is not None and ba is not None]
    return sum(ab == ba for ab, ba in pairs) / len(pairs) if pairs else None


def first_position_preference(judgements: Sequence[Judgement]) -> float | None:
    """Of the verdicts that named a winner, the share that named the answer shown first."""
    decided = [j for j in judgements if j.winner is not None and j.winner != TIE]
    return sum(j.winner == j.first for j in decided) / len(decided) if decided else None


def win_counts(found: Sequence[Outcome], models: Sequence[str], prompts: Sequence[int]) -> np.ndarray:
    """Per prompt (in `prompts`' order), an N x N array: [i, j] is how often model i beat j,
    a tie counting half a win each way."""
    import numpy as np

    index = {m: i for i, m in enumerate(models)}
    row = {p: k for k, p in enumerate(prompts)}
    wins = np.zeros((len(prompts), len(models), len(models)))
    for o in found:
        if o.winner is None or o.prompt not in row:
            continue
        k, a, b = row[o.prompt], index[o.a], index[o.b]
        if o.winner == TIE:
            wins[k, a, b] += 0.5
            wins[k, b, a] += 0.5
        else:
            won, lost = (a, b) if o.winner == o.a else (b, a)
            wins[k, won, lost] += 1.0
    return wins


def bradley_terry(wins: np.ndarray, prior: float = 0.5, iterations: int = 2000) -> np.ndarray:
    """Strengths (geometric mean 1) from wins [..., N, N] (any leading batch axes), by Hunter's
    MM algorithm. `prior` is added to every off-diagonal cell: 0.5 each way is one tie per pair."""
    import numpy as np

    n = wins.shape[-1]
    off = 1.0 - np.eye(n)
    w = wins + prior * off
    games = (w + np.swapaxes(w, -1, -2)) * off
    total = w.sum(axis=-1)
    p = np.ones(wins.shape[:-1])
    for _ in range(iterations):
        denominator = (games / (p[..., :, None] + p[..., None, :])).sum(axis=-1)
        new = total / denominator
        new /= np.exp(np.log(new).mean(axis=-1, keepdims=True))
        if np.max(np.abs(new - p)) < 1e-10:
            return new
        p = new
    return p


def scores(strengths: np.ndarray) -> np.ndarray:
    """Each model's fitted chance of beating an average other model (0.5: no better, no worse)."""
    import numpy as np

    n = strengths.shape[-1]
    chance = strengths[..., :, None] / (strengths[..., :, None] + strengths[..., None, :])
    return (chance * (1.0 - np.eye(n))).sum(axis=-1) / max(n - 1, 1)


def bootstrap(
    per_prompt: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per model: percentile intervals of the scores refitted on prompts drawn with
    replacement (`resamples` times, from a generator seeded with `seed`)."""
    import numpy as np

    prompts = per_prompt.shape[0]
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, prompts, size=(resamples, prompts))
    # How often each prompt was drawn in each resample, then the wins those draws add up to.
    counts = np.bincount((drawn + prompts * np.arange(resamples)[:, None]).ravel(), minlength=resamples * prompts)
    wins = np.einsum("rp,pij->rij", counts.reshape(resamples, prompts).astype(float), per_prompt)
    fitted = scores(bradley_terry(wins))
    tail = (1.0 - level) / 2 * 100
    return np.percentile(fitted, tail, axis=0), np.percentile(fitted, 100 - tail, axis=0)


def prompt_winner(found: Sequence[Outcome], models: Sequence[str], prompt: int) -> str | None:
    """The judge's pick on one prompt: the model with the most pairwise points (a tie half a
    point), "tie" when the top is shared; None when no pair of that prompt has an outcome."""
    points = dict.fromkeys(models, 0.0)
    judged = False
    for o in found:
        if o.prompt != prompt or o.winner is None:
            continue
        judged = True
        if o.winner == TIE:
            points[o.a] += 0.5
            points[o.b] += 0.5
        else:
            points[o.winner] += 1.0
    if not judged:
        return None
    best = max(points.values())
    top = [m for m, v in points.items() if v == best]
    return top[0] if len(top) == 1 else TIE


def cohen_kappa(first: Sequence[Hashable | None], second: Sequence[Hashable | None]) -> tuple[float | None, int]:
    """Cohen's kappa over the items both raters labelled, and how many those were. None when
    there are none, or when chance alone explains every agreement (one label used by both)."""
    both = [(a, b) for a, b in zip(first, second, strict=False) if a is not None and b is not None]
    if not both:
        return None, 0
    n = len(both)
    observed = sum(a == b for a, b in both) / n
    labels = {a for a, _ in both} | {b for _, b in both}
    expected = sum((sum(a == label for a, _ in both) / n) * (sum(b == label for _, b in both) / n) for label in labels)
    if expected >= 1.0:
        return None, n
    return (observed - expected) / (1.0 - expected), n
