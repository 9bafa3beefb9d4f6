"""FarmMagics: the `%%farm_chat` cell magic, the `%farm` line magic and their traitlets.

Loading is instant: this module imports only IPython, traitlets and the standard library at the
top; the session (pydantic, httpx, the providers) is imported inside a magic on first use.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Float, Int, TraitError, Unicode, observe, validate

from ..context import DEFAULT_BUDGET, Collector  # standard library only, like this module
from .interpolate import interpolate
from .targets import check_provider, join, resolve

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ..sessions import Session

FORMATS = ("markdown", "text", "code", "json")
CACHE_BACKENDS = ("", "memory", "disk", "redis", "none")


@magics_class
class FarmMagics(Magics):
    """`%%farm_chat` and `%farm`; the settings below go in `ipython_config.py` as `c.FarmMagics.x`."""

    default_model = Unicode(
        "", help="Default target for %%farm_chat (provider:model, provider, model or alias); '' = from farm.toml/env."
    ).tag(config=True)
    max_history = Int(0, help="Conversation turns sent with each %%farm_chat; 0 = from settings (max_history).").tag(
        config=True
    )
    update_rate = Float(20.0, help="Most screen updates per second while an answer streams.").tag(config=True)
    cache_backend = Unicode("", help="Response cache: memory, disk, redis or none; '' = from settings.").tag(
        config=True
    )

    @validate("update_rate")
    def _valid_rate(self, proposal: Any) -> float:
        rate = float(proposal["value"])
        if not 0 < rate <= 1000:
            raise TraitError(f"update_rate must be within (0, 1000] updates a second, got {rate}")
        return rate

    @validate("cache_backend")
    def _valid_backend(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip().lower()
        if value not in CACHE_BACKENDS:
            raise TraitError(f"cache_backend must be one of memory, disk, redis, none (or ''), got {value!r}")
        current = self._existing_session()
        if current is not None and value and value != current.usage("cache")["backend"]:
            raise TraitError(
                "cache_backend is read when the kernel's session is made: set it in ipython_config.py "
                "or FARM_CACHE and restart the kernel"
            )
        return value

    @observe("default_model", "max_history")
    def _apply_to_session(self, change: Any) -> None:
        """`%config FarmMagics.x = ...` after the first answer still takes effect."""
        current = self._existing_session()
        if current is None:
            return  # applied when the session is made
        if change["name"] == "max_history" and self.max_history:
            current.history.max_turns = self.max_history
        elif change["name"] == "default_model":
            from ..errors import FarmError

            try:
                current.use(self.default_model or None)
            except FarmError as exc:
                raise TraitError(str(exc)) from None

    @staticmethod
    def _existing_session() -> Session | None:
        from ..sessions import current

        return current()

    @validate("max_history")
    def _valid_history(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise TraitError(f"max_history must be >= 0, got {value}")
        return value

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._lock = threading.Lock()
        self._configured: weakref.WeakSet[Session] = weakref.WeakSet()
        self._cell_id: str | None = None
        self._cell_source: str | None = None
        self._ollama: subprocess.Popen[bytes] | None = None  # `ollama serve`, when %farm ollama started it
        self._dashboard: Any = None
        self.last_updates = 0  # display updates of the last answer (coalescing is tested on it)
        self.last_response: Any = None  # the last %%farm_chat answer, for `%farm why`

    # -- plumbing ---------------------------------------------------------------------------------

    def _pre_run_cell(self, info: Any) -> None:
        self._cell_id = getattr(info, "cell_id", None)
        self._cell_source = getattr(info, "raw_cell", None)

    def _post_run_cell(self, result: Any) -> None:
        self._cell_id = None
        self._cell_source = None

    def _owns_cell(self, magic: str) -> bool:
        """Is the running cell this magic alone, so that clearing its outputs loses nothing else?

        A live answer ends by clearing the cell's outputs (see `display.live.Live`); a cell that
        also prints or loops over `run_cell_magic` keeps its outputs, and its answers are shown
        when complete. Called outside a cell (a script, a test) there is nothing else to keep.
        """
        source = self._cell_source
        if source is None:
            return True
        if magic.startswith("%%"):
            return source.lstrip().startswith(magic)
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return len(lines) == 1 and lines[0].lstrip().startswith(magic)

    def current_cell_id(self) -> str | None:
        """The frontend's id of the running cell: IPython's ExecutionInfo, else ipykernel's header."""
        if self._cell_id:
            return str(self._cell_id)
        parent = getattr(self.shell, "parent_header", None)
        if isinstance(parent, Mapping):
            meta = parent.get("metadata")
            if isinstance(meta, Mapping) and meta.get("cellId"):
                return str(meta["cellId"])
        return None

    def session(self) -> Session:
        """The kernel's session; made with this class's traitlets when this is the first use."""
        from .. import sessions

        with self._lock:
            if sessions.current() is None:
                overrides: dict[str, Any] = {}
                if self.cache_backend:
                    overrides["cache"] = {"backend": self.cache_backend}
                if self.max_history:
                    overrides["max_history"] = self.max_history
                sessions.set_session(sessions.Session(config=overrides or None))
            current = sessions.session()
            if current not in self._configured:
                self._configured.add(current)
                if self.max_history:
                    current.history.max_turns = self.max_history
                if self.default_model:
                    current.use(self.default_model)
            return current

    @property
    def ip(self) -> InteractiveShell:
        assert self.shell is not None, "FarmMagics is used through a shell"
        return self.shell

    def _live(self) -> bool:
        """Can this frontend update an output in place? A terminal's plain publisher cannot."""
        pub = getattr(self.shell, "display_pub", None)
        return pub is not None and type(pub) is not DisplayPublisher

    # -- %%farm_chat ------------------------------------------------------------------------------

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
        session = self.session()
        asked = None if args.compare is not None else join(session, args.model, args.provider)
        collector = Collector(session.aio.budget(asked, args.context_budget))  # at the ratio that model's usage showed
        prompt = (cell if args.raw else interpolate(cell, ns, collector=collector)).strip("\r\n").rstrip()
        if not prompt.strip():
            raise UsageError("the prompt is empty: write the question in the cell, below %%farm_chat")
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
            from .compare import show_comparison

            targets = _compared(args)
            addresses = [resolve(session, t) for t in targets]
            show_comparison(self, session, targets, addresses, prompt, system, {**params, **asking}, args)
            return None

        from .answer import show_answer

        target = join(session, args.model, args.provider)
        address = resolve(session, target)
        if args.new:
            session.reset()
        stream = session.stream(
            prompt,
            target,
            system=system,
            conversation=session.history,
            turn_id=self.current_cell_id(),
            no_cache=args.no_cache,
            refresh=args.refresh,
            fallback=False if args.no_fallback else None,
            **params,
            **asking,
        )
        show_answer(
            self,
            session,
            stream,
            address,
            fmt=args.format,
            live=not args.no_stream,
            out=args.out,
            owned=self._owns_cell("%%farm_chat"),
        )
        return None

    # -- %farm ------------------------------------------------------------------------------------

    @no_var_expand
    @line_magic
    def farm(self, line: str) -> Any:
        """Manage the models and the session behind %%farm_chat: `%farm help` lists the subcommands.

        %farm models [PROVIDER]     the models each provider has
        %farm use TARGET            set the default model (provider:model, provider, model, alias)
        %farm health                is each provider reachable
        %farm gpu                   GPU memory and utilisation
        %farm stats                 per-model latency, TTFT, tokens/s, cache hits
        %farm history | reset       the conversation of %%farm_chat cells
        %farm cache [info|clear]    the response cache
        %farm config                the settings in effect, secrets masked
        %farm pull|load|unload|reload MODEL
        %farm alias NAME TARGET | unalias NAME
        %farm error                 explain the last exception
        %farm why                   the request body the last answer was asked with
        %farm ollama start|stop     run `ollama serve` in the background
        %farm dashboard             the health/GPU/stats widgets
        """
        from .commands import run

        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse %farm {line}: {exc}") from None
        if not words or words[0] in ("-h", "--help"):
            return run(self, "help", "")
        rest = line.strip()[len(line.strip().split(maxsplit=1)[0]) :]
        return run(self, words[0].lower(), rest)

    def _close_dashboard(self) -> None:
        dashboard, self._dashboard = self._dashboard, None
        if dashboard is not None:
            dashboard.close()


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


