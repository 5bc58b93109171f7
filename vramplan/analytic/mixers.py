"""Saved activations of the token-mixer kinds of ``vramplan.arch.mixers`` other than attention.

Each kind registers, under its ``Mixer`` name:
- ``WALKS[kind](w, arch, lins, attn, live) -> (output dtype, output needs a gradient)``: what the
  kind's block saves for backward per token / token·s / fixed bytes, added to the ``_Walk`` ``w``
  (``vramplan.analytic.activations``) exactly as ``activations._attention_saved`` does for attention:
  its input norm, projections (``w.linears`` prices LoRA on them), the mixer core, its output
  projection.
- ``WORKING[kind](arch, d, targets, rank, layer, **kw) -> (a, a_fixed, b, b_fixed)``: the backward
  working set of a layer of that kind, as ``activations.backward_working`` returns it, for layers
  whose busiest backward moment is not a plain attention layer's MLP (a layer without a
  feed-forward block, or a mixer whose backward outweighs its MLP's).

Every function cites the transformers 5.24 code it mirrors (file, lines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from vramplan.analytic.activations import Dtypes, _Walk
    from vramplan.arch.spec import Arch, Linear

Walk = Callable[["_Walk", "Arch", "dict[str, Linear]", str, bool], "tuple[int, bool]"]
Working = Callable[..., "tuple[int, int, int, int]"]

# ------------------------------------------------------------------------------------- kinds
# One section per kind: its walk and working functions.


# ---- chunked_attention: Llama 4's RoPE layers (local chunks, the L2 q/k norm)
def chunked_attention_walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str,
                           live: bool) -> tuple[int, bool]:
    """Llama 4's chunked-attention layer (transformers 5.24 ``models/llama4/modeling_llama4.py``,
    ``Llama4TextAttention.forward`` L345-395): softmax attention as ``activations._attention_saved``,
    with RoPE as a complex product (``apply_rotary_emb``: ``view_as_complex(xq.float()) * freqs_cis``
    saves the shared ``freqs_cis`` only) and, when ``use_qk_norm``, the weightless L2 norm on the
    rotated q and k (``Llama4TextL2Norm``: ``x.float() * rsqrt(mean(x²) + eps)``, an fp32 copy of q and k
    and one fp32 rsqrt per head, ``activations.l2_qk_norm_saved``). The chunk mask is priced with the
    sliding-window layers (``Family.sliding_rule`` ``chunked``)."""
    from vramplan.analytic.activations import _attention_saved
    l2 = bool(arch.config.get("use_qk_norm", arch.family.class_defaults.get("use_qk_norm", False)))
    return _attention_saved(w, arch, lins, attn, live, l2_qk=l2)


#: kind -> its saved-activation walk (the one place a kind's walk is registered).
WALKS: dict[str, Walk] = {
    "chunked_attention": chunked_attention_walk,
}

#: kind -> the backward working set of its layers (``backward_working_of``).
WORKING: dict[str, Working] = {
}


def backward_working_of(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                        **kw: Any) -> tuple[int, int, int, int]:
    """``activations.backward_working`` for decoder layer ``layer`` whose signature is not plain
    attention with a dense or MoE MLP: the kind's ``WORKING`` function when it has one; else (a
    mixer followed by an MLP, whose busiest moment is the MLP's) the MLP's."""
    from vramplan.analytic import activations as act
    mixer, ffn = arch.signature(layer)
    if mixer in WORKING:
        return WORKING[mixer](arch, d, targets, rank, layer, **kw)
    if ffn == "none":
        raise NotImplementedError(f"token mixer '{mixer}' has no backward working set (vramplan.analytic.mixers)")
    return act.backward_working(arch, d, ffn == "moe", targets, rank, **kw)
