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
    # q_pass cat the rotated q_rot (cos/sin in the embedding output's dtype); NoPE latent attention
    # (``Family.mla_rope`` False, Kimi Linear) views the projection itself
    qsd = _promote(qd, d.resid0) if arch.family.mla_rope else qd
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


# ------------------------------------------------------------- kda (Kimi Delta Attention)
#: Positions per chunk of transformers' ``chunk_kimi_delta_attention`` (``chunk_size=64``).
KDA_CHUNK = 64


def kda_core_saved(nh: int, dk: int, chunk: int = KDA_CHUNK, autocast_c: int = 0) -> int:
    """Bytes per token transformers 5.24's torch ``chunk_kimi_delta_attention`` (``modeling_kimi_linear.py``
    L468-568; fla's ``chunk_kda`` Triton kernel runs instead when installed on CUDA) saves for backward, for
    nh heads of width dk = dv, with ``use_qk_l2norm_in_kernel=True``. Every input is made a contiguous
    fp32 copy first, so every saved tensor is fp32 (4 B); D = nh · dk, C = chunk:
    1. ``l2norm`` of q and k (``x / sqrt((x * x).sum(-1) + eps)``): the fp32 q and k (D each) and the sqrt
       (nh each);
    2. ``F.pad`` copies q (then ``* scale``), k, v, g, beta; ``v * beta`` saves padded v (D) and beta (nh),
       ``k * beta`` padded k (D);
    3. the per-channel pairwise decay ``exp(g_i - g_j)`` (C × dk per position: C · D), saved by ``exp``;
       ``k_beta * k`` saves k_beta (D), and its C × dk product times the decay saves the product (C · D);
    4. the in-place forward substitution ``for i in range(1, C)``: each step's ``row.unsqueeze(-1) * sub``
       saves its two clones, i and i² values per chunk and head: Σ_{i<C} (i + i²) / C per token and head;
    5. ``attn + eye`` (C per head) saved by both matmuls, with v_beta (D); ``g.exp()`` (D) and
       ``k_beta * exp(g)`` (D, saved by its matmul);
    6. the loop over chunks: ``q_i * exp(g_i)`` saves the exp (D) and the padded scaled q (D), its matmul the
       product (D) and the state S before the chunk (nh · dk · dv per chunk: dk² / C per token and head);
       ``q_i * k_i`` saves nothing new, its C × dk product times the decay the product (C · D);
       ``k_cumdecay_i @ S`` the chunk's k_cumdecay (D); ``attn_intra @ v_new`` the intra-chunk attention
       (C per head) and v_new (D); ``S * exp(g_last)`` that exp (dk per chunk and head); ``k_i *
       exp(g_last - g_i)`` the exp (D), its matmul the product (D).
    Under autocast (``autocast_c`` = the compute dtype's bytes c < 4: ``matmul`` is on its lower-precision
    list) each matmul saves c copies of its fp32 operands and returns c: v_beta, k_beta · exp(g), q · exp(g)
    and k · exp(g_last − g), saved only by their matmuls, shrink to c (D each); k_cumdecay and v_new are
    matmul outputs in c (D each); the intra-chunk attention's copy is c (C per head); attn + eye gets two c
    copies (one per matmul) for its fp32 one; S keeps its fp32 self (the decay multiply) plus two c copies
    per chunk. Exact when the sequence is a multiple of C (each sample is padded to one); the 1/C terms rounded down
    to whole bytes per token. The output (written chunk by chunk, cast back) saves nothing."""
    f, C, D = 4, chunk, nh * dk
    per_d = 15 * D + 3 * C * D  # q, k, v, k (pad), k_beta, v_beta, exp(g), k_beta·exp, chunk loop's 7
    per_h = nh * (2 + 1 + C + C)  # two l2 norms, beta, attn + eye, intra-chunk attention
    sub = nh * sum(i + i * i for i in range(1, C))  # forward-substitution clones per chunk
    per_chunk = nh * dk * dk + D + sub  # S per chunk, exp(g_last) per chunk
    out = f * (per_d + per_h) + (f * per_chunk) // C
    c = autocast_c
    if c and c < f:
        out -= (f - c) * (6 * D + nh * C) + (f * nh * C - 2 * c * nh * C)
        out += (2 * c * nh * dk * dk) // C
    return out


