"""What the extension keeps for the life of the server: the Session, its limits, the load jobs.

Load jobs are bounded: a finished job stays readable for `load_job_ttl` seconds, the oldest
finished ones make room first, and when `max_load_jobs` are all still running a new load is
refused (429) rather than started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import FarmError
from .allow import Admitted, Allowlist
from .bounds import TooManyLoads as TooManyLoads  # where ServerState.add raises it
from .schema import LoadState, LoadStatus
from .traits import FarmServer

if TYPE_CHECKING:
    import concurrent.futures

    from ..sessions import AsyncSession, Session
    from ..types import PullProgress


@dataclass
class LoadJob:
    """A background `load` on the runtime loop; written there, read by the handlers."""

    model: str  # as the URL named it
    address: str
    started_at: float
    state: LoadState = "running"
    progress: PullProgress | None = None
    error: str | None = None
    finished_at: float | None = None
    future: concurrent.futures.Future[None] | None = None
    failure: FarmError | None = None  # raised again to a chat that waited for this load

    def status(self) -> LoadStatus:
        return LoadStatus.model_validate(self, from_attributes=True)

    async def run(self, session: AsyncSession, address: str) -> None:
        try:
            steps = session.load(address)
            if steps is not None:  # None: a remote API serves its models, nothing to load
                async for progress in steps:
                    self.progress = progress
        except asyncio.CancelledError:
            self.error, self.finished_at, self.state = "cancelled", time.time(), "error"
            raise
        except Exception as exc:  # noqa: BLE001 - reported through GET, not raised
            self.error, self.finished_at, self.state = str(exc) or type(exc).__name__, time.time(), "error"
            self.failure = exc if isinstance(exc, FarmError) else FarmError(self.error)
        else:
            self.finished_at, self.state = time.time(), "done"


class ServerState:
    def __init__(
        self,
        session: Session | None = None,
        limits: FarmServer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self.limits = limits or FarmServer()
        self.jobs: dict[str, LoadJob] = {}
        self.in_flight = 0
        self._clock = clock
        self.allow = Allowlist()

    @property
    def session(self) -> Session:
        """The given Session, else the process's (`farm_jupyter.session()`: farm.toml + environment)."""
        if self._session is not None:
            return self._session
        from ..sessions import session

        return session()

    @contextmanager
    def answering(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def job(self, address: str) -> LoadJob | None:
        self._expire()
        return self.jobs.get(address)

    def add(self, job: LoadJob) -> None:
        """Keep `job`, making room by dropping the oldest finished jobs; TooManyLoads when every
        kept job is still running."""
        self._expire()
        self.jobs.pop(job.address, None)
        while len(self.jobs) >= self.limits.max_load_jobs:
            finished = [j for j in self.jobs.values() if j.state != "running"]
            if not finished:
                raise TooManyLoads
            oldest = min(finished, key=lambda j: j.finished_at or 0.0)
            del self.jobs[oldest.address]
        self.jobs[job.address] = job

    def start(self, session: Session, name: str, model: Admitted, *, again: bool = True) -> LoadJob:
        """The running load of `model` (or, unless `again`, its finished one), else a new one
        (TooManyLoads when `max_load_jobs` run). Chats and the load route both come here: every
        load is counted, and one model is one job."""
        job = self.job(model.address)
        if job is not None and (job.state == "running" or (job.state == "done" and not again)):
            return job
        job = LoadJob(model=name, address=model.address, started_at=time.time())
        self.add(job)
        job.future = session.aio.runtime.submit(job.run(session.aio, model.address))
        job.future.add_done_callback(lambda _: self.allow.forget(model.provider))  # it may list more now
        return job

    def _expire(self) -> None:
        cutoff = self._clock() - self.limits.load_job_ttl
        for address, job in list(self.jobs.items()):
            if job.finished_at is not None and job.finished_at < cutoff:
                del self.jobs[address]
