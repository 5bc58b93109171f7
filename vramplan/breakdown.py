"""The shape every engine returns: named components in shared categories, and three totals.

Component names are hierarchical (``weights/nf4``, ``activations/layers``, ``runtime/cuda_context``);
the part before the slash is usually the category. Bytes inside, always ints.

Totals:

- **allocated peak**: the sum of the allocated components, comparable to
  ``torch.cuda.max_memory_allocated``;
- **reserved peak**: allocated plus the ``allocator`` runtime items (caching-allocator reserve),
  comparable to ``torch.cuda.max_memory_reserved``;
- **process total**: reserved plus the ``context`` and ``managed`` runtime items (CUDA context, cuBLAS
  handles, paged optimizer state in managed memory), comparable to nvidia-smi's per-process figure.

Host memory is its own figure, never part of the GPU totals: ``Breakdown.host`` lists the host
components (category ``host``: ``host/pinned``, ``host/pageable``; activation offloading puts them
there) and ``host_bytes`` sums them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

#: Categories of allocated memory, in display order. Shared by analytic, trace and profile.
ALLOCATED_CATEGORIES: tuple[str, ...] = (
    "weights",       # frozen base weights: 4-bit packed, int8, or floating point
    "quant_state",   # absmax / nested absmax / code tables / int8 row stats
    "adapter",       # LoRA A/B parameters (or trainable weights in full fine-tuning)
    "gradients",     # .grad of trainable parameters
    "optimizer",     # optimizer state in device memory
    "activations",   # tensors autograd saves for backward
    "logits",        # logits, their fp32 upcast, log-softmax and its gradient
    "temporary",     # transient buffers at the peak (dequantized weights, autocast copies, workspaces)
)
#: Runtime items on top of the allocated peak: which total each one joins.
RUNTIME_CATEGORIES: dict[str, str] = {
    "allocator": "reserved",   # caching-allocator reserve over allocated (fragmentation, rounding)
    "context": "total",        # CUDA context, cuBLAS/cuDNN handles: outside PyTorch's allocator
    "managed": "total",        # CUDA managed memory (paged optimizers): invisible to the allocator
}
#: Category of host (CPU) memory: a ``Breakdown.host`` component, never part of the GPU totals.
HOST_CATEGORY = "host"
CATEGORIES: tuple[str, ...] = ALLOCATED_CATEGORIES + tuple(RUNTIME_CATEGORIES) + (HOST_CATEGORY,)
_CATEGORY_SET = frozenset(CATEGORIES)


@dataclass(frozen=True)
class Component:
    """One named term of the budget."""

    name: str
    """Hierarchical name, e.g. ``weights/nf4``."""
    category: str
    """One of ``CATEGORIES``."""
    bytes: int
    """Size in bytes (an int, never negative)."""
    note: str = ""
    """One line on what it is or where its formula comes from."""

    def __post_init__(self) -> None:
        if self.category not in _CATEGORY_SET:
            raise ValueError(f"unknown category {self.category!r} for {self.name}")
        if type(self.bytes) is not int and (not isinstance(self.bytes, int) or isinstance(self.bytes, bool)):
            raise TypeError(f"{self.name}: bytes must be an int, got {type(self.bytes).__name__}")
        if self.bytes < 0:
            raise ValueError(f"{self.name}: negative bytes {self.bytes}")

    @property
    def is_runtime(self) -> bool:
        return self.category in RUNTIME_CATEGORIES


@dataclass(frozen=True)
class Totals:
    """The three totals of a budget, in bytes (used for the conservative upper bound)."""

    allocated: int
    """Comparable to ``torch.cuda.max_memory_allocated``."""
    reserved: int
    """Comparable to ``torch.cuda.max_memory_reserved``."""
    total: int
    """Comparable to nvidia-smi's per-process figure."""

    def get(self, key: str) -> int:
        """By a Breakdown total's attribute name (``allocated_peak_bytes``, ``reserved_peak_bytes``,
        ``total_bytes``) or the short name (``allocated``, ``reserved``, ``total``)."""
        return getattr(self, TOTAL_NAMES.get(key, key))


#: Breakdown total attribute -> ``Totals`` field.
TOTAL_NAMES = {"allocated_peak_bytes": "allocated", "reserved_peak_bytes": "reserved", "total_bytes": "total"}
#: ``Totals`` field -> the key older files stored the upper bound under, in ``extra``.
_LEGACY_UPPER = {"allocated": "upper_bound_allocated_bytes", "reserved": "upper_bound_reserved_bytes",
                 "total": "upper_bound_total_bytes"}