def kda_walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str, live: bool,
             upto_core: bool = False) -> tuple[int, bool]:
    """A Kimi Delta Attention layer's token mixer (``KimiLinearDeltaAttention.forward``,
    ``modeling_kimi_linear.py`` L612-716), priced as transformers' torch fallbacks (no fla, no
    causal-conv1d, as the trace runs them):
    1. the input RMSNorm (as attention's);
    2. the projections of the normed x (q/k/v, ``forget_gate.f_a_proj``, ``b_proj``, ``g_a_proj``:
       ``w.linears``, output dtype pd), then ``f_b_proj`` and ``g_b_proj`` on their latents;
    3. ``causal_conv1d_fn`` (L380-399): ``F.conv1d`` saves its input in the kernel weight's dtype, ``silu``
       its input (2 · 3D per token in that dtype, the K − 1 padded positions per sample unpriced);
    4. the forget gate (L332-344): ``exp(g)`` saves its output and ``log(1 + exp(g))`` its input (fp32 D
       each), ``torch.where`` its bool condition (D); the frozen ``-exp(A_log)`` the multiply keeps
       (nh fp32, fixed); ``sigmoid(b)`` saves its output (pd · nh);
    5. the chunked KDA (``kda_core_saved``);
    6. ``o_norm`` (``KimiLinearRMSNormGated``, L83-96) over head_dim: the fp32 input (pow and the rsqrt
       product) and rsqrt per head, the frozen weight's fp32 copy (fixed), ``sigmoid(gate.float())`` its
       output, and the product saves it and the weighted norm (fp32 D each): 12 · D + 4 · nh;
    7. ``o_proj`` (``w.linears``).
    Returns (o_proj output dtype, whether it needs a gradient)."""
    from vramplan.analytic.activations import norm_out
    from vramplan.arch.mixers import kda_dims

    d = w.d
    m = kda_dims(arch)
    H, D, nh, hd = arch.hidden_size, m["qkv"], m["heads"], m["head_dim"]
    if live:
        w.tok += 4 + (4 * H if (d.resid != 4 and not d.liger_norm) else 0)
    n1 = norm_out(d, d.resid)
    names = ("q_proj", "k_proj", "v_proj", "forget_gate.f_a_proj", "b_proj", "g_a_proj")
    pd, lp = w.linears(tuple(lins[n] for n in names), n1, False, live)
    fd, _ = w.linears((lins["forget_gate.f_b_proj"],), pd, False, live or d.full or "f_a_proj" in w.targets)
    gd, _ = w.linears((lins["g_b_proj"],), pd, False, live or d.full or "g_a_proj" in w.targets)
    if not lp:
        return w.linears((lins["o_proj"],), pd, False, False)
    cd = d.c if d.autocast else d.other_w
    w.tok += 2 * cd * 3 * D  # 3. conv1d input, silu input
    w.tok += 4 * D + 4 * D + D + pd * nh  # 4. exp(g), 1 + exp(g), where's condition; sigmoid(b)
    w.const += 4 * nh
    w.tok += kda_core_saved(nh, hd, autocast_c=d.c if d.autocast else 0)  # 5.
    if upto_core:
        return pd, True
    w.tok += 12 * D + 4 * nh  # 6. o_norm
    w.const += 4 * hd
    if d.full:
        w.tok += 4 * D
    return w.linears((lins["o_proj"],), pd, False, True)


def kda_backward_working(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                         **kw: Any) -> tuple[int, int, int, int]:
    """The busiest moment of a KDA layer's backward (torch fallback): the first accumulation of the pairwise
    decay's gradient in the chunk loop's backward. ``decay_mask[:, :, i]``'s ``SelectBackward`` builds a
    zero tensor of the whole decay (``select_backward``: C · D fp32 per token) for each chunk; autograd's
    input buffer holds the last chunk's, and the next chunk's is added out of place: three whole-decay
    gradients alive at once, 3 · 4 · C · D per token. By then the backward has freed what the layer saved
    after the delta rule (``o_norm``, ``o_proj``, the feed-forward block: the layer's saved set less
    ``kda_walk`` up to the core) and the last chunk's loop tensors (per chunk and sample, C positions of:
    the pairwise product (4 · C · D), exp(g_i), q · exp and k · exp's exps and products, v_new, the intra
    attention, the state S and its copies). Returns (a, a_fixed, 0, 0): a_fixed is the one chunk freed,
    for one sample (a batch of b frees b chunks: the figure is then up to (b − 1) chunks high)."""
    from vramplan.analytic.activations import _Walk, _layer_lins, layer_saved
    from vramplan.arch.mixers import kda_dims
    moe = arch.signature(layer)[1] == "moe"
    tok, _, _ = layer_saved(arch, d, rank, targets, "sdpa", moe, layer=layer,
                            **{k: v for k, v in kw.items() if k in ("kernels", "fused")})
    w = _Walk(d, rank, targets)
    lins, _ = _layer_lins(arch, moe, layer)
    kda_walk(w, arch, lins, "sdpa", True, upto_core=True)
    post = tok - w.tok
    m = kda_dims(arch)
    f, C, D, nh, dk = 4, KDA_CHUNK, m["qkv"], m["heads"], m["head_dim"]
    c = d.c if (d.autocast and d.c < f) else f
    loop = f * (C * D + 3 * D) + c * (3 * D + nh * C) + ((f + (2 * c if c < f else 0)) * nh * dk * dk) // C
    return 3 * f * C * D - post, -loop * C, 0, 0


def kda_note(arch: "Arch") -> str:
    """The breakdown note of a model with KDA layers: the torch fallback priced, not fla's kernel."""
    from vramplan.arch.mixers import KDA, kda_dims
    m = kda_dims(arch)
    return (f"Kimi Delta Attention ({arch.mixer_layers(KDA)} layers): priced as transformers' torch fallback "
            f"(chunk_kimi_delta_attention, chunk {KDA_CHUNK}, fp32), {kda_core_saved(m['heads'], m['head_dim']):,} B "
            f"per token per layer in the delta rule; on CUDA with flash-linear-attention installed its chunk_kda "
            f"kernel saves far less (q, k, v, g, beta and chunk-local matrices; states recomputed), not priced here")


#: kind -> its saved-activation walk (the one place a kind's walk is registered).
WALKS: dict[str, Walk] = {
    "mla": mla_walk,
    "dsa": mla_walk,  # the indexer runs under torch.no_grad: it saves nothing (``dsa_forward_bytes``)
    "kda": kda_walk,
}

#: kind -> the backward working set of its layers (``backward_working_of``).
WORKING: dict[str, Working] = {
    "kda": kda_backward_working,
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
