"""What a notebook object tells a model: `{df}` in a prompt becomes the object's best description.

    describe(df)            pandas DataFrame `df`: 1000 rows x 3 columns ... first rows, in budget
    describe(fig)           an image part (PNG) and the one line a text-only model gets instead

The order, first that applies: the object's own `_repr_llm_()` (the repr_llm convention) or
`_ai_repr_()` (JEP 128, a mime bundle), then defaults worth having (`farm_jupyter.objects`): a
pandas or polars DataFrame or Series as its shape, columns and first rows, an Index as its entries,
a numpy array as shape, dtype and a summary, a dict, list, tuple or set as its length and a short
repr, bytes as their length and first bytes, an exception as its traceback, a matplotlib Figure,
PIL Image or IPython Image as an image, a plotly figure as its traces (an image too with kaleido);
anything else as `str()`. Each description starts with what the object is and stays within a budget
of tokens (`objects.Budget`: estimated, about four characters each unless the model's usage said
otherwise). An object that cannot be described (a `__repr__` that raises) says so: it never fails
the cell. Text the user wrote (a `str`) and numbers go as they are.

pandas, numpy, matplotlib and PIL are never imported here to ask what an object is: the object's
class says where it comes from, and the object itself does the work (`df.head().to_string()`).
"""

from __future__ import annotations

import base64
import functools
import re
import struct
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import objects
from .fields import FieldFormatter, Source
from .objects import CHARS_PER_TOKEN as CHARS_PER_TOKEN  # re-exported: the estimate's default
from .objects import Budget, fit, named, safe_repr

if TYPE_CHECKING:
    from .types import ChatMessage, Chunk, ImagePart  # imported when an image is made: the magics import this module

DEFAULT_BUDGET = 1000  # tokens: a DataFrame's first rows, not the whole frame
PLAIN = (str, int, float, complex, bool, type(None))  # text the user wrote, and numbers: as they are


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


def _clip(text: str, budget: Budget, *, keep: str = "head") -> str:
    return fit("", text, budget, keep=keep)


# Data objects, told in text (farm_jupyter.objects): the first that applies.
_TEXT: list[tuple[Callable[[Any], bool], Callable[[Any, Budget, str | None], str]]] = [
    (lambda o: _is(o, "pandas", "DataFrame"), objects.frame),
    (lambda o: _is(o, "pandas", "Series"), objects.series),
    (lambda o: _is(o, "pandas", "Index"), objects.index),
    (lambda o: _is(o, "polars", "DataFrame", "LazyFrame") and hasattr(o, "shape"), objects.polars_frame),
    (lambda o: _is(o, "polars", "Series"), objects.polars_series),
    (lambda o: _is(o, "numpy", "ndarray"), objects.array),
    (lambda o: isinstance(o, bytes | bytearray | memoryview), objects.raw_bytes),
    (lambda o: isinstance(o, Mapping | list | tuple | set | frozenset | deque), objects.container),
]


def _exception(exc: BaseException, budget: Budget, name: str | None) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    if budget.fits(text):
        return text
    first = named(name, f"{type(exc).__qualname__} exception")
    return fit(first, text, budget, keep="tail")  # the end of a traceback says what went wrong


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

    what = f"{image.width}x{image.height} px {image.mode} picture"
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):  # what PNG cannot hold (CMYK, F)
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), what


def _plotly(fig: Any) -> tuple[bytes | None, str]:
    """A plotly figure's traces and titles; its picture too where kaleido can draw one."""
    import importlib.util

    layout = fig.layout
    bits = ["plotly figure"]
    if title := layout.title.text:
        bits.append(f"title {title!r}")
    for axis in ("xaxis", "yaxis"):
        if label := getattr(layout, axis).title.text:
            bits.append(f"{axis[0]} {label!r}")
    for trace in fig.data[:8]:
        points = next((len(v) for k in ("x", "y", "values", "z") if (v := getattr(trace, k, None)) is not None), 0)
        bits.append(f"{trace.type}" + (f" {trace.name!r}" if trace.name else "") + f" ({points} points)")
    if len(fig.data) > 8:
        bits.append(f"and {len(fig.data) - 8} more traces")
    if importlib.util.find_spec("kaleido") is None:
        return None, "; ".join([*bits, "no picture: pip install kaleido to send plotly figures as images"])
    return fig.to_image(format="png"), "; ".join(bits)


def _ipython_image(image: Any) -> tuple[bytes, str, str] | None:
    data = getattr(image, "data", None)
    if not isinstance(data, bytes):
        return None
    fmt = str(getattr(image, "format", "png") or "png").lower()
    media = "image/jpeg" if fmt in ("jpg", "jpeg") else f"image/{fmt}"
    size = _png_size(data)
    return data, media, f"{fmt.upper()} image" + (f", {size[0]}x{size[1]} px" if size else "")


