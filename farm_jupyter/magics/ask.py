"""ChatMagics: the `%%farm_chat` cell magic, one answer (or several side by side) streamed into the cell.

It asks through the Session that FarmMagics (the front door, `cell.py`) hands it, draws on the
running cell's Screen (`frontend.py`), and keeps the count of display updates of its last answer.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from ..context import DEFAULT_BUDGET, Collector  # standard library only, like this module
from .answer import show_answer
from .comparison import show_comparison
from .frontend import Room
from .interpolate import interpolate
from .targets import asked, check_provider, join

if TYPE_CHECKING:
    pass

FORMATS = ("markdown", "text", "code", "json")


@magics_class
class ChatMagics(Room):
    """`%%farm_chat`; its settings are FarmMagics' (`c.FarmMagics.update_rate`)."""

    last_updates = 0  # display updates of the last answer (coalescing is tested on it)

    # fmt: off
    @magic_arguments()
    @argument("-m", "--model", metavar="TARGET", help="provider:model, a model of the default provider, or an alias")
    @argument("-p", "--provider", metavar="NAME", help="the provider (ollama, openai, huggingface, or a registered one)")
    @argument("-t", "--temperature", type=float, metavar="T", help="sampling temperature, 0 to 2")
    @argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    @argument("-s", "--system", metavar="TEXT", help="a system prompt for this request ({name} works here too)")
    @argument("-f", "--format", default="markdown", choices=FORMATS,
              help="markdown (default), text, code (the answer's code goes into a new cell below) or json")
    @argument("-o", "--out", metavar="NAME", help="store the response object (ChatResponse) in this variable")
    @argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    @argument("--refresh", action="store_true", help="ask again even if cached, and cache the new answer")
    @argument("--no-fallback", action="store_true",
              help="exactly the model named, or an error: never another provider (fallback = false in farm.toml)")
    @argument("--new", action="store_true", help="start a new conversation before this question")
    @argument("--no-stream", action="store_true", help="show the answer only when it is complete")
    @argument("--raw", action="store_true", help="send the cell as written: no {name} interpolation")
    @argument("--compare", metavar="A,B,...", help="ask several models at once, side by side, with TTFT, total time and tokens/s")
    @argument("--context-budget", type=int, metavar="TOKENS",
              help=f"most tokens for each {{object}} described in the prompt (a DataFrame's first rows); default {DEFAULT_BUDGET}; "
              "estimated: characters / 4, or at the ratio the model's last usage showed")
    @argument("--schema", metavar="NAME", help="a pydantic model or JSON Schema from the notebook: the answer is validated "
              "(asked again when it does not match) and stored parsed in -o's response.parsed; implies -f json")
    @argument("--tools", metavar="FN1,FN2", help="notebook functions the model may call; each call shows with its result")
    @argument("--think", nargs="?", const=True, default=None, metavar="LEVEL",
              help="ask for the model's reasoning (low, medium or high where the model takes a level); shown folded")
    # fmt: on
    @no_var_expand  # IPython would eval `{expr}` in the line; we interpolate without eval
    @cell_magic
    def farm_chat(self, line: str, cell: str) -> None:
        """Ask a language model; the cell is the prompt, and the answer streams below it.

        Consecutive %%farm_chat cells form one conversation (re-running a cell replaces its
        turn; --new starts over). The prompt may use {name}, {obj.attr}, {d[key]}, {Out[3]} and
        {In[3]} from the notebook (looked up, never evaluated); write {{ and }} for literal
        braces, or use --raw. The answer stays as markdown and text/plain output, with a footer:
        provider:model, time, tokens, and "cached" / "fell back from ..." when so.

        Examples::

            %%farm_chat -m ollama:llama3.1 -t 0.2
            Summarise this table: {df.head()}

            %%farm_chat --compare ollama:llama3.1,openai:gpt-4o-mini
            Write a haiku about {topic}.

        Settings (ipython_config.py, or %config FarmMagics.x = ...): default_model,
        max_history, update_rate, cache_backend. More commands: %farm help.
        """
        try:  # shell quoting (-s "Be terse."), which IPython's own arg_split keeps on the value
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse the options {line!r}: {exc}") from None
        args = self.farm_chat.parser.parse_args(argv)
        ns = self.shell.user_ns if self.shell is not None else {}
        if args.context_budget is not None and args.context_budget < 1:
            raise UsageError(f"--context-budget must be a positive number of tokens, got {args.context_budget}")
        session = self._session()
        target = None if args.compare is not None else join(session, args.model, args.provider)
        # At the ratio that model's usage showed; asked only when an object is described.
        collector = Collector(lambda: session.aio.budget(target, args.context_budget))
        prompt = (cell if args.raw else interpolate(cell, ns, collector=collector)).strip("\r\n").rstrip()
        system = None
        if args.system is not None:
            system = (
                args.system if args.raw else interpolate(args.system, ns, what="system text (-s)", collector=collector)
            )
        asking = _asking(args, ns)
        if collector.images:
            asking["images"] = collector.images
        if collector.described:  # a context-window error then names the budget
            asking["context_budget"] = collector.budget
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"-o/--out needs a variable name, got {args.out!r}")
        params = _params(args)

        if args.provider:
            check_provider(args.provider)
        if args.compare is not None:
            streams = [
                asked(session, prompt, t, system=system, no_cache=args.no_cache, refresh=args.refresh, fallback=False,
                      **params, **asking)
                for t in _compared(args)
            ]  # fmt: skip
            screen = self._screen("%%farm_chat")
            show_comparison(screen, streams, args)
            self.last_updates = screen.updates
            return None

        if args.new:
            session.reset()
        stream = asked(
            session,
            prompt,
            target,
            system=system,
            conversation=session.history,
            turn_id=self._frontend.current_cell_id(),
            no_cache=args.no_cache,
            refresh=args.refresh,
            fallback=False if args.no_fallback else None,
            **params,
            **asking,
        )
        screen = self._screen("%%farm_chat")
        show_answer(screen, stream, fmt=args.format, live=not args.no_stream, out=args.out)
        self.last_updates = screen.updates
        return None


