"""What farm_jupyter adds to a request, in microseconds at p50, next to the server's own time; this
checkout against earlier commits in the same run, interleaved.

    python benchmarks/overhead_ab.py [--arm NAME=COMMIT ...] [--rounds 12]
                                     [--runs 60] [--relay-runs 4] [--json]

Each arm is a process of its own with that commit's package on PYTHONPATH (exported with
`git archive` into benchmarks/.cache/ab/<commit>; this checkout is the arm `this`), all asking the
same loopback servers (each in its own process). Rounds go arm after arm, the order rotating, so
a busy minute on a shared machine lands on every arm alike; the spread is over rounds.

Per protocol (Ollama through httpx, OpenAI through the sync SDK), chat and stream, 20-token answers:
- `server`: the request's bytes on a kept-alive socket and the reply read by hand: the loopback
  server's own time per request (plus the loopback hop). A ratio to a slow server flatters: say
  the microseconds added next to it;
- `raw`: the client by hand, sending what ours sends (the OpenAI stream asks for usage, as ours does);
- `ours`: Session.chat / Session.stream, cache off; `added` = ours - raw, per round (same process,
  same minute), p50 over its runs; the figure is the median over rounds, the spread min..max.
Relay: a 2,000-token stream, raw time / ours time (>= 0.95 is the goal).
"worse"/"better" than another arm: the two arms' rounds do not overlap (beyond the run's spread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import emit, target  # noqa: E402
from _servers import serve  # noqa: E402

from farm_jupyter.testing.pytest_plugin import TEST_API_KEY  # noqa: E402

GOAL_US = 150.0
RELAY_GOAL = 0.95
GROUPS = ("ollama chat", "ollama stream", "openai chat", "openai stream")


def export(commit: str) -> Path:
    """The commit's tree (its package) under benchmarks/.cache/ab/<sha>, exported once."""
    sha = subprocess.run(["git", "rev-parse", commit], capture_output=True, text=True, cwd=ROOT, check=True)
    where = HERE / ".cache" / "ab" / sha.stdout.strip()
    if not (where / "farm_jupyter").is_dir():
        tar = subprocess.run(["git", "archive", commit, "farm_jupyter"], capture_output=True, cwd=ROOT, check=True)
        where.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=BytesIO(tar.stdout)) as t:
            t.extractall(where, filter="data")
    return where


