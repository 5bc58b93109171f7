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
- ``MOMENTS[kind](arch, d, targets, rank, layer, attn) -> (held, gradients, per token·s) or None``: a moment
  of the layer's backward beside its MLP's (a forward transient of the kind re-run by checkpointing),
  priced by ``phases`` as eager attention's softmax moment (``terms``' ``ClassTerms.sm``).

Every function cites the transformers 5.24 code it mirrors (file, lines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from vramplan.arch.mixers import DSA, IDENTITY, MAMBA2, dsa_dims, mla_dims

if TYPE_CHECKING:
    from vramplan.analytic.activations import Dtypes, _Walk
    from vramplan.arch.spec import Arch, Linear

Walk = Callable[["_Walk", "Arch", "dict[str, Linear]", str, bool], "tuple[int, bool]"]
Working = Callable[..., "tuple[int, int, int, int]"]

# ------------------------------------------------------------------------------------- kinds
# One section per kind: its walk and working functions.

# ---- identity: a layer that is a feed-forward block alone (Nemotron-H ``-`` / ``E``)


def identity_walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str, live: bool) -> tuple[int, bool]:
    """``NemotronHBlock.forward`` (modeling_nemotron_h.py L890-920) for an ``mlp`` / ``moe`` block: no
    token mixer; its one pre-norm reads the layer input, so it saves what an attention layer's input
    norm saves (``activations._attention_saved`` step 1: the fp32 input, the input itself when it is
    fp32 and counted by the caller, and one rsqrt; a trainable weight's product also its normalised
    input). Returns (the norm output's dtype, whether it needs a gradient): the feed-forward block
    reads it directly (``activations.PRENORMED``)."""
    from vramplan.analytic.activations import norm_out
    d, H = w.d, arch.hidden_size
    if live:
        w.tok += 4 + (4 * H if d.resid != 4 else 0)
    if d.full:
        w.tok += 4 * H
    return norm_out(d, d.resid), live


# ---- mamba2: NemotronHMamba2Mixer, transformers' torch path (``torch_forward``)
#: The SSD scan's einsums run as bmm, which autocast casts to the compute dtype; their operand copies
#: are what the fallback saves at long sequence (the b·h·c·l·l segment sums).


def mamba2_dtypes(d: "Dtypes", pd: int) -> tuple[int, int, int]:
    """(e, co, conv_x): the einsums' operand dtype (c under autocast, else fp32: ``mamba2_chunk_scan``
    casts to ``float()``), the conv output's (autocast runs ``F.conv1d`` in c, else the conv weight's
    dtype ``other_w``) and the dtype the conv saves its input in."""
    e = d.c if d.autocast else 4
    co = d.c if d.autocast else d.other_w
    return e, co, co


def mamba2_core(d: "Dtypes", m: "Mamba2Shape", pd: int) -> tuple[int, int]:
    """(bytes per token, fixed bytes) the torch path saves between in_proj and out_proj (steps 2-5 of
    ``mamba2_walk``), for an in_proj output of ``pd`` bytes per element."""
    P, Cd, I, nh, n, l, g = m.in_out, m.conv_dim, m.inner, m.heads, m.state, m.chunk, m.groups
    e, co, conv_x = mamba2_dtypes(d, pd)
    conv_view = pd == d.other_w and (not d.autocast or pd == d.c)
    gate_view = pd == 4
    tok = const = 0
    if conv_view or gate_view:
        tok += pd * P  # in_proj's output, alive through the views the conv and the gate's silu save
    if not conv_view:
        tok += conv_x * Cd
    if d.autocast and d.other_w != d.c:
        const += d.c * Cd * m.conv_kernel  # autocast's copy of the conv weight, saved by the conv
    tok += co * Cd  # silu input: the conv output
    tok += 2 * pd * nh + 4 * nh  # dt + dt_bias, softplus(dt), dt.float()
    tok += 4 * Cd if pd == 4 else 4 * I  # x in fp32
    tok += 4 * nh * l + 2 * e * nh * l  # L, G, M's copy: the l x l blocks
    tok += 4 * e * nh * n + 4 * nh * n  # C (x2), B, B_decay copies; B
    tok += 2 * e * I + 2 * 4 * nh  # x·dt copies; decay_states, exp(A_cumsum)
    tok += 2 * e * I * n // l + e * I  # chunk states (two copies), C_times_states
    const += e * I * n + 2 * l * l  # one row's extra chunk state; the causal masks
    tok += (0 if gate_view else 4 * I) + 3 * 4 * I + 4 * g  # gated norm
    return tok, const


def mamba2_kernel_core(d: "Dtypes", m: "Mamba2Shape", pd: int) -> tuple[int, int]:
    """What the CUDA path saves instead (not traced: mamba-ssm 2.3.2 and causal-conv1d are CUDA builds):
    with mamba-ssm installed, ``NemotronHMamba2Mixer.forward`` runs ``mamba_split_conv1d_scan_combined``
    in training (modeling_nemotron_h.py L462-485), whose ``MambaSplitConv1dScanCombinedFn.forward``
    (``mamba_ssm/ops/triton/ssd_combined.py`` L815-895) saves ``zxbcdt`` (in_proj's output, pd·P),
    ``out_x`` (the scan output before the gated norm, in x's dtype: the conv kernel returns its input's,
    pd·I) and ``rstd`` (fp32 per group, 4·g), and recomputes the conv, the scan and the norm in backward;
    under autocast it also saves its c copy of out_proj's weight (c·I·H, fixed, left out here), which
    it multiplies itself (``F.linear(out, outproj_weight)``, bypassing the out_proj module)."""
    return pd * (m.in_out + m.inner) + 4 * m.groups, 0


def mamba2_note(arch: "Arch", d: "Dtypes", rank: int, targets: frozenset[str]) -> str:
    """The breakdown note of a model with Mamba-2 layers: the torch path priced, the CUDA kernel's
    saved bytes beside it (``mamba2_kernel_core``)."""
    from vramplan.analytic.activations import _Walk, norm_out
    from vramplan.arch.mixers import mamba2_shape
    m = mamba2_shape(arch)
    layer = arch.mixers.index(MAMBA2)
    lins = {lin.name: lin for lin in arch.layer_linears(layer)}
    pd, _ = _Walk(d, rank, targets).linears((lins["in_proj"],), norm_out(d, d.resid), False, True)
    torch_tok = mamba2_core(d, m, pd)[0]
    kernel_tok = mamba2_kernel_core(d, m, pd)[0]
    return (f"Mamba-2 layers priced on transformers' torch path (mamba_chunk_scan / causal_conv1d fallbacks: "
            f"mamba-ssm and causal-conv1d are CUDA builds the trace cannot run): {torch_tok:,} B per token per "
            f"layer between in_proj and out_proj, {(4 + 2 * (d.c if d.autocast else 4)) * m.heads * m.chunk:,} of "
            f"them the chunk's {m.chunk}x{m.chunk} segment sums; on CUDA with mamba-ssm 2.3.2 installed the "
            f"training forward runs mamba_split_conv1d_scan_combined instead, which saves {kernel_tok:,} B per "
            f"token (in_proj's output, the scan output, an rstd per group), recomputes the rest in backward and "
            f"multiplies out_proj's weight itself (not priced here; from its source, a bitsandbytes 4-bit "
            f"out_proj hands it a packed weight)")


#: kind -> its breakdown note (how the kind is priced, what a CUDA-only kernel would do instead).
NOTES: dict[str, Callable[..., str]] = {
    MAMBA2: mamba2_note,
}


def kind_notes(arch: "Arch", d: "Dtypes", rank: int, targets: frozenset[str]) -> tuple[str, ...]:
    """The notes of the model's token-mixer kinds (``NOTES``)."""
    return tuple(NOTES[k](arch, d, rank, targets) for k in dict.fromkeys(arch.mixers) if k in NOTES)


