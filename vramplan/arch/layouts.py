"""Model-level modules a family adds outside its decoder layers and token embedding (``Family.layout``).

A ``Layout`` names, for one family, the linears of the model itself (group ``model``: neither a
decoder layer's nor lm_head; bitsandbytes and peft's ``all-linear`` reach them), the parameters that
are no linear weight, by the weight group they are priced in (``embeddings``, ``norms``, ``router``,
``experts``: ``vramplan.recipes.GROUPS``), and the model's buffers (bytes, at the allocator's 512 B
granularity), in place of ``vramplan.analytic.weights.model_buffer_bytes``' rotary rule. Each cites the
transformers 5.24 code it mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vramplan.arch.mixers import _g4, gemma4_dims, gemma4_kinds, gemma4_layer_types

if TYPE_CHECKING:
    from vramplan.arch.spec import Arch, Linear

MODEL = "model"
"""The group of a model-level linear (``Arch.layer_linears`` leaves it out of every layer)."""

#: The CUDA caching allocator's block (``vramplan.analytic.weights.ALLOC_BLOCK``).
_BLOCK = 512


def _blocks(nbytes: int) -> int:
    return -(-nbytes // _BLOCK) * _BLOCK


@dataclass(frozen=True)
class Layout:
    name: str
    source: str
    linears: Callable[["Arch"], list["Linear"]]
    params: Callable[["Arch"], dict[str, int]]
    buffers: Callable[[Mapping[str, Any], int], int]
    """(config, layers) -> bytes of the model's buffers."""


# ------------------------------------------------------------------------------------ gemma4
def _gemma4_linears(arch: "Arch") -> list["Linear"]:
    """``Gemma4TextModel.per_layer_model_projection``: H -> L·P (when P = ``hidden_size_per_layer_input`` > 0)."""
    from vramplan.arch.spec import Linear
    P = int(_g4(arch.config, "hidden_size_per_layer_input") or 0)
    return [Linear("per_layer_model_projection", MODEL, arch.hidden_size, arch.num_layers * P, False, 1)] if P else []


def _gemma4_params(arch: "Arch") -> dict[str, int]:
    """Parameters beyond the four H-wide norms per layer and the final norm (``Gemma4TextModel.__init__``,
    ``Gemma4TextDecoderLayer.__init__``, ``Gemma4TextAttention.__init__``):
    1. embeddings: ``embed_tokens_per_layer``, ``vocab_size_per_layer_input`` × L·P;
    2. norms: q_norm (head_dim) in every layer, k_norm (head_dim) where the layer has k/v projections
       (v_norm has no weight), ``post_per_layer_input_norm`` (H) per layer and ``per_layer_projection_norm``
       (P) with P > 0; with ``enable_moe_block`` three more H-wide norms per layer
       (``post_feedforward_layernorm_1/2``, ``pre_feedforward_layernorm_2``; the router's norm has no weight);
    3. router: ``Gemma4TextRouter.scale`` (H) and ``per_expert_scale`` (E) per layer;
    4. experts: ``Gemma4TextExperts`` ``gate_up_proj`` (E, 2M, H) and ``down_proj`` (E, H, M) per layer."""
    cfg, L, H = arch.config, arch.num_layers, arch.hidden_size
    P = int(_g4(cfg, "hidden_size_per_layer_input") or 0)
    norms = 0
    for kind in gemma4_kinds(cfg, L):
        g = gemma4_dims(cfg, kind)
        norms += g["head_dim"] * (2 if g["kv_proj"] else 1) + (H if P else 0)
    out = {"embeddings": int(_g4(cfg, "vocab_size_per_layer_input")) * L * P if P else 0, "norms": norms + P}
    if _g4(cfg, "enable_moe_block"):
        E, M = int(cfg["num_experts"]), int(cfg["moe_intermediate_size"])
        out["norms"] += 3 * H * L
        out["router"] = (H + E) * L
        out["experts"] = 3 * E * M * H * L
    return out


def _gemma4_buffers(cfg: Mapping[str, Any], L: int) -> int:
    """``Gemma4TextRotaryEmbedding``: per attention layer type present, ``inv_freq`` and its
    ``original_inv_freq`` clone of head_dim / 2 fp32 values (the full-attention type's head_dim is
    ``global_head_dim``; the proportional rope keeps head_dim / 2 frequencies); the ``embed_scale``
    scalar of ``embed_tokens`` (and of ``embed_tokens_per_layer`` with P > 0); each layer's
    ``layer_scalar`` (one value). Each tensor a 512 B block at least."""
    out = 0
    for t in sorted(set(gemma4_layer_types(cfg, L))):
        hd = int(_g4(cfg, "global_head_dim") if t == "full_attention" else _g4(cfg, "head_dim"))
        out += 2 * _blocks(4 * (hd // 2))
    P = int(_g4(cfg, "hidden_size_per_layer_input") or 0)
    return out + _blocks(2) * (2 if P else 1) + L * _blocks(2)


#: Every family layout (``Family.layout`` names one).
LAYOUTS: dict[str, Layout] = {lo.name: lo for lo in (
    Layout("per_layer_inputs", "models/gemma4/modeling_gemma4.py Gemma4TextModel", _gemma4_linears, _gemma4_params,
           _gemma4_buffers),
)}
