"""The request/response vocabulary shared by every layer.

Everything a user sees or the cache stores is a pydantic model, so it validates on the way in and
serialises on the way out. `Chunk` is the exception: one is made per token on the hot path, so it
is a slotted dataclass, not a validated model.

    messages    ChatMessage and what it carries: ImagePart, ToolCall, ToolSpec, ToolRun
    capabilities    Capabilities: a provider's row of the provider x feature table
    request     GenerationParams (with each provider's options), ChatRequest
    fill        FillRequest: the text around a cursor, for completions as you type
    responses   Usage, Timings, Attempt, ChatResponse, Chunk
    status      ModelInfo, PullProgress, ProviderStatus, GPUStats
"""

from __future__ import annotations

from .capabilities import Capabilities
from .fim import FillRequest
from .messages import ChatMessage, ImagePart, Role, ToolCall, ToolRun, ToolSpec
from .request import PROVIDER_OPTIONS, ChatRequest, GenerationOptions, GenerationParams
from .responses import Attempt, ChatResponse, Chunk, Timings, Usage, generation_rate
from .status import GPUDevice, GPUProcess, GPUStats, ModelInfo, ProviderStatus, PullProgress

__all__ = [
    "PROVIDER_OPTIONS",
    "Attempt",
    "Capabilities",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "Chunk",
    "GPUDevice",
    "GPUProcess",
    "GPUStats",
    "FillRequest",
    "GenerationOptions",
    "GenerationParams",
    "ImagePart",
    "ModelInfo",
    "ProviderStatus",
    "PullProgress",
    "Role",
    "Timings",
    "ToolCall",
    "ToolRun",
    "ToolSpec",
    "Usage",
    "generation_rate",
]
