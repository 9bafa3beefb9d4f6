"""Response caches: one small async protocol, three backends, and recorded answers.

- MemoryCache: LRU with TTL, per kernel session (the default); stores objects, no serialisation.
- DiskCache: one SQLite file, created 0600; SQLite's journal makes every write atomic, so a
  kernel killed mid-write loses at most that entry and the file stays readable.
- RedisCache: shared by a team (redis.asyncio, imported on first use).
- Recording (`FARM_CACHE=record:PATH`) and ReplayCache (`FARM_CACHE=replay:PATH`): every answer
  of a notebook run, streams included, in one JSON file beside it; a replay answers only from
  that file, so the notebook re-runs identically offline (on a miss the router raises
  ReplayMiss instead of asking a provider: the cell fails in one line).

A key covers everything that changes an answer (provider, model, messages, parameters, and but for
a recording the server's URL: a recording replays on any machine) and never a secret. Only whole, successful answers are stored: the router never stores an error or a partial
stream. A hit replays the stored chunks as a stream.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from .config import CacheSettings
from .errors import ConfigError, MissingDependency
from .types import ChatMessage, ChatResponse, GenerationParams

SCHEMA_VERSION = 2


class CacheEntry(BaseModel):
    response: ChatResponse
    chunks: list[str]
    created: float = Field(default_factory=time.time)


def cache_key(
    provider: str, model: str, messages: list[ChatMessage], params: GenerationParams, where: str | None = None
) -> str:
    """`where` tells two servers of one provider apart (OLLAMA_HOST, OPENAI_BASE_URL); never a secret."""
    extras = [_extras(m) for m in messages]
    if any(extras):  # images (their bytes), tool calls and results: keyed in full
        turns = [(m.role, m.content, *([extra] if extra else [])) for m, extra in zip(messages, extras, strict=True)]
        return _key(provider, model, where, turns, params.model_dump(exclude_none=True))
    plain = tuple((m.role, m.content) for m in messages)
    return _plain_key(provider, model, where, plain, params.model_dump_json(exclude_none=True))


@functools.lru_cache(maxsize=256)
def _plain_key(provider: str, model: str, where: str | None, turns: tuple[tuple[str, str], ...], params: str) -> str:
    """The key of a request of plain messages, remembered: asked again (a notebook run again, a
    memory hit), it costs a lookup, not a JSON dump and a hash. The same key as `_key` gives."""
    return _key(provider, model, where, list(turns), json.loads(params))


def _key(provider: str, model: str, where: str | None, turns: list[Any], params: dict[str, Any]) -> str:
    payload = {
        "v": SCHEMA_VERSION,
        "provider": provider,
        "where": where,
        "model": model,
        "messages": turns,
        "params": params,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _extras(message: ChatMessage) -> dict[str, Any]:
    if not (message.images or message.tool_calls or message.tool_call_id or message.tool_name or message.thinking):
        return {}  # a plain message (most of them): no dump, the same key
    data = message.model_dump()
    del data["role"], data["content"]
    return data


class Cache(Protocol):
    name: str

    async def get(self, key: str) -> CacheEntry | None: ...
    async def set(self, key: str, entry: CacheEntry) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def clear(self) -> None: ...
    async def info(self) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...


def _strip(entry: CacheEntry) -> CacheEntry:
    """What a cache keeps: the answer, not this request's attempts or timings."""
    response = entry.response.model_copy(update={"attempts": [], "cached": False, "restarted": False, "messages": []})
    return CacheEntry(response=response, chunks=entry.chunks, created=entry.created)


class NullCache:
    name = "none"

    async def get(self, key: str) -> CacheEntry | None:
        return None

    async def set(self, key: str, entry: CacheEntry) -> None:
        return None

    async def delete(self, key: str) -> None:
        return None

    async def clear(self) -> None:
        return None

    async def info(self) -> dict[str, Any]:
        return {"backend": self.name, "entries": 0}

    async def aclose(self) -> None:
        return None


