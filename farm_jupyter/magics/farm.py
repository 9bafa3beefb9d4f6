"""FarmCommands: the `%farm <subcommand>` line magic; it owns what the subcommands keep (`Kept`:
`ollama serve` when started here, the dashboard) and closes it when the extension unloads.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import line_magic, magics_class, no_var_expand

from . import sidebar  # noqa: F401 - registers %farm sidebar
from .commands import Kept, run
from .frontend import Room

if TYPE_CHECKING:
    pass


@magics_class
class FarmCommands(Room):
    """`%farm`; its settings are FarmMagics' (`c.FarmMagics.update_rate`)."""

    def __init__(self, shell: Any, **door: Any) -> None:
        super().__init__(shell, **door)
        self.kept = Kept(screen=self._screen)

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
        %farm sidebar               the chat in JupyterLab's side panel, with this kernel's {names}
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse %farm {line}: {exc}") from None
        if not words or words[0] in ("-h", "--help"):
            return run(self.kept, self._session, "help", "")
        rest = line.strip()[len(line.strip().split(maxsplit=1)[0]) :]
        return run(self.kept, self._session, words[0].lower(), rest)
