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


def deltanet_note(arch: "Arch", d: "Dtypes") -> str:
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
NOTES: dict[str, Callable[["Arch", "Dtypes"], str]] = {"gated_deltanet": deltanet_note}


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


#: kind -> its saved-activation walk (the one place a kind's walk is registered).
WALKS: dict[str, Walk] = {
    "gated_deltanet": _deltanet_walk,
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
