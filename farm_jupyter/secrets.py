"""Secret values, registered once, masked wherever they turn up.

Settings register every configured secret as they are built (config/): the OpenAI key, the HF
token, a password in a URL, a custom provider's option named like a key, token, secret or password;
providers register the ones handed to them directly. `redact(text)` replaces each value, and every
piece of it of 8 characters or more, with the value's masked form (`sk-...f3a9`): a server that
echoes `token=SECRETVALUE123` without its `sk-` prefix, or half a key, is caught as well. The
url-encoded form of each value counts too, and for a user:password its HTTP basic credentials.

Where it is applied: FarmError redacts its message and the text of the exception it is raised
from (errors.py), so every error, attempt and health status built from one is clean; a logging
filter on the httpx, httpcore, openai and farm_jupyter loggers (and their forks and children)
redacts each record before any handler formats it.

Values shorter than 5 characters cannot be told apart from ordinary text and are not registered;
values of 5 to 7 characters are masked only where they occur whole.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["RedactingFilter", "install_log_filter", "mask", "redact", "register", "register_basic", "scrub_exception"]

SLICE = 8  # a piece this long of a secret is a leak
SHORTEST = 5
LOGGERS = ("farm_jupyter", "httpx", "httpcore", "openai", "httpx2", "httpcore2")
# Children log through their own Logger objects, and a logger's filters do not apply to its
# children: these are made in advance so the filter is on them before the library logs, and the
# record factory below puts it on any other child at its first record.
_CHILDREN = (
    "farm_jupyter.widgets",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "httpcore2.connection",
    "httpcore2.http11",
    "httpcore2.http2",
    "httpcore2.proxy",
    "httpcore2.socks",
    "openai._base_client",
    "openai._response",
    "openai._legacy_response",
    "openai.lib.parsing",
)


def mask(value: str) -> str:
    """`sk-abc...f3a9` -> `sk-...f3a9`: enough to tell keys apart, never enough to use one."""
    if len(value) < 12:
        return "***"
    # Only a vendor's short prefix (`sk-`) is kept, and only on a long key: a longer "prefix" is
    # a piece of the secret itself (and would be masked again by redact()).
    head = value.split("-", 1)[0]
    prefix = head + "-" if "-" in value and len(head) <= 4 and len(value) >= 20 else ""
    return f"{prefix}...{value[-4:]}"


@dataclass(frozen=True)
class _Known:
    """One immutable snapshot of the registry: redact() reads it without a lock."""

    masks: dict[str, str]  # every form of every value -> the masked form of its value
    pattern: re.Pattern[str] | None  # any 8-character piece of a long form, or a short form whole


_lock = threading.Lock()
_known = _Known({}, None)


def register(*values: str | None) -> None:
    """Mask these values from now on, in this process; None and very short values are skipped."""
    global _known
    fresh = [v for v in values if v and len(v) >= SHORTEST and v not in _known.masks]
    if not fresh:
        return
    with _lock:
        masks = dict(_known.masks)
        for value in fresh:
            shown = mask(value)
            for form in (value, quote(value, safe=""), quote_plus(value, safe="")):
                masks.setdefault(form, shown)
        _known = _Known(masks, _compile(masks))
    install_log_filter()


def register_basic(username: str | None, password: str | None) -> None:
    """A user:password: the password, and the `Authorization: Basic ...` value that carries it."""
    if not password:
        return
    pair = f"{username or ''}:{password}".encode()
    register(password, base64.b64encode(pair).decode())


def _compile(masks: dict[str, str]) -> re.Pattern[str]:
    pieces: set[str] = set()
    for form in masks:
        if len(form) < SLICE:
            pieces.add(form)
        else:
            pieces.update(form[i : i + SLICE] for i in range(len(form) - SLICE + 1))
    # Longest first: a short secret inside a longer one's piece loses to the piece.
    return re.compile("|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True)))


def redact(text: str) -> str:
    """`text` with every registered secret, and every piece of 8+ characters of one, masked."""
    known = _known
    if known.pattern is None or not text:
        return text
    out: list[str] = []
    pos = 0
    while (found := known.pattern.search(text, pos)) is not None:
        start = found.start()
        end, shown = _widest(text, start, found.group(), known.masks)
        out.append(text[pos:start])
        out.append(shown)
        pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _widest(text: str, start: int, piece: str, masks: dict[str, str]) -> tuple[int, str]:
    """How far the secret piece found at `start` runs on, and the mask of its secret."""
    best_end, best_shown = start + len(piece), "***"
    for form, shown in masks.items():
        at = form.find(piece)
        while at != -1:
            length = len(piece)
            while start + length < len(text) and at + length < len(form) and text[start + length] == form[at + length]:
                length += 1
            if start + length >= best_end:
                best_end, best_shown = start + length, shown
            at = form.find(piece, at + 1)
    return best_end, best_shown


def scrub_exception(exc: BaseException | None) -> None:
    """Redact the text of `exc` and of the exceptions it was raised from, in place.

    A traceback shows every exception of the chain, and a foreign one (httpx, openai) may quote
    what a server echoed; its args are what str() shows.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and _known.pattern is not None:
        seen.add(id(exc))
        args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        if args != exc.args:
            try:
                exc.args = args
            except (AttributeError, TypeError):  # an exception type that fixes its args
                pass
        message = getattr(exc, "message", None)  # the openai SDK shows `.message`
        if isinstance(message, str) and (clean := redact(message)) != message:
            try:
                exc.message = clean  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [redact(n) if isinstance(n, str) else n for n in notes]
        exc = exc.__cause__ or exc.__context__


class RedactingFilter(logging.Filter):
    """Formats each record's message once, redacted, so no handler sees a secret in its args."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _known.pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record: logging reports it as usual
            return True
        record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            scrub_exception(record.exc_info[1])
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()
_FACTORIES: weakref.WeakSet[Callable[..., logging.LogRecord]] = weakref.WeakSet()  # the record factories made here


def install_log_filter(extra: Iterable[str] = ()) -> None:
    """Put the filter on our loggers and the HTTP libraries' (existing children included); idempotent.

    Called whenever a secret is registered and after the openai SDK is imported, which makes
    loggers of its own.
    """
    names = {*LOGGERS, *_CHILDREN, *extra}
    names.update(name for name in list(logging.root.manager.loggerDict) if name.split(".", 1)[0] in LOGGERS)
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    previous = logging.getLogRecordFactory()
    if previous not in _FACTORIES:
        logging.setLogRecordFactory(_factory(previous))


def _factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """Wraps the record factory: a child logger made after install gets the filter at its first
    record, before the logger applies its filters to it."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.split(".", 1)[0] in LOGGERS:
            logger = logging.getLogger(record.name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        return record

    _FACTORIES.add(make)
    return make
