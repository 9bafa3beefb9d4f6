"""The `%farm` subcommands: each a plain function of `(session, args)` (or `(kept, session, args)`
where it keeps something between calls or draws an answer), declared with IPython's
`magic_arguments`, found by name in `COMMANDS`. `%farm help` is made from their usage lines and
docstrings.
"""

from __future__ import annotations

import re
import subprocess
import sys
from argparse import ArgumentParser
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..display.formats import describe_failures, seconds, short, size
from ..display.progress import show_progress
from ..display.table import Table
from ..errors import FarmError
from .targets import asked, check_provider, resolve

if TYPE_CHECKING:
    from ..sessions import Session
    from .frontend import Screen

Command = Callable[..., Any]
COMMANDS: dict[str, tuple[Command, bool]] = {}  # name -> (function, takes what is kept first)


@dataclass
class Kept:
    """What `%farm` keeps between subcommands (FarmCommands owns it), and where an answer goes."""

    screen: Callable[[str], Screen]  # the running cell's, for the magic named
    ollama: subprocess.Popen[bytes] | None = None  # `ollama serve`, when %farm ollama started it
    dashboard: Any = None
    sidebars: list[tuple[Any, Any]] = field(default_factory=list)  # (Sidecar, ChatWidget) of %farm sidebar

    def close(self) -> None:
        """Stop what was started here: the dashboard's timers, `ollama serve`."""
        self.close_dashboard()
        sidebars, self.sidebars = self.sidebars, []
        for side, chat in sidebars:
            chat.close()
            side.close()
        if self.ollama is not None:
            from .ollama_serve import stop_process

            stop_process(self.ollama)
            self.ollama = None

    def close_dashboard(self) -> None:
        dashboard, self.dashboard = self.dashboard, None
        if dashboard is not None:
            dashboard.close()


def command(name: str, *, shell: bool = False) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, shell)
        return fn

    return register


def usage(fn: Command) -> str:
    """`%farm models [PROVIDER]`: the parser's usage line, without the `-h` every one has."""
    words = _parser(fn).format_usage().replace("[-h]", "").split()
    return " ".join(words[1:] if words[0] in ("::", "usage:") else words)


def _parser(fn: Command) -> ArgumentParser:
    parser: ArgumentParser = getattr(fn, "parser")  # noqa: B009 - set by @magic_arguments
    return parser


def run(kept: Kept, session: Callable[[], Session], name: str, rest: str) -> Any:
    """Parse `rest` for the subcommand `name` and run it on `session()`; an unknown one is a UsageError."""
    if name == "help":
        return help_table()
    if name not in COMMANDS:
        raise UsageError(f"unknown subcommand %farm {name}: try %farm help")
    fn, shell = COMMANDS[name]
    try:
        args = parse_argstring(fn, rest)
    except UsageError as exc:
        raise UsageError(f"{exc}; usage: {usage(fn)}") from None
    except ValueError as exc:  # IPython's own splitting of the line: `0' '` has no closing quotation for it
        raise UsageError(f"cannot parse %farm {name}{rest}: {exc}; usage: {usage(fn)}") from None
    return fn(kept, session(), args) if shell else fn(session(), args)


def help_table() -> Table:
    rows = [("%farm help", "this list")]
    rows += [(usage(fn), (_parser(fn).description or "").strip().splitlines()[0]) for fn, _ in COMMANDS.values()]
    rows.append(("%%farm_chat [options]", "ask a model; %%farm_chat? lists the options"))
    return Table(["command", "what it does"], rows, title="farm_jupyter magics")


