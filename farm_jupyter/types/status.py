"""What providers and the GPU report: models, pull progress, health, GPU memory and processes."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from .messages import BaseType


class ModelInfo(BaseType):
    name: str
    provider: str
    size: int | None = None  # bytes
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    loaded: bool = False
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.provider}:{self.name}"


class PullProgress(BaseType):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


HealthState = Literal["healthy", "unhealthy", "cooling_down", "rate_limited", "unknown"]


class ProviderStatus(BaseType):
    provider: str
    state: HealthState = "unknown"
    url: str | None = None  # masked: never carries a secret
    latency: float | None = None
    models_loaded: list[str] = Field(default_factory=list)
    error: str | None = None
    version: str | None = None
    cooldown_until: float | None = None  # time.time() seconds
    checked_at: float = Field(default_factory=time.time)

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


class GPUProcess(BaseType):
    pid: int
    memory_used: int  # bytes
    name: str | None = None


class GPUDevice(BaseType):
    index: int
    name: str
    memory_used: int
    memory_total: int
    utilization: float | None = None  # percent
    temperature: float | None = None  # celsius
    power: float | None = None  # watts
    processes: list[GPUProcess] = Field(default_factory=list)

    @property
    def memory_free(self) -> int:
        return self.memory_total - self.memory_used


class GPUStats(BaseType):
    source: Literal["nvml", "torch", "none"]
    devices: list[GPUDevice] = Field(default_factory=list)
    cpu_percent: float | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    reason: str | None = None  # why there is no GPU, in words

    @property
    def has_gpu(self) -> bool:
        return bool(self.devices)