class Arm:
    def __init__(self, name: str, root: Path, config: dict[str, Any]) -> None:
        self.name, self.root = name, root
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_ab_child.py"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"arm {name} did not start (exit {self.proc.poll()})")
        self.package = ready[1]
        if not self.package.startswith(str(root)):
            raise RuntimeError(f"arm {name} imported {self.package}, not its own package under {root}")
        self.rounds: list[dict[str, dict[str, list[float]]]] = []

    def round(self, runs: int, relay_runs: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{runs} {relay_runs}\n")
        self.proc.stdin.flush()
        self.rounds.append(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)

    # figures over rounds

    def p50(self, group: str, variant: str) -> list[float]:
        return [statistics.median(r[group][variant]) for r in self.rounds]

    def added(self, group: str, cpu: str = "", *, of: str = "ours", base: str = "raw") -> list[float]:
        """`of` - `base` per round (p50 each): by default what ours adds to the raw client."""
        return [o - r for o, r in zip(self.p50(group, of + cpu), self.p50(group, base + cpu), strict=True)]

    def relay(self, group: str) -> list[float]:
        return [r / o for r, o in zip(self.p50(group, "raw"), self.p50(group, "ours"), strict=True)]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def spread(values: list[float], unit: Any = us) -> str:
    return f"{unit(statistics.median(values))} ({unit(min(values))}..{unit(max(values))})"


def verdict(mine: list[float], other: list[float], name: str, higher_is_worse: bool = True) -> str:
    """`worse than NAME`, `better than NAME`, or `same as NAME` when the rounds overlap."""
    if min(mine) > max(other):
        return f"{'worse' if higher_is_worse else 'better'} than {name}"
    if max(mine) < min(other):
        return f"{'better' if higher_is_worse else 'worse'} than {name}"
    return f"same as {name} (within the spread)"


def report(arms: list[Arm], loads: list[float], rounds: int, runs: int, relay_runs: int) -> tuple[str, dict[str, Any]]:
    lines = [
        "### Added per request at p50, next to the server's own time (microseconds; median over rounds, min..max)",
        "",
        "| arm | protocol, mode | server's own | raw client | ours | added (ours - raw) | ours / raw | CPU added "
        "| the floor: async client on the runtime loop, added | ours beyond the floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    figures: dict[str, Any] = {}
    for group in GROUPS:
        for arm in arms:
            added = arm.added(group)
            ratio = [o / r for o, r in zip(arm.p50(group, "ours"), arm.p50(group, "raw"), strict=True)]
            lines.append(
                f"| {arm.name} | {group} | {spread(arm.p50(group, 'floor'))} | {spread(arm.p50(group, 'raw'))} | "
                f"{spread(arm.p50(group, 'ours'))} | **{spread(added)}** | {statistics.median(ratio):.2f}x | "
                f"{spread(arm.added(group, ' cpu'))} | {spread(arm.added(group, of='hop'))} | "
                f"{spread(arm.added(group, base='hop'))} |"
            )
            figures.setdefault(arm.name, {})[group] = {
                "server_us": statistics.median(arm.p50(group, "floor")) * 1e6,
                "raw_us": statistics.median(arm.p50(group, "raw")) * 1e6,
                "ours_us": statistics.median(arm.p50(group, "ours")) * 1e6,
                "added_us": statistics.median(added) * 1e6,
                "added_us_min": min(added) * 1e6,
                "added_us_max": max(added) * 1e6,
                "cpu_added_us": statistics.median(arm.added(group, " cpu")) * 1e6,
                "floor_added_us": statistics.median(arm.added(group, of="hop")) * 1e6,
                "beyond_floor_us": statistics.median(arm.added(group, base="hop")) * 1e6,
            }
    relayed = [g for g in ("ollama relay", "openai relay") if g in arms[0].rounds[0]]
    if relayed:
        lines += [
            "",
            "### Relay: a 2,000-token stream, raw time / ours time (median over rounds, min..max)",
            "",
            "| arm | " + " | ".join(relayed) + " |",
            "|---|" + "---:|" * len(relayed),
        ]
        for arm in arms:
            cells = [spread(arm.relay(g), lambda x: f"{x:.3f}") for g in relayed]
            lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
            for g in relayed:
                figures[arm.name][g] = {"rate_ratio": statistics.median(arm.relay(g))}
    this = arms[-1]
    lines += ["", f"### A/B: each arm against `{this.name}` (this checkout), added per request", ""]
    lines += ["| arm | " + " | ".join(GROUPS) + " | " + " | ".join(relayed) + " |"]
    lines += ["|---|" + "---|" * (len(GROUPS) + len(relayed))]
    for arm in arms[:-1]:
        cells = [f"{this.name}: {verdict(this.added(g), arm.added(g), arm.name)}" for g in GROUPS]
        cells += [
            f"{this.name}: {verdict(this.relay(g), arm.relay(g), arm.name, higher_is_worse=False)}" for g in relayed
        ]
        lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    if len(arms) > 2:  # the commit before the house work against main, as the issue asks
        base, main = arms[0], arms[-2]
        cells = [f"{main.name}: {verdict(main.added(g), base.added(g), base.name)}" for g in GROUPS]
        cells += [
            f"{main.name}: {verdict(main.relay(g), base.relay(g), base.name, higher_is_worse=False)}" for g in relayed
        ]
        lines.append(f"| {base.name} vs {main.name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- {rounds} rounds x {runs} runs of each variant (relay: {relay_runs}), arms in rotating order; "
        f"load average (1 min) over the rounds: {min(loads):.2f}..{max(loads):.2f}, median {statistics.median(loads):.2f}.",
        "- arms: " + "; ".join(f"`{a.name}` = {a.root}" for a in arms) + ".",
        "- server's own: the request's bytes on a kept-alive socket and the reply read by hand, no HTTP "
        "library: the loopback server's time plus the loopback hop; raw and ours send the same request.",
        "- CPU added: the client process's CPU time (all its threads) per request, ours - raw, p50: our own "
        "work, which the server's time cannot hide (a stream's relay overlaps the server's next line).",
    ]
    figures["load"] = {"min": min(loads), "max": max(loads), "median": statistics.median(loads)}
    return "\n".join(lines), figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", action="append", default=[], help="name=commit, compared with this checkout")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--relay-runs", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--relay-tokens", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # The commit the house work (issue 26) started from, and main as this branch last merged it.
    specs = [a.split("=", 1) for a in (args.arm or ["before-house=92e0cfd", "main-b16ca37=b16ca37"])]

    key = TEST_API_KEY
    with (
        serve("ollama", tokens=args.tokens) as ollama,
        serve("openai", api_key=key, tokens=args.tokens) as oai,
        serve("ollama", tokens=args.relay_tokens) as relay_ollama,
        serve("openai", api_key=key, tokens=args.relay_tokens) as relay_oai,
    ):
        config = {"ollama": ollama.url, "openai": oai.url, "key": key}
        if args.relay_runs:
            config |= {"relay_ollama": relay_ollama.url, "relay_openai": relay_oai.url}
        arms = [Arm(name, export(commit), config) for name, commit in specs] + [Arm("this", ROOT, config)]
        loads: list[float] = []
        try:
            for r in range(args.rounds):
                shift = r % len(arms)
                for arm in arms[shift:] + arms[:shift]:
                    arm.round(args.runs, args.relay_runs)
                loads.append(os.getloadavg()[0])
                print(f"[overhead_ab] round {r + 1}/{args.rounds}, load {loads[-1]:.2f}", file=sys.stderr, flush=True)
        finally:
            for arm in arms:
                arm.close()

    text, figures = report(arms, loads, args.rounds, args.runs, args.relay_runs)
    this = figures["this"]
    targets = [
        target(
            f"{group}: added <= {GOAL_US:.0f} us at p50 (server's own {this[group]['server_us']:.0f} us)",
            f"{this[group]['added_us']:.0f} us ({this[group]['added_us_min']:.0f}..{this[group]['added_us_max']:.0f})",
            this[group]["added_us"] <= GOAL_US,
        )
        for group in GROUPS
    ]
    targets += [
        target(
            f"{g}: >= {RELAY_GOAL}x the raw rate", f"{this[g]['rate_ratio']:.3f}x", this[g]["rate_ratio"] >= RELAY_GOAL
        )
        for g in ("ollama relay", "openai relay")
        if g in this
    ]
    emit(text, {"figures": figures, "targets": targets, "started": time.time()})


if __name__ == "__main__":
    main()
