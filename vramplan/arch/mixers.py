"""Token-mixer kinds: what a decoder layer's attention-like block holds, one record per kind.

A decoder layer is a token mixer and a feed-forward block (``Arch.signature``). Softmax attention
over q/k/v/o (``ATTENTION``, sliding or not) is written in ``Arch.linears`` itself; every other kind
(linear attention, state-space blocks, latent attention) is a ``Mixer`` here: the linears it adds
(their ``group`` is the kind's name, so ``Arch.layer_linears`` keeps them in the layers of that
kind only) and its parameters that are not ``nn.Linear`` weights (convolution kernels, decay and
gate vectors, its own norms), which bitsandbytes leaves unquantized. The kind's saved activations
are priced in ``vramplan.analytic.mixers`` under the same name.

Adding a kind (docs/adding-a-model.md): one ``Mixer`` in ``MIXERS`` reading its sizes from the
config (``Arch.config``), the family's ``mixer_kinds`` naming which layers use it, and its walk in
``vramplan.analytic.mixers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

if TYPE_CHECKING:
    from vramplan.arch.spec import Arch, Linear

ATTENTION = "attention"
"""Softmax attention with q/k/v/o projections (``Arch.linears``)."""


@dataclass(frozen=True)
class Mixer:
    """One token-mixer kind other than plain attention."""

    name: str
    source: str
    """The transformers 5.24 module it mirrors (file and class)."""
    linears: Callable[["Arch", int], list["Linear"]]
    """(arch, layers of this kind) -> its ``Linear`` kinds, ``group`` = ``name``, ``count`` = layers."""
    params: Callable[["Arch"], dict[str, int]]
    """arch -> per-layer parameters that are not linear weights, by name (unquantized), but its norms'."""
    norms: Callable[["Arch"], int] = lambda arch: 0
    """arch -> per-layer weights of the kind's own norms (priced with the model's norms: a recipe that
    casts norms back casts these too)."""
    cache_state: Callable[["Arch", int], int] | None = None
    """(arch, bytes of the projections' output) -> bytes per sequence one layer of this kind keeps in a
    generation cache in place of a KV cache (a recurrent state, a convolution window); None: the kind
    keeps no cache."""


def is_mixer_group(group: str) -> bool:
    """Whether linears of ``group`` belong to a token mixer (kept only in the layers of that kind)."""
    return group == ATTENTION or group in MIXERS


# ------------------------------------------------------------------------------------- kinds
# One section per kind: its linears and params functions, then its ``Mixer`` record.

# ------------------------------------------------------------------- gated_deltanet (Qwen3-Next)
GATED_DELTANET = "gated_deltanet"
"""Gated DeltaNet linear attention (``Qwen3NextGatedDeltaNet``, ``Qwen3_5GatedDeltaNet``)."""


class DeltaNetDims(NamedTuple):
    """Sizes of one gated DeltaNet layer (config.json ``linear_*``, the config class's defaults)."""

    nk: int
    """Query/key heads (``linear_num_key_heads``)."""
    nv: int
    """Value heads (``linear_num_value_heads``); q and k are repeated to nv heads in the kernel."""
    dk: int
    """Query/key head width (``linear_key_head_dim``)."""
    dv: int
    """Value head width (``linear_value_head_dim``)."""
    kernel: int
    """Causal convolution width (``linear_conv_kernel_dim``)."""

    @property
    def key_dim(self) -> int:
        return self.nk * self.dk

    @property
    def value_dim(self) -> int:
        return self.nv * self.dv

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise convolution over q, k and v (``conv_dim``)."""
        return 2 * self.key_dim + self.value_dim


def _cfg(arch: "Arch", key: str) -> Any:
    value = arch.config.get(key)
    return value if value is not None else arch.family.class_defaults[key]


def deltanet_dims(arch: "Arch") -> DeltaNetDims:
    """The gated DeltaNet sizes of ``arch``."""
    return DeltaNetDims(*(int(_cfg(arch, k)) for k in ("linear_num_key_heads", "linear_num_value_heads",
                                                          "linear_key_head_dim", "linear_value_head_dim",
                                                          "linear_conv_kernel_dim")))


def _deltanet_linears(arch: "Arch", n: int) -> list["Linear"]:
    """``Qwen3NextGatedDeltaNet.__init__``: ``in_proj_qkvz`` (H -> 2·key_dim + 2·value_dim), ``in_proj_ba``
    (H -> 2·nv), ``out_proj`` (value_dim -> H), no biases; Qwen3.5 (``Family.deltanet_split``,
    ``Qwen3_5GatedDeltaNet.__init__``) splits the input projections into ``in_proj_qkv`` (H -> conv_dim),
    ``in_proj_z`` (H -> value_dim), ``in_proj_b`` and ``in_proj_a`` (H -> nv each)."""
    from vramplan.arch.spec import Linear
    t, H = deltanet_dims(arch), arch.hidden_size
    g = GATED_DELTANET
    if arch.family.deltanet_split:
        ins = [Linear("in_proj_qkv", g, H, t.conv_dim, False, n), Linear("in_proj_z", g, H, t.value_dim, False, n),
               Linear("in_proj_b", g, H, t.nv, False, n), Linear("in_proj_a", g, H, t.nv, False, n)]
    else:
        ins = [Linear("in_proj_qkvz", g, H, 2 * t.key_dim + 2 * t.value_dim, False, n),
               Linear("in_proj_ba", g, H, 2 * t.nv, False, n)]
    return ins + [Linear("out_proj", g, t.value_dim, H, False, n)]


def _deltanet_params(arch: "Arch") -> dict[str, int]:
    """The depthwise ``conv1d`` kernel (conv_dim × 1 × kernel, no bias), ``A_log`` and ``dt_bias`` (nv each)."""
    t = deltanet_dims(arch)
    return {"conv1d": t.conv_dim * t.kernel, "A_log": t.nv, "dt_bias": t.nv}


def _deltanet_norms(arch: "Arch") -> int:
    """``Qwen3NextRMSNormGated(head_v_dim)``: one weight of dv, shared by every value head."""
    return deltanet_dims(arch).dv


def _deltanet_cache(arch: "Arch", proj: int) -> int:
    """One layer's generation cache per sequence (transformers 5.24 ``cache_utils.LinearAttentionLayer``):
    the convolution window ``conv_states`` of conv_dim × kernel in the projections' dtype
    (``update_conv_state`` keeps the last ``conv_kernel_size`` positions) and the recurrent state
    nv × dk × dv in fp32 (``torch_chunk_gated_delta_rule``'s ``last_recurrent_state`` is fp32, as fla's)."""
    t = deltanet_dims(arch)
    return proj * t.conv_dim * t.kernel + 4 * t.nv * t.dk * t.dv


#: Every token-mixer kind but ``ATTENTION`` (the one place a kind is registered).
MIXERS: dict[str, Mixer] = {m.name: m for m in (
    Mixer(GATED_DELTANET, "models/qwen3_next/modeling_qwen3_next.py::Qwen3NextGatedDeltaNet",
          _deltanet_linears, _deltanet_params, _deltanet_norms, _deltanet_cache),
)}
