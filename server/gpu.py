"""GPU utilization and memory through NVML (nvidia-ml-py), or why there is none.

NVML is initialized once, lazily; on a machine without the NVIDIA driver
that fails and every reading says "no GPU" with the reason, at no further cost.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Optional

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuDevice:
    """One GPU at one moment."""

    index: int
    name: str
    utilization_percent: int
    memory_utilization_percent: int
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True)
class GpuReading:
    """Every GPU NVML reports, or available=False and the reason."""

    available: bool
    reason: str = ""
    devices: tuple[GpuDevice, ...] = field(default_factory=tuple)


class GpuMonitor:
    """Reads NVML; initialization is tried once, on the first read."""

    def __init__(self):
        self._nvml = None
        self._reason: Optional[str] = None  # set once NVML has been tried
        self._lock = threading.Lock()

    def read(self) -> GpuReading:
        """The GPUs now (a few NVML calls per device), or why there are none."""
        nvml = self._init()
        if nvml is None:
            return GpuReading(available=False, reason=self._reason or "no GPU")
        try:
            devices = tuple(_device(nvml, i) for i in range(nvml.nvmlDeviceGetCount()))
        except Exception as exc:  # noqa: BLE001 - NVMLError: a GPU fell off the bus, the driver went away
            return GpuReading(available=False, reason=f"NVML error: {exc}")
        if not devices:
            return GpuReading(available=False, reason="no GPU: NVML reports no devices")
        return GpuReading(available=True, devices=devices)

    def close(self) -> None:
        """Shut NVML down if it was started."""
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
                self._nvml = None
                self._reason = "NVML shut down"

    def _init(self):
        with self._lock:
            if self._reason is None:
                self._nvml, self._reason = _start_nvml()
            return self._nvml


def _start_nvml():
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None, "no GPU: nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        _LOGGER.debug("NVML unavailable: %s", exc)
        return None, f"no GPU: NVML unavailable ({exc})"
    return pynvml, ""


def _device(nvml, index: int) -> GpuDevice:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = nvml.nvmlDeviceGetName(handle)
    return GpuDevice(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        utilization_percent=int(rates.gpu),
        memory_utilization_percent=int(rates.memory),
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
    )
