"""GPU and host figures for `%farm gpu` and the gauge, and the device a local model goes to.

NVML (`nvidia-ml-py`) first: it sees every process and needs no CUDA context. If NVML is missing
or finds no driver, that is the ordinary "no GPU" state, reported with a reason. torch is used
as a fallback only when the user's code has already imported it: polling must never pay for a
4-second import, nor create a CUDA context.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import psutil

from .types import GPUDevice, GPUProcess, GPUStats


@dataclass
class _Nvml:
    ok: bool
    reason: str | None = None
    module: Any = None
    handles: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


_nvml: _Nvml | None = None
_nvml_lock = threading.Lock()
_process_names: dict[int, str | None] = {}
_cpu_primed = False


def _nvml_reason(pynvml: Any, exc: BaseException) -> str:
    code = getattr(exc, "value", None)
    if code == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()):
        return "no NVIDIA driver on this machine (NVML library not found)"
    if code == getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()):
        return "the NVIDIA driver is not loaded"
    if code == getattr(pynvml, "NVML_ERROR_NO_PERMISSION", object()):
        return "no permission to query the NVIDIA driver"
    return f"NVML could not start: {exc}"


def _start_nvml() -> _Nvml:
    """Initialise NVML once per process; the outcome (including failure) is cached."""
    global _nvml
    if _nvml is not None:
        return _nvml
    with _nvml_lock:
        if _nvml is not None:
            return _nvml
        try:
            import pynvml
        except ImportError:
            _nvml = _Nvml(ok=False, reason="nvidia-ml-py is not installed, so NVML cannot be read")
            return _nvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
        except pynvml.NVMLError as exc:
            _nvml = _Nvml(ok=False, reason=_nvml_reason(pynvml, exc))
            return _nvml
        if not handles:
            _nvml = _Nvml(ok=False, reason="the NVIDIA driver reports no GPU")
        else:
            _nvml = _Nvml(ok=True, module=pynvml, handles=handles, names=names)
        return _nvml


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _maybe(fn: Any, *args: Any) -> Any:
    """One NVML figure, or None where the device does not report it (NotSupported, ...)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - pynvml raises a class per error code
        return None


def _process_name(pid: int) -> str | None:
    if pid in _process_names:
        return _process_names[pid]
    try:
        name: str | None = psutil.Process(pid).name()
    except (psutil.Error, OSError):
        name = None  # another container's pid, or gone already
    if len(_process_names) > 4096:
        _process_names.clear()
    _process_names[pid] = name
    return name


def _temperature(pynvml: Any, handle: Any) -> float | None:
    sensor = pynvml.NVML_TEMPERATURE_GPU
    getter_v = getattr(pynvml, "nvmlDeviceGetTemperatureV", None)
    if getter_v is not None and (value := _maybe(getter_v, handle, sensor)) is not None:
        return float(value)
    value = _maybe(pynvml.nvmlDeviceGetTemperature, handle, sensor)
    return None if value is None else float(value)


def _processes(pynvml: Any, handle: Any) -> list[GPUProcess]:
    used: dict[int, int] = {}
    for getter in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
        for proc in _maybe(getter, handle) or []:
            # usedGpuMemory is None where the driver cannot tell (Windows WDDM).
            used[proc.pid] = max(used.get(proc.pid, 0), proc.usedGpuMemory or 0)
    return [GPUProcess(pid=pid, memory_used=mem, name=_process_name(pid)) for pid, mem in sorted(used.items())]


def _nvml_devices(state: _Nvml) -> list[GPUDevice]:
    pynvml = state.module
    devices = []
    for index, (handle, name) in enumerate(zip(state.handles, state.names, strict=True)):
        memory = _maybe(pynvml.nvmlDeviceGetMemoryInfo, handle)
        util = _maybe(pynvml.nvmlDeviceGetUtilizationRates, handle)
        power = _maybe(pynvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
        devices.append(
            GPUDevice(
                index=index,
                name=name,
                memory_used=int(memory.used) if memory else 0,
                memory_total=int(memory.total) if memory else 0,
                utilization=float(util.gpu) if util else None,
                temperature=_temperature(pynvml, handle),
                power=power / 1000.0 if power is not None else None,
                processes=_processes(pynvml, handle),
            )
        )
    return devices


def _torch_devices() -> list[GPUDevice] | None:
    """Devices as torch sees them, only if the user already imported torch and CUDA works."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        devices = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append(
                GPUDevice(
                    index=index,
                    name=torch.cuda.get_device_name(index),
                    memory_used=int(total - free),
                    memory_total=int(total),
                )
            )
        return devices
    except Exception:  # noqa: BLE001 - a broken CUDA setup is "no GPU" here, not a crash
        return None


def _host() -> dict[str, Any]:
    global _cpu_primed
    if not _cpu_primed:
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; later ones span the poll interval
        _cpu_primed = True
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "ram_used": int(memory.total - memory.available),
        "ram_total": int(memory.total),
    }


def gpu_stats() -> GPUStats:
    """Every GPU's load, memory, temperature, power and processes, plus host CPU and RAM.

    Cheap enough to poll every second from a background thread: NVML is started once per
    process and a device that lacks a figure reports None for it.
    """
    host = _host()
    state = _start_nvml()
    if state.ok:
        return GPUStats(source="nvml", devices=_nvml_devices(state), **host)
    devices = _torch_devices()
    if devices:
        return GPUStats(source="torch", devices=devices, **host)
    return GPUStats(source="none", reason=state.reason, **host)


def best_device() -> str:
    """ "cuda:N" for the GPU with the most free memory, else "mps", else "cpu". Imports torch."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count <= 1:
            return "cuda:0"
        free = []
        for index in range(count):
            try:
                # NVML through torch: maps CUDA_VISIBLE_DEVICES and opens no CUDA context.
                used = torch.cuda.device_memory_used(index)
                free.append(torch.cuda.get_device_properties(index).total_memory - used)
            except Exception:  # noqa: BLE001 - no NVML: ask CUDA itself
                free.append(torch.cuda.mem_get_info(index)[0])
        return f"cuda:{max(range(count), key=free.__getitem__)}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"
