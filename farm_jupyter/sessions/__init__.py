"""The kernel's Session and what it hands out: AsyncSession (`session.aio`), ChatStream, Conversation.

`farm_jupyter.session()` is the kernel's Session; `Session(config=...)` makes an independent one.
The package is `sessions` so that `farm_jupyter.session` stays the function, whatever is imported.
"""

from __future__ import annotations

import threading

from .aio import AsyncSession
from .conversation import Conversation, Turn
from .door import Session
from .engine import Prompt
from .stream import ChatStream

__all__ = [
    "AsyncSession",
    "ChatStream",
    "Conversation",
    "Prompt",
    "Session",
    "Turn",
    "current",
    "session",
    "set_session",
]

_session: Session | None = None
_lock = threading.Lock()


def session() -> Session:
    """The kernel's Session, made on first use from farm.toml and the environment."""
    global _session
    with _lock:
        if _session is None:
            _session = Session()
        return _session


def set_session(new: Session | None) -> Session | None:
    """Replace the kernel's Session (tests, `%farm` reconfiguration); returns the old one."""
    global _session
    with _lock:
        old, _session = _session, new
        return old


def current() -> Session | None:
    """The kernel's Session if one was made, without making one."""
    return _session
