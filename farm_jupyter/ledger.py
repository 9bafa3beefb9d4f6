"""What the session used and what it cost: tokens, requests, cache savings, money, compute.

Prices are US dollars per million tokens, from `[prices]` in farm.toml::

    [prices]
    "openai:gpt-4o-mini" = { input = 0.15, output = 0.60 }

A few defaults ship with the date they were read off the vendor's page, and the report says
that date: a price nobody set is shown as "price unknown", never guessed. Local models cost
compute, not money: their seconds of generation are counted instead. `[budget] usd = 5` stops
the next priced request that could take the spend past five dollars, before it is sent.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

from .config import Price, Settings
from .errors import FarmError
from .monitor import Monitor, RequestRecord
from .types import Usage

# Read off openai.com/api/pricing on the date given; override them in [prices].
SHIPPED_PRICES = {
    "openai:gpt-4o-mini": Price(input=0.15, output=0.60, as_of="2024-07-18"),
    "openai:gpt-4o": Price(input=2.50, output=10.00, as_of="2024-10-01"),
}
LOCAL_PROVIDERS = frozenset({"huggingface", "llamacpp"})


class BudgetExceeded(FarmError):
    pass


def usd(amount: float, *, given: bool = False) -> str:
    """Dollars as they can be read truly: an amount someone `given` (a budget) at the precision it
    was written ("$0.0001", "$5.00"), a computed one to two significant digits below ten cents
    ("$0.000012"), cents above; never "$0.00" for something that is not nothing."""
    if given:
        exponent = Decimal(repr(float(amount))).normalize().as_tuple().exponent
        places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        return f"${amount:.{min(max(places, 2), 12)}f}"
    if amount == 0 or not math.isfinite(amount):
        return f"${amount:.2f}"
    places = 1 - math.floor(math.log10(abs(amount)))
    return f"${amount:.{min(max(places, 2), 12)}f}"


@dataclass
class UsageRow:
    address: str
    requests: int = 0
    cache_hits: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    saved_in: int = 0  # tokens a cache hit did not have to pay for
    saved_out: int = 0
    seconds: float = 0.0  # generation time of the requests that were not cache hits
    cost: float | None = None  # USD; None when the price is unknown
    price_note: str = ""

    @property
    def provider(self) -> str:
        return self.address.split(":", 1)[0]

    def cost_text(self) -> str:
        if self.provider in LOCAL_PROVIDERS:
            return f"local: {self.seconds:.1f}s of compute"
        if self.cost is None:
            return "price unknown"
        return usd(self.cost) + (f" ({self.price_note})" if self.price_note else "")


class UsageReport:
    """Rows per provider:model, in the order first used; a text table, markdown, or pandas."""

    COLUMNS = ("model", "requests", "cache hits", "tokens in", "tokens out", "saved by cache", "cost")

    def __init__(self, rows: list[UsageRow], budget: float | None, spent: float) -> None:
        self.rows = rows
        self.budget = budget
        self.spent = spent

    def __iter__(self) -> Iterator[UsageRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _cells(self) -> list[list[str]]:
        return [
            [
                r.address,
                str(r.requests),
                str(r.cache_hits),
                str(r.tokens_in),
                str(r.tokens_out),
                f"{r.saved_in + r.saved_out} tokens",
                r.cost_text(),
            ]
            for r in self.rows
        ]

    def summary(self) -> str:
        line = f"spent {usd(self.spent)} on priced models"
        if self.budget is not None:
            line += f" of a {usd(self.budget, given=True)} budget"
        return line

    def __repr__(self) -> str:
        cells = [list(self.COLUMNS), *self._cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        return "\n".join([*lines, self.summary()])

    def _repr_markdown_(self) -> str:
        head = "| " + " | ".join(self.COLUMNS) + " |\n|" + "---|" * len(self.COLUMNS) + "\n"
        body = "".join("| " + " | ".join(row) + " |\n" for row in self._cells())
        return head + body + f"\n{self.summary()}\n"

    def to_pandas(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame([vars(r) | {"cost_text": r.cost_text()} for r in self.rows])


@dataclass
class BatchPrice:
    input: float
    output: float
    note: str  # where the price comes from, said beside the cost

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input + tokens_out * self.output) / 1e6


def batch_price(settings: Settings, address: str) -> BatchPrice | None:
    """The Batch API's price for `address`: set in `[prices]`, else half the regular one (assumed)."""
    price = settings.prices.get(address) or SHIPPED_PRICES.get(address)
    if price is None:
        return None
    if price.batch_input is not None and price.batch_output is not None:
        return BatchPrice(price.batch_input, price.batch_output, "batch price from [prices]")
    return BatchPrice(price.input / 2, price.output / 2, "batch price, assumed: half the regular price")


