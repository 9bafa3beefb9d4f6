"""`%farm sidebar`: the chat in JupyterLab's side area (the `sidecar` widget package), beside the
notebook, with this kernel's variables: `{df}` in a message is filled as in a `%%farm_chat` cell,
and the turns join the cells' conversation. Its messages go through the kernel, so while a cell
runs they wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from ..context import DEFAULT_BUDGET, Collector
from .commands import command
from .interpolate import interpolate

if TYPE_CHECKING:
    from ..sessions import Session
    from .commands import Kept

INSTALL = 'pip install "farm-jupyter[lab]" (or pip install sidecar), then reload the page'


@command("sidebar", shell=True)
@magic_arguments("farm sidebar")
@argument("-m", "--model", default="", help="the model to ask (provider:model); the session's default if not given")
def sidebar(kept: Kept, session: Session, args: Any) -> None:
    """the chat in JupyterLab's side panel, with {name} from this kernel and the cells' conversation"""
    try:
        from sidecar import Sidecar
    except ImportError:
        raise UsageError(f"%farm sidebar needs the sidecar package: {INSTALL}") from None
    from ..widgets import ChatWidget

    namespace = kept.screen("%farm").user_ns

    def prepare(text: str) -> tuple[str, dict[str, Any]]:
        collector = Collector(DEFAULT_BUDGET)
        prompt = interpolate(text, namespace, collector=collector)
        return prompt, ({"images": collector.images} if collector.images else {})

    chat = ChatWidget(session, conversation=session.history, model=args.model, prepare=prepare)
    side = Sidecar(title="farm chat", anchor="right")
    with side:
        display(chat)
    kept.sidebars.append((side, chat))  # kept alive with the kernel's magics, closed with them
