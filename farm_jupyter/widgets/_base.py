"""What every farm widget shares: the session, the callback dispatcher, tasks, throttling, looks.

A widget talks to a `Session` only. Work that waits (a stream, a health check, a pull) runs as a
task on the session's runtime loop, so a callback returns at once and the kernel stays free;
`close()` cancels every task a widget started. Sync Session methods (`models()`, `load()`) block
on the runtime loop, so from a task they run in a worker thread (`asyncio.to_thread`), never on
the loop itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import ipywidgets as W
from traitlets import TraitError, Unicode, validate

from ..display.pieces import error_line
from ..display.theme import BAD, BORDER, FG, FG2, esc

if TYPE_CHECKING:
    from ..sessions import Session

log = logging.getLogger("farm_jupyter.widgets")

T = TypeVar("T")

UPDATE_INTERVAL = 0.05  # seconds between screen updates of a stream: about 20 a second


def error_html(exc: BaseException | str, *, traceback_text: str | None = None) -> str:
    text = exc if isinstance(exc, str) else error_line(exc)
    out = f'<div class="farm-error" style="color:{BAD};white-space:normal;line-height:1.4">&#9888; {esc(text)}</div>'
    if traceback_text:
        out += (
            f'<details style="color:{FG2}"><summary>traceback</summary>'
            f'<pre style="font-size:11px;white-space:pre-wrap">{esc(traceback_text)}</pre></details>'
        )
    return out


class Throttle:
    """Coalesce many pokes into at most one `flush` per `interval`, on the runtime loop.

    The first poke flushes at once (the first token shows without delay); later ones within the
    interval schedule a single flush at its end, so the last text is never more than one
    interval late. Use from the loop's own thread only.
    """

    def __init__(self, flush: Callable[[], None], interval: float = UPDATE_INTERVAL) -> None:
        self._flush = flush
        self.interval = interval
        self.flushes = 0
        self._last = -1e9
        self._handle: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self._last + self.interval - loop.time()
        if delay <= 0:
            self._run()
        else:
            self._handle = loop.call_later(delay, self._run)

    def _run(self) -> None:
        self._handle = None
        self._last = asyncio.get_running_loop().time()
        self.flushes += 1
        self._flush()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class FarmBox(W.VBox):
    """Base of every farm widget: a VBox with a session, a dispatcher, tasks and an error line."""

    error = Unicode("", help="The last error shown inline: one line that says what to do.").tag(sync=True)

    def __init__(self, session: Session | None = None, **kwargs: Any) -> None:
        if session is None:
            from ..sessions import session as kernel_session

            session = kernel_session()
        self.session = session
        self._tasks: set[concurrent.futures.Future[Any]] = set()
        self._tasks_lock = threading.Lock()
        self._closed = False
        self._error_view = W.HTML("", layout=W.Layout(display="none"))
        self._error_view.add_class("farm-error-line")
        super().__init__(**kwargs)
        self.add_class("farm-widget")

    # -- where work runs ------------------------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T | None]:
        """Run `coro` on the runtime loop; its errors show inline; `close()` cancels it."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is closed")
        future = self.session.aio.runtime.submit(self._guarded(coro))
        with self._tasks_lock:
            self._tasks.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._tasks_lock:
            self._tasks.discard(future)

    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> T | None:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the widget, which stays alive
            self.show_error(exc)
            return None

    @property
    def pending(self) -> int:
        """How many of this widget's tasks are still running."""
        with self._tasks_lock:
            return sum(1 for f in self._tasks if not f.done())

    # -- callbacks ------------------------------------------------------------------------------

    def dispatch(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a callback: an exception is shown inline (one line with the fix), not raised.

        ipywidgets would otherwise log it to the browser console and leave the widget half
        updated; here the widget says what failed and keeps working.
        """

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - that is the dispatcher's job
                self.show_error(exc)
                return None
            return result

        return call

    def show_error(self, exc: BaseException | str) -> None:
        from ..errors import FarmError

        text = exc if isinstance(exc, str) else error_line(exc)
        tb = None
        if isinstance(exc, BaseException) and not isinstance(exc, FarmError):
            tb = "".join(traceback.format_exception(exc))
            log.error("widget callback failed", exc_info=exc)
        with self._error_view.hold_sync():
            self._error_view.value = error_html(text, traceback_text=tb)
            self._error_view.layout.display = None
        self.error = text

    def clear_error(self) -> None:
        if self.error:
            self._error_view.layout.display = "none"
            self._error_view.value = ""
            self.error = ""

    # -- lifecycle and text forms ---------------------------------------------------------------

    def start(self) -> None:
        """Start periodic work (boards and gauges); called when the widget is displayed."""

    def stop(self) -> None:
        """Stop periodic work; the widget stays usable and `start()` resumes it."""

    # A fill in progress: the dropdowns' observers ignore what it sets (it is no one's choice).
    _filling = False

    def fill(self, dropdown: W.Dropdown, value: Any, options: Any = None) -> None:
        """Set a dropdown's options and value as the widget's own doing, not as a user's pick."""
        self._filling = True
        try:
            with dropdown.hold_sync():
                if options is not None:
                    dropdown.options = options
                dropdown.value = value
        finally:
            self._filling = False

    # The one piece of work a chat or a comparison runs at a time (an answer, a run).
    _job: concurrent.futures.Future[Any] | None = None

    def _cancel_job(self) -> None:
        job = self._job
        if job is not None and not job.done():
            job.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current job (an answer, a run, a pull) and any that it hands on to (a
        queued message) are finished (tests, scripts); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self._job
            if job is None:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = concurrent.futures.wait([job], timeout=left)
            if not done:
                return False
            if self._job is job:  # nothing took over as it finished
                return True

    def cancel_tasks(self, wait: float = 0.0) -> None:
        with self._tasks_lock:
            tasks = list(self._tasks)
        for future in tasks:
            future.cancel()
        if wait and tasks:
            concurrent.futures.wait(tasks, timeout=wait)

    def close(self) -> None:
        """Stop every timer and task this widget started, then close its comm and children's."""
        if not self._closed:
            self._closed = True
            self.stop()
            self.cancel_tasks()
            for child in self._owned():
                child.close()
        super().close()

    def _owned(self) -> list[W.Widget]:
        """The widgets this one made (closed with it)."""
        out: list[W.Widget] = []
        seen: set[int] = set()

        def walk(widget: W.Widget) -> None:
            for child in getattr(widget, "children", ()):
                if id(child) not in seen:
                    seen.add(id(child))
                    walk(child)
                    out.append(child)

        walk(self)
        out.append(self._error_view)
        return out

    def summary(self) -> str:
        """A one-line text form for saved notebooks and headless runs."""
        return type(self).__name__

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        self.start()
        data: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if data is not None:
            data["text/plain"] = self.summary()
        return data

    def __repr__(self) -> str:
        try:
            text = self.summary()
        except Exception as exc:  # noqa: BLE001 - a repr never raises
            text = f"{type(self).__name__} ({type(exc).__name__})"
        state = ", closed" if self._closed else ""
        return f"<{text}{state}>"

    def default_address(self) -> str:
        """The session's current default, in words, without raising."""
        try:
            return self.session.resolve(None)
        except Exception as exc:  # noqa: BLE001 - shown, not raised
            return f"unresolved ({type(exc).__name__})"


def card(title: str, body: str = "", *, right: str = "") -> str:
    """A small heading line used by every widget."""
    right_html = f'<span style="color:{FG2};font-weight:normal;font-size:12px">{right}</span>' if right else ""
    return (
        f'<div style="display:flex;justify-content:space-between;align-items:baseline;gap:8px;'
        f'color:{FG};font-weight:600;font-size:13px">'
        f"<span>{title}</span>{right_html}</div>{body}"
    )


def panel_layout(**kwargs: Any) -> W.Layout:
    base = {"border": f"1px solid {BORDER}", "padding": "8px 10px", "margin": "0", "width": "100%"}
    base.update(kwargs)
    return W.Layout(**base)


class PollingBox(FarmBox):
    """A widget that refreshes on the runtime loop every `interval` seconds (gauge, board)."""

    @validate("interval")
    def _positive(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value <= 0:
            raise TraitError(f"interval must be more than 0 s, not {value}")
        return value