class Ledger:
    """Running totals fed by the monitor, so a budget check costs a lookup, not a scan."""

    def __init__(self, settings: Settings, monitor: Monitor) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._rows: dict[str, UsageRow] = {}
        self.spent = 0.0
        self.held = 0.0  # reserved by requests in flight (`hold`)
        monitor.subscribe(self._add)

    def price(self, address: str) -> Price | None:
        return self.settings.prices.get(address) or SHIPPED_PRICES.get(address)

    def _add(self, record: RequestRecord) -> None:
        usage = record.usage
        if usage is None:
            return
        address = f"{record.provider}:{record.model}"
        price = self.price(address)
        tokens_in, tokens_out = usage.prompt_tokens, usage.completion_tokens
        with self._lock:
            row = self._rows.setdefault(address, UsageRow(address))
            row.requests += 1
            if record.cached:
                row.cache_hits += 1
                row.saved_in += tokens_in
                row.saved_out += tokens_out
                return
            row.tokens_in += tokens_in
            row.tokens_out += tokens_out
            row.seconds += record.total
            if price is not None:
                cost = price.cost(tokens_in, tokens_out)
                row.cost = (row.cost or 0.0) + cost
                self.spent += cost
                row.price_note = "" if address in self.settings.prices else f"shipped price as of {price.as_of}"

    def add_batch(self, address: str, usages: Sequence[Usage]) -> float:
        """A Batch API job's answered rows, at the batch price (they never pass the monitor: a row
        has no time of its own to add to the figures); returns what they cost."""
        price = batch_price(self.settings, address)
        cost = 0.0
        with self._lock:
            row = self._rows.setdefault(address, UsageRow(address))
            for usage in usages:
                row.requests += 1
                row.tokens_in += usage.prompt_tokens
                row.tokens_out += usage.completion_tokens
                if price is not None:
                    cost += price.cost(usage.prompt_tokens, usage.completion_tokens)
            if price is not None and usages:
                row.cost = (row.cost or 0.0) + cost
                self.spent += cost
                row.price_note = price.note
        return cost

    def report(self) -> UsageReport:
        with self._lock:
            rows = [UsageRow(**vars(r)) for r in self._rows.values()]
            return UsageReport(rows, self.settings.budget.usd, self.spent)

    def hold(self, address: str, tokens_in: int, max_out: int) -> float:
        """Reserve the most a request could cost, or raise if that could take the spend past the
        budget; what is held by requests in flight counts, so concurrent ones cannot all pass.
        Returns the amount to `release` when the request is over (its real cost is then spent)."""
        budget = self.settings.budget.usd
        price = self.price(address)
        if budget is None or price is None:
            return 0.0
        worst = price.cost(tokens_in, max_out)
        with self._lock:
            if self.spent + self.held + worst > budget:
                raise BudgetExceeded(
                    f"this request to {address} could cost up to {usd(worst)}, and {usd(self.spent + self.held)} "
                    f"of the {usd(budget, given=True)} budget is spent or held by requests in flight",
                    hint="raise [budget] usd in farm.toml, lower max_tokens, or use a local model",
                )
            self.held += worst
        return worst

    def release(self, amount: float) -> None:
        if amount:
            with self._lock:
                self.held -= amount

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self.spent = 0.0
