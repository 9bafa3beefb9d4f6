"""The frontend a magic draws into: can it update an output in place, and which cell is running.

A live answer ends by clearing the cell's outputs (`display.live.Live`), so a magic streams live
only when it owns the cell: the running cell is that magic alone, and clearing loses nothing else.
IPython says which cell runs through its `pre_run_cell`/`post_run_cell` events; ipykernel through
the request's header.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..sessions import Session

from IPython.core.displaypub import DisplayPublisher
from IPython.core.magic import Magics


@dataclass
class Screen:
    """Where one answer is drawn, as plain values: `rich` (outputs update in place), `owned` (the
    running cell is this magic alone), at most `rate` updates a second, the notebook's namespace
    (for `-o NAME`) and its next-input hook (for `-f code`). `updates` counts what was drawn."""

    rich: bool
    owned: bool
    rate: float
    user_ns: MutableMapping[str, Any]
    set_next_input: Callable[..., None]
    updates: int = 0


class Frontend:
    """Kept up to date by the shell's events (`watch`), read by the magics."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.cell_id: str | None = None
        self.cell_source: str | None = None

    def watch(self) -> None:
        self.shell.events.register("pre_run_cell", self.pre_run_cell)
        self.shell.events.register("post_run_cell", self.post_run_cell)

    def unwatch(self) -> None:
        for event, callback in (("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell)):
            try:
                self.shell.events.unregister(event, callback)
            except ValueError:
                pass

    def pre_run_cell(self, info: Any) -> None:
        self.cell_id = getattr(info, "cell_id", None)
        self.cell_source = getattr(info, "raw_cell", None)

    def post_run_cell(self, result: Any) -> None:
        self.cell_id = None
        self.cell_source = None

    def live(self) -> bool:
        """Can this frontend update an output in place? A terminal's plain publisher cannot."""
        pub = getattr(self.shell, "display_pub", None)
        return pub is not None and type(pub) is not DisplayPublisher

    def owns_cell(self, magic: str) -> bool:
        """Is the running cell this magic alone, so that clearing its outputs loses nothing else?

        A cell that also prints or loops over `run_cell_magic` keeps its outputs, and its answers
        are shown when complete. Called outside a cell (a script, a test) there is nothing to keep.
        """
        source = self.cell_source
        if source is None:
            return True
        if magic.startswith("%%"):
            return source.lstrip().startswith(magic)
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return len(lines) == 1 and lines[0].lstrip().startswith(magic)

    def screen(self, magic: str, rate: float) -> Screen:
        """The Screen of the running cell, for `magic`."""
        shell = self.shell
        ns = shell.user_ns if shell is not None else {}
        return Screen(self.live(), self.owns_cell(magic), rate, ns, shell.set_next_input)

    def current_cell_id(self) -> str | None:
        """The frontend's id of the running cell: IPython's ExecutionInfo, else ipykernel's header."""
        if self.cell_id:
            return str(self.cell_id)
        parent = getattr(self.shell, "parent_header", None)
        if isinstance(parent, Mapping):
            meta = parent.get("metadata")
            if isinstance(meta, Mapping) and meta.get("cellId"):
                return str(meta["cellId"])
        return None


class Room(Magics):
    """A magic the front door (FarmMagics) owns: it asks through the door's Session and draws on
    the running cell's Screen, at the door's update rate."""

    def __init__(
        self, shell: Any, *, session: Callable[[], Session], frontend: Frontend, rate: Callable[[], float]
    ) -> None:
        super().__init__(shell=shell)
        self._session = session
        self._frontend = frontend
        self._rate = rate

    def _screen(self, magic: str) -> Screen:
        return self._frontend.screen(magic, self._rate())