@dataclass(frozen=True)
class Breakdown:
    """A memory budget: components (allocated first, then runtime) and derived totals."""

    components: tuple[Component, ...]
    engine: str = "analytic"
    """``analytic``, ``trace`` or ``profile``."""
    notes: tuple[str, ...] = ()
    """Caveats shown with the result (e.g. what a trace cannot see)."""
    peak_phase: str | None = None
    """The phase of the training step at which the allocated peak falls (``loss backward``...)."""
    upper: Totals | None = None
    """Conservative upper bound of each total (point × (1 + the calibration's upper_bound_fraction)),
    when the engine gives one."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Engine-specific figures (trace: first-step peak, timings; analytic: every phase's total...)."""
    host: tuple[Component, ...] = ()
    """Host memory of the step (category ``host``: ``host/pinned`` page-locked, ``host/pageable``), apart
    from every GPU total; empty when the step keeps nothing in host memory."""

    def __post_init__(self) -> None:
        if any(c.category == HOST_CATEGORY for c in self.components):
            raise ValueError("host components belong in Breakdown.host, not in components")
        if any(c.category != HOST_CATEGORY for c in self.host):
            raise ValueError(f"Breakdown.host takes only {HOST_CATEGORY!r} components")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            dupes = {n for n in names if names.count(n) > 1}
            raise ValueError(f"duplicate component names: {sorted(dupes)}")

    # --------------------------------------------------------------------------------- totals
    @property
    def allocated(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if not c.is_runtime)

    @property
    def runtime(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.is_runtime)

    @property
    def host_bytes(self) -> int:
        """Host memory (pinned + pageable) at the step's host peak: apart from the GPU totals."""
        return sum(c.bytes for c in self.host)

    @property
    def allocated_peak_bytes(self) -> int:
        return sum(c.bytes for c in self.allocated)

    @property
    def reserved_peak_bytes(self) -> int:
        extra = sum(c.bytes for c in self.runtime if RUNTIME_CATEGORIES[c.category] == "reserved")
        return self.allocated_peak_bytes + extra

    @property
    def total_bytes(self) -> int:
        extra = sum(c.bytes for c in self.runtime if RUNTIME_CATEGORIES[c.category] == "total")
        return self.reserved_peak_bytes + extra

    def by_category(self) -> dict[str, int]:
        """Bytes per category, in ``CATEGORIES`` order, zero categories omitted."""
        out: dict[str, int] = {}
        for cat in CATEGORIES:
            b = sum(c.bytes for c in self.components if c.category == cat)
            if b:
                out[cat] = b
        return out

    def get(self, name: str) -> int:
        """Bytes of a component by name (0 if absent)."""
        return next((c.bytes for c in self.components if c.name == name), 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``host`` and ``host_bytes`` appear only when the step keeps host memory."""
        out = {
            "engine": self.engine,
            "components": [
                {"name": c.name, "category": c.category, "bytes": c.bytes, "note": c.note}
                for c in self.allocated
            ],
            "runtime": [
                {"name": c.name, "category": c.category, "bytes": c.bytes, "note": c.note}
                for c in self.runtime
            ],
            "allocated_peak_bytes": self.allocated_peak_bytes,
            "reserved_peak_bytes": self.reserved_peak_bytes,
            "total_bytes": self.total_bytes,
            "notes": list(self.notes),
            "peak_phase": self.peak_phase,
            "upper": None if self.upper is None else asdict(self.upper),
            "extra": self.extra,
        }
        if self.host:
            out["host"] = [{"name": c.name, "category": c.category, "bytes": c.bytes, "note": c.note}
                           for c in self.host]
            out["host_bytes"] = self.host_bytes
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Breakdown":
        """The inverse of ``to_dict``; also reads files written before ``peak_phase`` and ``upper``
        were fields (both were keys of ``extra`` then)."""
        comps = [Component(c["name"], c["category"], int(c["bytes"]), c.get("note", ""))
                 for c in list(d.get("components", [])) + list(d.get("runtime", []))]
        extra = dict(d.get("extra", {}))
        phase = d.get("peak_phase", extra.pop("peak_phase", None))
        upper = d.get("upper")
        if upper is not None and not isinstance(upper, dict):
            raise ValueError(f"'upper' must be an object of the three totals, got {type(upper).__name__}")
        legacy = {k: extra.pop(v) for k, v in _LEGACY_UPPER.items() if v in extra}
        if upper is None and len(legacy) == len(_LEGACY_UPPER):
            upper = legacy
        host = tuple(Component(c["name"], c.get("category", HOST_CATEGORY), int(c["bytes"]), c.get("note", ""))
                     for c in d.get("host", []))
        return cls(tuple(comps), engine=d.get("engine", "analytic"), notes=tuple(d.get("notes", ())), host=host,
                   peak_phase=None if phase is None else str(phase),
                   upper=None if upper is None else Totals(**{k: int(v) for k, v in upper.items()}),
                   extra=extra)


@dataclass(frozen=True)
class Comparison:
    """One row of ``compare``: a category (or total) in two breakdowns."""

    key: str
    ours: int
    theirs: int

    @property
    def error(self) -> float:
        """Relative error of ``ours`` against ``theirs`` (0.05 = 5 % high)."""
        if self.theirs == 0:
            return 0.0 if self.ours == 0 else float("inf")
        return (self.ours - self.theirs) / self.theirs


def compare(ours: Breakdown, theirs: Breakdown, keys: Iterable[str] | None = None) -> list[Comparison]:
    """Category-by-category comparison plus the allocated total (last row, key ``allocated_peak``)."""
    a, b = ours.by_category(), theirs.by_category()
    keys = list(keys) if keys is not None else [c for c in ALLOCATED_CATEGORIES if c in a or c in b]
    rows = [Comparison(k, a.get(k, 0), b.get(k, 0)) for k in keys]
    rows.append(Comparison("allocated_peak", ours.allocated_peak_bytes, theirs.allocated_peak_bytes))
    return rows


def fmt_bytes(n: float, digits: int = 2) -> str:
    """IEC rendering: 1536 -> '1.50 KiB'."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.{digits}f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """'24GiB' -> 25769803776; '24 GB' -> 24e9 (SI); a bare number is GiB. Raises ValueError."""
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):] or "gib"
    if unit == "g":
        unit = "gib"
    if unit not in _UNITS:
        raise ValueError(f"unknown memory unit in {text!r} (use GiB, MiB, GB...)")
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"cannot parse memory size {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value * _UNITS[unit])