@command("models")
@magic_arguments("farm models")
@argument("provider", nargs="?", metavar="PROVIDER")
def models(session: Session, args: Any) -> Table:
    """the models each provider has (or one provider's)"""
    provider = args.provider
    if provider:
        check_provider(provider)
    headers = ["model", "family", "parameters", "quantization", "size", "loaded"]
    lists: Mapping[str, Any] = {provider: session.models(provider)} if provider else session.models(by_provider=True)
    where = provider or ", ".join(lists)
    rows: list[tuple[Any, ...]] = []
    down = {name: found for name, found in lists.items() if isinstance(found, BaseException)}
    for found in lists.values():
        if not isinstance(found, BaseException):
            rows += [(m.address, m.family, m.parameter_size, m.quantization, size(m.size), m.loaded) for m in found]
    if down and not rows:
        errors = [(name, str(exc)) for name, exc in down.items()]
        said = "no provider answered: each one's error is above"
        return Table(["provider", "error"], errors, title=f"models ({where})", caption=said)
    if down:  # the models of those that answered, and one row for each that did not
        headers.append("error")
        rows = [(*row, "") for row in rows]
        rows += [(name, "", "", "", "", "", str(exc)) for name, exc in down.items()]
    caption = None if rows else "no models found: %farm pull MODEL"
    return Table(headers, rows, title=f"models ({where})", caption=caption)


@command("use")
@magic_arguments("farm use")
@argument("target", nargs="?", metavar="TARGET")
def use(session: Session, args: Any) -> None:
    """set the session's default model (provider:model, provider, model or alias); no argument shows it"""
    if args.target:
        resolve(session, args.target)
        session.use(args.target)
    print(f"default model: {resolve(session, None)}")


@command("health")
@magic_arguments("farm health")
@argument("providers", nargs="*", metavar="PROVIDER")
def health(session: Session, args: Any) -> Table:
    """is each provider reachable: state, latency, loaded models"""
    for name in args.providers:
        check_provider(name)
    rows = [
        (s.provider, s.state, s.url, seconds(s.latency), ", ".join(s.models_loaded), s.version, s.error)
        for s in session.health(args.providers or None)
    ]
    headers = ["provider", "state", "url", "latency", "models loaded", "version", "error"]
    return Table(headers, rows, title="provider health")


@command("gpu")
@magic_arguments("farm gpu")
def gpu(session: Session, args: Any) -> Table:
    """GPU memory, utilisation, temperature and processes"""
    try:
        stats = session.gpu()
    except ImportError as exc:
        raise FarmError(f"GPU stats are not available ({exc})", hint='pip install "farm-jupyter[gpu]"') from None
    rows = [
        (
            d.index,
            d.name,
            f"{size(d.memory_used)} / {size(d.memory_total)}",
            None if d.utilization is None else f"{d.utilization:.0f}%",
            None if d.temperature is None else f"{d.temperature:.0f}°C",
            None if d.power is None else f"{d.power:.0f} W",
            len(d.processes),
        )
        for d in stats.devices
    ]
    ram = f"RAM {size(stats.ram_used)} / {size(stats.ram_total)}" if stats.ram_total else ""
    if stats.cpu_percent is not None:
        ram += f"{' · ' if ram else ''}CPU {stats.cpu_percent:.0f}%"
    caption = ram if stats.devices else f"no GPU: {stats.reason or 'none found'}" + (f" · {ram}" if ram else "")
    headers = ["gpu", "name", "memory", "utilisation", "temperature", "power", "processes"]
    return Table(headers, rows, title=f"GPU ({stats.source})", caption=caption or None)


@command("stats")
@magic_arguments("farm stats")
def stats(session: Session, args: Any) -> Table:
    """per-model requests, latency p50/p95, time to first token, tokens/s, cache hits"""
    failures = session.usage("failures")
    rows: list[tuple[Any, ...]] = []
    shown: set[str] = set()
    for s in session.usage("requests"):
        provider = s.address.partition(":")[0]
        # a provider's failures by class go on its first row (they are the provider's, not a model's)
        kinds = "" if provider in shown else describe_failures(failures.get(provider, {}))
        shown.add(provider)
        rows.append(
            (
                s.address,
                s.requests,
                s.errors,
                s.cache_hits,
                seconds(s.p50),
                seconds(s.p95),
                seconds(s.first_token_p50),
                None if s.tokens_per_second is None else f"{s.tokens_per_second:.1f}",
                s.tokens_out,
                kinds,
            )
        )
    for provider, kinds_of in failures.items():  # failed without ever answering (a fallback answered)
        if provider not in shown and any(kinds_of.values()):
            rows.append((provider, "", "", "", "", "", "", "", "", describe_failures(kinds_of)))
    headers = ["model", "requests", "errors", "cache hits", "p50", "p95", "TTFT p50", "tok/s", "tokens out", "failures"]
    return Table(headers, rows, title="requests this session", caption=None if rows else "no requests yet")


