"""farm_jupyter: language models in the notebook, through a provider router in the kernel.

    %load_ext farm_jupyter
    %%farm_chat -m ollama:llama3.1
    Explain this traceback: {err}

Names resolve lazily (PEP 562), so `import farm_jupyter` and `%load_ext` stay instant: pydantic,
httpx and the providers load on first use, torch/transformers/openai only inside their provider.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "chat": "farm_jupyter.api",
    "achat": "farm_jupyter.api",
    "stream": "farm_jupyter.api",
    "astream": "farm_jupyter.api",
    "map": "farm_jupyter.api",
    "compare": "farm_jupyter.api",
    "cancel_batch": "farm_jupyter.api",
    "explain": "farm_jupyter.api",
    "usage": "farm_jupyter.api",
    "session": "farm_jupyter.sessions",
    "Session": "farm_jupyter.sessions",
    "AsyncSession": "farm_jupyter.sessions",
    "ChatStream": "farm_jupyter.sessions",
    "Conversation": "farm_jupyter.sessions",
    "Settings": "farm_jupyter.config",
    "load_settings": "farm_jupyter.config",
    "register_provider": "farm_jupyter.providers",
    "unregister_provider": "farm_jupyter.providers",
    "Provider": "farm_jupyter.providers.base",
    "ChatMessage": "farm_jupyter.types",
    "ChatRequest": "farm_jupyter.types",
    "ChatResponse": "farm_jupyter.types",
    "Chunk": "farm_jupyter.types",
    "GenerationParams": "farm_jupyter.types",
    "ModelInfo": "farm_jupyter.types",
    "ProviderStatus": "farm_jupyter.types",
    "GPUStats": "farm_jupyter.types",
    "Usage": "farm_jupyter.types",
    "Timings": "farm_jupyter.types",
    "Attempt": "farm_jupyter.types",
    "ImagePart": "farm_jupyter.types",
    "ToolCall": "farm_jupyter.types",
    "ToolRun": "farm_jupyter.types",
    "describe": "farm_jupyter.context",
    "SchemaMismatch": "farm_jupyter.structured",
    "FarmError": "farm_jupyter.errors",
    "ProviderError": "farm_jupyter.errors",
    "AllProvidersFailed": "farm_jupyter.errors",
}

__all__ = [
    "AllProvidersFailed",
    "AsyncSession",
    "Attempt",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "ChatStream",
    "Chunk",
    "Conversation",
    "FarmError",
    "GPUStats",
    "GenerationParams",
    "ImagePart",
    "ModelInfo",
    "Provider",
    "ProviderError",
    "ProviderStatus",
    "SchemaMismatch",
    "Session",
    "Settings",
    "Timings",
    "ToolCall",
    "ToolRun",
    "Usage",
    "__version__",
    "achat",
    "astream",
    "cancel_batch",
    "chat",
    "compare",
    "describe",
    "explain",
    "load_ipython_extension",
    "load_settings",
    "map",
    "register_provider",
    "session",
    "stream",
    "unload_ipython_extension",
    "unregister_provider",
    "usage",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'farm_jupyter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload

    unload(ipython)


if TYPE_CHECKING:  # what __getattr__ loads, for type checkers; `X as X` marks each as re-exported
    from .api import achat as achat
    from .api import astream as astream
    from .api import cancel_batch as cancel_batch
    from .api import chat as chat
    from .api import compare as compare
    from .api import explain as explain
    from .api import map as map
    from .api import stream as stream
    from .api import usage as usage
    from .config import Settings as Settings
    from .config import load_settings as load_settings
    from .context import describe as describe
    from .errors import AllProvidersFailed as AllProvidersFailed
    from .errors import FarmError as FarmError
    from .errors import ProviderError as ProviderError
    from .providers import register_provider as register_provider
    from .providers import unregister_provider as unregister_provider
    from .providers.base import Provider as Provider
    from .sessions import AsyncSession as AsyncSession
    from .sessions import ChatStream as ChatStream
    from .sessions import Conversation as Conversation
    from .sessions import Session as Session
    from .sessions import session as session
    from .structured import SchemaMismatch as SchemaMismatch
    from .types import Attempt as Attempt
    from .types import ChatMessage as ChatMessage
    from .types import ChatRequest as ChatRequest
    from .types import ChatResponse as ChatResponse
    from .types import Chunk as Chunk
    from .types import GenerationParams as GenerationParams
    from .types import GPUStats as GPUStats
    from .types import ImagePart as ImagePart
    from .types import ModelInfo as ModelInfo
    from .types import ProviderStatus as ProviderStatus
    from .types import Timings as Timings
    from .types import ToolCall as ToolCall
    from .types import ToolRun as ToolRun
    from .types import Usage as Usage
