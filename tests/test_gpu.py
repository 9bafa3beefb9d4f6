"""gpu.py: the real state of this machine, plus NVML's and torch's answers mapped into GPUStats."""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

from farm_jupyter import gpu
from farm_jupyter.types import GPUStats

pytestmark = pytest.mark.timeout(60)

HAS_NVML_GPU = gpu.gpu_stats().source == "nvml"


@pytest.fixture
def fresh_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget the cached NVML state, so a test can start it again (restored afterwards)."""
    monkeypatch.setattr(gpu, "_nvml", None)
    monkeypatch.setattr(gpu, "_process_names", {})
    yield


def check_host(stats: GPUStats) -> None:
    assert stats.cpu_percent is not None and 0.0 <= stats.cpu_percent <= 100.0
    assert stats.ram_total and stats.ram_total > 0
    assert stats.ram_used is not None and 0 < stats.ram_used <= stats.ram_total


@pytest.mark.skipif(HAS_NVML_GPU, reason="this machine has an NVIDIA GPU")
def test_no_gpu_is_a_state_with_a_reason() -> None:
    stats = gpu.gpu_stats()
    assert stats.source == "none" and not stats.has_gpu and stats.devices == []
    assert stats.reason and ("NVIDIA" in stats.reason or "NVML" in stats.reason)
    check_host(stats)


@pytest.mark.skipif(not HAS_NVML_GPU, reason="needs an NVIDIA GPU")
def test_nvml_reports_each_device() -> None:
    stats = gpu.gpu_stats()
    assert stats.devices and stats.reason is None
    for device in stats.devices:
        assert device.name and 0 < device.memory_total and 0 <= device.memory_used <= device.memory_total
    check_host(stats)


def test_polling_is_cheap_and_stable() -> None:
    first = gpu.gpu_stats()
    results = [gpu.gpu_stats() for _ in range(50)]
    assert {(r.source, r.reason, len(r.devices)) for r in results} == {(first.source, first.reason, len(first.devices))}
    assert all(r.ram_total == first.ram_total for r in results)


def test_nvml_starts_once_across_threads(fresh_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(devices=1)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    barrier = threading.Barrier(8)
    results: list[GPUStats] = []

    def poll() -> None:
        barrier.wait()
        results.extend(gpu.gpu_stats() for _ in range(5))

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 40 and all(r.source == "nvml" for r in results)
    assert fake.inits == 1


def test_gpu_stats_never_imports_torch() -> None:
    code = (
        "import sys; from farm_jupyter import gpu; import farm_jupyter;"
        "s = gpu.gpu_stats(); assert 'torch' not in sys.modules, 'torch imported';"
        "print(s.source)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True)
    assert out.stdout.strip() in {"nvml", "none"}


@pytest.mark.skipif(HAS_NVML_GPU, reason="this machine has an NVIDIA GPU")
def test_best_device_here_is_cpu() -> None:
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert gpu.best_device() == "cpu"


# -- NVML's and torch's answers, mapped (no GPU needed) ------------------------------------------


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(f"NVML error {value}")


class FakeNvml(types.ModuleType):
    """The slice of pynvml's API that gpu.py calls, answering like an H200 with a process on it."""

    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_SUPPORTED = 3
    NVMLError = NVMLError

    def __init__(self, devices: int = 1, init_error: int | None = None) -> None:
        super().__init__("pynvml")
        self.devices = devices
        self.init_error = init_error
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return types.SimpleNamespace(total=150 * 2**30, used=(3 + handle) * 2**30, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetTemperatureV(self, handle: int, sensor: int) -> int:
        raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)  # an older driver: the V call is missing

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 51

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 1:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return 123_456  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        import os

        return [
            types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**30),
            types.SimpleNamespace(pid=999_999_999, usedGpuMemory=None),
        ]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        import os

        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**29)]


def test_nvml_figures_are_mapped(fresh_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(devices=2))
    stats = gpu.gpu_stats()
    assert stats.source == "nvml" and stats.reason is None and len(stats.devices) == 2
    first, second = stats.devices
    assert (first.index, first.name, first.utilization, first.temperature) == (0, "NVIDIA H200", 42.0, 51.0)
    assert first.memory_total == 150 * 2**30 and first.memory_used == 3 * 2**30
    assert first.power == pytest.approx(123.456)
    assert second.power is None and second.memory_used == 4 * 2**30  # a figure the device lacks is None
    mine = next(p for p in first.processes if p.pid == os.getpid())
    assert mine.memory_used == 2**30 and mine.name  # in both lists: counted once
    assert next(p for p in first.processes if p.pid == 999_999_999).name is None
    check_host(stats)


@pytest.mark.parametrize(
    ("code", "words"),
    [(12, "no NVIDIA driver"), (9, "driver is not loaded"), (4, "permission"), (999, "NVML could not start")],
)
def test_nvml_failures_are_reasons(fresh_nvml: None, monkeypatch: pytest.MonkeyPatch, code: int, words: str) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error=code))
    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    stats = gpu.gpu_stats()
    assert stats.source == "none" and words in (stats.reason or "")
    check_host(stats)


def test_missing_nvidia_ml_py_is_a_reason(fresh_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    stats = gpu.gpu_stats()
    assert stats.source == "none" and "nvidia-ml-py" in (stats.reason or "")


def fake_torch(available: bool) -> Any:
    cuda = types.SimpleNamespace(
        is_available=lambda: available,
        device_count=lambda: 1,
        mem_get_info=lambda index: (60 * 2**30, 80 * 2**30),
        get_device_name=lambda index: "NVIDIA A100",
    )
    return types.SimpleNamespace(cuda=cuda)


def test_torch_is_the_fallback_only_when_already_imported(fresh_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error=12))
    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=True))
    stats = gpu.gpu_stats()
    assert stats.source == "torch"
    [device] = stats.devices
    assert (device.name, device.memory_used, device.memory_total) == ("NVIDIA A100", 20 * 2**30, 80 * 2**30)

    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    stats = gpu.gpu_stats()
    assert stats.source == "none" and "no NVIDIA driver" in (stats.reason or "")
