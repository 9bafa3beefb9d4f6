"""FarmMagics, the front door: the settings (traitlets), the kernel's Session, and the two magics
it owns and registers: ChatMagics (`%%farm_chat`, `ask.py`) and FarmCommands (`%farm`, `farm.py`).

Loading is instant: the modules it loads import only IPython, traitlets and the standard library
at the top; the session (pydantic, httpx, the providers) is imported on first use.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, magics_class
from traitlets import Float, Int, TraitError, Unicode, observe, validate

from .ask import ChatMagics
from .farm import FarmCommands
from .frontend import Frontend

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ..sessions import Session

CACHE_BACKENDS = ("", "memory", "disk", "redis", "none")


@magics_class
class FarmMagics(Magics):
    """The settings of `%%farm_chat` and `%farm` (in `ipython_config.py` as `c.FarmMagics.x`), the
    kernel's Session made with them, and the magics that use both."""

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

    def __init__(self, shell: InteractiveShell, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._lock = threading.Lock()
        self._configured: weakref.WeakSet[Session] = weakref.WeakSet()
        self.frontend = Frontend(shell)
        self.chat = ChatMagics(shell, session=self.session, frontend=self.frontend, rate=self._rate)
        self.commands = FarmCommands(shell, session=self.session, frontend=self.frontend, rate=self._rate)

    def _rate(self) -> float:
        return float(self.update_rate)

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


def load(ip: InteractiveShell) -> FarmMagics:
    """Register the magics on `ip` (called by `%load_ext farm_jupyter`)."""
    if ip.magics_manager.registry.get("FarmMagics") is not None:
        unload(ip)
    magics = FarmMagics(shell=ip)
    ip.register_magics(magics, magics.chat, magics.commands)
    magics.frontend.watch()
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
    for owned in (magics.chat, magics.commands):
        manager.registry.pop(type(owned).__name__, None)
        for kind, table in owned.magics.items():
            for name, func in table.items():
                if manager.magics[kind].get(name) == func:
                    del manager.magics[kind][name]
    magics.frontend.unwatch()
    for configurable in (magics, magics.chat, magics.commands):
        if configurable in ip.configurables:
            ip.configurables.remove(configurable)
    magics.commands.kept.close()  # started by this instance; a reload would lose its handle
