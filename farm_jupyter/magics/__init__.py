"""The notebook face: `%%farm_chat` and `%farm <subcommand>`.

    %load_ext farm_jupyter
    %%farm_chat -m ollama:llama3.1
    Explain this traceback: {err}

- `cell`: FarmMagics, the front door: the traitlets, the kernel's Session, `load` and `unload`;
- `ask`: ChatMagics, `%%farm_chat`; `farm`: FarmCommands, `%farm`, and what its subcommands keep;
- `commands`: each `%farm` subcommand, a function of the session and its parsed arguments;
- `answer` and `comparison`: one answer, or several side by side, streamed into the cell;
- `frontend`: whether the frontend updates outputs in place, and which cell is running;
- `interpolate`: `{name}` from the notebook, without eval; `targets`: `-m`/`-p` as the Session
  resolves them; `ollama_serve`: `ollama serve` as a background process.

Errors: misuse (bad option, unknown subcommand or provider, empty prompt, a `{name}` that is not
defined) raises IPython's `UsageError` itself; a provider failure after every fallback raises the
router's `FarmError`, shown as one line. Ctrl-C stops the request, keeps the partial answer on
screen marked "(stopped)", commits nothing to the conversation, and fails the cell with a
one-line `Stopped` (a KeyboardInterrupt), so that "Run All" stops there as it would for any cell.
"""

from __future__ import annotations

from ..display.final import extract_code, parse_json
from ..display.table import Table
from .answer import Stopped
from .ask import ChatMagics
from .cell import FarmMagics, load, unload
from .farm import FarmCommands
from .interpolate import interpolate

__all__ = [
    "ChatMagics",
    "FarmCommands",
    "FarmMagics",
    "Stopped",
    "Table",
    "extract_code",
    "interpolate",
    "load",
    "parse_json",
    "unload",
]