class MemoryCache:
    name = "memory"

    def __init__(self, max_entries: int = 1024, ttl: float | None = None) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._data: OrderedDict[str, CacheEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> CacheEntry | None:
        return self.peek(key)

    def peek(self, key: str) -> CacheEntry | None:
        """`get` without a loop: a hit can be answered in the caller's thread (no thread hop).
        Every step is one dict operation, atomic under the GIL, so the loop's own use is safe."""
        entry = self._data.get(key)
        if entry is None or (self.ttl is not None and time.time() - entry.created > self.ttl):
            if entry is not None:
                self._data.pop(key, None)
            self.misses += 1
            return None
        try:
            self._data.move_to_end(key)
        except KeyError:  # evicted by the loop in between: still a hit, the entry is whole
            pass
        self.hits += 1
        return entry

    async def set(self, key: str, entry: CacheEntry) -> None:
        self._data[key] = _strip(entry)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def clear(self) -> None:
        self._data.clear()

    async def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "entries": len(self._data),
            "max_entries": self.max_entries,
            "ttl": self.ttl,
            "hits": self.hits,
            "misses": self.misses,
        }

    def __len__(self) -> int:
        return len(self._data)

    async def aclose(self) -> None:
        return None


def default_cache_path() -> Path:
    root = os.environ.get("FARM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "farm_jupyter"
    )
    return Path(root) / "responses.sqlite"


class DiskCache:
    name = "disk"

    def __init__(
        self, path: str | os.PathLike[str] | None = None, ttl: float | None = None, max_entries: int = 100_000
    ) -> None:
        import sqlite3

        self.path = Path(path) if path else default_cache_path()
        self.ttl = ttl
        self.max_entries = max_entries
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file owner-only before SQLite opens it; its journal inherits the mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._writes = 0
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, created REAL, value TEXT)")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"the disk cache {self.path} is not readable: {exc}", hint="delete it or pick another FARM_CACHE path"
            ) from exc

    async def _sql(self, query: str, args: tuple[Any, ...] = ()) -> Any:
        """One statement in a worker thread: the lock may be held across a write's fsync, and the
        runtime loop must never wait for a disk."""

        def run() -> Any:
            with self._lock:
                return self._db.execute(query, args).fetchone()

        return await asyncio.to_thread(run)

    async def get(self, key: str) -> CacheEntry | None:
        row = await self._sql("SELECT created, value FROM entries WHERE key = ?", (key,))
        if row is None:
            return None
        if self.ttl is not None and time.time() - row[0] > self.ttl:
            await self.delete(key)
            return None
        return CacheEntry.model_validate_json(row[1])

    async def set(self, key: str, entry: CacheEntry) -> None:
        value = _strip(entry).model_dump_json()
        # A durable write waits for the disk (fsync): off the runtime loop, so streams keep going.
        await asyncio.to_thread(self._write, key, entry.created, value)

    def _write(self, key: str, created: float, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO entries (key, created, value) VALUES (?, ?, ?)", (key, created, value)
            )
            self._writes += 1
            if self._writes % 64 == 1:  # counting rows scans the table: now and then is enough
                count = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                if count > self.max_entries:
                    self._db.execute(
                        "DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY created LIMIT ?)",
                        (count - self.max_entries,),
                    )

    async def delete(self, key: str) -> None:
        await self._sql("DELETE FROM entries WHERE key = ?", (key,))

    async def clear(self) -> None:
        await self._sql("DELETE FROM entries")

    async def info(self) -> dict[str, Any]:
        count = (await self._sql("SELECT COUNT(*) FROM entries"))[0]
        size = self.path.stat().st_size if self.path.exists() else 0
        return {"backend": self.name, "entries": count, "path": str(self.path), "bytes": size, "ttl": self.ttl}

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._db.close()

        await asyncio.to_thread(close)


class RedisCache:
    name = "redis"

    def __init__(self, url: str, ttl: float | None = None, prefix: str = "farm_jupyter:") -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise MissingDependency("redis", "redis") from exc
        self.url = url
        self.ttl = ttl
        self.prefix = prefix
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        from redis.exceptions import ConnectionError as Unreachable
        from redis.exceptions import TimeoutError as TimedOut

        # Failures that mean "the server is not there" (GuardedCache turns the cache off a while).
        self.down_errors: tuple[type[BaseException], ...] = (Unreachable, TimedOut, OSError)

    async def ping(self) -> None:
        await self._client.ping()

    async def get(self, key: str) -> CacheEntry | None:
        raw = await self._client.get(self.prefix + key)
        return None if raw is None else CacheEntry.model_validate_json(raw)

    async def set(self, key: str, entry: CacheEntry) -> None:
        ttl = int(self.ttl) if self.ttl else None
        await self._client.set(self.prefix + key, _strip(entry).model_dump_json(), ex=ttl)

    async def delete(self, key: str) -> None:
        await self._client.delete(self.prefix + key)

    async def clear(self) -> None:
        keys = [k async for k in self._client.scan_iter(match=self.prefix + "*", count=500)]
        if keys:
            await self._client.delete(*keys)

    async def info(self) -> dict[str, Any]:
        count = 0
        async for _ in self._client.scan_iter(match=self.prefix + "*", count=500):
            count += 1
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        shown = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
        return {"backend": self.name, "entries": count, "url": shown, "ttl": self.ttl}

    async def aclose(self) -> None:
        await self._client.aclose()