def _bundle(bundle: Mapping[str, Any], budget: Budget) -> tuple[str, list[tuple[bytes, str]]]:
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
    """Describes the objects of one prompt, numbering its images: `[image 1: ...]`. `budget` is
    the tokens each object may take (an int: estimated at 4 characters a token)."""

    def __init__(self, budget: int | Budget | Callable[[], Budget] = DEFAULT_BUDGET) -> None:
        self._budget = budget  # a callable is asked on the first object described (it may resolve a target)
        self.images: list[ImagePart] = []
        self.described = 0  # objects described (not plain text or numbers): what the budget applied to

    @functools.cached_property
    def budget(self) -> Budget:
        found = self._budget() if callable(self._budget) else self._budget
        return found if isinstance(found, Budget) else Budget(found)

    def _image(self, data: bytes, media_type: str, what: str) -> str:
        from .types import ImagePart

        alt = f"[image {len(self.images) + 1}: {what}]"
        self.images.append(ImagePart(data=base64.b64encode(data).decode(), media_type=media_type, alt=alt))
        return alt

    def __call__(self, obj: Any, name: str | None = None) -> str:
        return self.describe(obj, name).text

    def describe(self, obj: Any, name: str | None = None) -> Described:
        before = len(self.images)
        if isinstance(obj, PLAIN):
            return Described(str(obj))
        self.described += 1
        try:
            text = self._text(obj, name)
        except Exception as exc:  # noqa: BLE001 - an object that cannot be described is said, never a failed cell
            del self.images[before:]
            said = f"{named(name, type(obj).__name__)} (not described: {type(exc).__name__} while describing it)"
            text = fit(said, safe_repr(obj), self.budget)
        return Described(text, self.images[before:])

    def _own_text(self, obj: Any, name: str | None) -> str | None:
        """The object's own description (`_repr_llm_`, `_ai_repr_`); None when it has none that works."""
        budget = self.budget
        for method in ("_repr_llm_", "_ai_repr_"):
            try:
                own = _own(obj, method)
                value = own() if own is not None else None
            except Exception:  # noqa: BLE001 - a broken hook: the defaults describe it instead
                continue
            if isinstance(value, str):
                return _clip(value, budget)
            if method == "_ai_repr_" and isinstance(value, Mapping):
                text, images = _bundle(value, budget)
                alts = [self._image(data, kind, f"from {name or type(obj).__name__}") for data, kind in images]
                return "\n".join([text, *alts]) if text else "\n".join(alts)
        return None

    def _text(self, obj: Any, name: str | None) -> str:
        budget = self.budget
        own = self._own_text(obj, name)
        if own is not None:
            return own
        for applies, told in _TEXT:
            if applies(obj):
                return told(obj, budget, name)
        if isinstance(obj, BaseException):
            return _exception(obj, budget, name)
        if _is(obj, "matplotlib", "Figure"):
            data, what = _figure(obj)
            return self._image(data, "image/png", what)
        if _is(obj, "plotly", "Figure"):
            picture, what = _plotly(obj)
            return _clip(what, budget) if picture is None else self._image(picture, "image/png", what)
        if _is(obj, "PIL", "Image"):
            data, what = _pil(obj)
            return self._image(data, "image/png", what)
        if _is(obj, "IPython", "Image") and (found := _ipython_image(obj)) is not None:
            data, media, what = found
            return self._image(data, media, what)
        return objects.other(obj, budget, name)


def _own(obj: Any, method: str) -> Callable[..., Any] | None:
    """The object's own describing method; never a class's (a class is not its instances)."""
    if isinstance(obj, type):
        return None
    found = getattr(obj, method, None)
    return found if callable(found) else None


def describe(obj: Any, budget: int | Budget = DEFAULT_BUDGET, name: str | None = None) -> Described:
    """The best description of `obj` for a model, within `budget` tokens."""
    return Collector(budget).describe(obj, name)


# How servers say a prompt is longer than the model's context window (OpenAI and vLLM's 400,
# llama.cpp's "exceeds the context window", transformers' "longer than the maximum").
_WINDOW = re.compile(
    r"context[ _](length|window)|maximum context|n_ctx|too many tokens|longer than the (model's )?maximum", re.I
)


def over_the_window(error: str, budget: Budget, prompt_chars: int) -> str | None:
    """What to add to a server's context-window error when objects were described in the prompt:
    the budget, how it was counted, and the prompt's size as the budget measures it; None when
    the error is not about the context window."""
    if not _WINDOW.search(error):
        return None
    size = (
        f"{prompt_chars:,} characters"
        if budget.count
        else f"about {round(prompt_chars / budget.chars_per_token):,} tokens"
    )
    return (
        f"the objects in the prompt were described within --context-budget {budget.tokens} tokens each "
        f"({budget.how}); the prompt was {size}: lower --context-budget (context_budget= in Python) "
        "or ask a model with a longer context"
    )


async def naming_the_budget(
    chunks: AsyncIterator[Chunk], budget: Budget, messages: Sequence[ChatMessage]
) -> AsyncIterator[Chunk]:
    """`chunks`, where a context-window error of a prompt with objects described in it names the budget."""
    from contextlib import aclosing

    from .errors import BadRequest, ServerError

    try:
        async with aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk
    except (BadRequest, ServerError) as exc:
        said = over_the_window(str(exc), budget, sum(len(m.content) for m in messages))
        if said is None:
            raise
        raise type(exc)(f"{exc}; {said}", provider=exc.provider, status=exc.status) from exc


_CONTEXT = Source("context", "{name} is not in context; give context={{'{name}': ...}}")


def fill(template: str, values: Mapping[str, Any], budget: int | Budget = DEFAULT_BUDGET) -> Described:
    """`template.format(**values)` with each value described (`{df}` -> its description, `{fig}` ->
    an image); a field with a format spec or conversion (`{x:.2f}`, `{s!r}`) is formatted as usual.
    The fields are `%%farm_chat`'s (`farm_jupyter.fields`): looked up, never evaluated."""
    collector = Collector(budget)
    formatter = FieldFormatter(values, "the prompt", collector, _CONTEXT)
    return Described(formatter.vformat(template, (), {}), collector.images)


def attach(
    prompt: str, context: Mapping[str, Any] | None, images: Sequence[Any], budget: int | Budget | None
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
