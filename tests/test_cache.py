"""The cache backends on their own: bounds, TTL, file mode, survival, and what a key covers."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import pytest

from farm_jupyter.cache import CacheEntry, DiskCache, MemoryCache, RedisCache, cache_key
from farm_jupyter.errors import ConfigError
from farm_jupyter.types import Attempt, ChatMessage, ChatResponse, GenerationParams


def entry(text: str = "answer") -> CacheEntry:
    response = ChatResponse(
        text=text,
        provider="ollama",
        model="llama3.1",
        attempts=[Attempt(provider="openai", model="x", ok=False, error="down")],
    )
    return CacheEntry(response=response, chunks=[text])


def key(provider: str = "ollama", where: str | None = None, **params: object) -> str:
    messages = [ChatMessage(role="user", content="q")]
    return cache_key(provider, "m", messages, GenerationParams(**params), where)


def run(coro):
    return asyncio.run(coro)


def test_key_covers_every_parameter_and_the_server():
    base = key()
    assert base == key()
    others = {
        key("openai"),
        key(temperature=0.1),
        key(max_tokens=3),
        key(top_p=0.5),
        key(stop=["x"]),
        key(seed=2),
        key(format="json"),
        key(extra={"min_new_tokens": 2}),
    }
    others.add(key(where="http://gpu-box:11434"))  # another server
    assert base not in others and len(others) == 9
    assert key(where="http://a:1") != key(where="http://b:1")


def test_a_key_does_not_change_between_versions():
    """Recorded notebooks replay from their keys: a change of key loses every recording."""
    messages = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="q")]
    found = cache_key("ollama", "m", messages, GenerationParams(temperature=0.2), "http://a:1")
    assert found == "16c8f31b23bae2d832f5c34e5666761d33da4ba63ca0afd58adf49927a22a0d5"


def test_memory_lru_and_ttl():
    cache = MemoryCache(max_entries=2, ttl=0.2)
    for k in "abc":
        run(cache.set(k, entry(k)))
    assert len(cache) == 2 and run(cache.get("a")) is None
    hit = run(cache.get("c"))
    assert hit.response.text == "c" and hit.response.attempts == []  # attempts are per request
    time.sleep(0.25)
    assert run(cache.get("c")) is None


def test_disk_is_owner_only_and_survives_a_restart(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    cache = DiskCache(path)
    run(cache.set("k", entry("kept")))
    run(cache.aclose())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = DiskCache(path)
    assert run(again.get("k")).response.text == "kept"
    assert run(again.info())["entries"] == 1
    run(again.clear())
    assert run(again.get("k")) is None
    run(again.aclose())


def test_disk_ttl(tmp_path):
    cache = DiskCache(tmp_path / "c.sqlite", ttl=0.1)
    run(cache.set("k", entry()))
    time.sleep(0.15)
    assert run(cache.get("k")) is None
    run(cache.aclose())


def test_corrupt_disk_file_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="delete it"):
        DiskCache(path)


def test_redis_roundtrip(redis_url):
    async def go():
        cache = RedisCache(redis_url, ttl=60, prefix="farm-test:")
        await cache.clear()
        await cache.set("k", entry("shared"))
        got = await cache.get("k")
        info = await cache.info()
        await cache.clear()
        await cache.aclose()
        return got, info

    got, info = run(go())
    assert got.response.text == "shared" and info["entries"] == 1


def test_a_memory_hit_answered_in_the_callers_thread_is_the_same_hit(make_session, ollama_server):
    """Session.chat's hit without the runtime loop (Router.replay) says what the loop's hit says."""

    s = make_session(ollama_server)
    first = s.chat("hi", "ollama", temperature=0.1)
    fast = s.chat("hi", "ollama", temperature=0.1)  # answered by Router.replay
    loop = s.stream("hi", "ollama", temperature=0.1, _whole=True).result()  # answered on the loop
    assert ollama_server.count("/api/chat") == 1
    for hit in (fast, loop):
        assert hit.cached and hit.text == first.text and hit.address == first.address
        assert [a.ok for a in hit.attempts] == [True] and hit.usage == first.usage
    assert s.chat("hi", "ollama", temperature=0.2).cached is False  # parameters are in the key
    assert [r.cached for r in s._engine.monitor.records] == [False, True, True, False]


def test_a_disk_cache_held_by_a_slow_write_never_blocks_the_loop(make_session, ollama_server, tmp_path):
    """Every SQLite call runs in a worker thread: a lock held across an fsync stalls no stream."""

    s = make_session(ollama_server, cache={"backend": "disk", "path": str(tmp_path / "c.sqlite")})
    disk = s._engine.cache
    events: list[str] = []

    async def read() -> None:
        await disk.get("some key")
        events.append("disk read")

    with disk._lock:  # a write in the middle of its fsync, as far as readers can tell
        pending = s.aio.runtime.submit(read())
        answer = s.chat("meanwhile", "ollama", no_cache=True)  # on the same loop
        events.append("answered")
    pending.result(timeout=30)
    assert events == ["answered", "disk read"] and answer.text == "Echo: meanwhile"
