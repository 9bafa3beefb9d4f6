"""Run a Python module with the router's waits skipped on a fake clock, so that a rate limit's
minute-long wait is taken, said and over at once in a real server process.

    python -m farm_jupyter.testing.clock MODULE [ARGS...]
    python -m farm_jupyter.testing.clock farm_jupyter.testing.audit LOG jupyter_server ...

Every Router built in the process sleeps by moving the clock of its rate limiters forward by
the seconds asked, instead of waiting them; nothing else in the process sees that clock. The
waits are appended to `FARM_SKIPPED_WAITS` (a file, one number a line) when that is set, so a
test can say how long the process would have waited.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
import time
from typing import Any

__all__ = ["SkippedTime", "install"]


class SkippedTime:
    """`time.monotonic` plus every wait skipped so far."""

    def __init__(self, record: str | None = None) -> None:
        self.skipped = 0.0
        self.record = record

    def clock(self) -> float:
        return time.monotonic() + self.skipped

    async def sleep(self, seconds: float) -> None:
        self.skipped += max(0.0, seconds)
        if self.record:
            with open(self.record, "a", encoding="utf-8") as out:
                out.write(f"{seconds}\n")
        await asyncio.sleep(0)  # still a point where the task yields, as a real wait is


def install(skipped: SkippedTime) -> None:
    """From now on, every Router sleeps on `skipped` and its rate limiters read its clock."""
    from farm_jupyter.router.core import Router

    init, limiter = Router.__init__, Router.limiter

    def __init__(self: Router, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.sleep = skipped.sleep

    def on_clock(self: Router, name: str) -> Any:
        found = limiter(self, name)
        if found is not None:
            found.clock = skipped.clock
        return found

    Router.__init__ = __init__  # type: ignore[method-assign]
    Router.limiter = on_clock  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m farm_jupyter.testing.clock MODULE [ARGS...]")
    module, *rest = argv
    install(SkippedTime(os.environ.get("FARM_SKIPPED_WAITS") or None))
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