def mamba2_walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str, live: bool) -> tuple[int, bool]:
    """What a Mamba-2 layer saves for backward on transformers 5.24's torch path
    (``models/nemotron_h/modeling_nemotron_h.py``: ``NemotronHBlock.forward`` L890-920,
    ``NemotronHMamba2Mixer.forward`` L440-560, ``mamba2_chunk_scan`` L262-365, ``segment_sum`` L105-122,
    ``causal_conv1d_fn`` L160-180, ``NemotronHRMSNormGated`` L55-72), per token (P = in_proj width,
    Cd = conv_dim, I = heads·head_dim, nh heads, n state, l chunk, g groups; pd = in_proj output dtype,
    e = the einsums' dtype, ``mamba2_dtypes``):
    1. the block's pre-norm (as an attention layer's input norm), in_proj (LoRA as any target);
    2. ``F.conv1d`` saves its input (a cast copy, conv_x·Cd, or a view of in_proj's output when no
       cast runs) and silu its output (co·Cd; the K − 1 padded columns are left out);
    3. dt: ``dt + dt_bias`` (softplus input) and the softplus output (clamp input), pd·nh each, and
       ``dt.float()`` (4·nh) the x·dt product saves; x in fp32 (a copy, 4·I, or, when the silu output
       cast back to pd = fp32 is x itself, that whole xBC tensor: 4·Cd);
    4. the scan: ``exp(segment_sum(A))`` 4·nh·l, G (e·nh·l) and the bmm copy of M (e·nh·l) — the
       chunk's l × l block per head, the term that grows with the chunk —; the bmm copies of C (twice),
       B, B_decay (e·nh·n each) and of x·dt (twice, e·I); B itself (4·nh·n) kept by ``B * decay``;
       ``decay_states`` and ``exp(A_cumsum)`` (4·nh each); the chunk states (e·I·n/l twice, one row's
       extra chunk e·I·n fixed), C_times_states (e·I);
    5. the gated norm: ``gate.to(float32)`` (4·I, or in_proj's whole output when it is fp32 already:
       the gate is a view of it, as is a conv input of in_proj's dtype), its silu output, the scan
       output, their product (4·I each), rsqrt (4·g); two l × l causal masks (bool, fixed);
    6. out_proj (peft refuses LoRA on it; a frozen 4-bit layer saves nothing).
    Read against the tracker on a shrunk model: each tensor's shape and dtype (docs/families.md)."""
    from vramplan.analytic.activations import norm_out
    from vramplan.arch.mixers import mamba2_shape
    d, H = w.d, arch.hidden_size
    m = mamba2_shape(arch)
    if live:
        w.tok += 4 + (4 * H if d.resid != 4 else 0)
    if d.full:
        w.tok += 4 * H
    n1 = norm_out(d, d.resid)
    pd, lp = w.linears((lins["in_proj"],), n1, False, live)
    if not lp:
        od, lo = w.linears((lins["out_proj"],), n1, False, False)
        return od, lo
    tok, const = mamba2_core(d, m, pd)
    w.tok += tok
    w.const += const
    od, lo = w.linears((lins["out_proj"],), n1, False, True)  # ``scan_output.to(dtype)``: the input's dtype
    return od, lo


