"""What a notebook object tells a model: `{df}` in a prompt becomes the object's best description.

    describe(df)            pandas DataFrame `df`: 1000 rows x 3 columns ... first rows, in budget
    describe(fig)           an image part (PNG) and the one line a text-only model gets instead

The order, first that applies: the object's own `_repr_llm_()` (the repr_llm convention) or
`_ai_repr_()` (JEP 128, a mime bundle), then defaults worth having: a pandas DataFrame or Series
as its shape, dtypes and first rows, a numpy array as shape, dtype and a summary, an exception as
its traceback, a matplotlib Figure, PIL Image or IPython Image as an image; anything else as
`str()`. Every text is kept within a budget of tokens (about four characters each).

pandas, numpy, matplotlib and PIL are never imported here to ask what an object is: the object's
class says where it comes from, and the object itself does the work (`df.head().to_string()`).
"""

from __future__ import annotations

import base64
import struct
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .fields import FieldFormatter, Source

if TYPE_CHECKING:
    from .types import ImagePart  # imported when an image is made: the magics import this module

DEFAULT_BUDGET = 1000  # tokens: a DataFrame's first rows, not the whole frame
CHARS_PER_TOKEN = 4
PLAIN = (str, int, float, complex, bool, type(None))


@dataclass
class Described:
    """An object as a model gets it: text, and images for a vision model (the text has their stand-ins)."""

    text: str
    images: list[ImagePart] = field(default_factory=list)


def _is(obj: Any, module: str, *names: str) -> bool:
    """Is `obj` an instance of `module.<one of names>` (or of a subclass), without importing it?"""
    for cls in type(obj).__mro__:
        if cls.__module__.split(".")[0] == module and cls.__name__ in names:
            return True
    return False


def _clip(text: str, budget: int, *, keep: str = "head") -> str:
    limit = max(budget, 1) * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    note = f"... ({cut} more characters, cut to the {budget}-token budget)"
    return f"{note}\n{text[-limit:]}" if keep == "tail" else f"{text[:limit]}\n{note}"


def _named(name: str | None, what: str) -> str:
    return f"{what} `{name}`" if name else what


def _frame(df: Any, budget: int, name: str | None) -> str:
    rows, cols = df.shape
    head = [f"{_named(name, 'pandas DataFrame')}: {rows} rows x {cols} columns"]
    dtypes = [f"{c} ({t})" for c, t in df.dtypes.items()]
    shown = dtypes[:50]
    more = f", ... and {len(dtypes) - 50} more columns" if len(dtypes) > 50 else ""
    head.append("columns (dtype): " + ", ".join(shown) + more)
    return _rows(df, head, rows, budget)


def _series(s: Any, budget: int, name: str | None) -> str:
    head = [f"{_named(name or s.name, 'pandas Series')}: {len(s)} rows, dtype {s.dtype}"]
    return _rows(s, head, len(s), budget)


def _rows(data: Any, head: list[str], total: int, budget: int) -> str:
    """The header, then as many first rows as the budget holds (found by halving)."""
    limit = budget * CHARS_PER_TOKEN
    text = "\n".join(head)

    def with_rows(n: int) -> str:
        table = data.head(n).to_string(max_colwidth=60)
        label = "all rows" if n >= total else f"first {n} of {total} rows"
        return f"{text}\n{label}:\n{table}"

    low, high = 0, min(total, 200)
    best = text if total else f"{text}\n(no rows)"
    while low < high:
        mid = (low + high + 1) // 2
        candidate = with_rows(mid)
        if len(candidate) <= limit:
            best, low = candidate, mid
        else:
            high = mid - 1
    return _clip(best, budget)


def _array(a: Any, budget: int, name: str | None) -> str:
    lines = [f"{_named(name, 'numpy array')}: shape {tuple(a.shape)}, dtype {a.dtype}"]
    if a.size and a.dtype.kind in "biuf":
        lines.append(f"min {a.min():.6g}, max {a.max():.6g}, mean {a.mean():.6g}, std {a.std():.6g}")
    if a.size:
        import numpy as np  # the array exists, so numpy is already imported

        lines.append("values: " + np.array2string(a, threshold=40, edgeitems=3, precision=4))
    return _clip("\n".join(lines), budget)


def _exception(exc: BaseException, budget: int) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return _clip(text, budget, keep="tail")  # the end of a traceback says what went wrong


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    return None


def _figure(fig: Any) -> tuple[bytes, str]:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # the same figure, the same bytes
    data = buffer.getvalue()
    size = _png_size(data)
    bits = ["matplotlib figure" + (f", {size[0]}x{size[1]} px" if size else "")]
    if title := getattr(getattr(fig, "_suptitle", None), "get_text", lambda: "")():
        bits.append(f"title {title!r}")
    for i, ax in enumerate(fig.get_axes()):
        said = [f"axes {i + 1}"]
        if t := ax.get_title():
            said.append(f"title {t!r}")
        if x := ax.get_xlabel():
            said.append(f"x {x!r}")
        if y := ax.get_ylabel():
            said.append(f"y {y!r}")
        labels = [h.get_label() for h in ax.get_lines() if not h.get_label().startswith("_")]
        if labels:
            said.append("lines " + ", ".join(repr(label) for label in labels[:8]))
        bits.append(" ".join(said))
    return data, "; ".join(bits)


def _pil(image: Any) -> tuple[bytes, str]:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), f"{image.width}x{image.height} px {image.mode} picture"


def _ipython_image(image: Any) -> tuple[bytes, str, str] | None:
    data = getattr(image, "data", None)
    if not isinstance(data, bytes):
        return None
    fmt = str(getattr(image, "format", "png") or "png").lower()
    media = "image/jpeg" if fmt in ("jpg", "jpeg") else f"image/{fmt}"
    size = _png_size(data)
    return data, media, f"{fmt.upper()} image" + (f", {size[0]}x{size[1]} px" if size else "")


