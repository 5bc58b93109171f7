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

from vramplan.arch.mixers import IDENTITY, MAMBA2

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
    IDENTITY: identity_walk,
    MAMBA2: mamba2_walk,
    "chunked_attention": chunked_attention_walk,
    "mla": mla_walk,
    "dsa": mla_walk,  # the indexer runs under torch.no_grad: it saves nothing (``dsa_forward_bytes``)
}

#: kind -> the backward working set of its layers (``backward_working_of``).
WORKING: dict[str, Working] = {
    MAMBA2: lambda arch, d, targets, rank, layer, **kw: mamba2_working(arch, d),
    "attention": lambda arch, d, targets, rank, layer, **kw: attention_only_working(arch, d),
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
STATES: dict[str, Callable[["Arch", int], int]] = {
    MAMBA2: mamba2_state,
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