def mamba2_working(arch: "Arch", d: "Dtypes") -> tuple[int, int, int, int]:
    """A Mamba-2 layer's busiest moments over its saved tensors, as ``backward_working`` returns them,
    (a, a_fixed, b, b_fixed), with g = max(resid, c)·H the gradient of the layer output:
    a. the larger of
       - the recomputed forward (checkpointing re-runs the layer inside the backward) at the end of
         ``mamba2_chunk_scan`` (``output = output + D_residual``), whose locals are alive and not saved:
         M = G·L (4·nh·l), the fp32 chunked C and B·decay (4·nh·n each), six fp32 I-wide tensors
         (x·dt and its chunked copy, ``D_residual``, Y_off, Y_diag + Y_off and the sum with
         ``D_residual``), Y_diag (e·I) and the chunk states (e·I·n/l), while the gated norm's saved
         tensors (3·4·I + 4·g) do not exist yet; the layer output's gradient and the checkpointed
         input's (2·g) wait: 4·nh·l + 8·nh·n + 12·I + e·I + e·I·n/l − 4·g + 2·g. The tracker's live set
         at the shrunk row's peak holds exactly these (tests/families, Nemotron-3-Nano shrunk);
       - the intra-chunk block's backward (``M = G * L``, ``L = exp(segment_sum(A))``): three fp32
         l × l gradients per head and G's (e), while the gated norm's saved tensors, C_times_states,
         the bmm copies of M, G, x·dt and C_times_states' operands are freed:
         (12 − e)·nh·l − e·(I + nh·n + I·n/l) − 4·g + g (the tracker's live set at that moment on a
         Mamba-2 mixer under CPU autocast, transformers 5.24 torch path);
    b. in_proj's backward: its output's gradient (≤ 4·P), the dequantized weight (c·P·H, fixed), its
       input gradient (c·H) and g."""
    from vramplan.arch.mixers import mamba2_shape
    m = mamba2_shape(arch)
    H, c = arch.hidden_size, d.c
    e = c if d.autocast else 4
    nh, n, l, I, g = m.heads, m.state, m.chunk, m.inner, m.groups
    g_out = max(d.resid, c) * H
    fwd = 4 * nh * l + 8 * nh * n + 12 * I + e * I + e * I * n // l - 4 * g + 2 * g_out
    bwd = (12 - e) * nh * l - e * (I + nh * n + I * n // l) - 4 * g + g_out
    b = 4 * m.in_out + c * H + g_out
    return max(fwd, bwd), 0, b, (c * m.in_out * H if d.quantized else 0)


def attention_only_working(arch: "Arch", d: "Dtypes") -> tuple[int, int, int, int]:
    """An attention layer without a feed-forward block (Nemotron-H ``*``): the attention backward's
    gradients of q, k, v and of its output (ad·(2·q + 2·kv)) and the layer output's gradient; the
    base branch of o_proj's backward: its dequantized weight (c·q·H, fixed), grad_A (c·q) and the
    layer output's gradient."""
    H, c = arch.hidden_size, d.c
    q, kv = arch.q_out, arch.kv_out
    ad = c if d.autocast else max(d.resid, c)
    g_out = max(d.resid, c) * H
    return ad * (2 * q + 2 * kv) + g_out, 0, c * q + g_out, (c * q * H if d.quantized else 0)


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


# ---------------------------------------------------------------------- mla (latent attention)
def mla_prefix(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", live: bool) -> tuple[int, int, bool, bool]:
    """``mla_walk`` steps 1-3 (``DeepseekV3Attention.forward`` L424-441): the input norm, the two
    projections of the normalised x, ``q_a_layernorm`` + ``q_b_proj`` and ``kv_a_layernorm`` +
    ``kv_b_proj``, added to ``w``. Returns (q_b_proj's output dtype, kv_b_proj's, whether the q and the kv
    paths need a gradient)."""
    from vramplan.analytic.activations import norm_out

    d, targets = w.d, w.targets
    H = arch.hidden_size
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
    return qd, kvd, lq, needs("kv_b_proj", lkv)


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
    from vramplan.analytic.activations import _promote

    d = w.d
    nh = arch.num_heads
    m = mla_dims(arch)
    qd, kvd, lq, lkv = mla_prefix(w, arch, lins, live)
    # q_pass cat the rotated q_rot (cos/sin in the embedding output's dtype); NoPE latent attention
    # (``Family.rotary`` False, Kimi Linear) views the projection itself
    qsd = _promote(qd, d.resid0) if arch.family.rotary else qd
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


# ---------------------------------------------------------- dsa (latent attention + sparse indexer)
# transformers 5.24 ``models/glm_moe_dsa/modeling_glm_moe_dsa.py``. The block saves what ``mla`` saves (the
# indexer runs under ``torch.no_grad``, L184: it saves nothing, ``WALKS["dsa"]``); its score tensors are a
# forward transient, priced as a moment of the layer's recomputation under checkpointing (``MOMENTS``).

def dsa_indexer_scores(d: "Dtypes", heads: int) -> int:
    """Bytes per token·s of the indexer's busiest moment, ``GlmMoeDsaIndexer.forward`` L229:
    ``scores = torch.matmul(q.float(), k.transpose(-1, -2).float().unsqueeze(1)) * self.softmax_scale``
    makes the (b, s, index_n_heads, s) product and its scaled copy, both alive while the multiply runs
    (the matmul's result is freed once the name is rebound; ``F.relu`` then makes one more of the same
    size as the product is freed: two at once again). Under autocast the matmul runs in the compute dtype
    (``torch.matmul`` is on autocast's lower-precision list, so the ``.float()`` casts are cast back);
    without it in fp32. The weighted head sum (L234, b·s·s), the mask (L237-240) and the top-k (L242-243)
    come after, each smaller than two (b, s, heads, s) tensors for heads >= 2: 2 · heads · sd."""
    sd = d.c if d.autocast else 4
    return 2 * heads * sd


def dsa_indexer_locals(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int,
                       lins: "dict[str, Linear]") -> tuple[int, int]:
    """(bytes per token, fixed bytes) a ``dsa`` layer holds at ``dsa_indexer_scores``' moment besides
    what it has saved (``dsa_recompute_moment``): the tensors ``GlmMoeDsaAttention.forward`` (L371-416)
    and ``GlmMoeDsaIndexer.forward`` (L212-229) still reference, none of them saved by autograd:
    1. the attention's input (the layer's normalised x, n1·H: the decoder layer's local), unless the
       first projections' lora_A saved it itself (no cast: ``_Walk.shared``);
    2. ``q_resid`` (q_a_layernorm's output, q_lora_rank; the indexer reads it), ``q_states`` (q_b_proj's
       output, nh·qk: ``q_pass`` views it), ``k_pass`` (kv_a_layernorm's output, kv_lora_rank), the
       expanded latent (kv_b_proj's output, nh·(nope + v): ``value_states`` views it), the rotated
       ``q_rot`` (nh·rope) and ``k_rot`` (rope) in the dtype of the product with the rotary table
       (the embedding output's), ``query_states`` (the ``cat``, nh·qk) and ``key_states`` (``new_empty``
       in kv_b_proj's output dtype, nh·qk);
    3. the indexer's: ``wq_b``'s output (index_n_heads·index_head_dim; ``q_pass`` views it), its rotated
       rope part and the ``cat`` q (the same width, rope and all), ``k_norm``'s output (a LayerNorm:
       fp32 under autocast), its rotated rope part and the ``cat`` k (index_head_dim each);
    4. fixed: autocast's bf16 copies of the LoRA A and B of ``wq_b`` and ``wk`` when they are targets
       (peft wraps them; under ``no_grad`` they save nothing).
    The ``.float()`` and autocast casts of q and k are freed when the matmul returns."""
    from vramplan.analytic.activations import _promote, _Walk, norm_out

    m, x = mla_dims(arch), dsa_dims(arch)
    H, nh, ih, idim, rope = arch.hidden_size, arch.num_heads, x["heads"], x["head_dim"], m["rope"]
    w = _Walk(d, rank, targets)  # scratch: output dtypes (and the indexer's LoRA copies, ``const``)
    n1 = norm_out(d, d.resid)
    pd, _ = w.linears((lins["q_a_proj"], lins["kv_a_proj_with_mqa"]), n1, False, True)
    first_shared = w.shared
    nq = norm_out(d, pd)
    qd, _ = w.linears((lins["q_b_proj"],), nq, False, True)
    kvd, _ = w.linears((lins["kv_b_proj"],), nq, False, True)
    rot = _promote(qd, d.resid0)
    tok = (0 if first_shared else n1 * H) + nq * m["q_lora_rank"] + qd * nh * m["qk"] + nq * m["kv_lora_rank"]
    tok += kvd * nh * (m["nope"] + m["v"]) + rot * nh * rope + _promote(pd, d.resid0) * rope
    tok += rot * nh * m["qk"] + kvd * nh * m["qk"]
    ix = _Walk(d, rank, targets)
    qi, _ = ix.linears((lins["indexer.wq_b"],), nq, False, False)
    kd, _ = ix.linears((lins["indexer.wk"],), n1, False, False)
    kn = 4 if d.autocast else _promote(kd, d.norm_w)
    qr, kr = _promote(qi, d.resid0), _promote(kn, d.resid0)
    tok += qi * ih * idim + qr * ih * (rope + idim)  # wq_b's output, its rotated rope part, the cat
    tok += kn * idim + kr * (rope + idim)  # k_norm's output, its rotated rope part, the cat
    return tok, ix.const


def dsa_recompute_moment(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                         attn: str) -> tuple[tuple[int, int, int], tuple[int, int, int], int] | None:
    """A ``dsa`` layer's backward under gradient checkpointing at its indexer's scores: the first node of
    the layer's backward that unpacks a saved tensor re-runs the layer, whose indexer
    (``GlmMoeDsaIndexer.forward``, L184-243, under ``torch.no_grad``) makes b·s·s score tensors per head.
    In ``phases``' softmax-moment form, (what the re-run layer holds, gradient buffers, per token·s):
    1. held: the block's saved tensors up to the indexer call (``mla_walk`` steps 1-3: the input norm,
       q_a/kv_a, q_a_layernorm, q_b_proj, kv_a_layernorm, kv_b_proj) and its live locals
       (``dsa_indexer_locals``);
    2. gradients: the layer output's (o·H) and, when the MLP's (a MoE layer's: the shared expert's, which
       ``GlmMoeDsaMoE.forward`` L566-573 adds last, so its backward runs first) down projection is a
       frozen 4-bit linear, its input gradient (gd·I: bitsandbytes' ``MatMul4Bit`` saves no tensor, so
       its backward runs before the first unpack, ``act(gate) * up``'s); a LoRA-targeted down projection
       unpacks first (lora_B's input), with the output's gradient and its ``* scaling`` copy (2·o·H);
    3. per token·s: ``dsa_indexer_scores``.
    None without checkpointing (the indexer then runs in the forward only) or with eager attention
    (not derived). Checked against the trace's live tensors at the peak (shrunk GLM-5.1, 1 × 1024)."""
    from vramplan.analytic.activations import _promote, _Walk, norm_out

    if not d.gc or attn == "eager":
        return None
    lins = {lin.name: lin for lin in arch.layer_linears(layer)}
    w = _Walk(d, rank, targets)
    mla_prefix(w, arch, lins, True)
    tok, fixed = dsa_indexer_locals(arch, d, targets, rank, lins)
    H = arch.hidden_size
    n2 = norm_out(d, _promote(d.resid, d.c))
    gd = n2 if d.quantized else (d.c if d.autocast else d.base_w)
    o = _promote(d.resid, n2)
    moe = arch.ffn(layer) == "moe"
    down = arch.shared_expert_down if moe else "down_proj"
    width = arch.shared_expert_intermediate_size if moe else arch.intermediate_size
    if width and (down not in targets) and d.quantized and not d.full:
        grads = o * H + gd * width
    else:
        grads = 2 * o * H
    return (w.tok + tok, w.quad, w.const + fixed), (grads, 0, 0), dsa_indexer_scores(d, dsa_dims(arch)["heads"])


# ------------------------------------------------------------------------------------ gemma4
# transformers 5.24 ``models/gemma4/modeling_gemma4.py``. Each ``gemma4_*`` kind walks the whole
# ``Gemma4TextDecoderLayer.forward`` (L1361-1418): attention, MLP, the per-layer-input block.

def gemma4_norm(w: "_Walk", width: int, rows: int, live: bool, xd: int, fresh: bool = True,
                scale: bool = True) -> None:
    """``Gemma4RMSNorm`` (L196-214) of ``rows`` vectors of ``width`` with an input of ``xd`` bytes:
    ``x = hidden.float()``; ``x.pow(2)`` saves x, ``torch.pow(mean + eps, -0.5)`` saves its input (one fp32
    per row) and ``x * that`` saves x and the result (another per row): 4·width·rows + 8·rows, where x
    is the input itself when fp32 (``fresh``: no one else saves it; the residual stream's input norm has
    its x counted by the caller). With a weight (``with_scale``), ``normed * self.weight.float()`` saves
    the fp32 copy of a 16-bit weight (4·width fixed). The output is ``type_as`` the input."""
    d = w.d
    if not live:
        return
    w.tok += 8 * rows + (4 * width * rows if (fresh or xd != 4) else 0)
    if scale and d.norm_w != 4:
        w.const += 4 * width
    if d.full and scale:
        w.tok += 4 * width * rows


def _g4_live_pli(d: "Dtypes", targets: frozenset[str], gc: bool) -> bool:
    """Whether the per-layer inputs need a gradient: the embedding output does under checkpointing
    (peft's ``enable_input_require_grads``), or the projection is trained."""
    return gc or d.full or "per_layer_model_projection" in targets


def _g4_kv_dtype(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]") -> int:
    d = w.d
    scratch = type(w)(d, w.r, w.targets)
    kd, _ = scratch.linears((lins.get("k_proj") or lins["q_proj"],), d.resid, False, True)
    return kd if kd >= d.resid0 else d.resid0


def gemma4_model_saved(arch: "Arch", d: "Dtypes", rank: int, targets: frozenset[str], gc: bool,
                       attn: str) -> tuple[int, int, int]:
    """What the model holds from the forward to the end of the backward outside the decoder layers
    (``Gemma4TextModel.forward`` L1620-1660), as (bytes per token, per sequence position, per token·s
    once the sequence reaches the sliding window):
    1. the per-layer inputs (P > 0, ``project_per_layer_inputs`` L1751-1784):
       ``per_layer_model_projection(inputs_embeds)`` (a LoRA target under ``all-linear``: what its adapter
       saves, ``_Walk.linears``), ``* scale`` (a Python float: nothing), ``per_layer_projection_norm`` over
       L rows of P (``gemma4_norm``), then ``(projection + token_identity) * 2**-0.5``, the (b, s, L, P)
       tensor each layer's ``hidden_states * per_layer_input`` saves a slice of (and checkpointing holds
       as every layer's argument): L·P in its dtype;
    2. under checkpointing, the keys and values the last unshared layer of each attention type stores
       in ``shared_kv_states`` (``Gemma4TextAttention.forward`` L1226-1227, ``kv_sharing_modes`` "store"):
       the dict is an argument of every checkpointed layer, so they stay until the backward ends:
       2 · kv · their dtype per store layer;
    3. the rotary tables: ``Gemma4TextRotaryEmbedding.forward`` returns cos and sin of one row of positions
       per attention type, (1, s, head_dim) in the embedding output's dtype (``cos.to(x.dtype)``; the full
       type's head_dim is ``global_head_dim``), saved by every layer's RoPE ``mul`` (and held as layer
       arguments under checkpointing): 2 · resid0 · head_dim per position and type;
    4. under checkpointing with sdpa, the boolean (b, 1, s, s) sliding-window mask
       (``create_sliding_window_causal_mask``, built once seq reaches the window) is every sliding layer's
       argument: 1 B per token·s."""
    from vramplan.analytic.activations import _promote, _Walk
    from vramplan.arch.mixers import _g4, gemma4_dims, gemma4_kinds
    cfg, L = arch.config, arch.num_layers
    P = int(_g4(cfg, "hidden_size_per_layer_input") or 0)
    w = _Walk(d, rank, targets)
    if P:
        lin = next(x for x in arch.linears() if x.name == "per_layer_model_projection")
        live0 = gc or d.full
        pd, _ = w.linears((lin,), d.resid0, False, live0)
        gemma4_norm(w, P, L, _g4_live_pli(d, targets, gc), pd)
        w.tok += L * P * _promote(pd, d.resid0)
    if gc:
        kinds = gemma4_kinds(cfg, L)
        store = {}
        for i, k in enumerate(kinds):
            if not k.endswith("_kv_shared"):
                store[k] = i  # the last unshared layer of each type
        for k, i in store.items():
            g = gemma4_dims(cfg, k)
            lins = {x.name: x for x in arch.layer_linears(i)}
            w.tok += 2 * g["kv_heads"] * g["head_dim"] * _g4_kv_dtype(w, arch, lins)
    from vramplan.arch.mixers import gemma4_layer_types
    types = set(gemma4_layer_types(cfg, L))
    pos = sum(2 * d.resid0 * int(_g4(cfg, "global_head_dim") if t == "full_attention" else _g4(cfg, "head_dim"))
              for t in types)
    quad = 1 if (gc and attn == "sdpa" and "sliding_attention" in types) else 0
    return w.tok, pos, quad


def gemma4_kv_hold(arch: "Arch", d: "Dtypes", rank: int, targets: frozenset[str], gc: bool,
                   attn: str) -> tuple[tuple[int, int], ...]:
    """Under checkpointing, (layer, bytes per token) of each "store" layer's key/value branch kept alive
    once that layer's backward has recomputed it: the recomputed keys and values it writes into
    ``shared_kv_states`` (an argument of every earlier layer's checkpoint) keep the saved tensors of
    the recomputed graph that made them, from the layer's input on: ``input_layernorm`` (its fp32 x: the
    layer input itself when fp32, and the per-row tensors), the k/v projections' LoRA (dropout mask, cast
    input, lora_A output: ``_Walk.linears``) and k_norm / v_norm (``gemma4_norm``), until the backward
    ends (counted by the trace's tracker at layer 0's backward on a 2-layer shrunk model: layer 1's
    input, k/v LoRA and norm tensors alive). Empty without checkpointing."""
    from vramplan.analytic.activations import _Walk
    from vramplan.arch.mixers import gemma4_dims, gemma4_kinds
    if not gc:
        return ()
    cfg, L = arch.config, arch.num_layers
    store: dict[str, int] = {}
    for i, k in enumerate(gemma4_kinds(cfg, L)):
        if not k.endswith("_kv_shared"):
            store[k] = i
    out = []
    for k, i in sorted(store.items(), key=lambda kv: kv[1]):
        g = gemma4_dims(cfg, k)
        lins = {x.name: x for x in arch.layer_linears(i)}
        w = _Walk(d, rank, targets)
        gemma4_norm(w, arch.hidden_size, 1, True, d.resid)  # input_layernorm: x (its fp32 copy) and rows
        kd, _ = w.linears(tuple(lins[n] for n in ("k_proj", "v_proj") if n in lins), d.resid, False, True)
        gemma4_norm(w, g["head_dim"], g["kv_heads"], True, kd)
        w.tok += 8 * g["kv_heads"] + (0 if (not g["v_proj"] and kd == 4) else 4 * g["head_dim"] * g["kv_heads"])
        out.append((i, w.tok))
    return tuple(out)


def gemma4_kv_grad_hold(arch: "Arch", d: "Dtypes", rank: int, targets: frozenset[str], gc: bool,
                        attn: str) -> tuple[tuple[int, int, int], ...]:
    """(consumer, producer, bytes per token) of the key and value gradients the kv-shared layers make for
    the layer whose keys and values they read (``Gemma4TextAttention.forward`` L1220-1227: a kv-shared
    layer takes ``shared_kv_states[layer_type]``, the last unshared layer of its type's tensors): the
    first kv-shared layer to run its backward (the highest of the type) hands autograd the gradient of
    that producer's k and v (after ``k_norm`` / ``v_norm``, in their dtype, ``_g4_kv_dtype``; eager's
    ``repeat_kv`` backward sums it back to the kv heads, sdpa's cast backward brings it to that dtype),
    the later ones accumulate into it, and it waits until the producer's own backward consumes it:
    2·kv_heads·head_dim·dtype per token, alive from the consumer's backward to the producer's, with or
    without checkpointing (the trace's peak on a shrunk 4-layer kv-shared model under eager at 1 × 1024:
    the producer's softmax backward with both types' gradients waiting). Empty with no kv sharing."""
    from vramplan.arch.mixers import gemma4_dims, gemma4_kinds
    cfg, L = arch.config, arch.num_layers
    kinds = gemma4_kinds(cfg, L)
    store: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, k in enumerate(kinds):
        if k.endswith("_kv_shared"):
            last[k.removesuffix("_kv_shared")] = i
        else:
            store[k] = i
    out = []
    for k, c in sorted(last.items(), key=lambda kv: kv[1]):
        p = store.get(k)
        if p is None or p >= c:
            continue
        g = gemma4_dims(cfg, k)
        lins = {x.name: x for x in arch.layer_linears(p)}
        out.append((c, p, 2 * g["kv_heads"] * g["head_dim"] * _g4_kv_dtype(_new_walk(d, rank, targets), arch, lins)))
    return tuple(out)


def _new_walk(d: "Dtypes", rank: int, targets: frozenset[str]) -> "_Walk":
    from vramplan.analytic.activations import _Walk
    return _Walk(d, rank, targets)


def gemma4_router_saved(d: "Dtypes", E: int, k: int) -> int:
    """Bytes per token ``Gemma4TextRouter.forward`` (L1307-1328) saves after its projection while the
    projection's output needs a gradient (E experts, top-k k; the router's parameters ``scale`` and
    ``per_expert_scale`` in ``Dtypes.other_w``, the group of routers and fused experts):
    1. ``softmax(expert_scores, dtype=float32)`` saves its fp32 output: 4·E;
    2. ``torch.topk`` saves its int64 indices: 8·k;
    3. ``top_k_weights /= top_k_weights.sum(-1, keepdim=True)`` (in place: ``div_``'s formula reads its
       result and the divisor) saves the renormalised fp32 weights and the fp32 sum: 4·k + 4;
    4. ``top_k_weights * self.per_expert_scale[top_k_index]`` saves the gathered frozen scale (other_w·k;
       the weights themselves only for a trainable scale, ``Dtypes.full``: 4·k more); the product is fp32
       (``promote`` of fp32 weights with the scale).
    4·E + 12·k + 4 + other_w·k (+ 4·k). Checked tensor by tensor against the saved-tensor hooks of the
    trace's program (shrunk gemma-4-26B-A4B-it, docs/families.md)."""
    return 4 * E + 12 * k + 4 + d.other_w * k + (4 * k if d.full else 0)


def gemma4_experts_pair_saved(d: "Dtypes", H: int, M: int, le: bool, lr: bool) -> int:
    """Bytes per (token, expert) pair ``Gemma4TextExperts`` saves under transformers' default experts
    implementation, ``grouped_mm`` (``@use_experts_implementation``; ``modeling_utils.
    get_correct_experts_implementation``; ``integrations/moe.py::grouped_mm_experts_forward`` L424-533,
    ``_default_apply_gate`` L568-579), the experts in ed = ``Dtypes.other_w`` (``_grouped_mm`` casts its
    input to the weights' dtype, autocast or not: the trace runs it through
    ``vramplan.hf.interventions.non_bf16_grouped_mm`` with grouped_mm's saving rule). ``le``: the experts'
    input needs a gradient (or the experts are trained); ``lr``: the routing weights do.
    1. ``hidden_states[perm // num_top_k]`` saves its int64 index (le): 8;
    2. ``sample_weights[perm]`` saves its int64 index (lr): 8;
    3. the frozen up ``grouped_mm`` saves only its weight (a parameter) and the int32 offsets (fixed,
       ``gemma4_moe_saved``); ``gelu_pytorch_tanh(gate)`` saves gate and ``act * up`` saves up (views of
       the one (S, 2M) output) and the act output (le): ed·3M;
    4. ``proj_out * sample_weights_g`` saves the down output while the weights need a gradient (lr: ed·H)
       and the fp32 routing weight while the output does (le: 4);
    5. ``weighted_out[inv_perm]`` saves its int64 index (le or lr): 8;
    6. trained experts (``Dtypes.full``): each ``grouped_mm`` also saves its input for the weight's
       gradient, the gathered x and the act product: ed·(H + M).
    The sum over the k pairs is fp32 (``promote`` with the fp32 weights), cast back to the input's dtype."""
    ed = d.other_w
    out = 0
    if le:
        out += 8 + 3 * M * ed + 4
    if lr:
        out += 8 + ed * H
    if le or lr:
        out += 8
    if d.full:
        out += ed * (H + M)
    return out


def gemma4_moe_held(d: "Dtypes", H: int, k: int, h1: int, md: int) -> int:
    """Bytes per token a ``Gemma4TextDecoderLayer``'s MoE forward holds beyond what the layer has saved
    so far at its busiest moment, ``weighted_out = weighted_out[inv_perm]`` in
    ``integrations/moe.py::grouped_mm_experts_forward`` (L527-529; the trace's peak under checkpointing,
    in the recomputed forward: the tracker's live tensors at that op on a shrunk gemma-4-26B-A4B-it), with
    frozen experts (h1 the pre-MLP residual's bytes, md the MLP output's, k pairs per token):
    1. the decoder layer's locals (L1387-1398): ``residual`` (h1·H, unless fp32: then it is the tensor
       ``pre_feedforward_layernorm`` saves), the MLP output ``hidden_states`` (md·H, unless fp32: the tensor
       ``post_feedforward_layernorm_1`` saves), ``hidden_states_1`` (md·H) and ``pre_feedforward_layernorm_2``'s
       output (h1·H: the gather saves its index only);
    2. the experts' locals: ``selected_hidden_states_g`` (k·h1·H), ``expert_ids_g`` (int64) and
       ``histc_input`` (4 B: ``.float()`` on CPU, ``.int()`` on CUDA) per pair, the router's product
       ``top_k_weights`` (fp32, k), and ``weighted_out`` twice (before and after the permutation: the
       experts' output times the fp32 routing weight, 2·k·4·H when the experts are at most fp32).
    The ``tokens_per_expert`` histogram (E fp32) is left out (one allocator block)."""
    from vramplan.analytic.activations import _promote
    wd = _promote(d.other_w, 4)
    own = (h1 * H if h1 != 4 else 0) + (md * H if md != 4 else 0) + md * H + h1 * H
    return own + k * (h1 * H + 8 + 4 + 4 + 2 * wd * H)


def gemma4_experts_backward(d: "Dtypes", H: int, k: int) -> int:
    """Bytes per token of the (token, expert)-pair gradients alive at the busiest moment of the experts'
    backward (frozen experts; ``integrations/moe.py::grouped_mm_experts_forward`` L524-535 run backwards,
    torch ``derivatives.yaml``), ``proj_out * sample_weights_g``'s ``MulBackward0``: the gradient it
    received, ``IndexBackward0``'s ``zeros_like(weighted_out).index_put_(inv_perm, grad)`` (k·wd·H, wd the
    fp32 product's dtype: the view-then-``sum`` backward had made a contiguous copy of the expanded
    gradient, freed by now), the output's gradient (``grad * weights`` cast to the experts' dtype: k·ed·H)
    and, for the routing weights' gradient, the product ``grad * proj_out`` before its ``sum_to_size``
    (k·wd·H). The trace's peak of the layers' backward without checkpointing (full-width 2-layer
    gemma-4-26B-A4B-it: 24 b·s·H fp32 tensors of the pairs and two b·s·H gradients); the H-sized gradients
    waiting (the layer output's, held for the residual; the sum's, for the MLP branch) are the caller's."""
    from vramplan.analytic.activations import _promote
    wd = _promote(d.other_w, 4)
    return k * H * (2 * wd + d.other_w)


def gemma4_moe_saved(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", h1: int, live: bool, md: int,
                     marks: dict[str, int] | None = None) -> tuple[int, bool]:
    """The MoE branch of a ``Gemma4TextDecoderLayer`` with ``enable_moe_block`` (L1391-1403), on the
    pre-MLP residual h1 (``h1`` bytes; ``live``: it needs a gradient), beside the dense MLP:
    1. ``Gemma4TextRouter``: the weightless ``norm`` (``gemma4_norm`` without a weight: the per-row
       tensors, and h1's fp32 copy when h1 is 16-bit; an fp32 h1 is the tensor ``pre_feedforward_layernorm``
       already saves), ``* self.scale * scalar_root_size`` (the frozen scale is saved: a parameter),
       ``proj`` (an ``nn.Linear`` bitsandbytes quantizes and ``all-linear`` adapts: ``_Walk.linears``,
       its input the product, promoted to the scale's dtype), then ``gemma4_router_saved``;
    2. ``pre_feedforward_layernorm_2`` on h1 (as the router's norm, with its weight's fp32 copy);
    3. the experts (``gemma4_experts_pair_saved``, k pairs per token) and the int32 ``offsets`` both grouped
       matmuls save (4·E, fixed);
    4. ``post_feedforward_layernorm_2`` on the experts' output (``.to(hidden_states.dtype)``: h1's dtype; a
       fresh tensor).
    Returns (the branch output's dtype, whether it needs a gradient). ``marks["moe"]``: the bytes per
    token saved up to the experts' output permutation, ``marks["moe_held"]`` what the forward holds
    beyond them there (``gemma4_moe_held``; both read by ``gemma4_working_moments``)."""
    from vramplan.analytic.activations import _promote
    from vramplan.arch.mixers import gemma4_dims
    d, H = w.d, arch.hidden_size
    g = gemma4_dims(arch.config, "gemma4_sliding")
    E, k, M = g["experts"], g["top_k"], g["moe_inter"]
    gemma4_norm(w, H, 1, live, h1, fresh=False, scale=False)
    if d.full and live:
        w.tok += h1 * H  # ``* self.scale`` saves the normed input for a trainable scale
    _, lr = w.linears((lins["router.proj"],), _promote(h1, d.other_w), False, live)
    if lr:
        w.tok += gemma4_router_saved(d, E, k)
    gemma4_norm(w, H, 1, live, h1, fresh=False)
    le = live or d.full
    w.tok += k * gemma4_experts_pair_saved(d, H, M, le, lr)
    if le:
        w.const += 4 * E
    if marks is not None:
        marks["moe"], marks["moe_held"] = w.tok, gemma4_moe_held(d, H, k, h1, md)
    lo = le or lr
    gemma4_norm(w, H, 1, lo, h1)
    return h1, lo


def _gemma4_walk(kind: str) -> "Walk":
    def walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str, live: bool,
             marks: dict[str, int] | None = None) -> tuple[int, bool]:
        """One ``Gemma4TextDecoderLayer`` of ``kind``:
        1. ``input_layernorm`` on the residual x (its x counted by the caller);
        2. q (k, v) projections; ``q_norm``, ``k_norm`` and the weightless ``v_norm`` (``gemma4_norm``;
           under ``attention_k_eq_v`` v_norm reads k_proj's output, the same fp32 tensor k_norm saves
           when it is fp32); RoPE saves the shared cos/sin tables only;
        3. sdpa (flash / memory-efficient) saves q, k, v in its dtype, the output and an fp32
           log-sum-exp per head; a kv-shared layer's k and v are the producer's tensors (nothing new,
           unless autocast casts them); with head_dim > 256 transformers repeats k and v to every head
           (``integrations/sdpa_attention.py::use_gqa_in_sdpa``), saved as such;
        4. o_proj, ``post_attention_layernorm``, the residual add, ``pre_feedforward_layernorm``;
        5. the MLP: gate, up, ``gelu_pytorch_tanh(gate)`` saves gate, the product saves both factors, down;
           ``post_feedforward_layernorm``, the residual add; with ``enable_moe_block`` the MLP's norm is
           ``post_feedforward_layernorm_1``, the router and experts run beside it (``gemma4_moe_saved``) and
           ``post_feedforward_layernorm`` normalises the sum of both branches (a fresh tensor);
        6. per-layer input (P > 0): ``per_layer_input_gate``, gelu saves its input, ``* per_layer_input``
           saves the gelu output (the per-layer input itself is ``gemma4_model_saved``'s),
           ``per_layer_projection``, ``post_per_layer_input_norm``, the residual add;
        7. ``hidden_states *= self.layer_scalar`` (a buffer): nothing.
        ``marks["down"]``: the bytes per token saved up to the down projection (``_gemma4_working``); with
        the MoE block ``marks["moe"]`` and ``marks["moe_held"]`` (``gemma4_moe_saved``)."""
        from vramplan.analytic.activations import _promote
        from vramplan.arch.mixers import gemma4_dims
        d, targets = w.d, w.targets
        g, H = gemma4_dims(arch.config, kind), arch.hidden_size
        nh, hd, nkv = g["heads"], g["head_dim"], g["kv_heads"]
        q, kv = nh * hd, nkv * hd
        gemma4_norm(w, H, 1, live, d.resid, fresh=False)
        n1 = d.resid
        group = tuple(lins[n] for n in ("q_proj", "k_proj", "v_proj") if n in lins)
        qd, _ = w.linears(group, n1, False, live)
        lq = live or d.full or "q_proj" in targets
        lk = live or d.full or "k_proj" in targets or "v_proj" in targets
        gemma4_norm(w, hd, nh, lq, qd)
        if g["kv_proj"]:
            gemma4_norm(w, hd, nkv, lk, qd)
            same = not g["v_proj"] and qd == 4  # v_norm saves the fp32 k_proj output k_norm saved
            if lk:
                w.tok += 8 * nkv + (0 if same else 4 * hd * nkv)
        rd = _promote(qd, d.resid0)
        la = lq or lk
        ad = d.c if (d.autocast or attn == "flash2") else rd
        if la:
            if hd > 256:
                kvs = 2 * q
            elif g["kv_proj"] or ad != rd:
                kvs = 2 * kv
            else:
                kvs = 0
            if attn == "eager":
                w.tok += ad * (q + 2 * q)
                probs = ad * nh if (ad != 4 or rd != 4) else 0
                w.quad += 4 * nh + probs
                # the softmax backward's view (``gemma4_eager_softmax``): V and the probabilities' copy freed
                w.core = (w.tok - ad * q, w.quad - probs, w.const, rd * q, ad)
            else:
                w.tok += ad * (q + kvs) + ad * q + 4 * nh
        x_o_saved = la and attn != "eager"
        od, lo = w.linears((lins["o_proj"],), ad, x_o_saved, la)
        gemma4_norm(w, H, 1, lo, od)
        live1 = live or lo
        h1 = _promote(d.resid, od)
        gemma4_norm(w, H, 1, live1, h1)
        I = g["inter"]
        gd, _ = w.linears((lins["gate_proj"], lins["up_proj"]), h1, False, live1)
        lg = live1 or d.full or "gate_proj" in targets
        lu = live1 or d.full or "up_proj" in targets
        w.tok += gd * I * ((1 if lg else 0) + (1 if lg else 0) + (1 if lu else 0))
        md, lm = w.linears((lins["down_proj"],), gd, False, lg or lu)
        if marks is not None:
            marks["down"] = w.tok
        gemma4_norm(w, H, 1, lm, md)  # post_feedforward_layernorm (_1 with the MoE block)
        live2 = live1 or lm
        h2 = _promote(h1, md)
        if g["experts"]:
            ed, le = gemma4_moe_saved(w, arch, lins, h1, live1, md, marks)
            sd = _promote(md, ed)  # hidden_states_1 + hidden_states_2
            gemma4_norm(w, H, 1, lm or le, sd)  # post_feedforward_layernorm on the sum
            live2 = live2 or le
            h2 = _promote(h1, sd)
        if g["ple"]:
            P = g["ple"]
            pg, lp = w.linears((lins["per_layer_input_gate"],), h2, False, live2)
            if lp:
                w.tok += pg * P  # gelu's input
            pli = _g4_live_pli(d, targets, True)  # any LoRA run: the projection output needs a gradient
            if pli:
                w.tok += pg * P  # the gelu output, for the per-layer input's gradient
            pp = _promote(pg, d.resid0)
            pd, lpp = w.linears((lins["per_layer_projection"],), pp, False, lp or pli)
            gemma4_norm(w, H, 1, lpp, pd)
            h2 = _promote(h2, pd)
        return h2, True
    return walk


def gemma4_eager_softmax(kind: str) -> Callable[..., Any]:
    """A ``gemma4_*`` layer at eager attention's softmax backward, in ``activations.eager_softmax_backward``'s
    form ((held tok, quad, const), (gradients tok, quad, 0), CUDA temporary per token·s): Gemma 4's
    ``eager_attention_forward`` (``modeling_gemma4.py`` L802-831) is the softmax-in-fp32 attention that
    function walks (scores, ``softmax(dtype=float32).to(query.dtype)``, ``matmul`` with V), so its moment
    is the same: the layer's saved tensors up to the scores but V and the probabilities' copy
    (``_gemma4_walk``'s ``w.core``), the fp32 score gradient and the softmax output's (CUDA's
    ``grad * output`` temporary besides), V's gradient repeated to every head, the layer output's
    gradient, and the accumulated gradient of the per-layer inputs (``gemma4_working_moments``' ``pli``)."""
    def moment(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
               live_in: bool = True) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
        from vramplan.analytic.activations import _promote, _Walk
        from vramplan.arch.mixers import gemma4_dims
        g = gemma4_dims(arch.config, kind)
        w = _Walk(d, rank, targets)
        _gemma4_walk(kind)(w, arch, {x.name: x for x in arch.layer_linears(layer)}, "eager", live_in)
        if w.core is None:
            return (0, 0, 0), (0, 0, 0), 0
        tok, quad, const, v_grad, ad = w.core
        nh = g["heads"]
        grad_in = 2 if (d.cuda and d.fp16 and not d.autocast and ad == 2) else 4
        pli = arch.num_layers * g["ple"] * _promote(d.resid, d.resid0) if g["ple"] else 0
        grads = (_promote(d.resid, d.c) * arch.hidden_size + v_grad + pli, (4 + grad_in) * nh, 0)
        return (tok, quad, const), grads, (4 * nh if d.cuda else 0)
    return moment


def gemma4_working_moments(kind: str, arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                           gc: bool = True) -> dict[str, int]:
    """Bytes per token beyond the layer's saved tensors at each candidate moment of a ``gemma4_*`` layer's
    backward (``_gemma4_working`` takes the largest):
    - ``norm``: the layer backward starts at its last norm (``post_per_layer_input_norm`` with P > 0, else
      ``post_feedforward_layernorm``): the incoming gradient of the layer output (resid·H) and the five fp32
      H-sized tensors of an RMSNorm backward (``activations.NORM_BACKWARD_FP32``), beside the accumulated
      gradient of the per-layer inputs when a later layer's backward has made it (the trace's peak on a
      2-layer shrunk model at layer 0: six fp32 b·s·H tensors and one (b, s, L, P) ``select_backward``);
    - ``mlp``: the MLP's down projection and ``act(gate) * up`` backward, as ``activations.backward_working``
      prices a dense layer, with this layer's MLP width, less what the backward freed before (the tensors
      saved after the down projection, ``marks["down"]``), beside the per-layer inputs' gradient;
    - ``recompute`` (checkpointing, a LoRA-targeted down projection): the recomputed forward at the down
      projection's LoRA (peft ``lora/bnb.py`` L549; the trace's peak on a shrunk kv-shared model): what the
      layer saved up to there with ``act(gate) * up`` (gd·I) and its dropout output (I in the LoRA input's
      dtype) alive, less the layer's whole saved set (negative unless it saves little after);
    - ``moe`` (``enable_moe_block``): the MoE forward's busiest moment, the experts' output permutation
      (``gemma4_moe_held`` beyond what the layer saved up to there, less the layer's whole saved set); under
      checkpointing it happens in the recomputed forward with the layer output's gradient waiting (the
      trace's peak on the shrunk MoE model and at full width), without it in the last layer's forward
      (priced as this layer's moment, as gpt-oss's ``activations.gpt_oss_moe_forward_transient``);
    - ``experts`` (``enable_moe_block``): the experts' backward at the routing-weight product
      (``gemma4_experts_backward``) beside the layer output's and the MoE/MLP sum's gradients (2·resid·H),
      the layer's tensors saved after that product freed (the trace's layers-backward peak without
      checkpointing at full width).
    ``deq``: the dequantized down weight (bytes, fixed) of the base branch moment ``base``."""
    from vramplan.analytic.activations import NORM_BACKWARD_FP32, _promote, _Walk
    from vramplan.arch.mixers import gemma4_dims
    g, H, c = gemma4_dims(arch.config, kind), arch.hidden_size, d.c
    I, L = g["inter"], arch.num_layers
    lins = {x.name: x for x in arch.layer_linears(layer)}
    w, marks = _Walk(d, rank, targets), {}
    _gemma4_walk(kind)(w, arch, lins, "sdpa", True, marks)
    after = w.tok - marks["down"]
    gd = _promote(d.resid, c) if d.quantized else (c if d.autocast else d.base_w)
    pli = L * g["ple"] * _promote(d.resid, d.resid0) if g["ple"] else 0
    targeted = "down_proj" in targets and not d.full
    convert = d.lora_input_cast
    xin = d.adapter if convert else gd
    hpart = 3 * gd * H
    if convert and gd != d.adapter and not d.full:
        hpart += 2 * d.adapter * H
    if targeted:
        saves = (I * (1 if d.cuda else xin) if d.dropout else 0) + d.lora * I
        a_lora = (xin * I) if d.dropout else (d.lora + xin) * I
        b = c * I + xin * I - saves
    else:
        saves, a_lora, b = 0, 0, c * I
    out = dict(norm=_promote(d.resid, c) * H + 4 * NORM_BACKWARD_FP32 * H + (pli if layer < L - 1 else 0),
               mlp=max(a_lora, 3 * gd * I - saves) + hpart - after + pli,
               base=b + hpart - after + pli, deq=c * I * H if d.quantized else 0)
    if gc and targeted:
        out["recompute"] = marks["down"] + gd * I + (xin * I if d.dropout else 0) - w.tok
    if g["experts"]:
        o, later = _promote(d.resid, c) * H, (pli if layer < L - 1 else 0)
        # the MoE forward's busiest moment; under checkpointing inside the backward, the layer output's
        # gradient waiting (the first unpack, ``hidden_states *= self.layer_scalar``, starts the recompute)
        out["moe"] = marks["moe"] + marks["moe_held"] - w.tok + ((o + later) if gc else 0)
        # the experts' backward, once the saved tensors after their routing-weight product (the layers'
        # last norms and ``inv_perm``, 8 B per pair) are freed, beside two H-sized gradients
        out["experts"] = marks["moe"] - 8 * g["top_k"] - w.tok + gemma4_experts_backward(d, H, g["top_k"]) + \
            2 * o + later
    return out


def _gemma4_working(kind: str) -> "Working":
    def working(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                **kw: Any) -> tuple[int, int, int, int]:
        """The busiest of ``gemma4_working_moments``: (a, 0, b, b_fixed) with a the largest per-token
        moment and b the down projection's base branch beside its dequantized weight."""
        m = gemma4_working_moments(kind, arch, d, targets, rank, layer, gc=kw.get("gc", True))
        a = max(v for k, v in m.items() if k not in ("base", "deq"))
        return a, 0, m["base"], m["deq"]
    return working
# ------------------------------------------------------------------- gated_deltanet (Qwen3-Next)
#: Positions per chunk of transformers' chunked gated delta rule (``torch_chunk_gated_delta_rule``,
#: ``chunk_size=64``; fla's ``chunk_gated_delta_rule`` uses the same 64).
DELTA_CHUNK = 64


def deltanet_core_saved(d: "Dtypes", nv: int, dk: int, dv: int, chunk: int = DELTA_CHUNK) -> int:
    """Bytes per token transformers 5.24's ``torch_chunk_gated_delta_rule`` (``modeling_qwen3_next.py``
    L374-497; fla's Triton kernel runs instead when installed) saves for backward, for nv value heads of
    widths dk, dv (q and k already repeated to nv heads) with ``use_qk_l2norm_in_kernel=True``. Every
    input is cast to contiguous fp32 first (``x.transpose(1, 2).to(torch.float32)``), so the kernel's
    tensors are fp32 (f = 4), in units of f · nv per token:
    1. ``l2norm`` of q and k (``x * torch.rsqrt((x * x).sum(-1) + eps)``): the fp32 q and k (dk each) and
       their rsqrt (1 each);
    2. ``F.pad`` (a fresh copy even with no padding): ``v * beta`` saves padded v (dv) and beta (1);
       ``k * beta`` padded k (dk);
    3. the pairwise decays ``exp(cum_i - cum_j)`` per chunk (C = 64 per token: ``exp`` saves its output);
       ``(k_beta @ kᵀ) * decay`` and ``(q @ kᵀ) * decay``: the two C-wide products (C each) and the
       matmuls' operands k_beta (dk) and the scaled padded q (dk); ``k_beta * exp(cum)`` the exp (1);
    4. ``torch.linalg.solve_triangular`` (twice) saves its triangular matrix (C) and each result:
       new values (dv) and k_cumdecay (dk);
    5. ``q * exp(cum)`` and ``k * exp(last - cum)``: two exps (1 each) and the decayed q and k (dk each),
       which the chunk loop's matmuls save; ``exp(cum[..., -1])`` per chunk (1/C);
    6. the loop over chunks: ``k_cumdecay_i @ S`` and ``q_i @ S`` save the recurrent state S before each
       chunk (nv × dk × dv per chunk and sequence: dk·dv/C per token, the first one the zeros) and the
       multiply ``S * chunk_decay`` the same S; ``intra_i @ v_new`` saves the intra-chunk attention (C)
       and the chunk's v_new (dv), which ``k_iᵀ @ v_new`` saves too.
    Under autocast (``matmul`` is on its lower-precision list; ``solve_triangular``, ``exp``, ``cumsum``
    are not cast down) each matmul saves compute-dtype copies of its fp32 operands instead (c bytes):
    k_beta and k, q and k (3), the two products in c; in the loop k_cumdecay, q, k and v_new twice, S
    twice (2 · dk·dv/C) besides the fp32 S the multiply saves, and the intra-chunk attention; k_beta and
    q stay saved in fp32 by their multiplies with the exps, intra-chunk attention and v_new do not.
    The output (``core_attn_out`` written chunk by chunk in fp32, cast back to q's dtype) saves nothing.
    The per-chunk terms are exact when the sequence is a multiple of C (the kernel pads each sample to
    one, so up to C − 1 positions per sample more are held otherwise, unpriced), the 1/C ones rounded
    down to whole bytes per token."""
    f, C = 4, chunk
    state = dk * dv
    if d.autocast and d.c != f:
        c = d.c
        fp = f * nv * (2 * dk + 2 + dv + 1 + dk + C + 1 + C + dv + dk + dk + 2 + dk)  # noqa: E501
        # fp32: q, k (l2norm) + 2 rsqrt; padded v, beta; padded k (k*beta); pairwise exp (C); exp(cum) (1);
        # U (C, solve); new values (dv); k_cumdecay (dk); k_beta (k_beta*exp, dk); 2 exps; padded q (q*exp, dk)
        cp = c * nv * (4 * dk + 2 * C + 3 * dk + 2 * dv + C)
        # c copies: k_beta, k, q, k (3 matmuls before the loop: 4·dk); the two products (2·C);
        # loop: k_cumdecay, q, k (3·dk), v_new twice (2·dv), intra (C)
        per_chunk = (2 * c + f) * nv * state + f * nv
        return fp + cp + per_chunk // C
    fp = f * nv * (2 * dk + 2 + dv + 1 + dk + C + 2 * C + dk + dk + 1 + C + dv + dk + 2 + 2 * dk + C + dv)
    # q, k + 2 rsqrt; padded v, beta; padded k; pairwise exp (C); the two products (2·C); k_beta; padded q;
    # exp(cum); U (C); new values; k_cumdecay; 2 exps; decayed q, k; intra (C); v_new
    return fp + (f * nv * (state + 1)) // C


def deltanet_fla_saved(x: int, nk: int, nv: int, dk: int, dv: int, chunk: int = DELTA_CHUNK) -> int:
    """Bytes per token flash-linear-attention's chunked kernel keeps for backward instead of the torch
    fallback's (fla-core 0.6.0 ``ops/gated_delta_rule/chunk.py``, ``ChunkGatedDeltaRuleFunction.forward``
    L258-335: ``ctx.save_for_backward(q, q_rstd, k, k_rstd, v, g, beta_raw, beta, A, ...)``), which the
    modeling code calls on CUDA when fla is installed: the l2-normed q and k in their input dtype x
    (``l2norm_fwd``: ``torch.empty_like(x)``, nk heads each: fla takes fewer q/k heads than v heads), their
    fp32 rstd (nk each), v (nv·dv), the chunk-local cumsum of g (fp32, nv), beta (x, nv) and the WY matrix
    A (``chunk_fwd.py`` L385: ``torch.zeros(B, T, HV, BT, dtype=k.dtype)``, nv·C); the per-chunk states
    ``h`` are recomputed in the backward. x · (2·nk·dk + nv·dv + nv + nv·C) + 4 · (2·nk + nv)."""
    return x * (2 * nk * dk + nv * dv + nv + nv * chunk) + 4 * (2 * nk + nv)


def deltanet_note(arch: "Arch", d: "Dtypes", rank: int = 0, targets: frozenset[str] = frozenset()) -> str:
    """The breakdown note of a model with gated DeltaNet layers: the torch fallback priced, fla's figure."""
    from vramplan.analytic.activations import norm_out
    from vramplan.arch.mixers import GATED_DELTANET, deltanet_dims
    t = deltanet_dims(arch)
    x = norm_out(d, d.resid)  # the projections' output dtype reaching the kernel (4-bit base layers)
    ours = deltanet_core_saved(d, t.nv, t.dk, t.dv)
    fla = deltanet_fla_saved(x, t.nk, t.nv, t.dk, t.dv)
    return (f"gated DeltaNet ({arch.mixer_layers(GATED_DELTANET)} layers): priced as transformers' torch fallback "
            f"(torch_chunk_gated_delta_rule, chunk {DELTA_CHUNK}, fp32; torch causal conv1d), {ours:,} B per token "
            f"per layer in the delta rule; with flash-linear-attention installed (CUDA) its chunked kernel keeps "
            f"{fla:,} B per token per layer instead (q, k, v, g, beta and the WY matrix; states recomputed), "
            f"not priced here")


#: kind -> its breakdown note (the CUDA kernel the trace cannot run), ``(arch, d) -> str``.
NOTES["gated_deltanet"] = deltanet_note


def _deltanet_walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str, live: bool) -> tuple[int, bool]:
    """A gated DeltaNet layer's token mixer (``Qwen3NextGatedDeltaNet.forward``, ``modeling_qwen3_next.py``
    L664-785; ``Qwen3_5GatedDeltaNet.forward`` runs the same ops with four input projections):
    1. the input RMSNorm (as attention's, ``activations._attention_saved`` step 1);
    2. the input projections, one group reading the normed x (``w.linears``; the q/k/v/z/b/a splits and
       reshapes save nothing), output dtype pd;
    3. transformers' torch fallback of the causal convolution (``causal_conv1d_fn`` L337-355, when
       causal-conv1d is not installed): ``F.conv1d(x.to(weight.dtype), ...)`` saves its input (ATen's
       ``convolution`` backward formula reads input and weight whichever needs the gradient) in the
       kernel weight's dtype (``other_w``: the recipe's dtype for non-linear parameters), or under
       autocast (conv1d is on its lower-precision list) in the compute dtype c, with the c copy of a
       wider kernel weight (fixed); ``silu`` saves its input, the convolution output in the same dtype
       (a view of the s + kernel − 1 padded output: the kernel − 1 extra positions per sample are left
       unpriced); the ``.to(pd)`` after it saves nothing: 2 · conv_dim per token in that dtype;
    4. ``beta = b.sigmoid()`` saves its output (pd · nv); ``g = -A_log.float().exp() * softplus(a.float()
       + dt_bias)``: softplus saves its fp32 input (4 · nv; the frozen ``A_log``'s exp is a constant,
       the multiply keeps that nv-vector: fixed);
    5. the chunked delta rule (``deltanet_core_saved``), its output cast back to pd;
    6. the gated RMSNorm ``Qwen3NextRMSNormGated(core, z)`` (L60-75) over value heads: ``x.to(float32)``
       saved by ``pow`` and the product with rsqrt (4 · value_dim, the core output itself when pd is
       fp32) and rsqrt per head (4 · nv); ``weight * x.to(pd)`` saves the weight only while it is frozen
       (the normed input too when trainable); ``* silu(z.to(float32))``: silu saves its fp32 input and
       the product saves silu's output (4 · value_dim each) and the weighted norm (its dtype, the weight's
       promoted with pd); ``.to(pd)`` saves nothing;
    7. ``out_proj`` on it (``w.linears``).
    Returns (out_proj output dtype, whether it needs a gradient)."""
    from vramplan.analytic.activations import _promote, norm_out
    from vramplan.arch.mixers import deltanet_dims
    d = w.d
    t = deltanet_dims(arch)
    H = arch.hidden_size
    if live:  # 1. input norm: the fp32 copy of x (unless x is fp32) + rsqrt, as attention's
        w.tok += 4 + (4 * H if (d.resid != 4 and not d.liger_norm) else 0)
    n1 = norm_out(d, d.resid)
    names = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a") if "in_proj_qkv" in lins else \
        ("in_proj_qkvz", "in_proj_ba")
    pd, lp = w.linears(tuple(lins[n] for n in names), n1, False, live)
    if not lp:  # nothing before the out projection needs a gradient
        return w.linears((lins["out_proj"],), pd, False, False)
    # 3. convolution (weights: ``other_w``, the recipe's dtype for non-linear parameters)
    cd = d.c if d.autocast else d.other_w
    w.tok += 2 * cd * t.conv_dim
    if d.autocast and d.other_w != d.c:
        w.const += d.c * t.conv_dim * t.kernel  # the kernel's autocast copy, saved by conv1d
    # 4. beta, g
    w.tok += pd * t.nv + 4 * t.nv
    w.const += 4 * t.nv
    # 5. the delta rule
    w.tok += deltanet_core_saved(d, t.nv, t.dk, t.dv)
    # 6. gated RMSNorm: x fp32, rsqrt, z fp32, silu(z), the weighted norm
    yd = _promote(d.norm_w, pd)
    w.tok += 4 * t.value_dim + 4 * t.nv + 4 * t.value_dim + 4 * t.value_dim + yd * t.value_dim
    if d.full:
        w.tok += pd * t.value_dim
    # 7. out_proj reads the norm's output cast back to pd
    return w.linears((lins["out_proj"],), pd, False, True)
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