@command("usage")
@magic_arguments("farm usage")
def usage_table(session: Session, args: Any) -> Table:
    """tokens in and out, cache savings and cost per model ([prices], [budget] in farm.toml)"""
    report = session.usage()
    rows = [
        (r.address, r.requests, r.cache_hits, r.tokens_in, r.tokens_out, r.saved_in + r.saved_out, r.cost_text())
        for r in report
    ]
    headers = ["model", "requests", "cache hits", "tokens in", "tokens out", "tokens saved by cache", "cost"]
    return Table(headers, rows, title="usage this session", caption=report.summary() if rows else "no requests yet")


@command("history")
@magic_arguments("farm history")
def history(session: Session, args: Any) -> Table:
    """the turns of the conversation that %%farm_chat cells form"""
    turns = list(session.history.turns)
    rows = [(i, t.id, t.address, short(t.user.content), short(t.assistant.content)) for i, t in enumerate(turns, 1)]
    caption = None if rows else "no turns yet: ask with %%farm_chat"
    return Table(["#", "turn", "model", "you", "answer"], rows, title="conversation", caption=caption)


@command("reset")
@magic_arguments("farm reset")
def reset(session: Session, args: Any) -> None:
    """start a new conversation"""
    n = len(session.history)
    session.reset()
    print(f"new conversation ({n} earlier turn{'s' if n != 1 else ''} dropped)")


@command("cache")
@magic_arguments("farm cache")
@argument("action", nargs="?", default="info", metavar="info|clear")
def cache(session: Session, args: Any) -> Table | None:
    """the response cache: its state, or empty it"""
    action = args.action.lower()
    if action == "info":
        return Table(["", ""], list(session.usage("cache").items()), title="response cache")
    if action == "clear":
        session.reset(cache=True)
        print(f"cache cleared ({session.usage('cache')['backend']})")
        return None
    raise UsageError(f"unknown cache action {args.action!r}: use %farm cache info or %farm cache clear")


@command("config")
@magic_arguments("farm config")
def config(session: Session, args: Any) -> Table:
    """the settings in effect (secrets masked) and where they came from"""
    data = session.settings.public()
    source = data.pop("source", None)
    rows = list(_flatten(data))
    rows.insert(0, ("default", resolve(session, None)))
    caption = f"from {source} + environment" if source else "from defaults + environment (no farm.toml found)"
    return Table(["setting", "value"], rows, title="farm_jupyter settings", caption=caption)


def _flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, Mapping) and data:
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list | tuple):
        yield prefix, ", ".join(str(v) for v in data)
    else:
        yield prefix, "" if data is None or data == {} else data


def _nothing(address: str, action: str) -> None:
    """Said when a model's provider serves its models remotely."""
    provider = address.partition(":")[0]
    print(
        f"{address}: nothing to {action}: {provider} serves its models remotely; ask it with %%farm_chat -m {address}"
    )


@command("pull")
@magic_arguments("farm pull")
@argument("model", metavar="MODEL")
def pull(session: Session, args: Any, action: str = "pull") -> None:
    """download (Ollama) and load a model, with a progress bar: the same as load"""
    address = resolve(session, args.model)
    try:
        steps = session.load(args.model, reload=action == "reload")
    except FarmError as exc:
        raise UsageError(str(exc)) from None
    if steps is None:
        _nothing(address, action)
        return
    show_progress(steps)
    print(f"{address}: {'reloaded' if action == 'reload' else 'pulled and loaded'}")


@command("load")
@magic_arguments("farm load")
@argument("model", metavar="MODEL")
def load(session: Session, args: Any) -> None:
    """pull if needed and load a model into memory"""
    pull(session, args, "load")


@command("unload")
@magic_arguments("farm unload")
@argument("model", metavar="MODEL")
def unload(session: Session, args: Any) -> None:
    """free a model's memory"""
    address = resolve(session, args.model)
    if session.unload(args.model):
        print(f"{address}: unloaded")
    else:
        _nothing(address, "unload")


