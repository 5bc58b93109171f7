"""Runtime constants that only a real CUDA run shows, and the file format that carries them.

The analytic engine prices CUDA context, cuBLAS workspace, allocator reserve and bitsandbytes'
fused-kernel temporaries from a ``Calibration``. ``vramplan calibrate`` fits these from profiles and
reference measurements and writes them as JSON; ``--calibration FILE`` loads one. The default shipped
with the package lives in ``vramplan/data/calibration.json`` (see its ``fitted_on`` field).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from vramplan.device import Device, contains_words, name_words
from vramplan.errors import VramplanError, read_json_file

MiB = 1024**2


#: Runtime constants on a CPU device: no CUDA context, no cuBLAS workspace, no caching allocator.
CPU_RUNTIME: dict[str, Any] = dict(cuda_context_bytes=0, cublas_workspace_bytes=0, allocator_reserve_fraction=0.0,
                                   allocator_reserve_bytes=0, allocator_reserve_loss_factor=0.0)


#: The fitted constants (a ``per_device`` entry may override any of them).
CONSTANTS = ("cuda_context_bytes", "cublas_workspace_bytes", "allocator_reserve_fraction", "allocator_reserve_bytes",
             "allocator_reserve_loss_factor", "fused_dequant_factor", "upper_bound_fraction")


#: Threads that each hold a cuBLAS handle, and so a workspace, in a training step: the Python thread
#: (forward, loss, optimizer step) and the autograd engine's worker thread for the device, which runs
#: every CUDA backward op (``torch/csrc/autograd/engine.cpp``: ``Engine::start_device_threads``).
#: PyTorch keeps one workspace per (handle, stream) and handles per thread
#: (``ATen/cuda/CublasHandlePool.cpp``: thread-local ``PoolWindow``, ``setWorkspaceForHandle``).
CUBLAS_HANDLES = 2


def default_cublas_workspace_bytes(compute_capability: str) -> int:
    """The cuBLAS workspaces a training step takes from the caching allocator on a GPU of this compute
    capability when ``CUBLAS_WORKSPACE_CONFIG`` is unset: ``CUBLAS_HANDLES`` × PyTorch's default size.

    ``parseChosenWorkspaceSize`` (``aten/src/ATen/cuda/CublasHandlePool.cpp``, PyTorch main at
    26a39059) defaults to 4096 KiB × 8 = 32 MiB on sm_90 exactly (Hopper: ``major == 9 && minor ==
    0``) and to ``:4096:2:16:8`` = 2 × 4 MiB + 8 × 16 KiB = 8,519,680 B on every other architecture
    (Volta, Turing, Ampere, Ada and Blackwell alike). The cuBLASLt workspace (1 MiB per handle and
    stream, ``CUBLASLT_WORKSPACE_SIZE`` default, separate unless ``TORCH_CUBLASLT_UNIFIED_WORKSPACE``)
    is taken only by cuBLASLt calls (biased ``addmm``), not priced here. The H200 profiles' fitted
    workspace (``data/calibration.json``, 67,207,931 B) is 2 × 32 MiB + 0.1 %."""
    major, _, minor = str(compute_capability).partition(".")
    per_handle = 4096 * 8 * 1024 if (major, minor or "0") == ("9", "0") else 4096 * 1024 * 2 + 16 * 1024 * 8
    return CUBLAS_HANDLES * per_handle


class CalibrationError(VramplanError):
    """A calibration file that does not parse or holds impossible values."""


@dataclass(frozen=True)
class Calibration:
    """Free constants of the analytic runtime terms. Bytes are ints; fractions are ratios."""

    cuda_context_bytes: int = 512 * MiB
    """CUDA context + kernels' module images + cuBLAS/cuDNN handles: outside PyTorch's allocator,
    visible only to nvidia-smi/NVML."""
    cublas_workspace_bytes: int = 32 * MiB
    """cuBLAS workspace; PyTorch ≥ 2.1 takes it from the caching allocator, so it counts as allocated."""
    allocator_reserve_fraction: float = 0.06
    """Caching-allocator reserve over the allocated peak (block rounding, fragmentation), as a
    fraction of the allocated peak."""
    allocator_reserve_bytes: int = 0
    """Fixed part of the reserve on top of the fraction."""
    allocator_reserve_loss_factor: float = 0.0
    """Reserve per byte of the loss workspace (``analytic.loss_workspace_bytes``: the b·s·V logits,
    their fp32 upcast, log-softmax output and gradients). Those are the step's largest transient
    blocks; freed, they stay cached in segments that the smaller allocations after them only
    partly reuse, so the reserve over allocated grows with them, not with the weights (H200
    profiles: reserved − allocated ran from 0.3 GiB to 6.4 GiB at near-equal allocated peaks)."""
    fused_dequant_factor: float = 1.0
    """How many dequantized copies of the largest 4-bit weight the fused bitsandbytes kernel keeps
    alive at once at the peak (1 = one transient copy)."""
    upper_bound_fraction: float = 0.05
    """Conservative bound: point estimate × (1 + this), from validation residuals."""
    fitted_on: str = "defaults (not fitted)"
    """What these numbers were fitted on: profiles, reference rows, device kinds."""
    device: str = "any"
    """Device kind these constants apply to (e.g. 'H100', 'A100'); 'any' = global fallback."""
    uncertainty: dict[str, float] = field(default_factory=dict, compare=False)
    """One-sigma uncertainty per fitted constant (same units as the constant)."""
    per_device: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    """Overrides per device kind, each a partial dict of the fields above."""

    def __post_init__(self) -> None:
        for f in ("cuda_context_bytes", "cublas_workspace_bytes", "allocator_reserve_bytes"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise CalibrationError(f"calibration field '{f}' must be a non-negative int, got {v!r}")
        for f in ("allocator_reserve_fraction", "allocator_reserve_loss_factor", "fused_dequant_factor",
                  "upper_bound_fraction"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 10:
                raise CalibrationError(f"calibration field '{f}' must be a number in [0, 10), got {v!r}")
        if not isinstance(self.uncertainty, dict):
            raise CalibrationError("calibration field 'uncertainty' must be an object")
        if not isinstance(self.per_device, dict):
            raise CalibrationError("calibration field 'per_device' must be an object")
        for kind, over in self.per_device.items():
            if not isinstance(over, dict):
                raise CalibrationError(f"per_device['{kind}'] must be an object")
            unknown = set(over) - set(CONSTANTS)
            if unknown:
                raise CalibrationError(f"per_device['{kind}']: unknown constant(s) {', '.join(sorted(unknown))}")
            replace(self, per_device={}, **over)  # validates the values

    def for_device(self, device: "Device | str | None") -> "Calibration":
        """The constants for a device (a ``vramplan.device.Device`` or anything ``Device.parse``
        takes), else self. A per-device kind matches when its words appear, in order and whole,
        among the device name's ("A100" matches "NVIDIA A100-SXM4-80GB" but not "A10"),
        case-insensitively (``vramplan.device.contains_words``).

        A device without a CUDA context or caching allocator (the CPU) has none of those runtime
        terms: context, workspace and allocator reserve are zero there (a ``per_device['cpu']``
        entry may still override them). Answers are kept on the instance (the planner asks once per
        scenario priced, always for the same card).
        """
        cache = self.__dict__.setdefault("_vramplan_for_device", {})  # frozen: the instance's own dict
        try:
            hit = cache.get(device)
        except TypeError:  # an unhashable argument: Device.parse refuses it below
            return self._for_device(device)
        if hit is None:
            if len(cache) > 256:
                cache.clear()
            hit = cache[device] = self._for_device(device)
        return hit

    def _for_device(self, device: "Device | str | None") -> "Calibration":
        dev = Device.parse(device)
        if not dev.cuda_context:
            over = {**CPU_RUNTIME, **self.per_device.get(dev.kind, {})}
            return replace(self, device=dev.kind, per_device={}, **over)
        if dev.name:
            hits = [kind for kind in self.per_device if contains_words(dev.name, kind)]
            if hits:  # the most specific kind wins ("A100 80GB" over "A100")
                kind = max(hits, key=lambda k: len(name_words(k)))
                return replace(self, device=kind, per_device={}, **self.per_device[kind])
            cc = _compute_capability(dev.name)
            if cc:  # no fit for this card: PyTorch's default workspace for its architecture
                return replace(self, cublas_workspace_bytes=default_cublas_workspace_bytes(cc))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        if not isinstance(d, dict):
            raise CalibrationError("calibration must be a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"schema", "residuals", "constants_before"}
        if unknown:
            raise CalibrationError(f"unknown calibration field(s): {', '.join(sorted(unknown))}")
        kw = {k: v for k, v in d.items() if k in names}
        try:
            return cls(**kw)
        except TypeError as e:
            raise CalibrationError(f"bad calibration: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        data = read_json_file(path, "calibration file", CalibrationError)
        return cls.from_dict(data)


def _compute_capability(name: str) -> str | None:
    """The catalog's compute capability for a device name, or None (not a catalog card, or not NVIDIA)."""
    from vramplan.gpus import compute_capability  # the catalog prices its cards with this module

    return compute_capability(name)


@lru_cache(maxsize=1)
def default_calibration() -> Calibration:
    """The calibration shipped with the package (falls back to the dataclass defaults)."""
    res = Path(__file__).resolve().parent / "data" / "calibration.json"
    if not res.is_file():
        return Calibration()
    return Calibration.from_dict(json.loads(res.read_text(encoding="utf-8")))