def kda_note(arch: "Arch", d: "Dtypes", rank: int = 0, targets: frozenset[str] = frozenset()) -> str:
    """The breakdown note of a model with KDA layers: the torch fallback priced, not fla's kernel."""
    from vramplan.arch.mixers import KDA, kda_dims
    m = kda_dims(arch)
    return (f"Kimi Delta Attention ({arch.mixer_layers(KDA)} layers): priced as transformers' torch fallback "
            f"(chunk_kimi_delta_attention, chunk {KDA_CHUNK}, fp32), {kda_core_saved(m['heads'], m['head_dim']):,} B "
            f"per token per layer in the delta rule; on CUDA with flash-linear-attention installed its chunk_kda "
            f"kernel saves far less (q, k, v, g, beta and chunk-local matrices; states recomputed), not priced here")


NOTES["kda"] = kda_note


#: kind -> its saved-activation walk (the one place a kind's walk is registered).
WALKS: dict[str, Walk] = {
    IDENTITY: identity_walk,
    MAMBA2: mamba2_walk,
    "chunked_attention": chunked_attention_walk,
    "mla": mla_walk,
    DSA: mla_walk,  # the indexer runs under torch.no_grad: it saves nothing (its scores: ``dsa_recompute_moment``)
    **{k: _gemma4_walk(k) for k in ("gemma4_sliding", "gemma4_full", "gemma4_sliding_kv_shared",
                                    "gemma4_full_kv_shared")},
    "gated_deltanet": _deltanet_walk,
    "kda": kda_walk,
}

