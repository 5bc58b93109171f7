"""Memory readers: one small interface over the CPU live-tensor tracker and the CUDA allocator + NVML.

The runner only calls ``start``/``stop``, ``reset_peak``, ``peak``, ``current``, ``sample_process``,
``sync`` and ``device_info``. Everything else in a profile run is shared between devices, so the CPU
tests exercise the whole pipeline and the CUDA-specific code is the few lines of ``CudaReader``.

torch is imported inside the methods, never at module import.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any, Iterable

from vramplan.errors import VramplanError


class DeviceError(VramplanError):
    """A device that cannot be used (``--device cuda`` without CUDA, an unknown device name)."""


@dataclass(frozen=True)
class Peak:
    """Peaks since the last ``reset_peak``, in bytes."""

    allocated: int
    reserved: int
    active: int


class MemoryReader:
    """The interface; subclasses read one kind of device."""

    kind = "none"
    intrusive = False
    """True when reading slows the program down (the CPU tracker), so timings need a separate pass."""

    def start(self) -> None:
        """Begin observing (before the model is loaded)."""

    def stop(self) -> None:
        """Stop observing; safe to call twice."""

    def sync(self) -> None:
        """Wait for queued device work, so that timings and counters are complete."""

    def reset_peak(self) -> None:
        """Make the current usage the new peak."""
        raise NotImplementedError

    def peak(self) -> Peak:
        raise NotImplementedError

    def current(self) -> int:
        """Allocated bytes now."""
        raise NotImplementedError

    def sample_process(self) -> int | None:
        """Whole-process device memory now (driver view), or None where the device has none."""
        return None

    def device_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def __enter__(self) -> "MemoryReader":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ------------------------------------------------------------------------------------- CPU
class CpuReader(MemoryReader):
    """Live storage bytes of CPU tensors, from the tracker the trace engine uses
    (``vramplan.hf.tracker.LiveTensorTracker``). Allocated = reserved = active: there is no caching
    allocator to see on CPU."""

    kind = "cpu"
    intrusive = True

    def __init__(self) -> None:
        from vramplan.hf.tracker import LiveTensorTracker

        self._tracker = LiveTensorTracker()
        self._open = False

    def start(self) -> None:
        if not self._open:
            self._tracker.__enter__()
            self._open = True

    def stop(self) -> None:
        if self._open:
            self._open = False
            self._tracker.__exit__(None, None, None)

    def reset_peak(self) -> None:
        self._tracker.reset_peak()

    def current(self) -> int:
        return int(self._tracker.current_bytes)

    def peak(self) -> Peak:
        p = int(self._tracker.peak_bytes)
        return Peak(p, p, p)

    def register_model(self, model: Any) -> None:
        """Count the model's tensors even if they were made where the dispatch mode cannot see
        (loader threads, safetensors' zero-copy reads): parameters, buffers, and the 4-bit
        quantization state hanging off each bitsandbytes weight."""
        self._tracker.register(list(model.parameters()) + list(model.buffers()), "weights")
        self._tracker.register(list(quant_state_tensors(model)), "quant_state")

    def peak_by_category(self) -> dict[str, int]:
        return dict(self._tracker.peak_by_category)

    def labelled(self, category: str) -> Any:
        """New storages inside the block get ``category`` (a strategy's buffers: ``gradients/ddp_buckets``)."""
        return self._tracker.allocating(category)

    def retag(self, tensors: Any, category: str) -> None:
        self._tracker.retag(tensors, category)

    def paused(self) -> Any:
        """Nothing allocated inside the block is counted (DTensor's shape propagation)."""
        return self._tracker.paused()

    def device_info(self) -> dict[str, Any]:
        return cpu_info()


def quant_state_tensors(model: Any) -> list[Any]:
    """Tensors of every bitsandbytes 4-bit ``QuantState`` (absmax, code, nested absmax/code)."""
    import torch

    out: list[Any] = []
    seen: set[int] = set()
    for module in model.modules():
        qs = getattr(getattr(module, "weight", None), "quant_state", None)
        while qs is not None and id(qs) not in seen:
            seen.add(id(qs))
            out.extend(v for v in vars(qs).values() if isinstance(v, torch.Tensor))
            qs = getattr(qs, "state2", None)
    return out


def cpu_info() -> dict[str, Any]:
    """The host CPU: model name, logical cores, physical memory."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"kind": "cpu", "name": name or "cpu", "total_memory_bytes": host_memory_bytes(),
            "available_memory_bytes": host_available_bytes(), "cores": os.cpu_count() or 1,
            "platform": platform.platform()}


def host_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def host_available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ------------------------------------------------------------------------------------ CUDA
class CudaReader(MemoryReader):
    """``torch.cuda`` allocator counters plus NVML for the process total (the driver's view:
    context, cuBLAS handles, reserved blocks and managed memory resident on the device)."""

    kind = "cuda"

    def __init__(self, index: int = 0) -> None:
        import torch

        self._torch = torch
        self.index = index
        self._nvml: Any = None
        self.process_source: str | None = None
        """Where ``sample_process`` read its figure (stored in the profile's ``run``)."""

    def start(self) -> None:
        self._torch.cuda.set_device(self.index)  # bitsandbytes kernels run on the current device

    def sync(self) -> None:
        self._torch.cuda.synchronize(self.index)

    def reset_peak(self) -> None:
        self.sync()
        self._torch.cuda.reset_peak_memory_stats(self.index)

    def current(self) -> int:
        return int(self._torch.cuda.memory_allocated(self.index))

    def peak(self) -> Peak:
        cuda = self._torch.cuda
        self.sync()
        stats = cuda.memory_stats(self.index)
        return Peak(int(cuda.max_memory_allocated(self.index)), int(cuda.max_memory_reserved(self.index)),
                    int(stats.get("active_bytes.all.peak", 0)))

    def _handle(self) -> Any:
        if self._nvml is None:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            props = self._torch.cuda.get_device_properties(self.index)
            uuid = getattr(props, "uuid", None)
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid else None
            except pynvml.NVMLError:
                handle = None
            if handle is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self._nvml = (pynvml, handle)
        return self._nvml

    def sample_process(self) -> int | None:
        """This process's device memory per NVML; the device's used memory where a container's PID
        namespace hides the process from the driver; None without nvidia-ml-py."""
        try:
            pynvml, handle = self._handle()
        except Exception:  # noqa: BLE001 - no NVML is a missing figure, not a failed run
            return None
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    self.process_source = "nvml: this process"
                    return int(proc.usedGpuMemory)
            self.process_source = "nvml: whole device (process not visible)"
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except pynvml.NVMLError:
            return None

    def device_info(self) -> dict[str, Any]:
        torch = self._torch
        props = torch.cuda.get_device_properties(self.index)
        info: dict[str, Any] = {
            "kind": "cuda", "name": props.name, "total_memory_bytes": int(props.total_memory),
            "index": self.index, "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda, "driver": None,
        }
        try:
            pynvml, _ = self._handle()
            drv = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = drv.decode() if isinstance(drv, bytes) else drv
        except Exception:  # noqa: BLE001
            pass
        return info


def paged_state_bytes(states: Iterable[Any]) -> int:
    """Bytes of optimizer state held in CUDA managed memory: bitsandbytes' paged optimizers mark
    such tensors with ``is_paged`` (``bitsandbytes.functional.get_paged``); PyTorch's allocator
    counters never see them. ``states`` is ``optimizer.state.values()``."""
    total = 0
    for state in states:
        values = state.values() if isinstance(state, dict) else ()
        for t in values:
            if getattr(t, "is_paged", False):
                total += int(t.numel()) * int(t.element_size())
    return total


# --------------------------------------------------------------------------------- choosing
def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_info_for(device: str) -> dict[str, Any]:
    """``device_info`` of ``device`` (DeviceError if it is not there); includes, on CPU,
    ``available_memory_bytes`` for the fit check."""
    dev = device.strip().lower()
    if dev == "cpu":
        return cpu_info()
    return make_reader(device).device_info()


def make_reader(device: str) -> MemoryReader:
    """``cpu``, ``cuda`` or ``cuda:N``; DeviceError if it is not there."""
    import torch

    dev = device.strip().lower()
    if dev == "cpu":
        return CpuReader()
    if dev == "cuda" or dev.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA device is available (torch "
                              f"{torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)")
        index = 0
        if ":" in dev:
            try:
                index = int(dev.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"bad device '{device}' (use cpu, cuda or cuda:N)") from None
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
        return CudaReader(index)
    raise DeviceError(f"unknown device '{device}' (use cpu, cuda or cuda:N)")