@command("reload")
@magic_arguments("farm reload")
@argument("model", metavar="MODEL")
def reload(session: Session, args: Any) -> None:
    """unload, then load a model again"""
    pull(session, args, "reload")


@command("alias")
@magic_arguments("farm alias")
@argument("name", nargs="?", metavar="NAME")
@argument("target", nargs="?", metavar="TARGET")
def alias(session: Session, args: Any) -> Table | None:
    """name a target (%farm alias fast ollama:qwen2.5:0.5b); no argument lists aliases"""
    aliases = session.settings.aliases
    if args.name is None:
        caption = None if aliases else "no aliases: %farm alias NAME TARGET"
        return Table(["alias", "target"], sorted(aliases.items()), title="aliases", caption=caption)
    if args.target is None:
        raise UsageError("usage: %farm alias NAME TARGET")
    name, target = args.name, args.target
    if not re.fullmatch(r"[\w.-]+", name) or name in session.settings.chain:
        raise UsageError(f"alias name {name!r} must be letters, digits, '-', '_' or '.', and not a provider's name")
    resolved = resolve(session, target)
    aliases[name] = target
    try:
        resolve(session, name)
    except UsageError:
        del aliases[name]
        raise
    print(f"{name} -> {resolved}")
    return None


@command("unalias")
@magic_arguments("farm unalias")
@argument("name", metavar="NAME")
def unalias(session: Session, args: Any) -> None:
    """remove an alias"""
    if args.name not in session.settings.aliases:
        raise UsageError(f"no alias named {args.name!r}: %farm alias lists them")
    del session.settings.aliases[args.name]
    print(f"alias {args.name} removed")


@command("why")
@magic_arguments("farm why")
def why(session: Session, args: Any) -> None:
    """the request body the last answer was asked with, as the server received it"""
    from IPython.display import display

    found = session.explain()
    display({"text/plain": found.line}, raw=True)
    if found.body is not None:  # its own output: byte for byte what was sent (secrets masked)
        display({"text/plain": found.body}, raw=True)


@command("error", shell=True)
@magic_arguments("farm error")
@argument("model", nargs="?", metavar="MODEL")
def error(kept: Kept, session: Session, args: Any) -> None:
    """ask a model (the default one) to explain the last exception"""
    import traceback

    from .answer import show_answer

    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if exc is None:
        raise UsageError("no exception to explain yet: run a cell that fails, then %farm error")
    trace = "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__ or getattr(sys, "last_traceback", None))
    )
    if len(trace) > 8000:
        trace = trace[:2000] + "\n...\n" + trace[-6000:]
    prompt = (
        "A cell in my Jupyter notebook failed with this exception. Explain briefly what went wrong "
        "and how to fix it, with corrected code if that helps.\n\n```\n" + trace + "\n```"
    )
    show_answer(kept.screen("%farm"), asked(session, prompt, args.model))


@command("ollama", shell=True)
@magic_arguments("farm ollama")
@argument("action", metavar="start|stop")
def ollama(kept: Kept, session: Session, args: Any) -> None:
    """run `ollama serve` in the background (and pull the auto_pull models), or stop it"""
    from . import ollama_serve as serve

    action = args.action.lower()
    if action == "start":
        kept.ollama = serve.start(session, kept.ollama)
    elif action == "stop":
        proc, kept.ollama = kept.ollama, None
        serve.stop(proc)
    else:
        raise UsageError(f"unknown ollama action {args.action!r}: use %farm ollama start or %farm ollama stop")


@command("dashboard", shell=True)
@magic_arguments("farm dashboard")
def dashboard(kept: Kept, session: Session, args: Any) -> Any:
    """the health, GPU and stats widgets in one panel"""
    try:
        from ..widgets import Dashboard
    except ImportError as exc:
        raise FarmError(
            f"the dashboard is not available ({exc})", hint='pip install "ipywidgets>=8", then %reload_ext farm_jupyter'
        ) from None
    kept.close_dashboard()  # one live dashboard per kernel: the previous one's timers stop
    kept.dashboard = Dashboard(session)
    return kept.dashboard