#: kind -> a moment of its layers' backward beside the MLP's (``terms``' ``ClassTerms.sm``, priced by ``phases``
#: as eager attention's softmax moment): ``(arch, d, targets, rank, layer, attn) -> (held, gradients, per
#: token·s) or None``.
MOMENTS: dict[str, Callable[..., Any]] = {
    DSA: dsa_recompute_moment,
}

#: kind -> its layer at eager attention's softmax backward, for a whole-layer kind whose attention is
#: eager's softmax-in-fp32 (``activations.eager_softmax_backward``'s form; ``terms`` reads it as
#: softmax attention's ``ClassTerms.sm``).
EAGER_MOMENTS: dict[str, Callable[..., Any]] = {
    k: gemma4_eager_softmax(k) for k in ("gemma4_sliding", "gemma4_full", "gemma4_sliding_kv_shared",
                                         "gemma4_full_kv_shared")}

#: kind -> the backward working set of its layers (``backward_working_of``).
WORKING: dict[str, Working] = {
    MAMBA2: lambda arch, d, targets, rank, layer, **kw: mamba2_working(arch, d),
    "attention": lambda arch, d, targets, rank, layer, **kw: attention_only_working(arch, d),
    **{k: _gemma4_working(k) for k in ("gemma4_sliding", "gemma4_full", "gemma4_sliding_kv_shared",
                                       "gemma4_full_kv_shared")},
    "kda": kda_backward_working,
}

