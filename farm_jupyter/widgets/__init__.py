"""Notebook widgets over the kernel's Session: chat, model picker, health board, GPU gauge, comparison.

    from farm_jupyter.widgets import Dashboard
    Dashboard()

Every widget talks to a `Session` (the kernel's by default, or `session=`), never to a provider;
work runs on the session's runtime loop, so callbacks return at once and the kernel stays free.
Each has a one-line `text/plain` form for saved notebooks, and `close()` stops its timers.
Importing this package imports ipywidgets, not markdown, pygments or any provider.
"""

from __future__ import annotations

from .chat import ChatWidget
from .compare import CompareWidget
from .dashboard import Dashboard
from .gauge import GPUGauge
from .health import HealthBoard
from .picker import ModelPicker

__all__ = ["ChatWidget", "CompareWidget", "Dashboard", "GPUGauge", "HealthBoard", "ModelPicker"]
