"""Child process for test_reliability: writes DiskCache entries until it is killed.

Prints "ready", then each key once its `set` has returned (flushed at once), so the parent knows
which writes were committed when it sends SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys

from farm_jupyter.cache import CacheEntry, DiskCache
from farm_jupyter.types import ChatResponse


async def main(path: str) -> None:
    cache = DiskCache(path)
    print("ready", flush=True)
    i = 0
    while True:
        key = f"key-{i:06d}"
        padding = "lorem ipsum dolor sit amet " * (100 + i % 200)  # 3-8 KB: a write spans pages
        text = f"answer to {key}: {padding}"
        response = ChatResponse(text=text, provider="writer", model=key)
        await cache.set(key, CacheEntry(response=response, chunks=[text[:20], text[20:]]))
        print(key, flush=True)
        i += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
