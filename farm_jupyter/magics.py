"""The notebook face: `%%farm_chat` and `%farm <subcommand>`.

    %load_ext farm_jupyter
    %%farm_chat -m ollama:llama3.1
    Explain this traceback: {err}

Loading is instant: this module imports only IPython, traitlets and the standard library at the
top; the session (pydantic, httpx, the providers) is imported inside a magic on first use.

Rendering: an answer streams into one `display(..., display_id=True)` output, updated at most
`update_rate` times a second whatever the token rate. When the answer is complete the cell's
outputs are cleared (`clear_output(wait=True)`: the frontend drops them as the next output comes)
and the answer is shown as a fresh display (markdown and `text/plain`) with a one-line footer
below it, so headless runs (nbval, nbclient) and saved notebooks hold the answer once, and no
empty output. A cell that does more than the magic (prints, a loop of `run_cell_magic`) is not
cleared: its answers are shown when complete. An answer from another model than the one asked
has one line above it that says so (`ollama was not reachable: answered by openai:gpt-4o-mini`).
A terminal IPython, which cannot update an output in place, gets the text printed as it comes.

Errors: misuse (bad option, unknown subcommand or provider, empty prompt, a `{name}` that is not
defined) raises IPython's `UsageError` itself; a provider failure after every fallback raises the
router's `FarmError`, shown as one line. Ctrl-C stops the request, keeps the partial answer on
screen marked "(stopped)", commits nothing to the conversation, and fails the cell with a
one-line `Stopped` (a KeyboardInterrupt), so that "Run All" stops there as it would for any cell.
"""

from __future__ import annotations

import atexit
import html
import json
import os
import queue
import re
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Float, Int, TraitError, Unicode, observe, validate

from .context import DEFAULT_BUDGET, Collector  # standard library only, like this module

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .sessions import ChatStream, Session
    from .types import ChatResponse, Chunk

__all__ = ["FarmMagics", "Stopped", "Table", "interpolate", "load", "unload"]

FORMATS = ("markdown", "text", "code", "json")
CACHE_BACKENDS = ("", "memory", "disk", "redis", "none")
_CANCEL_GRACE = 5.0
_HEALTH_WAIT = 30.0


# -- errors ---------------------------------------------------------------------------------------


class Stopped(KeyboardInterrupt):
    """Ctrl-C during an answer: the partial text stays on screen; the cell fails with one line."""

    def _render_traceback_(self) -> list[str]:
        return [f"Stopped: {self}"]


# -- a small table that is HTML in a notebook and aligned text elsewhere ---------------------------


class Table:
    """Rows under headers: `_repr_html_` for notebooks, aligned columns for `text/plain`."""

    def __init__(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
        caption: str | None = None,
    ) -> None:
        self.headers = list(headers)
        self.rows = [[_cell(v) for v in row] for row in rows]
        self.title = title
        self.caption = caption

    def column(self, name: str) -> list[str]:
        i = self.headers.index(name)
        return [row[i] for row in self.rows]

    def to_dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.headers, row, strict=False)) for row in self.rows]

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th style='text-align:left'>{esc(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{esc(v)}</td>" for v in row) + "</tr>"
            for row in self.rows
        )
        title = f"<caption style='caption-side:top;text-align:left'><b>{esc(self.title)}</b></caption>" if self.title else ""
        table = f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        if self.caption:
            table += f"<div style='font-size:85%;opacity:.75'>{esc(self.caption)}</div>"
        return table

    def __repr__(self) -> str:
        lines = [self.title] if self.title else []
        if self.headers:
            widths = [len(h) for h in self.headers]
            for row in self.rows:
                for i, v in enumerate(row):
                    widths[i] = max(widths[i], len(v))
            lines.append("  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=False)).rstrip())
            lines.append("  ".join("-" * w for w in widths))
            for row in self.rows:
                lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())
        if self.caption:
            lines.append(self.caption)
        return "\n".join(lines)

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self.rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("\n", " ")


def _size(n: int | None) -> str:
    from ._format import human_bytes

    return human_bytes(n) if n else ""


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}s"


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- {name} interpolation, without eval -----------------------------------------------------------

_RAW_HINT = "or %%farm_chat --raw to send the cell as written"


class _PromptFormatter(string.Formatter):
    """`str.format` field lookup over the user namespace: names, `.attr`, `[key]`; no eval.

    Errors quote each field exactly as the user wrote it (`{"a": 1}`, not the `{"a"}` that
    str.format's parser leaves of it) and name the text it is in (`what`: the prompt or the
    system text). `parse` finds each field's source span with the same brace counting as
    CPython's parser; a stack keeps the outer field's text while a nested one (`{x:{w}}`) runs.
    """

    def __init__(self, namespace: Mapping[str, Any], what: str, collector: Collector | None = None) -> None:
        self.namespace = namespace
        self.what = what
        self.collector = collector  # describes {df}, {fig}, ... (farm_jupyter.context)
        self._written: list[str] = []
        self._names: list[str] = []

    def parse(self, format_string: str) -> Iterator[tuple[str, str | None, str | None, str | None]]:  # type: ignore[override]
        spans = iter(_field_texts(format_string))
        for literal, field, spec, conversion in super().parse(format_string):
            if field is not None:
                self._written.append(next(spans, "{" + field + "}"))
            yield literal, field, spec, conversion

    @property
    def written(self) -> str:
        return self._written[-1] if self._written else "{}"

    def _error(self, problem: str) -> UsageError:
        return UsageError(f"{self.what} uses {self.written}{problem}")

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        literal = "{" + self.written + "}"
        try:
            first, rest = _formatter_field_name_split(field_name)
        except ValueError as exc:
            raise self._error(f", which is not a name: {exc}; write {literal} for literal braces, {_RAW_HINT}") from None
        if isinstance(first, int) or first == "":
            raise self._error(f" with no name; write {literal} for literal braces, {_RAW_HINT}")
        if not first.isidentifier():
            raise self._error(f", which is not a name from the notebook; write {literal} for literal braces, {_RAW_HINT}")
        if first not in self.namespace:
            raise self._error(f", but {first} is not defined in the notebook; define it or write {literal} for literal braces")
        obj = self.namespace[first]
        path = first
        self._names.append(first)
        for is_attr, key in rest:
            if is_attr:
                if not key or key.startswith("_"):
                    raise self._error(f": attributes starting with '_' are not looked up; write {literal} for literal braces")
                try:
                    obj = getattr(obj, key)
                except Exception as exc:  # noqa: BLE001 - any lookup failure is the user's to fix
                    raise self._error(f", but {path} has no attribute {key!r} ({type(exc).__name__})") from None
                path += "." + key
            else:
                key = _index_key(key, obj)
                try:
                    obj = obj[key]
                except Exception as exc:  # noqa: BLE001
                    raise self._error(f", but {path} has no item {key!r} ({type(exc).__name__})") from None
                path += f"[{key!r}]"
        return obj, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        try:
            return super().convert_field(value, conversion)
        except Exception as exc:  # noqa: BLE001
            raise self._error(f", which failed: {type(exc).__name__}: {exc}") from None

    def format_field(self, value: Any, format_spec: str) -> Any:
        try:
            if self.collector is not None and not format_spec:
                return self.collector(value, self._names[-1] if self._names else None)
            return super().format_field(value, format_spec)
        except Exception as exc:  # noqa: BLE001
            raise self._error(f", which failed: {type(exc).__name__}: {exc}") from None
        finally:
            if self._written:  # the field is done: an enclosing one is current again
                self._written.pop()


