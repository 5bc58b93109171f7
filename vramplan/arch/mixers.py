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
from typing import TYPE_CHECKING, Callable

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
    """arch -> per-layer parameters that are not linear weights, by name (unquantized)."""


def is_mixer_group(group: str) -> bool:
    """Whether linears of ``group`` belong to a token mixer (kept only in the layers of that kind)."""
    return group == ATTENTION or group in MIXERS


# ------------------------------------------------------------------------------------- kinds
# One section per kind: its linears and params functions, then its ``Mixer`` record.

# ---- identity: no token mixer (a layer that is a feed-forward block alone, Nemotron-H's ``-``/``E``)
IDENTITY = "identity"
"""A decoder layer without a token mixer: its one block is its MLP or MoE (``NemotronHBlock`` with
``block_type`` ``mlp`` / ``moe``); the walk saves nothing and passes the layer input on."""


def _no_linears(arch: "Arch", count: int) -> list["Linear"]:
    return []


def _no_params(arch: "Arch") -> dict[str, int]:
    return {}


# ---- mamba2: the Mamba-2 mixer (NemotronHMamba2Mixer)
MAMBA2 = "mamba2"


@dataclass(frozen=True)
class Mamba2Shape:
    """The sizes ``NemotronHMamba2Mixer.__init__`` derives from the config (transformers 5.24
    ``models/nemotron_h/modeling_nemotron_h.py`` L370-420)."""

    heads: int
    """``mamba_num_heads`` (nh)."""
    head_dim: int
    """``mamba_head_dim`` (p)."""
    state: int
    """``ssm_state_size`` (n)."""
    groups: int
    """``n_groups`` (g): B and C are shared by nh / g heads."""
    conv_kernel: int
    """``conv_kernel`` (K)."""
    chunk: int
    """``chunk_size`` (the SSD scan's block length)."""
    conv_bias: bool
    """``use_conv_bias``."""
    proj_bias: bool
    """``use_bias`` (in_proj / out_proj)."""

    @property
    def inner(self) -> int:
        """``intermediate_size = mamba_num_heads * mamba_head_dim`` (x, z and the gated norm's width)."""
        return self.heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """``conv_dim = intermediate_size + 2 * n_groups * ssm_state_size`` (x, B, C through the conv)."""
        return self.inner + 2 * self.groups * self.state

    @property
    def in_out(self) -> int:
        """in_proj's out features: ``intermediate_size + conv_dim + num_heads`` (z, xBC, dt)."""
        return self.inner + self.conv_dim + self.heads


def mamba2_shape(arch: "Arch") -> Mamba2Shape:
    cfg, fam = arch.config, arch.family.class_defaults

    def get(key: str) -> object:
        value = cfg.get(key)
        return fam[key] if value is None else value

    return Mamba2Shape(int(get("mamba_num_heads")), int(get("mamba_head_dim")), int(get("ssm_state_size")),
                       int(get("n_groups")), int(get("conv_kernel")), int(get("chunk_size")),
                       bool(get("use_conv_bias")), bool(get("use_bias")))


def _mamba2_linears(arch: "Arch", count: int) -> list["Linear"]:
    """``in_proj`` (H -> inner + conv_dim + nh) and ``out_proj`` (inner -> H), bias = ``use_bias``."""
    from vramplan.arch.spec import Linear
    m = mamba2_shape(arch)
    H = arch.hidden_size
    return [Linear("in_proj", MAMBA2, H, m.in_out, m.proj_bias, count),
            Linear("out_proj", MAMBA2, m.inner, H, m.proj_bias, count)]


def _mamba2_params(arch: "Arch") -> dict[str, int]:
    """The depthwise ``conv1d`` (conv_dim x 1 x K, bias conv_dim), ``dt_bias``, ``A_log``, ``D`` (nh each)
    and the gated RMSNorm's weight (inner)."""
    m = mamba2_shape(arch)
    return {"conv1d": m.conv_dim * m.conv_kernel + (m.conv_dim if m.conv_bias else 0),
            "dt_bias": m.heads, "A_log": m.heads, "D": m.heads, "norm": m.inner}


# ---- chunked_attention: Llama 4's local (chunked) RoPE attention layers
CHUNKED_ATTENTION = "chunked_attention"


def _chunked_attention_linears(arch: "Arch", count: int) -> list["Linear"]:
    """The same q/k/v/o as softmax attention (``Llama4TextAttention.__init__``), in their own group."""
    return arch.attention_linears(CHUNKED_ATTENTION, count)


def _no_params(arch: "Arch") -> dict[str, int]:
    """Its L2 q/k norm (``Llama4TextL2Norm``) has no weight."""
    return {}


#: Every token-mixer kind but ``ATTENTION`` (the one place a kind is registered).
MIXERS: dict[str, Mixer] = {m.name: m for m in (
    Mixer(IDENTITY, "models/nemotron_h/modeling_nemotron_h.py NemotronHBlock (mlp / moe blocks)", _no_linears,
          _no_params),
    Mixer(MAMBA2, "models/nemotron_h/modeling_nemotron_h.py NemotronHMamba2Mixer", _mamba2_linears, _mamba2_params),
    Mixer(CHUNKED_ATTENTION, "models/llama4/modeling_llama4.py::Llama4TextAttention (use_rope layers)",
          _chunked_attention_linears, _no_params),
)}
