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
    Mixer(CHUNKED_ATTENTION, "models/llama4/modeling_llama4.py::Llama4TextAttention (use_rope layers)",
          _chunked_attention_linears, _no_params),
)}