#: ``Family.layout`` -> bytes per token the model saves outside its decoder layers (``terms``' ``pre_tok``).
MODEL_SAVED: dict[str, Callable[..., tuple[int, int, int]]] = {
    "per_layer_inputs": gemma4_model_saved,
}

#: ``Family.layout`` -> (consumer, producer, bytes per token) of gradients held from the consumer layer's backward
#: to the producer's (``terms``' ``grad_hold``).
MODEL_GRAD_HOLD: dict[str, Callable[..., tuple[tuple[int, int, int], ...]]] = {
    "per_layer_inputs": gemma4_kv_grad_hold,
}

#: ``Family.layout`` -> (layer, bytes per token) held from that layer's backward on (``terms``' ``kv_hold``).
MODEL_HOLD: dict[str, Callable[..., tuple[tuple[int, int], ...]]] = {
    "per_layer_inputs": gemma4_kv_hold,
}


def mamba2_state(arch: "Arch", proj: int) -> int:
    """One Mamba-2 layer's generation cache per sequence (transformers 5.24 ``cache_utils.py``
    ``LinearAttentionLayer.lazy_initialization`` / ``update_conv_state``): the conv state, conv_dim ×
    ``conv_kernel`` in in_proj's output dtype (``proj``), and the SSM state ``zeros_like(final_state)``,
    heads × head_dim × state in fp32 (the chunk scan's ``float()`` states, no autocast in generate)."""
    from vramplan.arch.mixers import mamba2_shape
    m = mamba2_shape(arch)
    return proj * m.conv_dim * m.conv_kernel + 4 * m.inner * m.state


#: kind -> its layer's recurrent generation cache per sequence (kinds without one hold none).
def deltanet_state(arch: "Arch", proj: int) -> int:
    """One layer's generation cache per sequence (transformers 5.24 ``cache_utils.LinearAttentionLayer``):
    the convolution window ``conv_states`` of conv_dim × kernel in the projections' dtype
    (``update_conv_state`` keeps the last ``conv_kernel_size`` positions) and the recurrent state
    nv × dk × dv in fp32 (``torch_chunk_gated_delta_rule``'s ``last_recurrent_state`` is fp32, as fla's)."""
    from vramplan.arch.mixers import deltanet_dims
    t = deltanet_dims(arch)
    return proj * t.conv_dim * t.kernel + 4 * t.nv * t.dk * t.dv


STATES: dict[str, Callable[["Arch", int], int]] = {
    MAMBA2: mamba2_state,
    "gated_deltanet": deltanet_state,
}


def state_bytes(arch: "Arch", proj: int) -> int:
    """The recurrent caches of every non-attention layer, bytes per sequence."""
    return sum(STATES[k](arch, proj) * arch.mixers.count(k) for k in dict.fromkeys(arch.mixers) if k in STATES)


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