def _field_texts(template: str) -> list[str]:
    """Each top-level `{...}` field of `template` as written, in order; `{{` and `}}` skipped.

    The scan of CPython's format parser (`parse_field` in unicode_format.h): the name runs to
    `}`, `:` or `!`, skipping `[...]`; `!` takes one character; a format spec ends at the `}`
    that balances its `{`. Where that parser fails, this stops; `str.format` reports the problem.
    """
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c in "{}" and template[i + 1 : i + 2] == c:
            i += 2
            continue
        if c != "{":
            i += 1
            continue
        end = _field_end(template, i + 1)
        if end is None:
            break
        out.append(template[i:end])
        i = end
    return out


def _field_end(t: str, i: int) -> int | None:
    """Where the field whose name starts at `i` ends (just past its `}`); None if malformed."""
    n = len(t)
    c = ""
    while i < n:
        c, i = t[i], i + 1
        if c == "[":
            while i < n and t[i] != "]":
                i += 1
        elif c == "}":
            return i
        elif c in ":!":
            break
        elif c == "{":
            return None
    else:
        return None
    if c == "!":
        if i + 1 >= n:
            return None
        c, i = t[i + 1], i + 2  # the conversion character, then `}` or `:`
        if c == "}":
            return i
        if c != ":":
            return None
    depth = 1
    while i < n:
        c, i = t[i], i + 1
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


_QUOTED = re.compile(r"""(['"])(.*)\1""", re.S)


def _index_key(key: Any, obj: Any) -> Any:
    """`d['k']` and `d["k"]` look up the string k (str.format would look up "'k'" with its
    quotes); `d[0]` an int (str.format's own rule); `items[-1]` an int where obj is no mapping."""
    if not isinstance(key, str):
        return key
    quoted = _QUOTED.fullmatch(key)
    if quoted:
        return quoted.group(2)
    if re.fullmatch(r"-\d+", key) and not isinstance(obj, Mapping):
        return int(key)
    return key


def _formatter_field_name_split(field_name: str) -> tuple[Any, Iterator[tuple[bool, Any]]]:
    import _string

    first, rest = _string.formatter_field_name_split(field_name)
    return first, iter(list(rest))  # parse all of it now, so a malformed key fails here


def interpolate(template: str, namespace: Mapping[str, Any], *, what: str = "prompt", collector: Collector | None = None) -> str:
    """Fill `{name}`, `{obj.attr}`, `{d[key]}`, `{Out[3]}` from `namespace`, like `str.format`.

    With a `collector`, a field without a format spec or conversion is the object's description
    for a model (a DataFrame's shape, dtypes and first rows; a figure's stand-in, its image kept by
    the collector); `{x!s}` is plain `str(x)` as before.

    Nothing is evaluated: a field is a name followed by attribute and index lookups (`d['k']`
    and `d["k"]` look up the string k), with an optional `!r`/`!s` conversion and a format spec.
    `{{` and `}}` are literal braces. Any problem is a one-line `UsageError` that quotes the
    field as written and names `what` holds it ("prompt", "system text (-s)").
    """
    formatter = _PromptFormatter(namespace, what, collector)
    try:
        return formatter.vformat(template, (), {})
    except UsageError:
        raise
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{what} has a brace problem ({exc}); write {{{{ and }}}} for literal braces, {_RAW_HINT}"
        ) from None
    except RecursionError:
        raise UsageError(f"{what} nests format fields too deeply; {_RAW_HINT}") from None


