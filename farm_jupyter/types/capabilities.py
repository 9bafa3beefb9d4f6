"""What a provider can do: its row of the provider x feature table.

Each provider class declares its row as a class attribute (`Provider.capabilities`; a function
provider through `register_provider(..., capabilities=...)`). The router reads it before anything
is sent: a request that asks for a feature its provider cannot do is refused in one line
(`llamacpp cannot do think here: use ollama or openai, or drop think=`), never silently dropped.
The README's table is `table()` of the built-ins' rows.

Three features work on every provider, whatever it declares, because the layers above do them:
`stream` (a provider's one primitive is a stream), `fallback` (the router's) and, for a provider
that does not constrain its output, `schema` (said in the prompt, validated, asked again) and
`images` (each one's one-line stand-in, said in the footer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .messages import ChatMessage
from .request import GenerationParams

# Every feature, with what a caller drops to do without it (said in the refusal).
FEATURES: dict[str, str] = {
    "stream": "stream",
    "schema": "schema=",
    "tools": "tools=",
    "tool_choice": "tool_choice= (auto is everywhere)",
    "think": "think=",
    "images": "images=",
    "stop": "stop=",
    "seed": "seed=",
    "temperature": "temperature=",
    "max_tokens": "max_tokens=",
    "embed": "embed()",
    "load": "load()/unload()",
    "fallback": "fallback",
    "fim": "the fill-in-the-middle request",
}
# Done above the providers for every one of them (see the module docstring).
EVERYWHERE = frozenset({"stream", "fallback"})
# What a provider that does not do it natively gets instead; `format="json"` is not among them.
STAND_INS: dict[str, str] = {"schema": "validated + re-ask", "images": "as text", "fim": "chat prompt"}


@dataclass(frozen=True)
class Capabilities:
    """A provider's row: the features it does, and which of them depend on the model (a provider
    that knows its models' abilities narrows its row per model, e.g. Ollama's `/api/show`)."""

    features: frozenset[str] = frozenset()
    per_model: frozenset[str] = frozenset()
    # Features an optional extra would add, not installed here: (feature, what to install).
    installs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted((self.features | self.per_model) - set(FEATURES))
        if unknown:
            raise ValueError(f"unknown feature {unknown[0]!r}: the features are {', '.join(FEATURES)}")
        if not self.per_model <= self.features:
            raise ValueError("a feature that depends on the model must be a feature of the provider")

    @classmethod
    def of(cls, *features: str, per_model: Iterable[str] = (), installs: dict[str, str] | None = None) -> Capabilities:
        return cls(frozenset(features), frozenset(per_model), tuple((installs or {}).items()))

    def install(self, feature: str) -> str | None:
        """What to install for `feature` when an extra would give it here (`pip install ...`)."""
        return dict(self.installs).get(feature)

    @classmethod
    def parse(cls, value: Capabilities | Iterable[str] | None) -> Capabilities:
        """What `register_provider(..., capabilities=...)` takes: a Capabilities or feature names."""
        if value is None:
            return cls()
        if isinstance(value, Capabilities):
            return value
        if isinstance(value, str):  # one name is not a list of its letters
            value = [value]
        return cls(frozenset(value))

    def can(self, feature: str) -> bool:
        return feature in EVERYWHERE or feature in self.features

    def cell(self, feature: str) -> str:
        """What the README's table says for this provider and feature."""
        if feature in EVERYWHERE or (feature in self.features and feature not in self.per_model):
            return "yes"
        if feature in self.per_model:
            instead = STAND_INS.get(feature)
            return f"per model{f' (else {instead})' if instead else ''}"
        return STAND_INS.get(feature, "no")


def asked(params: GenerationParams, messages: Sequence[ChatMessage] = ()) -> list[str]:
    """The features a chat request uses, in the table's order (`think=False` asks nothing)."""
    used = {
        "schema": params.response_schema is not None or params.format is not None,
        "tools": bool(params.tools),
        "tool_choice": params.tool_choice not in (None, "auto"),
        "think": bool(params.think),
        "images": any(m.images for m in messages),
        "stop": bool(params.stop),
        "seed": params.seed is not None,
        "temperature": params.temperature is not None,
        "max_tokens": params.max_tokens is not None,
    }
    return [f for f in FEATURES if used.get(f)]


def stands_in(feature: str, params: GenerationParams) -> bool:
    """Can the layers above do `feature` for a provider that cannot? A schema can (validated and
    asked again), `format="json"` alone cannot (nothing checks it); images can (as text)."""
    if feature == "schema":
        return params.format is None
    return feature in STAND_INS


def without(params: GenerationParams, row: frozenset[str]) -> GenerationParams:
    """`params` holding only what a provider of this row does: a schema it does not constrain to
    is said in the prompt instead, and `think=False` is no request at all."""
    drop = {
        "response_schema": "schema",
        "format": "schema",
        "tools": "tools",
        "tool_choice": "tool_choice",
        "think": "think",
        "stop": "stop",
        "seed": "seed",
        "temperature": "temperature",
        "max_tokens": "max_tokens",
    }
    update = {k: None for k, f in drop.items() if f not in row and getattr(params, k) is not None}
    return params.model_copy(update=update) if update else params


def refusal(
    provider: str, feature: str, others: Sequence[str], *, model: str | None = None, install: str | None = None
) -> tuple[str, str]:
    """The refusal's message and hint: `llamacpp cannot do think here` and `use ollama or openai,
    or drop think=`; `model` when it is the model that cannot, `install` when an extra would do it."""
    who = f"{provider}:{model}" if model else provider
    first = f"{install}, " if install else ""
    use = f"use {' or '.join(others)}, or " if others else ""
    return f"{who} cannot do {feature} here", f"{first}{use}drop {FEATURES[feature]}"


def declarable(feature: str, can_declare: frozenset[str]) -> str:
    """The cell of a custom provider, which does what it declares of `can_declare`."""
    if feature in EVERYWHERE:
        return "yes"
    if feature not in can_declare:
        return "no"
    instead = STAND_INS.get(feature)
    return f"if declared{f' (else {instead})' if instead else ''}"


def table(rows: dict[str, Capabilities | frozenset[str]]) -> str:
    """The provider x feature table in Markdown (the README prints it): a provider's row, or for a
    custom provider the features it may declare."""
    head = "| provider | " + " | ".join(f.replace("load", "load/unload") for f in FEATURES) + " |"
    rule = "|---" * (len(FEATURES) + 1) + "|"
    lines = [head, rule]
    for name, row in rows.items():
        cells = [row.cell(f) if isinstance(row, Capabilities) else declarable(f, row) for f in FEATURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
