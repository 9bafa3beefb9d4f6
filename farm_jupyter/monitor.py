"""What each request cost and where it went; per-model summaries for `%farm stats` and widgets."""

from __future__ import annotations

import statistics
import threading
from collections import Counter, deque
from collections.abc import Callable

from .records import ModelSummary, RequestRecord


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


class Monitor:
    def __init__(self, max_records: int = 10_000) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=max_records)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[RequestRecord], None]] = []
        self._failures: dict[str, Counter[str]] = {}

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(record)
            except Exception:  # noqa: BLE001 - a broken widget must not break requests
                pass

    def record_error(self, provider: str, model: str, error: BaseException, total: float) -> None:
        self.record(RequestRecord(provider, model, total, error=str(error)))

    def record_failure(self, provider: str, kind: str) -> None:
        """One failed attempt at a provider, by failure class (`ProviderError.kind`)."""
        with self._lock:
            self._failures.setdefault(provider, Counter())[kind] += 1

    def failure_counts(self) -> dict[str, dict[str, int]]:
        """provider -> {failure kind: attempts that failed so}, for `%farm stats` and the board."""
        with self._lock:
            return {p: dict(c) for p, c in self._failures.items()}

    def chars_per_token(self, address: str, least: int = 400) -> float | None:
        """Characters a prompt token of `address` (`provider:model`) stood for in its last answer
        that says (usage reported, not from the cache, a prompt of at least `least` characters, so
        the chat template's own tokens count little); None when none has."""
        with self._lock:
            for r in reversed(self.records):
                if (
                    r.prompt_chars >= least
                    and not r.cached
                    and r.usage is not None
                    and r.usage.prompt_tokens > 0
                    and f"{r.provider}:{r.model}" == address
                ):
                    return r.prompt_chars / r.usage.prompt_tokens
        return None

    def subscribe(self, listener: Callable[[RequestRecord], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def summary(self) -> list[ModelSummary]:
        with self._lock:
            records = list(self.records)
        groups: dict[str, list[RequestRecord]] = {}
        for r in records:
            groups.setdefault(f"{r.provider}:{r.model}", []).append(r)
        out = []
        for address, rs in sorted(groups.items()):
            answers = [r for r in rs if r.usage is not None and r.timings is not None]
            served = [t for r in answers if not r.cached and (t := r.timings) is not None]
            latencies = [t.total for t in served]
            firsts = [t.first_token for t in served if t.first_token is not None]
            rates = [t.rate for t in served if t.rate]
            out.append(
                ModelSummary(
                    address=address,
                    requests=len(rs),
                    errors=len(rs) - len(answers),
                    cache_hits=len(answers) - len(served),
                    p50=_quantile(latencies, 0.5),
                    p95=_quantile(latencies, 0.95),
                    first_token_p50=_quantile(firsts, 0.5),
                    tokens_per_second=statistics.median(rates) if rates else None,
                    tokens_out=sum(r.usage.completion_tokens for r in answers if r.usage is not None),
                )
            )
        return out

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self._failures.clear()