RECORDING_FORMAT = "farm_jupyter recorded answers"


def _read_recording(path: Path) -> dict[str, CacheEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != RECORDING_FORMAT:
            raise ValueError("not a recording")
        return {key: CacheEntry.model_validate(value) for key, value in data["answers"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{path} is not a farm_jupyter recording ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            hint="record it again with FARM_CACHE=record:PATH (after deleting it)",
        ) from None


class Recording:
    """`FARM_CACHE=record:PATH`: a cache whose entries all land in one JSON file.

    It answers what the file already holds (so a repeated question is a hit, as it will be in
    the replay) and adds every new answer. Several sessions of one kernel may record into the
    same file: each write merges with what is on disk, and the file is replaced atomically.
    Delete the file to record from scratch.
    """

    name = "record"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._lock = threading.Lock()
        self._data: dict[str, CacheEntry] = _read_recording(self.path) if self.path.exists() else {}
        self._dropped: set[str] = set()  # deleted here: not merged back from the file

    async def get(self, key: str) -> CacheEntry | None:
        return self._data.get(key)

    async def set(self, key: str, entry: CacheEntry) -> None:
        await asyncio.to_thread(self._write, {key: _strip(entry)})

    def _write(self, new: dict[str, CacheEntry], dropped: Iterable[str] = ()) -> None:
        """Merge with the file under the lock (all changes happen here, so none is lost to a
        concurrent write), then replace the file atomically."""
        with self._lock:
            self._dropped.update(dropped)
            self._dropped.difference_update(new)
            merged = _read_recording(self.path) if self.path.exists() else {}
            merged.update(self._data)
            merged.update(new)
            for key in self._dropped:
                merged.pop(key, None)
            self._data = merged
            answers = {k: json.loads(v.model_dump_json()) for k, v in sorted(merged.items())}
            text = json.dumps(
                {"format": RECORDING_FORMAT, "version": 1, "answers": answers}, indent=1, ensure_ascii=False
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.path)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._write, {}, [key])

    async def clear(self) -> None:
        await asyncio.to_thread(self._write, {}, list(self._data))  # the whole recording starts over

    async def info(self) -> dict[str, Any]:
        return {"backend": self.name, "entries": len(self._data), "path": str(self.path)}

    async def aclose(self) -> None:
        return None


class ReplayCache:
    """`FARM_CACHE=replay:PATH`: answers only from a recording; nothing is ever added to it."""

    name = "replay"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        if not self.path.is_file():
            raise ConfigError(
                f"FARM_CACHE=replay:{path}: there is no recording at {self.path}",
                hint=f"record one first with FARM_CACHE=record:{path}",
            )
        self._data = _read_recording(self.path)

    async def get(self, key: str) -> CacheEntry | None:
        return self._data.get(key)

    async def set(self, key: str, entry: CacheEntry) -> None:
        return None  # only a recording answers; it is never changed by a replay

    async def delete(self, key: str) -> None:
        return None

    async def clear(self) -> None:
        return None

    async def info(self) -> dict[str, Any]:
        return {"backend": self.name, "entries": len(self._data), "path": str(self.path)}

    async def aclose(self) -> None:
        return None


def make_cache(settings: CacheSettings) -> Cache:
    if settings.backend == "memory":
        return MemoryCache(settings.max_entries, settings.ttl)
    if settings.backend == "disk":
        return DiskCache(settings.path, settings.ttl, settings.max_entries)
    if settings.backend == "redis":
        return RedisCache(settings.redis_url, settings.ttl)
    if settings.backend in ("record", "replay"):
        if not settings.path:
            raise ConfigError(
                f"FARM_CACHE={settings.backend}: needs a file", hint=f"use FARM_CACHE={settings.backend}:answers.json"
            )
        return Recording(settings.path) if settings.backend == "record" else ReplayCache(settings.path)
    return NullCache()
