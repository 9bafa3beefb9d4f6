"""A cache that cannot take the caller down with it.

The Session holds its cache behind `GuardedCache`: a backend that cannot open (a read-only file
system, a Redis that is not there) leaves the Session without a cache instead of failing (except
a recording or a replay, which are the point of the run: those raise), says why
(`state`: `off: read-only file system`) and is tried again now and then, so the cache comes back
when it can. A backend that opens without connecting (Redis) is pinged by `check()` (health), and
one that stops answering (its `down_errors`) is off in the same way until a ping every
REOPEN_AFTER seconds finds it back: no request waits on it, and no request logs it again. A backend error mid-run reaches the router as one line (it answers without the cache
and logs that line); an entry that cannot be read is dropped, so one corrupt row costs one miss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from .cache import Cache, CacheEntry, make_cache
from .config import CacheSettings
from .errors import FarmError

log = logging.getLogger("farm_jupyter")

REOPEN_AFTER = 30.0  # seconds between tries to open a cache that would not open


class CacheUnavailable(RuntimeError):
    """A backend failure, said in one line (not a FarmError: the router answers without the cache)."""


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class GuardedCache:
    def __init__(
        self,
        settings: CacheSettings,
        opener: Callable[[CacheSettings], Cache] = make_cache,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._opener = opener
        self._clock = clock
        self.inner: Cache | None = None
        self.name = "none"  # the backend's, once open
        self.reason: str | None = None
        self._next_try = 0.0
        self._parked: Cache | None = None  # opened, but not answering: pinged again when due
        self._open()

    def _open(self) -> Cache | None:
        try:
            self.inner, self.reason = self._opener(self.settings), None
            self.name = self.inner.name
        except Exception as exc:  # noqa: BLE001 - any backend that will not open: run without it
            if self.settings.backend in ("record", "replay"):
                # Without its recording a replay would ask real models: that is an error, not "off".
                raise
            self.inner, self.reason = None, _why(exc)
            self._next_try = self._clock() + REOPEN_AFTER
            log.warning(
                "farm_jupyter: cache %s is off: %s (tried again in %.0f s)",
                self.settings.backend,
                self.reason,
                REOPEN_AFTER,
            )
        return self.inner

    async def _cache(self) -> Cache | None:
        if self.inner is None and self._clock() >= self._next_try:
            if self._parked is not None:
                await self._ping(self._parked)
            else:
                opened = await asyncio.to_thread(self._open)
                if opened is not None:
                    log.warning("farm_jupyter: cache %s is back", opened.name)
        return self.inner

    async def _ping(self, cache: Cache) -> None:
        ping = getattr(cache, "ping", None)
        if ping is None:
            return
        try:
            await ping()
        except (asyncio.CancelledError, FarmError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever it is, the cache is off until it answers
            self._down(cache, exc)
            return
        if self._parked is cache:
            self.inner, self._parked, self.reason = cache, None, None
            log.warning("farm_jupyter: cache %s is back", cache.name)

    def _down(self, cache: Cache, exc: BaseException) -> None:
        first = self._parked is None
        self.inner, self._parked, self.reason = None, cache, _why(exc)
        self._next_try = self._clock() + REOPEN_AFTER
        if first:
            log.warning(
                "farm_jupyter: cache %s is off: %s (tried again every %.0f s)", cache.name, self.reason, REOPEN_AFTER
            )

    async def check(self) -> str:
        """`state`, after a ping of a backend that can be pinged (when its retry is due, if off)."""
        cache = await self._cache()
        if cache is not None:
            await self._ping(cache)
        return self.state

    @property
    def state(self) -> str:
        """`disk`, `memory`, ...; or `off: <why>` when it would not open."""
        return self.inner.name if self.inner is not None else f"off: {self.reason}"

    @property
    def peek(self) -> Callable[[str], CacheEntry | None] | None:
        """The backend's loop-free lookup, where it has one (memory): a hit in the caller's thread."""
        found: Callable[[str], CacheEntry | None] | None = getattr(self.inner, "peek", None)
        return found

    async def _call(self, op: str, *args: Any) -> Any:
        cache = await self._cache()
        if cache is None:
            return None
        try:
            return await getattr(cache, op)(*args)
        except (asyncio.CancelledError, FarmError):
            raise
        except getattr(cache, "down_errors", ()) as exc:
            self._down(cache, exc)  # off until a ping finds it back: said once, not per request
            return None
        except Exception as exc:  # noqa: BLE001 - one line for the router's warning
            raise CacheUnavailable(f"{cache.name} {op}: {type(exc).__name__}: {_why(exc)}") from exc

    async def get(self, key: str) -> CacheEntry | None:
        try:
            entry: CacheEntry | None = await self._call("get", key)
        except CacheUnavailable as exc:
            if not isinstance(exc.__cause__, ValidationError | ValueError):
                raise
            log.warning("farm_jupyter: dropped an unreadable cache entry (%s)", exc)
            await self._call("delete", key)
            return None
        return entry

    async def set(self, key: str, entry: CacheEntry) -> None:
        await self._call("set", key, entry)

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def clear(self) -> None:
        await self._call("clear")

    async def info(self) -> dict[str, Any]:
        info: dict[str, Any] | None = await self._call("info")
        return info if info is not None else {"backend": "none", "entries": 0, "off": self.reason}

    async def aclose(self) -> None:
        for cache in {id(c): c for c in (self.inner, self._parked) if c is not None}.values():
            await cache.aclose()

    def __getattr__(self, name: str) -> Any:
        # The backend's own attributes (a test looks at MemoryCache._data) stay reachable.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)
