"""Where the step runs: one ``Device`` value that every engine, the calibration and the profiler take.

A device decides three things, all of them here and nowhere else:

1. **The program** (``semantics``): what the same transformers + peft + bitsandbytes step allocates.
   ``"cuda"``: the program users run on a GPU (fused ``native_dropout`` with bool masks, peft's
   CUDA-only autocast check; see ``vramplan.hf.interventions``). ``"cpu"``: the CPU program exactly as it
   runs (CPU profiles, fake-vs-real tests).
2. **The runtime terms** that apply: a CUDA context and cuBLAS workspace, a caching allocator's
   reserve. A CPU device has none of them (``Calibration.for_device`` zeroes them).
3. **The calibration key**: which per-device constants of a calibration file apply (the GPU's name
   without the vendor word, so "NVIDIA H200" from the driver and "H200" from the catalog agree).

``Device.parse`` turns whatever a caller holds (None, "cpu", "cuda:0", "NVIDIA H200", a Device)
into one. Every device-name comparison of the package lives here: ``name_words`` (whole-word
calibration matching), ``strip_vendor`` (calibration keys, profile file names) and ``lookup_key``
(the GPU catalog's loose lookup).

Adding a device kind (e.g. ROCm): a new ``KINDS`` entry with its semantics and runtime flags, then
the engines' semantics switch (``vramplan.analytic.activations.Dtypes.cuda``,
``vramplan.hf.interventions``) if its program differs; see docs/design.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vramplan.errors import VramplanError

#: Words that name a vendor or product line rather than the card (dropped for calibration keys).
VENDOR_WORDS = ("nvidia", "amd")


@dataclass(frozen=True)
class Kind:
    """What one device kind implies."""

    semantics: str
    """The program the step runs (``"cuda"`` or ``"cpu"``)."""
    caching_allocator: bool
    """A caching allocator holds reserve over the allocated peak (CUDA's ``CUDACachingAllocator``)."""
    cuda_context: bool
    """A CUDA context, kernel images and library handles sit outside the allocator."""


#: Device kinds: the one place a new kind is declared.
KINDS: dict[str, Kind] = {
    "cuda": Kind(semantics="cuda", caching_allocator=True, cuda_context=True),
    "cpu": Kind(semantics="cpu", caching_allocator=False, cuda_context=False),
}

#: The two programs an engine can price (``Device.semantics``).
SEMANTICS = tuple(dict.fromkeys(k.semantics for k in KINDS.values()))


def name_words(name: str) -> tuple[str, ...]:
    """Lower-case alphanumeric words of a device name: 'NVIDIA A100-SXM4-80GB' ->
    ('nvidia', 'a100', 'sxm4', '80gb'). Every device-name comparison in vramplan starts here."""
    return tuple(w for w in re.split(r"[^0-9a-z]+", str(name).lower()) if w)


#: Words a catalog lookup ignores: vendor and product-line words ('NVIDIA GeForce RTX 4090' finds '4090').
LOOKUP_NOISE = frozenset({"nvidia", "geforce", "tesla", "quadro", "amd", "instinct", "radeon", "rtx", "apple",
                          "gpu", "gb", "the"})


def lookup_key(name: str) -> str:
    """The GPU catalog's loose key: letter and digit runs, noise words dropped, joined:
    'NVIDIA GeForce RTX 4090' / 'rtx4090' / 'RTX-4090' -> '4090'; 'A100-SXM4-80GB' -> 'a100sxm480'."""
    tokens = re.findall(r"[a-z]+|\d+", str(name).lower())
    return "".join(t for t in tokens if t not in LOOKUP_NOISE)


def strip_vendor(name: str) -> str:
    """The name without a leading vendor word, as calibration files key their constants:
    'NVIDIA H200' -> 'H200' (``torch.cuda.get_device_name`` puts the vendor first; the catalog does not)."""
    words = str(name).split()
    if len(words) > 1 and name_words(words[0]) and name_words(words[0])[0] in VENDOR_WORDS:
        return " ".join(words[1:])
    return str(name)


def contains_words(name: str, part: str) -> bool:
    """Whether ``part``'s words appear in ``name``'s, in order and whole ('A100' is in
    'NVIDIA A100-SXM4-80GB' but not in 'A10')."""
    words, want = name_words(name), name_words(part)
    n = len(want)
    return n > 0 and any(words[i:i + n] == want for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class Device:
    """A device: its kind and, for a GPU, its name (None when unnamed: 'cuda', 'cuda:0')."""

    kind: str = "cuda"
    """A key of ``KINDS``."""
    name: str | None = None
    """The GPU's name as the driver or the catalog gives it ('NVIDIA H200', 'RTX 4090'); None for CPU."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VramplanError(f"unknown device kind '{self.kind}' (choose from: {', '.join(KINDS)})")

    @classmethod
    def parse(cls, value: "Device | str | None") -> "Device":
        """None -> an unnamed CUDA device (the product's default program); 'cpu' -> CPU; 'cuda' or
        'cuda:N' -> an unnamed CUDA device; any other string -> the CUDA device of that name."""
        if isinstance(value, Device):
            return value
        if value is None:
            return _UNNAMED_CUDA
        if not isinstance(value, str):
            raise VramplanError(f"device must be a name or a Device, got {type(value).__name__}")
        text = value.strip()
        low = text.lower()
        if low == "cpu":
            return cls("cpu")
        if not text or low == "cuda" or re.fullmatch(r"cuda:\d+", low):
            return cls("cuda")
        return cls("cuda", text)

    @classmethod
    def cpu(cls) -> "Device":
        return cls("cpu")

    @property
    def semantics(self) -> str:
        """The program priced on this device: ``"cuda"`` or ``"cpu"``."""
        return KINDS[self.kind].semantics

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    @property
    def caching_allocator(self) -> bool:
        return KINDS[self.kind].caching_allocator

    @property
    def cuda_context(self) -> bool:
        return KINDS[self.kind].cuda_context

    @property
    def calibration_key(self) -> str | None:
        """The key this device's per-device constants are stored under ('H200'), 'cpu' for the CPU,
        None for an unnamed GPU (the global constants apply)."""
        if self.is_cpu:
            return "cpu"
        return strip_vendor(self.name) if self.name else None

    def __str__(self) -> str:
        return self.name or self.kind


_UNNAMED_CUDA = Device("cuda")
