"""The GPU catalog: how much memory a card reports, and how much of it a training process can use.

Figures live in ``vramplan/data/gpus.json``, each citing its source, and load lazily on first use.

What a card offers a training run (``usable_bytes``):

- **CUDA cards**: the total the device reports (nvidia-smi / NVML, ``memory_bytes``), less the memory the
  driver keeps for itself where a public ``nvidia-smi -q`` log shows it (``driver_reserved_bytes``), less the
  CUDA context (``Calibration.cuda_context_bytes``: context, module images, cuBLAS/cuDNN handles).
  What is left is what PyTorch's caching allocator may *reserve* plus any CUDA managed memory
  (paged optimizers). The planner compares exactly that, reserved + managed, against it
  (see ``vramplan.plan``).
- **Apple unified memory**: the Metal working-set limit (``recommendedMaxWorkingSetSize``, a fixed
  share of RAM), recorded per entry as ``usable_fraction``. There is no CUDA context to subtract.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from vramplan.breakdown import fmt_bytes, parse_bytes
from vramplan.calibration import Calibration, default_calibration
from vramplan.device import lookup_key
from vramplan.errors import VramplanError

MiB = 1024**2
#: The catalog (read on first use, never at import).
DATA_FILE = Path(__file__).with_name("data") / "gpus.json"



class GpuNotFound(VramplanError):
    """No catalog entry matches the name given to ``--gpu``."""


class GpuMemoryError(VramplanError):
    """A ``--memory`` value that is not a positive size, or leaves nothing after the CUDA context."""


@dataclass(frozen=True)
class Gpu:
    """One card of the catalog (or a ``--memory`` card). Bytes are ints."""

    name: str
    """Display name, e.g. ``RTX 4090``."""
    memory_bytes: int
    """Total the device reports (nvidia-smi / NVML total; Apple: unified RAM)."""
    usable_bytes: int
    """What a training process can fill: memory less driver reserve and CUDA context (default
    calibration), or the Metal working-set limit on Apple."""
    vendor: str
    """``nvidia``, ``amd``, ``apple`` or ``custom``."""
    kind: str
    """``consumer``, ``workstation``, ``datacenter``, ``unified`` or ``custom``."""
    source: str
    """Where ``memory_bytes`` comes from."""
    aliases: tuple[str, ...] = ()
    """Other spellings accepted by ``find_gpu``."""
    figure: str = "reported"
    """``reported`` (read from a device log) or ``nominal`` (marketing capacity; see the data file)."""
    driver_reserved_bytes: int = 0
    """Memory the driver keeps (``nvidia-smi -q`` 'Reserved'); 0 where no log shows it."""
    usable_fraction: float | None = None
    """Unified memory only: share of RAM the GPU may use."""
    note: str = ""
    compute_capability: str | None = None
    """CUDA compute capability ('9.0'), NVIDIA cards only (``Calibration.for_device`` reads it)."""

    @property
    def unified(self) -> bool:
        return self.usable_fraction is not None

    def usable(self, calibration: Calibration | None = None) -> int:
        """Usable bytes under a given calibration (its CUDA context for this device)."""
        if calibration is None:
            return self.usable_bytes
        return _usable(self.memory_bytes, self.driver_reserved_bytes, self.usable_fraction,
                       calibration.for_device(self.name).cuda_context_bytes)

    def context_bytes(self, calibration: Calibration | None = None) -> int:
        """The CUDA context subtracted from this card (0 on unified memory)."""
        if self.unified:
            return 0
        return (calibration or default_calibration()).for_device(self.name).cuda_context_bytes

    def to_dict(self) -> dict[str, Any]:
        return dict(name=self.name, memory_bytes=self.memory_bytes, usable_bytes=self.usable_bytes,
                    vendor=self.vendor, kind=self.kind, figure=self.figure,
                    driver_reserved_bytes=self.driver_reserved_bytes, usable_fraction=self.usable_fraction,
                    aliases=list(self.aliases), source=self.source, note=self.note,
                    compute_capability=self.compute_capability)


def _usable(memory: int, reserved: int, fraction: float | None, context: int) -> int:
    if fraction is not None:
        return int(memory * fraction)
    return memory - reserved - context


def _entry(d: dict[str, Any], calibration: Calibration) -> Gpu:
    if "memory_bytes" in d:
        memory = int(d["memory_bytes"])
    else:
        memory = int(d["memory_mib"]) * MiB
    reserved = int(d.get("driver_reserved_mib", 0)) * MiB
    fraction = d.get("usable_fraction")
    context = 0 if fraction is not None else calibration.for_device(d["name"]).cuda_context_bytes
    return Gpu(name=d["name"], memory_bytes=memory, usable_bytes=_usable(memory, reserved, fraction, context),
               vendor=d["vendor"], kind=d["kind"], source=d["source"], aliases=tuple(d.get("aliases", ())),
               figure=d.get("figure", "reported"), driver_reserved_bytes=reserved,
               usable_fraction=None if fraction is None else float(fraction), note=d.get("note", ""),
               compute_capability=d.get("compute_capability"))


@lru_cache(maxsize=1)
def catalog() -> tuple[Gpu, ...]:
    """Every catalog card, in file order (consumer, workstation, datacenter, unified)."""
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    cal = default_calibration()
    return tuple(_entry(d, cal) for d in data["gpus"])


@lru_cache(maxsize=1)
def _index() -> dict[str, Gpu]:
    idx: dict[str, Gpu] = {}
    for g in catalog():
        for key in (g.name, *g.aliases):
            idx.setdefault(lookup_key(key), g)
    return idx


@lru_cache(maxsize=1)
def _capabilities() -> dict[str, str]:
    """Lookup key of every catalog name and alias -> its compute capability, read from the data file
    alone (the calibration asks while the catalog itself is being built)."""
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    idx: dict[str, str] = {}
    for d in data["gpus"]:
        for key in (d["name"], *d.get("aliases", ())):
            if d.get("compute_capability"):
                idx.setdefault(lookup_key(key), d["compute_capability"])
    return idx


def compute_capability(name: str) -> str | None:
    """The CUDA compute capability of a catalog card, by any name ``find_gpu`` takes; None when the
    name is not a catalog NVIDIA card."""
    return _capabilities().get(lookup_key(name))


def suggest_gpus(name: str, n: int = 4) -> list[str]:
    """Catalog names close to an unknown one: substring hits first, then fuzzy matches."""
    key = lookup_key(name)
    idx = _index()
    hits: list[str] = []
    if key:
        hits += [g.name for k, g in idx.items() if key in k or (len(k) >= 3 and k in key)]
        hits += [idx[k].name for k in difflib.get_close_matches(key, list(idx), n=n * 2, cutoff=0.6)]
    return list(dict.fromkeys(hits))[:n]


def find_gpu(name: str) -> Gpu:
    """A catalog card by name or alias, case-, space- and punctuation-insensitively; vendor words
    ('NVIDIA', 'GeForce', 'RTX', 'Tesla') are optional, so torch/nvidia-smi device names work too.

    Where a name covers several memory sizes ('a100', 'v100', 'rtx 3080') it means the smaller one.
    """
    key = lookup_key(name)
    if not key:
        raise GpuNotFound("no GPU name given; see `vramplan gpus`")
    gpu = _index().get(key)
    if gpu is not None:
        return gpu
    hint = suggest_gpus(name)
    more = f"; did you mean {', '.join(hint)}?" if hint else ""
    raise GpuNotFound(f"unknown GPU '{name}'{more} (see `vramplan gpus`, or pass --memory 24GiB)")


def custom_gpu(memory: str | int, calibration: Calibration | None = None) -> Gpu:
    """A card known only by its memory (``--memory 24GiB``; a bare number is GiB).

    The figure should be what the device reports (nvidia-smi total); the CUDA context is subtracted.
    """
    if isinstance(memory, bool):
        raise GpuMemoryError(f"memory must be a positive size, got {memory!r}")
    if isinstance(memory, int):
        total = memory
    else:
        try:
            total = parse_bytes(str(memory))
        except ValueError as e:
            raise GpuMemoryError(f"--memory: {e}") from None
    if total <= 0:
        raise GpuMemoryError(f"memory must be a positive size, got {memory!r}")
    context = (calibration or default_calibration()).cuda_context_bytes
    usable = total - context
    if usable <= 0:
        raise GpuMemoryError(f"memory {fmt_bytes(total)} leaves nothing after the CUDA context "
                             f"({fmt_bytes(context)})")
    return Gpu(name=f"{fmt_bytes(total)} GPU", memory_bytes=total, usable_bytes=usable, vendor="custom",
               kind="custom", source="--memory", figure="given")


def resolve_gpu(gpu: str | None = None, memory: str | int | None = None,
                calibration: Calibration | None = None) -> Gpu:
    """Exactly one of a catalog name or a memory size."""
    if gpu is not None and memory is not None:
        raise VramplanError("give either --gpu or --memory, not both")
    if gpu is None and memory is None:
        raise VramplanError("say which GPU: --gpu NAME (see `vramplan gpus`) or --memory 24GiB")
    return find_gpu(gpu) if gpu is not None else custom_gpu(memory, calibration)  # type: ignore[arg-type]
