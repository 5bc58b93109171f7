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


# ---------------------------------------------------------------------- mla (latent attention)
def mla_walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str, live: bool) -> tuple[int, bool]:
    """What one latent-attention block saves (transformers 5.24 ``modeling_deepseek_v3.py``
    ``DeepseekV3Attention.forward`` L424-470, ``expand_kv`` L410-422), in its order:
    1. ``input_layernorm`` as softmax attention's (its rsqrt, and the fp32 copy of a 16-bit input);
    2. the two projections of the normalised x (``q_a_proj`` or ``q_proj``, ``kv_a_proj_with_mqa``:
       ``_Walk.linears`` prices LoRA on them, one shared input);
    3. ``q_a_layernorm`` (width q_lora_rank) and ``kv_a_layernorm`` on the kv_lora_rank slice of the
       compressed kv: each an fp32 copy + rsqrt; a slice already fp32 is saved as it is, a view that
       keeps the whole (kv_lora_rank + qk_rope) output alive; then ``q_b_proj`` and ``kv_b_proj``;
    4. the interleaved RoPE (``apply_rotary_pos_emb_interleave``): its products save the shared cos/sin
       only, and the two ``cat`` save nothing; ``key_states`` is a fresh buffer (``new_empty`` +
       ``copy_``), ``value_states`` a view of ``kv_b_proj``'s output;
    5. sdpa on nh heads of qk = nope + rope (q, k) and v_head_dim (v), no padding of v: the kernel saves
       q, k and v in the attention dtype (autocast's cast copies, else the tensors themselves: v is then
       the view, whose storage is the whole kv_b output, nope + v per head), its output (nh·v) and an fp32
       log-sum-exp per head; eager saves q, k, v and the nh·s fp32 probabilities and their copy;
    6. ``o_proj`` on the attention output (the saved kernel output, same storage).
    Returns (o_proj output dtype, whether it needs a gradient)."""
    from vramplan.analytic.activations import _promote, norm_out
    from vramplan.arch.mixers import mla_dims

    d, targets = w.d, w.targets
    H, nh = arch.hidden_size, arch.num_heads
    m = mla_dims(arch)

    def needs(name: str, x_live: bool) -> bool:
        return x_live or d.full or name in targets

    if live:
        w.tok += 4 + (4 * H if (d.resid != 4 and not d.liger_norm) else 0)
    n1 = norm_out(d, d.resid)
    first = "q_a_proj" if m["q_lora_rank"] else "q_proj"
    pd, _ = w.linears((lins[first], lins["kv_a_proj_with_mqa"]), n1, False, live)
    lq, lkv = needs(first, live), needs("kv_a_proj_with_mqa", live)
    qd = pd
    if m["q_lora_rank"]:
        w.norm(m["q_lora_rank"], 1, lq, pd)
        qd, _ = w.linears((lins["q_b_proj"],), norm_out(d, pd), False, lq)
        lq = needs("q_b_proj", lq)
    w.norm(m["kv_lora_rank"], 1, lkv, pd)
    if lkv and pd == 4 and not d.liger_norm:
        w.tok += 4 * m["rope"]  # the fp32 slice is a view: the saved input keeps k_rot's columns too
    kvd, _ = w.linears((lins["kv_b_proj"],), norm_out(d, pd), False, lkv)
    lkv = needs("kv_b_proj", lkv)
    qsd = _promote(qd, d.resid0)  # q_pass cat the rotated q_rot (cos/sin in the embedding output's dtype)
    la = lq or lkv
    if attn == "eager":
        ad = d.c if d.autocast else qsd
        if la:
            v_keep = m["nope"] + m["v"] if kvd == ad else m["v"]
            w.tok += ad * nh * (2 * m["qk"] + v_keep)
            w.quad += 4 * nh + (ad * nh if ad != 4 else 0)
        x_o_saved = False
    else:
        ad = d.c if (d.autocast or attn == "flash2") else qsd
        if la:
            v_keep = m["nope"] + m["v"] if kvd == ad else m["v"]
            w.tok += ad * nh * (2 * m["qk"] + v_keep) + ad * nh * m["v"] + 4 * nh
            if arch.family.dsa_mask and attn == "sdpa":
                w.quad += ad  # the kernel's additive copy of the layer's (b, 1, s, s) top-k mask
        x_o_saved = la
    return w.linears((lins["o_proj"],), ad, x_o_saved, la)


#: kind -> its saved-activation walk (the one place a kind's walk is registered).
WALKS: dict[str, Walk] = {
    "mla": mla_walk,
    "dsa": mla_walk,  # the indexer runs under torch.no_grad: it saves nothing (``dsa_forward_bytes``)
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