def _asking(args: Any, ns: Mapping[str, Any]) -> dict[str, Any]:
    """--schema, --tools and --think as Session.stream's keywords; names looked up, never evaluated."""
    asking: dict[str, Any] = {}
    if args.schema is not None:
        if args.format not in ("json", "markdown"):
            raise UsageError(f"--schema answers JSON; drop -f {args.format} (or write -f json)")
        args.format = "json"
        if args.schema not in ns:
            raise UsageError(
                f"--schema {args.schema}: no such name in the notebook; define the pydantic model or JSON Schema first"
            )
        asking["schema"] = ns[args.schema]
    if args.tools is not None:
        names = [n.strip() for n in args.tools.split(",") if n.strip()]
        if not names:
            raise UsageError("--tools needs function names separated by commas, e.g. --tools get_weather,lookup")
        tools = []
        for name in names:
            fn = ns.get(name)
            if not callable(fn):
                said = "is not defined in the notebook" if fn is None else f"is a {type(fn).__name__}, not a function"
                raise UsageError(f"--tools {name}: {name} {said}; define it with def first")
            tools.append(fn)
        asking["tools"] = tools
    if args.think is not None:
        if args.think is not True and args.think not in ("low", "medium", "high"):
            raise UsageError(f"--think takes no value or one of low, medium, high; got {args.think!r}")
        asking["think"] = args.think
    if args.context_budget is not None:
        asking["context_budget"] = args.context_budget
    return asking


def _params(args: Any) -> dict[str, Any]:
    """-t, --max-tokens and -f json as generation parameters, checked."""
    params: dict[str, Any] = {}
    if args.temperature is not None:
        if not 0.0 <= args.temperature <= 2.0:
            raise UsageError(f"-t/--temperature must be between 0 and 2, got {args.temperature}")
        params["temperature"] = args.temperature
    if args.max_tokens is not None:
        if args.max_tokens <= 0:
            raise UsageError(f"--max-tokens must be a positive number, got {args.max_tokens}")
        params["max_tokens"] = args.max_tokens
    if args.format == "json":
        params["format"] = "json"
    if args.no_cache and args.refresh:
        raise UsageError("--no-cache and --refresh exclude each other: --refresh asks again and caches the answer")
    return params


def _compared(args: Any) -> list[str]:
    """The targets of --compare, after the options it excludes."""
    if args.model or args.provider:
        raise UsageError("--compare names its models itself; drop -m/-p")
    if args.new:
        raise UsageError("--compare is not a conversation turn, so --new has nothing to reset; drop it")
    if args.format in ("code", "json"):
        raise UsageError(f"-f {args.format} works with one model; use -f markdown or -f text with --compare")
    if args.schema or args.tools:
        raise UsageError("--schema and --tools work with one model; drop --compare")
    targets = [t.strip() for t in args.compare.split(",") if t.strip()]
    if not targets:
        raise UsageError(
            "--compare needs models separated by commas, e.g. --compare ollama:llama3.1,openai:gpt-4o-mini"
        )
    return targets
