"""Objects in prompts (issue 21): every type a notebook holds, described without failing the cell,
within the budget, and saying what it is (type, shape or length, column names).

Hypothesis draws the objects; each draw is described with a drawn budget (tokens and the
characters-a-token ratio a model's usage may have taught), and checked: no exception, the text
fits the budget as the Budget measures it, and the facts that identify the object are in it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# Hypothesis's modules imported here, not lazily: inside a strategy's recursion, parsing them (pytest
# rewrites hypothesis's modules) hit CPython 3.11.7's "AST constructor recursion depth mismatch" on
# loaded runs (the regex module once, hypothesis.extra.numpy once).
from hypothesis.strategies._internal import regex  # noqa: F401

from farm_jupyter.context import Collector, describe, fill
from farm_jupyter.objects import Budget

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from hypothesis.extra.numpy import array_shapes  # noqa: E402  (after numpy; not lazily, as regex above)
from hypothesis.extra.numpy import arrays as np_arrays  # noqa: E402

HAS_POLARS = importlib.util.find_spec("polars") is not None
HAS_PLOTLY = importlib.util.find_spec("plotly") is not None

# Each strategy draws (object, facts): the facts are strings its description must contain.
Drawn = tuple[Any, list[str]]

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


@st.composite
def frames(draw: Callable[..., Any]) -> Drawn:
    columns = draw(st.lists(names, max_size=80, unique=True))
    rows = draw(st.integers(0, 300))
    kinds = draw(
        st.lists(st.sampled_from(["int", "float", "text", "none"]), min_size=len(columns), max_size=len(columns))
    )
    data: dict[str, Any] = {}
    for c, kind in zip(columns, kinds, strict=True):
        if kind == "int":
            data[c] = np.arange(rows, dtype="int64")
        elif kind == "float":
            data[c] = np.linspace(0, 1, rows)
        elif kind == "text":
            data[c] = [draw(st.text(max_size=200))] * rows
        else:
            data[c] = [None] * rows
    df = pd.DataFrame(data, index=range(rows)) if columns else pd.DataFrame(index=range(rows))
    if draw(st.booleans()) and rows:  # a MultiIndex on the rows
        df.index = pd.MultiIndex.from_arrays([np.arange(rows) // 3, np.arange(rows) % 3], names=["group", "n"])
    facts = ["pandas DataFrame", f"{rows} rows x {len(columns)} columns"]
    if columns and len(columns[0]) < 12:
        facts.append(str(columns[0]))
    return df, facts


@st.composite
def serieses(draw: Callable[..., Any]) -> Drawn:
    n = draw(st.integers(0, 5000))
    values = draw(st.sampled_from(["int", "text", "object"]))
    data = {"int": np.arange(n), "text": [draw(st.text(max_size=300))] * n, "object": [object()] * n}[values]
    name = draw(st.one_of(st.none(), names, st.integers()))
    return pd.Series(data, name=name, dtype=object if values == "object" else None), ["pandas Series", f"{n} rows"]


@st.composite
def indexes(draw: Callable[..., Any]) -> Drawn:
    n = draw(st.integers(0, 3000))
    if draw(st.booleans()):
        idx = pd.MultiIndex.from_arrays([np.arange(n), np.arange(n) % 7], names=["a", "b"])
        return idx, ["pandas MultiIndex", f"{n} entries", "'a', 'b'"]
    return pd.Index(np.arange(n) * 2), ["pandas Index", f"{n} entries"]


@st.composite
def arrays(draw: Callable[..., Any]) -> Drawn:
    kind = draw(st.sampled_from(["drawn", "zero-d", "huge", "object", "float16"]))
    if kind == "zero-d":
        a = np.array(draw(st.floats(allow_nan=True)))
    elif kind == "huge":
        a = np.arange(2_000_000, dtype="float64").reshape(1000, 2000)
    elif kind == "object":
        a = np.array([object(), None, "x" * draw(st.integers(0, 5000)), BrokenRepr()], dtype=object)
    elif kind == "float16":
        a = np.full(draw(st.integers(1, 500)), 60000, dtype="float16")  # its std overflows
    else:
        dtype = draw(st.sampled_from(["int8", "int64", "uint16", "float32", "float64", "bool", "complex64", "U5"]))
        a = draw(np_arrays(dtype, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=20)))
    return a, ["numpy array", f"shape {tuple(a.shape)}", f"dtype {a.dtype}"]


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class BrokenEverything:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")

    def __str__(self) -> str:
        raise RuntimeError("str is broken")

    def _repr_llm_(self) -> str:
        raise RuntimeError("so is this")


class NotText:
    def __repr__(self) -> Any:
        return 42


leaves = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=50), st.binary(max_size=20))
nested = st.recursive(
    leaves, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=5), inner), max_leaves=60
)


@st.composite
def containers(draw: Callable[..., Any]) -> Drawn:
    kind = draw(st.sampled_from(["nested", "huge list", "huge dict", "tuple", "set", "broken inside"]))
    obj: Any = {
        "nested": lambda: draw(nested.filter(lambda x: isinstance(x, list | dict))),
        "huge list": lambda: list(range(1_000_000)),
        "huge dict": lambda: {f"key{i}": "v" * 10 for i in range(100_000)},
        "tuple": lambda: tuple(draw(st.lists(st.integers(), max_size=300))),
        "set": lambda: set(draw(st.lists(st.integers(), max_size=300))),
        "broken inside": lambda: [BrokenRepr(), {"k": BrokenRepr()}],
    }[kind]()
    unit = "key" if isinstance(obj, dict) else "item"
    return obj, [type(obj).__name__, f"{len(obj)} {unit}"]


@st.composite
def images(draw: Callable[..., Any]) -> Drawn:
    from PIL import Image

    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "1", "P", "CMYK", "F", "I;16"]))
    w, h = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    return Image.new(mode, (w, h)), ["Image" if 0 in (w, h) else "picture", f"{w}x{h}"]


def _figure() -> Drawn:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=40)
    ax.plot([1, 2, 3], [3, 1, 2], label="units")
    ax.set_title("Sales")
    plt.close(fig)
    return fig, ["matplotlib figure", "'Sales'"]


def _raised(exc: BaseException) -> Drawn:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - a traceback to describe
        return caught, [type(exc).__name__]


others = st.one_of(
    st.builds(lambda m: _raised(ValueError(m)), st.text(max_size=20_000)),
    st.builds(lambda m: _raised(KeyError(m)), st.text(max_size=50)),
    st.binary(max_size=20_000).map(lambda b: (b, ["bytes", f"{len(b)} bytes"])),
    st.binary(max_size=100).map(lambda b: (bytearray(b), ["bytearray", f"{len(b)} bytes"])),
    st.just((None, ["None"])),
    st.just((BrokenRepr(), ["BrokenRepr"])),
    st.just((BrokenEverything(), ["BrokenEverything"])),
    st.just((NotText(), ["NotText"])),
    st.builds(lambda n: (range(n), ["range"]), st.integers(0, 10**9)),
)


@st.composite
def polars_objects(draw: Callable[..., Any]) -> Drawn:
    import polars as pl

    rows = draw(st.integers(0, 2000))
    columns = draw(st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=60, unique=True))
    df = pl.DataFrame({c: list(range(rows)) for c in columns})
    if draw(st.booleans()):
        return df[columns[0]], ["polars Series", f"{rows} rows"]
    return df, ["polars DataFrame", f"{rows} rows x {len(columns)} columns", f"{columns[0]} ("]


kinds = [frames(), serieses(), indexes(), arrays(), containers(), images(), others]
objects = st.one_of(*kinds, *([polars_objects()] if HAS_POLARS else []))
budgets = st.builds(Budget, st.integers(100, 3000), st.floats(2.0, 8.0))


NAMED = (pd.DataFrame, pd.Series, pd.Index, np.ndarray, list, dict, tuple, set, bytes, bytearray)


def check(obj: Any, facts: list[str], budget: Budget, name: str | None) -> str:
    collector = Collector(budget)
    described = collector.describe(obj, name)
    text = described.text
    if described.images:  # a picture goes as an image; the text is its numbered stand-in
        assert text.startswith("[image 1: ") and len(described.images) == 1
    else:
        assert budget.fits(text), (len(text), budget)
    for fact in facts:
        assert fact in text, (fact, text[:300])
    if name is not None and isinstance(obj, NAMED):
        assert f"`{name}`" in text, text[:300]
    return text


@given(
    drawn=objects, budget=budgets, name=st.one_of(st.none(), st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True))
)
@example(
    drawn=(pd.Series([1.5, 2.0], name="price"), ["pandas Series", "2 rows", "price"]),
    budget=Budget(1000),
    name="df.price",
)
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_every_object_is_described_within_the_budget_saying_what_it_is(
    drawn: Drawn, budget: Budget, name: str | None
) -> None:
    obj, facts = drawn
    check(obj, facts, budget, name)


def test_a_series_in_a_prompt_is_described_not_a_crash():
    # Was: TypeError: Series.to_string() got an unexpected keyword argument 'max_colwidth'.
    df = pd.DataFrame({"price": [1.5, 2.0, 3.25], "city": ["Oslo", "Lima", "Pune"]})
    text = fill("Mean of {df.price}?", {"df": df}).text
    assert text.startswith("Mean of pandas Series `df.price`: 3 rows, dtype float64, name 'price'")
    assert "3.25" in text
    long = fill("{s}", {"s": pd.Series(["x" * 500] * 3)}).text
    assert "x" * 50 in long and "x" * 70 not in long  # long values cut like a frame's


def test_figures_and_plotly():
    fig, facts = _figure()
    check(fig, facts, Budget(100), "fig")
    if not HAS_PLOTLY:
        pytest.skip("plotly is not installed")
    import plotly.graph_objects as go

    chart = go.Figure(go.Scatter(x=[1, 2, 3], y=[4, 5, 6], name="units"), layout={"title": {"text": "Sales"}})
    text = describe(chart, 100, "chart").text
    assert "plotly figure" in text and "'Sales'" in text and "scatter 'units' (3 points)" in text


@pytest.mark.skipif(not HAS_POLARS, reason="polars is not installed")
def test_polars_frames_and_series():
    import polars as pl

    df = pl.DataFrame({"city": ["Oslo", "Lima"] * 500, "units": list(range(1000))})
    text = check(df, ["polars DataFrame", "1000 rows x 2 columns", "city (String)", "Oslo"], Budget(200), "df")
    assert "first " in text and " of 1000 rows" in text
    check(df["units"], ["polars Series", "1000 rows", "Int64"], Budget(100), "units")
    check(pl.DataFrame(), ["polars DataFrame", "0 rows x 0 columns"], Budget(100), "empty")


def test_an_exact_count_replaces_the_estimate_and_the_note_says_which():
    words = Budget(50, count=lambda text: len(text.split()))  # a tokenizer that counts words
    text = describe(list(range(10_000)), words, "xs").text
    assert len(text.split()) <= 50 and "50-token budget, counted" in text
    assert len(text) > 50 * 4  # more characters than the estimate would have allowed
    estimated = describe(list(range(10_000)), Budget(50), "xs").text
    assert len(estimated) <= 200 and "estimated at 4 characters a token" in estimated