def load(ip: InteractiveShell) -> FarmMagics:
    """Register the magics on `ip` (called by `%load_ext farm_jupyter`)."""
    if ip.magics_manager.registry.get("FarmMagics") is not None:
        unload(ip)
    magics = FarmMagics(shell=ip)
    ip.register_magics(magics)
    ip.events.register("pre_run_cell", magics._pre_run_cell)
    ip.events.register("post_run_cell", magics._post_run_cell)
    if os.environ.get("FARM_EMBEDDED_DEFAULT") == "1":  # set by `farm-jupyter lab` when nothing answers
        print(
            "farm_jupyter: no Ollama or OpenAI configured: answering with the embedded offline model "
            f"({os.environ.get('FARM_HF_MODEL', 'huggingface')}). Start Ollama or set OPENAI_API_KEY for real answers."
        )
    elif not magics.default_model:  # any other kernel: the same news, when it is so (issue 23)
        from ..embedded import banner

        if (line := banner()) is not None:
            print(line)
    return magics


def unload(ip: InteractiveShell) -> None:
    """Remove what `load` registered (called by `%unload_ext` and `%reload_ext`)."""
    manager = ip.magics_manager
    magics = manager.registry.pop("FarmMagics", None)
    if magics is None:
        return
    for kind, table in magics.magics.items():
        for name, func in table.items():
            if manager.magics[kind].get(name) == func:
                del manager.magics[kind][name]
    for event, callback in (("pre_run_cell", magics._pre_run_cell), ("post_run_cell", magics._post_run_cell)):
        try:
            ip.events.unregister(event, callback)
        except ValueError:
            pass
    if magics in ip.configurables:
        ip.configurables.remove(magics)
    magics._close_dashboard()
    if magics._ollama is not None:  # started by this instance; a reload would lose its handle
        from .ollama import stop_process

        stop_process(magics._ollama)
        magics._ollama = None
