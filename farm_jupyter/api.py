"""The module-level shortcuts: each goes through the kernel's Session."""

from __future__ import annotations

from typing import Any

from .session import ChatStream, Prompt, session
from .types import ChatResponse


def chat(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
    """Ask and wait: `chat("hi", model="ollama:llama3.1", temperature=0)`."""
    return session().chat(prompt, model, **kwargs)


async def achat(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatResponse:
    return await session().achat(prompt, model, **kwargs)


def stream(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatStream:
    """Ask and iterate: `for chunk in stream("hi"): print(chunk.text, end="")`."""
    return session().stream(prompt, model, **kwargs)


def astream(prompt: Prompt, model: str | None = None, **kwargs: Any) -> ChatStream:
    """`async for chunk in astream("hi")`: the same ChatStream, iterated from a cell's loop."""
    return session().stream(prompt, model, **kwargs)