# -- answers -> what is shown ---------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
_PYTHONISH = {"", "python", "py", "python3", "ipython", "ipython3", "pycon"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown answer, as (language, code)."""
    return [(m.group(2).lower(), m.group(3).rstrip("\n")) for m in _FENCE.finditer(text)]


def extract_code(text: str) -> str:
    """The code to put in a new cell: the Python blocks joined, else every block, else the text."""
    blocks = code_blocks(text)
    if not blocks:
        return text.strip()
    python = [code for lang, code in blocks if lang in _PYTHONISH]
    return "\n\n".join(python or [code for _, code in blocks])


def parse_json(text: str) -> Any:
    """The answer as JSON, also when the model wrapped it in a ```json fence; ValueError if not."""
    try:
        return json.loads(text)
    except ValueError as first:
        for _, code in code_blocks(text):
            try:
                return json.loads(code)
            except ValueError:
                continue
        raise first


def _markdown_html(text: str) -> str:
    from ._markdown import render  # the widgets' renderer (tables, highlighted code), without ipywidgets

    return render(text)


def _notice_bundle(line: str) -> dict[str, str]:
    """The line above an answer that came from another model than the one asked."""
    return {
        "text/html": f"<div style='color:#9a6700'>&#9888; {html.escape(line)}</div>",
        "text/plain": line,
    }


def thinking_markdown(text: str, *, done: bool = True) -> str:
    """The model's reasoning folded away (`<details>`), open while it is the only thing coming."""
    words = len(text.split())
    return (f"<details{'' if done else ' open'}><summary>thinking ({words} word{'s' if words != 1 else ''})</summary>\n\n"
            f"{html.escape(text)}\n\n</details>\n\n")


def thinking_bundle(text: str) -> dict[str, str]:
    """Reasoning shown folded under its answer's notice; plain text readers get it whole, marked."""
    words = len(text.split())
    return {
        "text/html": f"<details><summary>thinking ({words} word{'s' if words != 1 else ''})</summary>"
                     f"<div style='white-space:pre-wrap;opacity:.7'>{html.escape(text)}</div></details>",
        "text/plain": f"[thinking] {text}",
    }


def tool_runs_bundle(lines: Sequence[str]) -> dict[str, str]:
    return {
        "text/html": "<div style='font-family:monospace;font-size:90%'>"
                     + "<br>".join(f"&#128295; {html.escape(line)}" for line in lines) + "</div>",
        "text/plain": "\n".join(f"[tool] {line}" for line in lines),
    }


def _here(stream: ChatStream) -> Generator[_Item | None, None, None]:
    """`_drive`'s items for one stream iterated in this thread (its steps run the user's code)."""
    chunks = iter(stream)
    try:
        try:
            for chunk in chunks:
                yield 0, chunk, None
        except Exception as exc:  # noqa: BLE001 - handed over as _drive hands it
            yield 0, None, exc
            return
        yield 0, None, _DONE
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _footer_bundle(line: str) -> dict[str, str]:
    return {
        "text/html": f"<div style='font-size:85%;opacity:.7'>{html.escape(line)}</div>",
        "text/plain": line,
    }


# -- driving streams on the runtime loop ----------------------------------------------------------

_DONE = object()


_Item = tuple[int, "Chunk | None", "BaseException | object | None"]


def _drive(session: Session, streams: Sequence[ChatStream], tick: float) -> Generator[_Item | None, None, None]:
    """Run the streams concurrently on the session's loop; yield (index, chunk, end) here.

    `end` is None for a chunk, `_DONE` when that stream finished, or its exception. A `None`
    item is a tick: nothing arrived for `tick` seconds (the renderer flushes then). Closing the
    generator (break, Ctrl-C) cancels every stream and waits for them to close their requests.
    """
    import asyncio
    from contextlib import aclosing

    items: queue.SimpleQueue[tuple[int, Any, Any]] = queue.SimpleQueue()

    async def one(i: int, stream: ChatStream) -> None:
        try:
            async with aclosing(stream.__aiter__()) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    items.put((i, chunk, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            items.put((i, None, exc))
        else:
            items.put((i, None, _DONE))

    async def main() -> None:
        try:
            await asyncio.gather(*(one(i, s) for i, s in enumerate(streams)))
        finally:
            finished.set()

    finished = threading.Event()
    future = session.runtime.submit(main())
    try:
        remaining = len(streams)
        while remaining:
            try:
                item = items.get(timeout=tick)
            except queue.Empty:
                yield None
                continue
            if item[2] is not None:
                remaining -= 1
            yield item
    finally:
        if not future.done():
            future.cancel()
            finished.wait(_CANCEL_GRACE)


class _Live:
    """One output updated in place, at most `rate` times a second; gone when done.

    `close()` clears the cell's outputs with `wait=True`: the frontend (JupyterLab, nbclient)
    drops them when the next output arrives (the final answer, or the error), so the saved
    notebook holds the answer once and no empty output. Blanking the live output instead left a
    `text/plain: ''` output in every saved notebook; there is no message that removes one output.
    The magic streams live only when it owns the cell (`FarmMagics._owns_cell`).
    """

    def __init__(self, enabled: bool, rate: float, initial: dict[str, Any]) -> None:
        self.gap = 1.0 / rate
        self.last = 0.0
        self.dirty = False
        self.updates = 0
        self.handle = display(initial, raw=True, display_id=True) if enabled else None

    def offer(self, bundle: Callable[[], dict[str, Any]], force: bool = False) -> None:
        self.dirty = True
        now = time.monotonic()
        if self.handle is not None and (force or now - self.last >= self.gap):
            self.handle.update(bundle(), raw=True)
            self.updates += 1
            self.last = now
            self.dirty = False

    def flush(self, bundle: Callable[[], dict[str, Any]]) -> None:
        if self.dirty:
            self.offer(bundle, force=True)

    def close(self) -> None:
        if self.handle is not None:
            from IPython.display import clear_output

            clear_output(wait=True)
            self.handle = None


# -- the magics -----------------------------------------------------------------------------------

_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "help": ("", "this list"),
    "models": ("[PROVIDER]", "the models each provider has (or one provider's)"),
    "use": ("[TARGET]", "set the session's default model (provider:model, provider, model or alias); no argument shows it"),
    "health": ("[PROVIDER ...]", "is each provider reachable: state, latency, loaded models"),
    "gpu": ("", "GPU memory, utilisation, temperature and processes"),
    "stats": ("", "per-model requests, latency p50/p95, time to first token, tokens/s, cache hits"),
    "usage": ("", "tokens in and out, cache savings and cost per model ([prices], [budget] in farm.toml)"),
    "history": ("", "the turns of the conversation that %%farm_chat cells form"),
    "reset": ("", "start a new conversation"),
    "cache": ("[info|clear]", "the response cache: its state, or empty it"),
    "config": ("", "the settings in effect (secrets masked) and where they came from"),
    "pull": ("MODEL", "download (Ollama) and load a model, with a progress bar: the same as load"),
    "load": ("MODEL", "pull if needed and load a model into memory"),
    "unload": ("MODEL", "free a model's memory"),
    "reload": ("MODEL", "unload, then load a model again"),
    "alias": ("[NAME TARGET]", "name a target (%farm alias fast ollama:qwen2.5:0.5b); no argument lists aliases"),
    "unalias": ("NAME", "remove an alias"),
    "error": ("[MODEL]", "ask a model (the default one) to explain the last exception"),
    "ollama": ("start|stop", "run `ollama serve` in the background (and pull the auto_pull models), or stop it"),
    "dashboard": ("", "the health, GPU and stats widgets in one panel"),
}


@magics_class
class FarmMagics(Magics):
    """`%%farm_chat` and `%farm`; the settings below go in `ipython_config.py` as `c.FarmMagics.x`."""

    default_model = Unicode(
        "", help="Default target for %%farm_chat (provider:model, provider, model or alias); '' = from farm.toml/env."
    ).tag(config=True)
    max_history = Int(0, help="Conversation turns sent with each %%farm_chat; 0 = from settings (max_history).").tag(config=True)
    update_rate = Float(20.0, help="Most screen updates per second while an answer streams.").tag(config=True)
    cache_backend = Unicode("", help="Response cache: memory, disk, redis or none; '' = from settings.").tag(config=True)

    @validate("update_rate")
    def _valid_rate(self, proposal: Any) -> float:
        rate = float(proposal["value"])
        if not 0 < rate <= 1000:
            raise TraitError(f"update_rate must be within (0, 1000] updates a second, got {rate}")
        return rate

    @validate("cache_backend")
    def _valid_backend(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip().lower()
        if value not in CACHE_BACKENDS:
            raise TraitError(f"cache_backend must be one of memory, disk, redis, none (or ''), got {value!r}")
        current = self._existing_session()
        if current is not None and value and value != current.cache.name:
            raise TraitError(
                "cache_backend is read when the kernel's session is made: set it in ipython_config.py "
                "or FARM_CACHE and restart the kernel"
            )
        return value

    @observe("default_model", "max_history")
    def _apply_to_session(self, change: Any) -> None:
        """`%config FarmMagics.x = ...` after the first answer still takes effect."""
        current = self._existing_session()
        if current is None:
            return  # applied when the session is made
        if change["name"] == "max_history" and self.max_history:
            current.conversation.max_turns = self.max_history
        elif change["name"] == "default_model":
            from .errors import FarmError

            try:
                current.use(self.default_model or None)
            except FarmError as exc:
                raise TraitError(str(exc)) from None

    @staticmethod
    def _existing_session() -> Session | None:
        from .sessions import current

        return current()

    @validate("max_history")
    def _valid_history(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise TraitError(f"max_history must be >= 0, got {value}")
        return value

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._lock = threading.Lock()
        self._configured: weakref.WeakSet[Session] = weakref.WeakSet()
        self._cell_id: str | None = None
        self._cell_source: str | None = None
        self._ollama: subprocess.Popen[bytes] | None = None
        self._ollama_log: str | None = None
        self._dashboard: Any = None
        self.last_updates = 0  # display updates of the last answer (coalescing is tested on it)

    # -- plumbing ---------------------------------------------------------------------------------

    def _pre_run_cell(self, info: Any) -> None:
        self._cell_id = getattr(info, "cell_id", None)
        self._cell_source = getattr(info, "raw_cell", None)

    def _post_run_cell(self, result: Any) -> None:
        self._cell_id = None
        self._cell_source = None

    def _owns_cell(self, magic: str) -> bool:
        """Is the running cell this magic alone, so that clearing its outputs loses nothing else?

        A live answer ends by clearing the cell's outputs (see `_Live`); a cell that also prints
        or loops over `run_cell_magic` keeps its outputs, and its answers are shown when complete.
        Called outside a cell (a script, a test) there is nothing else to keep.
        """
        source = self._cell_source
        if source is None:
            return True
        if magic.startswith("%%"):
            return source.lstrip().startswith(magic)
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return len(lines) == 1 and lines[0].lstrip().startswith(magic)

    def current_cell_id(self) -> str | None:
        """The frontend's id of the running cell: IPython's ExecutionInfo, else ipykernel's header."""
        if self._cell_id:
            return str(self._cell_id)
        parent = getattr(self.shell, "parent_header", None)
        if isinstance(parent, Mapping):
            meta = parent.get("metadata")
            if isinstance(meta, Mapping) and meta.get("cellId"):
                return str(meta["cellId"])
        return None

    def session(self) -> Session:
        """The kernel's session; made with this class's traitlets when this is the first use."""
        from . import sessions

        with self._lock:
            if sessions.current() is None:
                overrides: dict[str, Any] = {}
                if self.cache_backend:
                    overrides["cache"] = {"backend": self.cache_backend}
                if self.max_history:
                    overrides["max_history"] = self.max_history
                sessions.set_session(sessions.Session(config=overrides or None))
            current = sessions.session()
            if current not in self._configured:
                self._configured.add(current)
                if self.max_history:
                    current.conversation.max_turns = self.max_history
                if self.default_model and current.router.default_target is None:
                    current.use(self.default_model)
            return current

    @property
    def ip(self) -> InteractiveShell:
        assert self.shell is not None, "FarmMagics is used through a shell"
        return self.shell

    def _live(self) -> bool:
        """Can this frontend update an output in place? A terminal's plain publisher cannot."""
        pub = getattr(self.shell, "display_pub", None)
        return pub is not None and type(pub) is not DisplayPublisher

    def _check_target(self, session: Session, target: str | None) -> str:
        """Resolve a target now so that an unknown provider is a UsageError, not a failed request."""
        from .errors import FarmError

        try:
            return str(session.router.resolve(target, fallback=False)[0])
        except FarmError as exc:
            raise UsageError(str(exc)) from None

    def _check_provider(self, session: Session, name: str) -> None:
        from .providers import available, is_known

        if not (is_known(name) or name in session.router.providers):
            known = sorted(set(available()) | set(session.router.providers))
            raise UsageError(f"no provider named {name!r}: use one of {', '.join(known)}")

    # -- %%farm_chat ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("-m", "--model", metavar="TARGET", help="provider:model, a model of the default provider, or an alias")
    @argument("-p", "--provider", metavar="NAME", help="the provider (ollama, openai, huggingface, or a registered one)")
    @argument("-t", "--temperature", type=float, metavar="T", help="sampling temperature, 0 to 2")
    @argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    @argument("-s", "--system", metavar="TEXT", help="a system prompt for this request ({name} works here too)")
    @argument("-f", "--format", default="markdown", choices=FORMATS,
              help="markdown (default), text, code (the answer's code goes into a new cell below) or json")
    @argument("-o", "--out", metavar="NAME", help="store the response object (ChatResponse) in this variable")
    @argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    @argument("--refresh", action="store_true", help="ask again even if cached, and cache the new answer")
    @argument("--no-fallback", action="store_true",
              help="exactly the model named, or an error: never another provider (fallback = false in farm.toml)")
    @argument("--new", action="store_true", help="start a new conversation before this question")
    @argument("--no-stream", action="store_true", help="show the answer only when it is complete")
    @argument("--raw", action="store_true", help="send the cell as written: no {name} interpolation")
    @argument("--compare", metavar="A,B,...", help="ask several models at once, side by side, with TTFT, total time and tokens/s")
    @argument("--context-budget", type=int, metavar="TOKENS",
              help=f"most tokens for each {{object}} described in the prompt (a DataFrame's first rows); default {DEFAULT_BUDGET}")
    @argument("--schema", metavar="NAME", help="a pydantic model or JSON Schema from the notebook: the answer is validated "
              "(asked again when it does not match) and stored parsed in -o's response.parsed; implies -f json")
    @argument("--tools", metavar="FN1,FN2", help="notebook functions the model may call; each call shows with its result")
    @argument("--think", nargs="?", const=True, default=None, metavar="LEVEL",
              help="ask for the model's reasoning (low, medium or high where the model takes a level); shown folded")
    @no_var_expand  # IPython would eval `{expr}` in the line; we interpolate without eval
    @cell_magic
    def farm_chat(self, line: str, cell: str) -> None:
        """Ask a language model; the cell is the prompt, and the answer streams below it.

        Consecutive %%farm_chat cells form one conversation (re-running a cell replaces its
        turn; --new starts over). The prompt may use {name}, {obj.attr}, {d[key]}, {Out[3]} and
        {In[3]} from the notebook (looked up, never evaluated); write {{ and }} for literal
        braces, or use --raw. The answer stays as markdown and text/plain output, with a footer:
        provider:model, time, tokens, and "cached" / "fell back from ..." when so.

        Examples::

            %%farm_chat -m ollama:llama3.1 -t 0.2
            Summarise this table: {df.head()}

            %%farm_chat --compare ollama:llama3.1,openai:gpt-4o-mini
            Write a haiku about {topic}.

        Settings (ipython_config.py, or %config FarmMagics.x = ...): default_model,
        max_history, update_rate, cache_backend. More commands: %farm help.
        """
        try:  # shell quoting (-s "Be terse."), which IPython's own arg_split keeps on the value
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse the options {line!r}: {exc}") from None
        args = self.farm_chat.parser.parse_args(argv)
        ns = self.shell.user_ns if self.shell is not None else {}
        if args.context_budget is not None and args.context_budget < 1:
            raise UsageError(f"--context-budget must be a positive number of tokens, got {args.context_budget}")
        collector = Collector(args.context_budget or DEFAULT_BUDGET)
        prompt = (cell if args.raw else interpolate(cell, ns, collector=collector)).strip("\r\n").rstrip()
        if not prompt.strip():
            raise UsageError("the prompt is empty: write the question in the cell, below %%farm_chat")
        system = None
        if args.system is not None:
            system = args.system if args.raw else interpolate(args.system, ns, what="system text (-s)", collector=collector)
        asking = self._asking(args, ns)
        if collector.images:
            asking["images"] = collector.images
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"-o/--out needs a variable name, got {args.out!r}")
        params: dict[str, Any] = {}
        if args.temperature is not None:
            if not 0.0 <= args.temperature <= 2.0:
                raise UsageError(f"-t/--temperature must be between 0 and 2, got {args.temperature}")
            params["temperature"] = args.temperature
        if args.max_tokens is not None:
            if args.max_tokens <= 0:
                raise UsageError(f"--max-tokens must be a positive number, got {args.max_tokens}")
            params["max_tokens"] = args.max_tokens
        if args.format == "json":
            params["format"] = "json"
        if args.no_cache and args.refresh:
            raise UsageError("--no-cache and --refresh exclude each other: --refresh asks again and caches the answer")

        session = self.session()
        if args.provider:
            self._check_provider(session, args.provider)
        if args.compare is not None:
            if args.model or args.provider:
                raise UsageError("--compare names its models itself; drop -m/-p")
            if args.new:
                raise UsageError("--compare is not a conversation turn, so --new has nothing to reset; drop it")
            if args.format in ("code", "json"):
                raise UsageError(f"-f {args.format} works with one model; use -f markdown or -f text with --compare")
            if args.schema or args.tools:
                raise UsageError("--schema and --tools work with one model; drop --compare")
            targets = [t.strip() for t in args.compare.split(",") if t.strip()]
            if not targets:
                raise UsageError("--compare needs models separated by commas, e.g. --compare ollama:llama3.1,openai:gpt-4o-mini")
            self._compare(session, targets, prompt, system, {**params, **asking}, args)
            return None

        target = self._target(session, args.model, args.provider)
        address = self._check_target(session, target)
        if args.new:
            session.conversation.reset()
        stream = session.stream(
            prompt, target, system=system, conversation=session.conversation, turn_id=self.current_cell_id(),
            no_cache=args.no_cache, refresh=args.refresh, fallback=False if args.no_fallback else None, **params,
            **asking,
        )
        self._answer(session, stream, address, fmt=args.format, live=not args.no_stream, out=args.out,
                     owned=self._owns_cell("%%farm_chat"))
        return None

    @staticmethod
    def _asking(args: Any, ns: Mapping[str, Any]) -> dict[str, Any]:
        """--schema, --tools and --think as Session.stream's keywords; names looked up, never evaluated."""
        asking: dict[str, Any] = {}
        if args.schema is not None:
            if args.format not in ("json", "markdown"):
                raise UsageError(f"--schema answers JSON; drop -f {args.format} (or write -f json)")
            args.format = "json"
            if args.schema not in ns:
                raise UsageError(f"--schema {args.schema}: no such name in the notebook; define the pydantic model or JSON Schema first")
            asking["schema"] = ns[args.schema]
        if args.tools is not None:
            names = [n.strip() for n in args.tools.split(",") if n.strip()]
            if not names:
                raise UsageError("--tools needs function names separated by commas, e.g. --tools get_weather,lookup")
            tools = []
            for name in names:
                fn = ns.get(name)
                if not callable(fn):
                    said = "is not defined in the notebook" if fn is None else f"is a {type(fn).__name__}, not a function"
                    raise UsageError(f"--tools {name}: {name} {said}; define it with def first")
                tools.append(fn)
            asking["tools"] = tools
        if args.think is not None:
            if args.think is not True and args.think not in ("low", "medium", "high"):
                raise UsageError(f"--think takes no value or one of low, medium, high; got {args.think!r}")
            asking["think"] = args.think
        if args.context_budget is not None:
            asking["context_budget"] = args.context_budget
        return asking

    @staticmethod
    def _target(session: Session, model: str | None, provider: str | None) -> str | None:
        if not (provider and model):
            return provider or model or None
        from .providers import canonical, is_known

        expanded = session.router.expand_alias(model)  # `-p ollama -m fast` with fast an alias
        head, sep, _ = expanded.partition(":")
        if sep and is_known(head):
            if canonical(head) != canonical(provider):
                raise UsageError(f"-m {model} names provider {head!r}, but -p says {provider!r}: drop one of them")
            return expanded
        return f"{provider}:{expanded}"

    def _answer(
        self, session: Session, stream: ChatStream, address: str, *, fmt: str = "markdown",
        live: bool = True, out: str | None = None, owned: bool = True,
    ) -> ChatResponse:
        """Stream one answer to the screen; show the final answer and its footer; return it.

        A fallback's notice (`ollama was not reachable: answered by openai:gpt-4o-mini`) is one
        line above the answer: in the live output as soon as the stream says it, then as its
        own output above the final answer, so text/plain readers (nbval, saved notebooks) see it.
        """

        rich = self._live()
        parts: list[str] = []
        thinking: list[str] = []
        runs: list[str] = []  # tool calls, one line each, as they run
        note: list[str | None] = [None]
        notice: list[str | None] = [None]
        printed: list[str | None] = [None]  # the notice a terminal has printed

        def bundle() -> dict[str, Any]:
            text = "".join(parts)
            head = f"*&#9888; {notice[0]}*\n\n" if notice[0] else ""
            head += thinking_markdown("".join(thinking), done=bool(text)) if thinking else ""
            head += "".join(f"- `{html.escape(r)}`\n" for r in runs) + ("\n" if runs else "")
            md = head + text + (f"\n\n*{note[0]}*" if note[0] else "")
            plain = (f"{notice[0]}\n\n" if notice[0] else "") + "".join(f"{r}\n" for r in runs) + text
            return {"text/markdown": md if md.strip() else f"*asking {address}…*", "text/plain": plain}

        screen = _Live(rich and live and owned, self.update_rate, {"text/markdown": f"*asking {address}…*", "text/plain": ""})
        echo = live and not rich  # a terminal: print the text as it comes
        response: ChatResponse | None = None
        start = time.perf_counter()
        # Tools and schemas run the user's code between requests: in this thread, so iterate here.
        items = _here(stream) if stream.runs_here else _drive(session, [stream], tick=1.0 / self.update_rate)
        try:
            for item in items:
                if item is None:
                    screen.flush(bundle)
                    continue
                _, chunk, end = item
                if end is _DONE:
                    break
                if isinstance(end, BaseException):
                    raise end
                assert chunk is not None
                if chunk.thinking:
                    thinking.append(chunk.thinking)
                if chunk.tool_run is not None:
                    runs.append(chunk.tool_run.line())
                    if echo:
                        print(f"[tool] {runs[-1]}", flush=True)
                if chunk.restart:
                    parts.clear()
                    thinking.clear()
                    note[0] = chunk.status or "the answer was cut: starting over"
                    if echo:
                        print(f"\n[{note[0]}]", flush=True)
                elif chunk.status:
                    note[0] = chunk.status
                if chunk.notice:
                    notice[0] = chunk.notice
                if chunk.text:
                    parts.append(chunk.text)
                    note[0] = None
                    if echo:
                        # The router says the notice before each try of the fallback: print it
                        # once, when that model's text comes (a try that fails shows nothing).
                        if notice[0] and notice[0] != printed[0]:
                            print(notice[0], flush=True)
                            printed[0] = notice[0]
                        sys.stdout.write(chunk.text)
                        sys.stdout.flush()
                if chunk.response is not None:
                    response = chunk.response
                screen.offer(bundle)
        except KeyboardInterrupt:
            items.close()  # cancels the request and waits for it to close
            screen.close()
            if stream.response is not None:
                # The answer finished (and joined the conversation) just before Ctrl-C reached us:
                # show it as the complete answer it is, rather than as stopped.
                response = stream.response
            else:
                self._stopped(parts, address, start, echo=echo, out=out, notice=notice[0])
        finally:
            items.close()
            screen.close()
        if response is None:  # pragma: no cover - a stream always ends with its response
            raise RuntimeError("the stream ended without a response")
        self.last_updates = screen.updates
        if out:
            self.ip.user_ns[out] = response
        line = response.notice or notice[0]
        if line and not echo:
            display(_notice_bundle(line), raw=True)
        elif line and echo and line != printed[0]:  # not printed with the text: say it before the footer
            print(f"\n{line}", flush=True)
        if not echo:
            if response.thinking:
                display(thinking_bundle(response.thinking), raw=True)
            if response.tool_runs:
                display(tool_runs_bundle([r.line() for r in response.tool_runs]), raw=True)
        extra = self._finish(response, fmt, echo=echo)
        footer = response.footer() + (f" · {extra}" if extra else "")
        if echo:
            print(f"\n{footer}", flush=True)
        else:
            display(_footer_bundle(footer), raw=True)
        return response

    def _stopped(self, parts: list[str], address: str, start: float, *, echo: bool, out: str | None,
                 notice: str | None = None) -> None:
        """Ctrl-C: keep the partial text on screen, marked, out of the conversation; fail the cell."""
        from .types import ChatResponse, Timings

        target, _, model = address.partition(":")
        stopped = ChatResponse(
            text="".join(parts), provider=target, model=model, stopped=True,
            timings=Timings(total=time.perf_counter() - start), notice=notice,
        )
        if echo:
            print(f"\n(stopped)\n{stopped.footer()}", flush=True)
        else:
            if notice:
                display(_notice_bundle(notice), raw=True)
            self._show_text(stopped.text, "markdown", stopped=True)
            display(_footer_bundle(stopped.footer()), raw=True)
        if out:
            self.ip.user_ns[out] = stopped
        raise Stopped(f"the answer was stopped after {len(stopped.text)} characters; it was not added to the conversation") from None

    def _show_text(self, text: str, fmt: str, *, stopped: bool = False) -> None:
        mark = "\n\n(stopped)" if stopped else ""
        if fmt == "text":
            display({"text/plain": text + mark}, raw=True)
        else:
            display({"text/markdown": text + ("\n\n*(stopped)*" if stopped else ""), "text/plain": text + mark}, raw=True)

    def _finish(self, response: ChatResponse, fmt: str, *, echo: bool) -> str | None:
        """Show the final answer in its format (unless a terminal already printed it)."""
        text = response.text
        if fmt == "code":
            code = extract_code(text)
            if not echo:
                display({"text/markdown": f"```python\n{code}\n```", "text/plain": code}, raw=True)
            self.ip.set_next_input(code, replace=False)
            return "code put in a new cell below"
        if fmt == "json":
            try:
                value = parse_json(text)
            except ValueError as exc:
                if not echo:
                    display({"text/plain": text}, raw=True)
                return f"not valid JSON: {exc}"
            pretty = json.dumps(value, indent=2, ensure_ascii=False)
            if echo:
                print("\n" + pretty)
            else:
                bundle: dict[str, Any] = {"text/plain": pretty}
                if isinstance(value, dict | list):
                    bundle["application/json"] = value
                display(bundle, raw=True)
            return None
        if not echo:
            self._show_text(text, fmt)
        return None

    def _compare(
        self, session: Session, targets: list[str], prompt: str, system: str | None,
        params: dict[str, Any], args: Any,
    ) -> None:
        addresses = [self._check_target(session, t) for t in targets]
        streams = [
            session.stream(prompt, t, system=system, no_cache=args.no_cache, refresh=args.refresh, fallback=False, **params)
            for t in targets
        ]
        n = len(streams)
        parts: list[list[str]] = [[] for _ in range(n)]
        results: list[ChatResponse | BaseException | None] = [None] * n
        notes: list[str | None] = [None] * n
        notices: list[str | None] = [None] * n  # a column answered by another model says so above its text
        text_only = args.format == "text"

        def notice_of(i: int) -> str | None:
            result = results[i]
            if isinstance(result, BaseException):
                return None  # what it announced did not answer either
            return (result.notice if result is not None else None) or notices[i]

        def columns(final: bool) -> str:
            cols = []
            for i, address in enumerate(addresses):
                result = results[i]
                text = result.text if result is not None and not isinstance(result, BaseException) else "".join(parts[i])
                if isinstance(result, BaseException):
                    body = f"<div style='color:#c33'>{html.escape(f'{type(result).__name__}: {result}')}</div>"
                    stats = "failed"
                else:
                    body = f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>" if text_only else _markdown_html(text)
                    stats = result.footer(address=False, first_token=True) if result is not None else (notes[i] or ("waiting…" if not text else "streaming…"))
                line = notice_of(i)
                head = f"<div style='color:#9a6700'>&#9888; {html.escape(line)}</div>" if line else ""
                cols.append(
                    "<div style='flex:1;min-width:0;border:1px solid rgba(128,128,128,.35);border-radius:4px;padding:.5em'>"
                    f"<div><b>{html.escape(address)}</b></div>{head}{body}"
                    f"<div style='font-size:85%;opacity:.7'>{html.escape(stats)}</div></div>"
                )
            return f"<div style='display:flex;gap:.75em;align-items:flex-start'>{''.join(cols)}</div>"

        def plain() -> str:
            sections = []
            for i, address in enumerate(addresses):
                result = results[i]
                if isinstance(result, BaseException):
                    body, stats = f"{type(result).__name__}: {result}", "failed"
                elif result is not None:
                    body, stats = result.text, result.footer(address=False, first_token=True)
                else:
                    body, stats = "".join(parts[i]), notes[i] or ""
                line = notice_of(i)
                sections.append(f"── {address} ──\n" + (f"{line}\n" if line else "") + f"{body}\n[{stats}]")
            return "\n\n".join(sections)

        def bundle() -> dict[str, Any]:
            return {"text/html": columns(False), "text/plain": plain()}

        rich = self._live()
        screen = _Live(rich and not args.no_stream and self._owns_cell("%%farm_chat"), self.update_rate, bundle())
        start = time.perf_counter()
        items = _drive(session, streams, tick=1.0 / self.update_rate)
        try:
            for item in items:
                if item is None:
                    screen.flush(bundle)
                    continue
                i, chunk, end = item
                if isinstance(end, BaseException):
                    results[i] = end
                elif chunk is not None:
                    if chunk.restart:
                        parts[i].clear()
                    if chunk.status:
                        notes[i] = chunk.status
                    if chunk.notice:
                        notices[i] = chunk.notice
                    if chunk.text:
                        parts[i].append(chunk.text)
                        notes[i] = None
                    if chunk.response is not None:
                        results[i] = chunk.response
                screen.offer(bundle)
        except KeyboardInterrupt:
            from .types import ChatResponse, Timings

            items.close()
            screen.close()
            for i, address in enumerate(addresses):
                if results[i] is None:
                    provider, _, model = address.partition(":")
                    results[i] = ChatResponse(text="".join(parts[i]), provider=provider, model=model, stopped=True,
                                              timings=Timings(total=time.perf_counter() - start))
            display({"text/html": columns(True), "text/plain": plain()}, raw=True)
            if args.out:
                self.ip.user_ns[args.out] = self._compare_out(addresses, results)
            raise Stopped("the comparison was stopped; partial answers are shown") from None
        finally:
            items.close()
            screen.close()
        self.last_updates = screen.updates
        display({"text/html": columns(True), "text/plain": plain()}, raw=True)
        if args.out:
            self.ip.user_ns[args.out] = self._compare_out(addresses, results)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures and len(failures) == len(results):
            raise failures[0]

    @staticmethod
    def _compare_out(addresses: list[str], results: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for address, result in zip(addresses, results, strict=True):
            key, k = address, 2
            while key in out:
                key, k = f"{address} #{k}", k + 1
            out[key] = result
        return out

    # -- %farm ------------------------------------------------------------------------------------

    @no_var_expand
    @line_magic
    def farm(self, line: str) -> Any:
        """Manage the models and the session behind %%farm_chat: `%farm help` lists the subcommands.

        %farm models [PROVIDER]     the models each provider has
        %farm use TARGET            set the default model (provider:model, provider, model, alias)
        %farm health                is each provider reachable
        %farm gpu                   GPU memory and utilisation
        %farm stats                 per-model latency, TTFT, tokens/s, cache hits
        %farm history | reset       the conversation of %%farm_chat cells
        %farm cache [info|clear]    the response cache
        %farm config                the settings in effect, secrets masked
        %farm pull|load|unload|reload MODEL
        %farm alias NAME TARGET | unalias NAME
        %farm error                 explain the last exception
        %farm ollama start|stop     run `ollama serve` in the background
        %farm dashboard             the health/GPU/stats widgets
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse %farm {line}: {exc}") from None
        if not words:
            words = ["help"]
        command, rest = words[0].lower(), words[1:]
        if command in ("-h", "--help"):
            command = "help"
        if command not in _SUBCOMMANDS:
            raise UsageError(f"unknown subcommand %farm {words[0]}: try %farm help")
        return getattr(self, f"_farm_{command}")(rest)

    @staticmethod
    def _arity(command: str, rest: list[str], low: int, high: int | None) -> None:
        if len(rest) < low or (high is not None and len(rest) > high):
            usage = _SUBCOMMANDS[command][0]
            raise UsageError(f"usage: %farm {command} {usage}".rstrip())

    def _farm_help(self, rest: list[str]) -> Table:
        rows = [(f"%farm {name} {usage}".rstrip(), about) for name, (usage, about) in _SUBCOMMANDS.items()]
        rows.append(("%%farm_chat [options]", "ask a model; %%farm_chat? lists the options"))
        return Table(["command", "what it does"], rows, title="farm_jupyter magics")

    def _farm_models(self, rest: list[str]) -> Table:
        self._arity("models", rest, 0, 1)
        session = self.session()
        provider = rest[0] if rest else None
        if provider:
            self._check_provider(session, provider)
        headers = ["model", "family", "parameters", "quantization", "size", "loaded"]
        if provider:
            lists: dict[str, Any] = {provider: session.models(provider)}  # a down provider raises its own error
        else:
            lists = session.model_lists()
        where = provider or ", ".join(lists)
        rows: list[tuple[Any, ...]] = []
        down = {name: found for name, found in lists.items() if isinstance(found, BaseException)}
        for found in lists.values():
            if not isinstance(found, BaseException):
                rows += [(m.address, m.family, m.parameter_size, m.quantization, _size(m.size), m.loaded) for m in found]
        if down and not rows:
            return Table(["provider", "error"], [(name, str(exc)) for name, exc in down.items()],
                         title=f"models ({where})", caption="no provider answered: each one's error is above")
        if down:  # the models of those that answered, and one row for each that did not
            headers.append("error")
            rows = [(*row, "") for row in rows]
            rows += [(name, "", "", "", "", "", str(exc)) for name, exc in down.items()]
        return Table(headers, rows, title=f"models ({where})",
                     caption=None if rows else "no models found: %farm pull MODEL")

    def _farm_use(self, rest: list[str]) -> None:
        self._arity("use", rest, 0, 1)
        session = self.session()
        if rest:
            self._check_target(session, rest[0])
            session.use(rest[0])
        print(f"default model: {self._check_target(session, None)}")

    def _farm_health(self, rest: list[str]) -> Table:
        session = self.session()
        for name in rest:
            self._check_provider(session, name)
        statuses = session.health(rest or None)
        rows = [
            (s.provider, s.state, s.url, _seconds(s.latency), ", ".join(s.models_loaded), s.version, s.error)
            for s in statuses
        ]
        return Table(["provider", "state", "url", "latency", "models loaded", "version", "error"], rows, title="provider health")

    def _farm_gpu(self, rest: list[str]) -> Table:
        self._arity("gpu", rest, 0, 0)
        try:
            stats = self.session().gpu()
        except ImportError as exc:
            from .errors import FarmError

            raise FarmError(f"GPU stats are not available ({exc})", hint="pip install \"farm-jupyter[gpu]\"") from None
        rows = [
            (d.index, d.name, f"{_size(d.memory_used)} / {_size(d.memory_total)}",
             None if d.utilization is None else f"{d.utilization:.0f}%",
             None if d.temperature is None else f"{d.temperature:.0f}°C",
             None if d.power is None else f"{d.power:.0f} W", len(d.processes))
            for d in stats.devices
        ]
        ram = ""
        if stats.ram_total:
            ram = f"RAM {_size(stats.ram_used)} / {_size(stats.ram_total)}"
        if stats.cpu_percent is not None:
            ram += f"{' · ' if ram else ''}CPU {stats.cpu_percent:.0f}%"
        caption = ram if stats.devices else f"no GPU: {stats.reason or 'none found'}" + (f" · {ram}" if ram else "")
        return Table(["gpu", "name", "memory", "utilisation", "temperature", "power", "processes"], rows,
                     title=f"GPU ({stats.source})", caption=caption or None)

    def _farm_stats(self, rest: list[str]) -> Table:
        self._arity("stats", rest, 0, 0)
        from ._format import describe_failures

        monitor = self.session().monitor
        failures = monitor.failure_counts()
        rows: list[tuple[Any, ...]] = []
        shown: set[str] = set()
        for s in monitor.summary():
            provider = s.address.partition(":")[0]
            # a provider's failures by class go on its first row (they are the provider's, not a model's)
            kinds = "" if provider in shown else describe_failures(failures.get(provider, {}))
            shown.add(provider)
            rows.append((s.address, s.requests, s.errors, s.cache_hits, _seconds(s.p50), _seconds(s.p95),
                         _seconds(s.first_token_p50), None if s.tokens_per_second is None else f"{s.tokens_per_second:.1f}",
                         s.tokens_out, kinds))
        for provider, kinds_of in failures.items():  # failed without ever answering (a fallback answered)
            if provider not in shown and any(kinds_of.values()):
                rows.append((provider, "", "", "", "", "", "", "", "", describe_failures(kinds_of)))
        return Table(["model", "requests", "errors", "cache hits", "p50", "p95", "TTFT p50", "tok/s", "tokens out", "failures"],
                     rows, title="requests this session", caption=None if rows else "no requests yet")

    def _farm_usage(self, rest: list[str]) -> Table:
        self._arity("usage", rest, 0, 0)
        report = self.session().usage()
        rows = [(r.address, r.requests, r.cache_hits, r.tokens_in, r.tokens_out, r.saved_in + r.saved_out, r.cost_text())
                for r in report]
        return Table(["model", "requests", "cache hits", "tokens in", "tokens out", "tokens saved by cache", "cost"],
                     rows, title="usage this session", caption=report.summary() if rows else "no requests yet")

    def _farm_history(self, rest: list[str]) -> Table:
        self._arity("history", rest, 0, 0)
        turns = list(self.session().conversation.turns)
        rows = [(i, t.id, t.address, _short(t.user.content), _short(t.assistant.content)) for i, t in enumerate(turns, 1)]
        return Table(["#", "turn", "model", "you", "answer"], rows, title="conversation",
                     caption=None if rows else "no turns yet: ask with %%farm_chat")

    def _farm_reset(self, rest: list[str]) -> None:
        self._arity("reset", rest, 0, 0)
        conversation = self.session().conversation
        n = len(conversation)
        conversation.reset()
        print(f"new conversation ({n} earlier turn{'s' if n != 1 else ''} dropped)")

    def _farm_cache(self, rest: list[str]) -> Table | None:
        self._arity("cache", rest, 0, 1)
        action = rest[0].lower() if rest else "info"
        session = self.session()
        if action == "info":
            info = session.cache_info()
            return Table(["", ""], [(k, v) for k, v in info.items()], title="response cache")
        if action == "clear":
            session.cache_clear()
            print(f"cache cleared ({session.cache.name})")
            return None
        raise UsageError(f"unknown cache action {rest[0]!r}: use %farm cache info or %farm cache clear")

    def _farm_config(self, rest: list[str]) -> Table:
        self._arity("config", rest, 0, 0)
        session = self.session()
        data = session.settings.public()
        source = data.pop("source", None)
        rows = list(_flatten(data))
        rows.insert(0, ("default", self._check_target(session, None)))
        return Table(["setting", "value"], rows, title="farm_jupyter settings",
                     caption=f"from {source} + environment" if source else "from defaults + environment (no farm.toml found)")

    def _progress(self, model: str, how: Callable[[str], Iterator[Any]]) -> str:
        from tqdm.auto import tqdm

        bar: Any = None
        digest: str | None = None
        last = ""
        try:
            for p in how(model):
                last = p.status
                if p.digest and p.total:
                    if p.digest != digest:
                        if bar is not None:
                            bar.close()
                        bar = tqdm(total=p.total, unit="B", unit_scale=True, unit_divisor=1024, desc=p.status, leave=True)
                        digest = p.digest
                    bar.update(max(0, (p.completed or 0) - bar.n))
                elif bar is not None:
                    bar.close()
                    bar, digest = None, None
        finally:
            if bar is not None:
                bar.close()
        return last

    def _remote(self, session: Session, target: str, action: str) -> str | None:
        """The address, when its provider serves models itself (nothing to pull, load or free)."""
        from .errors import FarmError

        address = self._check_target(session, target)
        try:
            loads = session.has_models_to_load(target)
        except FarmError as exc:
            raise UsageError(str(exc)) from None
        if loads:
            return None
        provider = address.partition(":")[0]
        print(f"{address}: nothing to {action}: {provider} serves its models remotely; ask it with %%farm_chat -m {address}")
        return address

    def _farm_pull(self, rest: list[str], action: str = "pull") -> None:
        self._arity(action, rest, 1, 1)
        session = self.session()
        if self._remote(session, rest[0], action):
            return
        address = self._check_target(session, rest[0])
        self._progress(rest[0], session.load)
        print(f"{address}: pulled and loaded")

    def _farm_load(self, rest: list[str]) -> None:
        self._farm_pull(rest, "load")

    def _farm_unload(self, rest: list[str]) -> None:
        self._arity("unload", rest, 1, 1)
        session = self.session()
        if self._remote(session, rest[0], "unload"):
            return
        address = self._check_target(session, rest[0])
        session.unload(rest[0])
        print(f"{address}: unloaded")

    def _farm_reload(self, rest: list[str]) -> None:
        self._arity("reload", rest, 1, 1)
        session = self.session()
        if self._remote(session, rest[0], "reload"):
            return
        address = self._check_target(session, rest[0])
        self._progress(rest[0], session.reload)
        print(f"{address}: reloaded")

    def _farm_alias(self, rest: list[str]) -> Table | None:
        self._arity("alias", rest, 0, 2)
        session = self.session()
        if not rest:
            return Table(["alias", "target"], sorted(session.settings.aliases.items()), title="aliases",
                         caption=None if session.settings.aliases else "no aliases: %farm alias NAME TARGET")
        if len(rest) != 2:
            raise UsageError("usage: %farm alias NAME TARGET")
        name, target = rest
        if not re.fullmatch(r"[\w.-]+", name) or name in session.settings.chain:
            raise UsageError(f"alias name {name!r} must be letters, digits, '-', '_' or '.', and not a provider's name")
        resolved = self._check_target(session, target)
        session.alias(name, target)
        try:
            self._check_target(session, name)
        except UsageError:
            session.unalias(name)
            raise
        print(f"{name} -> {resolved}")
        return None

    def _farm_unalias(self, rest: list[str]) -> None:
        self._arity("unalias", rest, 1, 1)
        session = self.session()
        if rest[0] not in session.settings.aliases:
            raise UsageError(f"no alias named {rest[0]!r}: %farm alias lists them")
        session.unalias(rest[0])
        print(f"alias {rest[0]} removed")

    def _farm_error(self, rest: list[str]) -> None:
        self._arity("error", rest, 0, 1)
        import traceback

        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if exc is None:
            raise UsageError("no exception to explain yet: run a cell that fails, then %farm error")
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__ or getattr(sys, "last_traceback", None))
        trace = "".join(lines)
        if len(trace) > 8000:
            trace = trace[:2000] + "\n...\n" + trace[-6000:]
        prompt = (
            "A cell in my Jupyter notebook failed with this exception. Explain briefly what went wrong "
            "and how to fix it, with corrected code if that helps.\n\n```\n" + trace + "\n```"
        )
        session = self.session()
        target = rest[0] if rest else None
        address = self._check_target(session, target)
        self._answer(session, session.stream(prompt, target), address, owned=self._owns_cell("%farm"))

    def _farm_ollama(self, rest: list[str]) -> None:
        self._arity("ollama", rest, 1, 1)
        action = rest[0].lower()
        if action == "start":
            self._ollama_start()
        elif action == "stop":
            self._ollama_stop()
        else:
            raise UsageError(f"unknown ollama action {rest[0]!r}: use %farm ollama start or %farm ollama stop")

    def _ollama_healthy(self, session: Session) -> bool:
        return any(s.healthy for s in session.health(["ollama"]))

    def _ollama_start(self) -> None:
        from urllib.parse import urlsplit

        from .errors import FarmError

        session = self.session()
        host = session.settings.ollama.host
        if self._ollama is not None and self._ollama.poll() is None:
            print(f"Ollama is already running at {host} (pid {self._ollama.pid}, started here)")
        elif self._ollama_healthy(session):
            print(f"Ollama is already running at {host}")
        else:
            exe = shutil.which("ollama")
            if exe is None:
                raise FarmError("ollama is not installed", hint="see https://ollama.com/download")
            env = dict(os.environ, OLLAMA_HOST=urlsplit(host).netloc)
            log = tempfile.NamedTemporaryFile(prefix="ollama-", suffix=".log", delete=False)  # noqa: SIM115
            self._ollama_log = log.name
            proc = subprocess.Popen([exe, "serve"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
            log.close()
            self._ollama = proc
            atexit.register(_stop_process, proc)
            deadline = time.monotonic() + _HEALTH_WAIT
            while not self._ollama_healthy(session):
                if proc.poll() is not None:
                    raise FarmError(f"`ollama serve` exited with status {proc.returncode}: {_last_line(log.name)}",
                                    hint=f"see {log.name}")
                if time.monotonic() > deadline:
                    _stop_process(proc)
                    raise FarmError(f"`ollama serve` did not answer at {host} within {_HEALTH_WAIT:.0f}s", hint=f"see {log.name}")
                time.sleep(0.2)
            print(f"Ollama is running at {host} (pid {proc.pid}; log {log.name})")
        for model in session.settings.ollama.auto_pull:
            self._progress(f"ollama:{model}", session.load)
            print(f"ollama:{model}: pulled and loaded")

    def _ollama_stop(self) -> None:
        from .errors import FarmError

        proc = self._ollama
        if proc is None or proc.poll() is not None:
            self._ollama = None
            raise FarmError("no Ollama was started by %farm ollama start in this kernel",
                            hint="stop it where it was started (e.g. `systemctl stop ollama`)")
        _stop_process(proc)
        self._ollama = None
        print(f"Ollama stopped (pid {proc.pid})")

    def _farm_dashboard(self, rest: list[str]) -> Any:
        self._arity("dashboard", rest, 0, 0)
        session = self.session()
        try:
            from .widgets import Dashboard
        except ImportError as exc:
            from .errors import FarmError

            raise FarmError(f"the dashboard is not available ({exc})",
                            hint='pip install "ipywidgets>=8", then %reload_ext farm_jupyter') from None
        self._close_dashboard()  # one live dashboard per kernel: the previous one's timers stop
        self._dashboard = Dashboard(session)
        return self._dashboard

    def _close_dashboard(self) -> None:
        dashboard, self._dashboard = self._dashboard, None
        if dashboard is not None:
            dashboard.close()


def _flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, Mapping) and data:
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list | tuple):
        yield prefix, ", ".join(str(v) for v in data)
    else:
        yield prefix, "" if data is None or data == {} else data


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- %load_ext / %unload_ext ----------------------------------------------------------------------


def load(ip: InteractiveShell) -> FarmMagics:
    """Register the magics on `ip` (called by `%load_ext farm_jupyter`)."""
    if ip.magics_manager.registry.get("FarmMagics") is not None:
        unload(ip)
    magics = FarmMagics(shell=ip)
    ip.register_magics(magics)
    ip.events.register("pre_run_cell", magics._pre_run_cell)
    ip.events.register("post_run_cell", magics._post_run_cell)
    if os.environ.get("FARM_EMBEDDED_DEFAULT") == "1":  # set by `farm-jupyter lab` when nothing answers
        print(
            "farm_jupyter: no Ollama or OpenAI configured: answering with the embedded offline model "
            f"({os.environ.get('FARM_HF_MODEL', 'huggingface')}). Start Ollama or set OPENAI_API_KEY for real answers."
        )
    return magics


def unload(ip: InteractiveShell) -> None:
    """Remove what `load` registered (called by `%unload_ext` and `%reload_ext`)."""
    manager = ip.magics_manager
    magics = manager.registry.pop("FarmMagics", None)
    if magics is None:
        return
    for kind, table in magics.magics.items():
        for name, func in table.items():
            if manager.magics[kind].get(name) == func:
                del manager.magics[kind][name]
    for event, callback in (("pre_run_cell", magics._pre_run_cell), ("post_run_cell", magics._post_run_cell)):
        try:
            ip.events.unregister(event, callback)
        except ValueError:
            pass
    if magics in ip.configurables:
        ip.configurables.remove(magics)
    magics._close_dashboard()
    if magics._ollama is not None:  # started by this instance; a reload would lose its handle
        _stop_process(magics._ollama)
        magics._ollama = None
