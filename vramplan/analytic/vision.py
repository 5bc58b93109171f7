"""The vision tower of a multimodal model: its weights and what its images leave alive (bytes).

Symbols: the tower's linears (``Vision.linears``: blocks and projector), n_img = images per sample ×
batch, per image (patches P, merged features F, placeholder tokens T) from ``Vision.image``.
Sources: transformers 5.24 ``modeling_qwen2_5_vl.py`` / ``modeling_qwen3_vl.py`` /
``modeling_mistral3.py`` (``get_image_features``, ``get_placeholder_mask``, ``masked_scatter``);
bitsandbytes 0.50.2 for the quantized linears (``weights.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.analytic import weights as wt
from vramplan.scenario import Scenario, VisionMode

if TYPE_CHECKING:
    from vramplan.arch.spec import Arch, Linear
    from vramplan.arch.vision import Vision


def quantizes_tower(arch: "Arch", s: Scenario) -> bool:
    """Whether bitsandbytes replaces the tower's linears: a quantized base and the tower not skipped
    (``VisionMode.QUANTIZED``, or ``TRAINED``: peft's LoRA then wraps the ``Linear4bit``)."""
    return arch.vision is not None and s.quant.value != "none" and s.vision is not VisionMode.FROZEN


def tower_quantized_linears(arch: "Arch", s: Scenario) -> tuple["Linear", ...]:
    """The tower linears bitsandbytes replaces (joined to the decoder's 4-bit / int8 rows)."""
    return arch.vision.linears() if quantizes_tower(arch, s) else ()


def tower_float_params(v: "Vision", quantized: bool) -> int:
    """Tower parameters kept in floating point: everything but the linear weights bitsandbytes packs
    (biases, norms, patch embedding, position table), or every parameter when nothing is quantized."""
    return v.other_params + v.bias_params if quantized else v.total_params


def tower_buffer_bytes(v: "Vision") -> int:
    """The tower's fp32 buffers (rotary ``inv_freq`` / ``original_inv_freq``), each rounded to the
    allocator's 512 B block (``weights.model_buffer_bytes``' rule)."""
    return sum(-(-4 * n // wt.ALLOC_BLOCK) * wt.ALLOC_BLOCK for n in v.tower.buffers(v))


def image_tokens(v: "Vision", s: Scenario) -> int:
    """Placeholder tokens per sample: images × tokens per image (``Vision.image``). They are part of
    ``--seq`` (frameworks count them in ``max_length`` / ``cutoff_len``: the template expands the image
    placeholders before truncating)."""
    return s.images * v.image(*s.image_wh)[2] if s.images else 0


def tower_trains(arch: "Arch", s: Scenario) -> bool:
    return arch.vision is not None and s.vision is VisionMode.TRAINED


def tower_lora_targets(arch: "Arch", s: Scenario) -> tuple["Linear", ...]:
    """The tower linears peft adapts when the tower trains: every one under ``all-linear`` (peft's
    ``_maybe_include_all_linear_layers`` keeps every ``nn.Linear`` but the output head), else those
    whose leaf name a target names (peft's suffix match)."""
    if not tower_trains(arch, s) or s.full:
        return ()
    lins = arch.vision.linears()
    if s.targets == ("all-linear",):
        return lins
    return tuple(lin for lin in lins if lin.name.split(".")[-1] in s.targets)