def _bundle(bundle: Mapping[str, Any], budget: int) -> tuple[str, list[tuple[bytes, str]]]:
    """Text and images from a mime bundle (`_ai_repr_`'s answer)."""
    text = ""
    for kind in ("text/llm+plain", "text/markdown", "text/plain"):
        if kind in bundle:
            text = str(bundle[kind])
            break
    images = []
    for kind in ("image/png", "image/jpeg"):
        value = bundle.get(kind)
        if isinstance(value, bytes):
            images.append((value, kind))
        elif isinstance(value, str):
            images.append((base64.b64decode(value), kind))
        elif value is not None and _is(value, "PIL", "Image"):
            images.append((_pil(value)[0], "image/png"))
    return _clip(text, budget), images


class Collector:
    """Describes the objects of one prompt, numbering its images: `[image 1: ...]`."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        if budget < 1:
            raise ValueError(f"a context budget of {budget} tokens is too small")
        self.budget = budget
        self.images: list[ImagePart] = []

    def _image(self, data: bytes, media_type: str, what: str) -> str:
        from .types import ImagePart

        alt = f"[image {len(self.images) + 1}: {what}]"
        self.images.append(ImagePart(data=base64.b64encode(data).decode(), media_type=media_type, alt=alt))
        return alt

    def __call__(self, obj: Any, name: str | None = None) -> str:
        return self.describe(obj, name).text

    def describe(self, obj: Any, name: str | None = None) -> Described:
        before = len(self.images)
        text = self._text(obj, name)
        return Described(text, self.images[before:])

    def _text(self, obj: Any, name: str | None) -> str:
        budget = self.budget
        if isinstance(obj, PLAIN):
            return str(obj)
        own = _own(obj, "_repr_llm_")
        if own is not None:
            value = own()
            if isinstance(value, str):
                return _clip(value, budget)
        own = _own(obj, "_ai_repr_")
        if own is not None:
            value = own()
            if isinstance(value, str):
                return _clip(value, budget)
            if isinstance(value, Mapping):
                text, images = _bundle(value, budget)
                alts = [self._image(data, kind, f"from {name or type(obj).__name__}") for data, kind in images]
                return "\n".join([text, *alts]) if text else "\n".join(alts)
        if _is(obj, "pandas", "DataFrame"):
            return _frame(obj, budget, name)
        if _is(obj, "pandas", "Series"):
            return _series(obj, budget, name)
        if _is(obj, "numpy", "ndarray"):
            return _array(obj, budget, name)
        if isinstance(obj, BaseException):
            return _exception(obj, budget)
        if _is(obj, "matplotlib", "Figure"):
            data, what = _figure(obj)
            return self._image(data, "image/png", what)
        if _is(obj, "PIL", "Image"):
            data, what = _pil(obj)
            return self._image(data, "image/png", what)
        if _is(obj, "IPython", "Image") and (found := _ipython_image(obj)) is not None:
            data, media, what = found
            return self._image(data, media, what)
        return _clip(str(obj), budget)


def _own(obj: Any, method: str) -> Callable[..., Any] | None:
    """The object's own describing method; never a class's (a class is not its instances)."""
    if isinstance(obj, type):
        return None
    found = getattr(obj, method, None)
    return found if callable(found) else None


def describe(obj: Any, budget: int = DEFAULT_BUDGET, name: str | None = None) -> Described:
    """The best description of `obj` for a model, within `budget` tokens."""
    return Collector(budget).describe(obj, name)


_CONTEXT = Source("context", "{name} is not in context; give context={{'{name}': ...}}")


def fill(template: str, values: Mapping[str, Any], budget: int = DEFAULT_BUDGET) -> Described:
    """`template.format(**values)` with each value described (`{df}` -> its description, `{fig}` ->
    an image); a field with a format spec or conversion (`{x:.2f}`, `{s!r}`) is formatted as usual.
    The fields are `%%farm_chat`'s (`farm_jupyter.fields`): looked up, never evaluated."""
    collector = Collector(budget)
    formatter = FieldFormatter(values, "the prompt", collector, _CONTEXT)
    return Described(formatter.vformat(template, (), {}), collector.images)


def attach(
    prompt: str, context: Mapping[str, Any] | None, images: Sequence[Any], budget: int | None
) -> tuple[str, list[ImagePart]]:
    """A prompt with `{name}` filled from `context` (each object described), and its images: an
    `ImagePart` as it is, anything else described (a figure becomes one); the stand-ins of images
    not named in the text go at its end, where a text-only model reads them."""
    from .errors import ConfigError
    from .types import ImagePart

    budget = budget or DEFAULT_BUDGET
    try:
        described = fill(prompt, context, budget) if context is not None else Described(prompt)
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise ConfigError(
            f"the prompt cannot be filled from context=: {exc}",
            hint="name each {field} in context=, or write {{ }} for literal braces",
        ) from None
    collector = Collector(budget)
    collector.images = described.images
    stand_ins = []
    for obj in images:
        if isinstance(obj, ImagePart):
            collector.images.append(obj)
            if obj.alt not in described.text:  # a face that filled the prompt has put it there already
                stand_ins.append(obj.alt)
            continue
        before = len(collector.images)
        said = collector(obj)
        if len(collector.images) == before:
            raise ConfigError(
                f"images= takes figures and pictures, not {type(obj).__name__}",
                hint="put other objects in the prompt with context=",
            )
        stand_ins.append(said)
    return "\n\n".join([described.text, *stand_ins]), collector.images
