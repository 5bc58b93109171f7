"""Tensors autograd saves in one decoder layer, per token, dtype by dtype.

The layer is walked in the order transformers 5.24 runs it (``modeling_llama.py`` /
``modeling_qwen3.py`` / ``modeling_gemma2.py`` / the MoE files), tracking each tensor's dtype,
because the recipe and autocast decide whether a saved tensor is 2 or 4 bytes. What each op saves
follows PyTorch's ``tools/autograd/derivatives.yaml`` (torch 2.x): ``mul`` saves the *other*
operand only when this one needs a gradient, so ``frozen_weight * x`` saves nothing of x;
``mm``/``linear`` saves its input only when the weight is trainable and the weight (or its autocast
copy) only when the input needs a gradient; ``silu``/``gelu``/``pow`` save their input;
``rsqrt``/``softmax``/``log_softmax``/``tanh`` save their output; ``native_dropout`` saves a bool mask
(1 B/elem); flash / memory-efficient attention saves q, k, v, the output and an fp32 log-sum-exp per
head and token. Korthikanti et al. (arXiv 2205.05198, §4.1) count the same per-layer tensors for a
GPT layer in 16-bit; this walk differs where QLoRA does (frozen 4-bit base layers save no input:
bitsandbytes 0.50.2 ``MatMul4Bit.forward`` keeps only the packed weight, ``ctx.tensors = (None, B)``).

Symbols (per token): H hidden, I intermediate, q = heads·head_dim, kv = kv_heads·head_dim, nh heads,
s sequence length, r rank, c compute-dtype bytes (2 for bf16/fp16), E experts, k top-k, M expert width.
Results are (bytes per token, bytes per token per token of sequence [eager scores], fixed bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.arch.spec import Arch, Linear


@dataclass(frozen=True)
class Dtypes:
    """Byte widths that decide every saved tensor's size."""

    c: int
    """Compute dtype bytes (bnb_4bit_compute_dtype / autocast dtype)."""
    autocast: bool
    """Forward runs under torch.autocast(c) (only meaningful when c == 2)."""
    resid: int
    """Residual-stream bytes from layer 1 on (4 when the recipe upcasts the norms/embeddings)."""
    resid0: int
    """Layer 0 input bytes (the embedding output: the embedding's dtype)."""
    norm_w: int
    """RMSNorm weight bytes."""
    base_w: int
    """Bytes of unquantized base linear weights (quant none)."""
    other_w: int
    """Bytes of routers and fused experts."""
    lora: int
    """Bytes of the LoRA matmul operands: c under autocast, else the adapter dtype."""
    quantized: bool
    """Base linears are bitsandbytes layers (save no activations, output in the input's dtype)."""
    dropout: bool
    """lora_dropout > 0 (peft inserts nn.Dropout, else nn.Identity)."""
    full: bool
    """Every weight trainable (no LoRA)."""
    adapter: int = 4
    """LoRA weight bytes (``Scenario.adapter_dtype``): the dtype peft casts the LoRA input to."""
    bnb_keeps_input: bool = False
    """bitsandbytes < 0.43.2: a 4-bit layer saves its input whenever it needs a gradient."""
    norm_keeps_dtype: bool = False
    """RMSNorm returns its input's dtype whatever its weight's (Gemma: ``output.type_as(x)``, see
    ``Family.norm_keeps_input_dtype``); else ``weight * x.to(input_dtype)`` promotes to the weight's dtype."""
    @property
    def lora_input_cast(self) -> bool:
        """peft casts the LoRA input to the adapter dtype: always in the plain ``lora.Linear``
        (unquantized base, ``lora/layer.py``: unconditional ``_cast_input_dtype``); in the bitsandbytes
        wrappers (``lora/bnb.py``) only when ``not torch.is_autocast_enabled()`` (no autocast, or the
        CPU program, where that argument-less call reads CUDA's flag)."""
        return not self.quantized or not self.autocast or not self.cuda

    fp16: bool = False
    """The compute dtype is fp16 (not bf16): ATen's CUDA softmax takes an fp16 input to an fp32 output
    directly (``half_to_float``), whose backward returns the fp16 gradient (``eager_softmax_backward``)."""
    cuda: bool = True
    """CUDA semantics (default). ``False`` reproduces what the CPU fake-tensor trace runs: peft's
    ``torch.is_autocast_enabled()`` (CUDA-only) is False under CPU autocast, so peft casts x to the
    fp32 adapter dtype before dropout; and CPU ``F.dropout`` is the composite ``x * mask`` whose mask
    has x's dtype (CUDA's fused ``native_dropout`` keeps a bool mask)."""
    liger_norm: bool = False
    """Liger's RMSNorm (``Scenario.liger_rms_norm``, ``liger_norm_saved``); its output keeps the input's
    dtype, so ``norm_keeps_dtype`` is set with it."""
    liger_swiglu: bool = False
    """Liger's SwiGLU MLP (``Scenario.liger_swiglu``, ``liger_swiglu_saved``)."""


def _promote(a: int, b: int) -> int:
    return a if a >= b else b


def norm_out(d: Dtypes, x: int) -> int:
    """Bytes per element of an RMSNorm's output for an input of ``x`` bytes."""
    return x if d.norm_keeps_dtype else _promote(d.norm_w, x)


def liger_norm_saved(xd: int, width: int, rows: int = 1) -> int:
    """Bytes per token liger-kernel 0.8.5's ``LigerRMSNormFunction`` saves for ``rows`` vectors of
    ``width`` with an input of ``xd`` bytes (``ops/rms_norm.py``: ``rms_norm_forward`` L449-523 returns
    ``X.view(-1, dim)``, the input's own storage, and ``RSTD``, fp32 per row in the llama and gemma
    casting modes; ``forward`` L674-690 saves ``(X, W, RSTD)``): the input itself, xd·width·rows, and
    4·rows. No fp32 copy; the weight is a parameter (nothing new), also when it is trainable (dW is
    computed from X and RSTD, fp32 ``_dW`` of sm_count × width in backward only). Its backward writes
    dX into dY (``in_place=True``, the default ``_patch_rms_norm_module`` keeps): no new buffer."""
    return xd * width * rows + 4 * rows


def liger_swiglu_saved(gd: int, inter: int) -> int:
    """Bytes per token liger-kernel 0.8.5's ``LigerSiLUMulFunction`` saves (``ops/swiglu.py`` L240-274:
    ``save_for_backward(a, b)``, gate and up as their linears returned them, silu recomputed in the
    kernel): 2·gd·I, where transformers' ``act_fn(gate) * up`` saves gate, up and silu(gate) (3·gd·I).
    Its output ``c = torch.empty_like(a)`` is the down projection's input, as in transformers."""
    return 2 * gd * inter


class _Walk:
    """Accumulates saved bytes per token (``tok``), per token·s (``quad``) and fixed (``const``)."""

    __slots__ = ("d", "r", "targets", "tok", "quad", "const", "core")

    def __init__(self, d: Dtypes, rank: int, targets: frozenset[str]):
        self.d, self.r, self.targets = d, rank, targets
        self.tok = 0
        self.quad = 0
        self.const = 0
        self.core: tuple[int, int, int, int, int] | None = None
        """Eager attention: (tok, quad, const) saved up to and including the attention core but V and
        the probabilities copy the matmul with V saves, V's gradient per token, the score dtype."""

    def norm(self, width: int, rows: int = 1, live: bool = True, xd: int = 4) -> None:
        """RMSNorm of ``rows`` vectors of ``width``: saves x in fp32 (the input itself when it is fp32,
        else an fp32 copy: ``hidden_states.to(torch.float32)``) and rsqrt(var) per row (fp32).
        The ``weight * x`` product saves nothing of x while the weight is frozen. Nothing is saved
        when the input needs no gradient. Liger's RMSNorm saves the input (``xd`` bytes) itself instead
        (``liger_norm_saved``)."""
        if self.d.liger_norm:
            if live:
                self.tok += liger_norm_saved(xd, width, rows)
            return
        if live:
            self.tok += 4 * width * rows + 4 * rows
        if self.d.full:  # trainable weight: the product also saves the normalised input
            self.tok += 4 * width * rows

    def linears(self, group: tuple[Linear, ...], xd: int, x_saved: bool, live: bool) -> tuple[int, bool]:
        """Linears reading one input x of dtype ``xd`` (q/k/v, or gate/up).

        Returns (output dtype, whether the output needs a gradient). Per LoRA target (peft
        ``lora/bnb.py::Linear4bit.forward``):
        1. dropout > 0: a mask (bool on CUDA) while x needs a gradient, + the dropout output fed to
           lora_A, saved in the LoRA operand dtype lb (autocast casts it to c; without autocast peft
           casts x to the fp32 adapter dtype): lb·i.
        2. dropout = 0: lora_A saves x itself when x already has dtype lb (shared by the group),
           else its own cast copy lb·i (each module casts x again: peft's ``_cast_input_dtype``).
        3. lora_B saves lora_A's output: lb·r.
        Base layer: bitsandbytes saves nothing and returns x's dtype. An unquantized frozen base under
        autocast saves the bf16 copy of a fp32 weight (fixed bytes) and returns c; a trainable
        base (full) also saves its input (cast copy, or x itself).
        """
        d, lb = self.d, self.d.lora
        convert = d.lora_input_cast
        shared_x = False
        out = xd
        out_live = live
        for lin in group:
            i = lin.in_features
            if not d.quantized:
                if d.autocast:
                    out = d.c
                    if d.base_w != d.c and live:
                        self.const += d.c * i * lin.out_features
                    if d.full:
                        if xd == d.c:
                            shared_x = True
                        else:
                            self.tok += d.c * i
                else:
                    out = d.base_w
                    if d.full:
                        shared_x = True
            if d.full:
                out_live = True
                continue
            if lin.name not in self.targets:
                continue
            out_live = True
            xin = d.adapter if convert else xd  # dtype entering dropout / lora_A
            if d.dropout:
                if live:
                    self.tok += i * (1 if d.cuda else xin)
                self.tok += lb * i
            elif xin == lb and xin == xd and (d.cuda or not d.autocast):
                shared_x = True  # no cast: every lora_A of the group saves the one x
            else:
                self.tok += lb * i
            self.tok += lb * self.r
            if d.autocast:  # autocast's cached bf16 copies of the fp32 A and B
                self.const += d.c * self.r * (i + lin.out_features)
        lora_x = (d.adapter if (convert and not d.full) else xd) if shared_x else 0
        if shared_x and not x_saved:
            self.tok += lora_x * group[0].in_features
        if d.quantized and d.bnb_keeps_input and live and not d.full and not x_saved and lora_x != xd:
            # bitsandbytes < 0.43.2 MatMul4Bit: ``ctx.tensors = (A, B)`` whenever A needs a gradient,
            # once per input tensor (q/k/v, gate/up share theirs); nothing new when lora_A already saves x
            self.tok += xd * group[0].in_features
        return out, out_live


def layer_saved(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], attn: str, moe: bool,
                live_in: bool = True) -> tuple[int, int, int]:
    """Bytes autograd holds for one decoder layer, excluding the layer's input tensor itself.

    Returns (per token, per token·s, fixed). ``live_in``: whether the layer input needs a gradient
    (False for layer 0 without checkpointing: peft enables input gradients only with checkpointing,
    so nothing before the first LoRA module is saved). A MoE layer's autocast copies of its fp32
    experts are priced by the caller (they depend on how many experts the batch touches).
    The walk: ``_attention_saved`` (steps 1-5), the residual add and pre-MLP norm (step 6), then
    ``_mlp_saved`` or ``_moe_saved`` (step 7) and Gemma's post-feedforward norm.
    """
    w = _Walk(d, rank, targets)
    lins = {lin.name: lin for lin in arch.layer_linears(arch.moe_layers[0] if moe else _dense_index(arch))}
    od, lo = _attention_saved(w, arch, lins, attn, live_in)
    # 6. h1 = x + attn (dtype promotes); the pre-MLP norm saves fp32 h1 (h1 itself when fp32) + rsqrt.
    live = live_in or lo
    hd1 = _promote(d.resid, od)
    w.norm(arch.hidden_size, 1, live, hd1)
    n2 = norm_out(d, hd1)
    # 7. MLP.
    if moe:
        _moe_saved(w, arch, lins, n2, live)
        md = n2
    else:
        md = _mlp_saved(w, arch, lins, n2, live)
    if arch.norms_per_layer == 4:  # Gemma post_feedforward_layernorm
        w.norm(arch.hidden_size, xd=md)
    return w.tok, w.quad, w.const


def eager_softmax_backward(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], moe: bool,
                           live_in: bool = True) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """One decoder layer at the busiest moment of eager attention's backward: the softmax backward.

    Backward meets the layer from its end: the MLP and o_proj have run their backward (their saved
    tensors are freed), then ``matmul(probs, V)``'s backward releases V and the probabilities copy it
    saved, leaving its two gradients; ``.to(query.dtype)``'s backward turns the probabilities'
    gradient into fp32 (the softmax was asked for ``dtype=torch.float32``). Then
    ``_softmax_backward_data`` runs with, per score element (b·heads·s·s = T·s·heads):
    1. the saved fp32 softmax output (still counted in the layer's saved bytes), 4 B;
    2. its fp32 gradient, 4 B;
    3. on CUDA, ``softmax_backward_cuda_out``'s ``tmp = grad * output`` (torch 2.13
       ``ATen/native/cuda/SoftMax.cu``), 4 B; the CPU kernel has none;
    4. the gradient of the scores, 4 B, or 2 B when CUDA ran an fp16 input through
       ``_softmax(half_to_float=True)`` (``ATen/native/SoftMax.cpp``: fp16 only, outside autocast,
       whose fp32 op list casts the scores first).
    Per token besides: the gradient of the residual (the layer output's, which the residual add
    passes on) and V's gradient, repeated to every head, in V's own dtype (under autocast the
    matmul's cast of an fp32 V has run its backward already: it was created after the softmax).

    Returns ((saved tok, quad, const) of the layer still alive: everything saved up to the attention
    core but V and the probabilities copy; (gradient tok, quad, 0); CUDA temporary per token·s).
    Zero triples when the layer's attention saves nothing (a frozen layer of a frozen input)."""
    w = _Walk(d, rank, targets)
    lins = {lin.name: lin for lin in arch.layer_linears(arch.moe_layers[0] if moe else _dense_index(arch))}
    _attention_saved(w, arch, lins, "eager", live_in)
    if w.core is None:
        return (0, 0, 0), (0, 0, 0), 0
    tok, quad, const, v_grad, ad = w.core
    nh = arch.num_heads
    half = d.cuda and d.fp16 and not d.autocast and ad == 2
    grad_in = 2 if half else 4
    grads = (_promote(d.resid, d.c) * arch.hidden_size + v_grad, (4 + grad_in) * nh, 0)
    return (tok, quad, const), grads, (4 * nh if d.cuda else 0)


def eager_mask_bytes(d: Dtypes) -> int:
    """Eager attention's additive causal mask per token·s: b × 1 × s × s in the embedding output's
    dtype (transformers 5.24 ``masking_utils.eager_mask``, ``dtype=inputs_embeds.dtype``), built once
    per forward and passed to every layer. Gradient checkpointing keeps it (an argument of every
    checkpointed layer) until layer 0's backward; without checkpointing no op saves it."""
    return d.resid0


def _attention_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], attn: str, live: bool) -> tuple[int, bool]:
    """Steps 1-5 of ``layer_saved``: input norm, q/k/v, q/k norms, RoPE and the attention core, then
    o_proj (and Gemma's post-attention norm). Returns (o_proj output dtype, whether it needs a gradient)."""
    d, targets = w.d, w.targets
    H, nh, nkv, hd = arch.hidden_size, arch.num_heads, arch.num_kv_heads, arch.head_dim
    q, kv = nh * hd, nkv * hd
    # 1. input_layernorm on the residual x (bytes resid): fp32 x + rsqrt. When x is fp32 it is the
    #    tensor itself; the caller counts x (checkpoint or layer input), so only the rsqrt is new here.
    if live:  # Liger: the input itself (counted by the caller) + the fp32 rstd
        w.tok += 4 + (4 * H if (d.resid != 4 and not d.liger_norm) else 0)
    n1 = norm_out(d, d.resid)
    # 2. q/k/v projections (fused qkv_proj on Phi-3) read the normalised x.
    if "qkv_proj" in lins:
        qd, lq = w.linears((lins["qkv_proj"],), n1, False, live)
        lk = lv = lq
    else:
        qd, lq = w.linears((lins["q_proj"], lins["k_proj"], lins["v_proj"]), n1, False, live)
        # per-projection liveness (a frozen, non-target projection of a frozen input needs no grad)
        lk = live or d.full or "k_proj" in targets
        lv = live or d.full or "v_proj" in targets
        lq = live or d.full or "q_proj" in targets
    # 3. per-head q/k RMSNorm (Qwen3, Gemma 3): fp32 q and k + one rsqrt per head.
    if arch.qk_norm:
        w.norm(hd, nh, lq, qd)
        w.norm(hd, nkv, lk, qd)
        qd = norm_out(d, qd)
    # 4. RoPE saves cos/sin only (shared by all layers, b·s·head_dim: negligible).
    # 5. attention core: saves only if q, k or v needs a gradient.
    la = lq or lk or lv
    if attn == "eager":
        ad = d.c if d.autocast else qd
        if la:
            # q, repeat_kv(k), repeat_kv(v) as the matmuls save them (cast copies under autocast).
            w.tok += ad * (q + q + q)
            # softmax(dtype=fp32) saves its fp32 output; the matmul with v saves the probabilities
            # in its operand dtype (a second copy unless everything is fp32).
            probs = ad * nh if (ad != 4 or qd != 4) else 0
            w.quad += 4 * nh + probs
            if arch.attn_logit_softcapping:
                w.quad += ad * nh  # tanh output
            w.core = (w.tok - ad * q, w.quad - probs, w.const, qd * q, ad)
        x_o_saved = False  # attn_output.transpose(1, 2).contiguous() is a fresh copy
    else:
        # sdpa (flash / memory-efficient kernel) and flash-attention-2: q, k, v in the kernel dtype
        # (flash2 casts fp32 to c; autocast casts for sdpa), output, fp32 logsumexp per head.
        ad = d.c if (d.autocast or attn == "flash2") else qd
        if la:
            w.tok += ad * (q + 2 * kv) + ad * q + 4 * nh
        x_o_saved = la  # o_proj reads the saved attention output (same storage)
    od, lo = w.linears((lins["o_proj"],), ad, x_o_saved, la)
    if arch.norms_per_layer == 4:  # Gemma post_attention_layernorm on the attention output
        w.norm(H, 1, lo, od)
        od = norm_out(d, od)
    return od, lo


def _mlp_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], n2: int, live: bool) -> int:
    """Dense gated MLP: gate/up (fused on Phi-3), ``act(gate) * up``, down. Returns the output dtype."""
    targets, full = w.targets, w.d.full
    I = arch.intermediate_size
    if "gate_up_proj" in lins:
        gd, lg = w.linears((lins["gate_up_proj"],), n2, False, live)
        lu = lg
    else:
        gd, _ = w.linears((lins["gate_proj"], lins["up_proj"]), n2, False, live)
        lg = live or full or "gate_proj" in targets
        lu = live or full or "up_proj" in targets
    # act(gate) saves gate; act(gate) * up saves up (if gate needs grad) and act (if up does).
    if w.d.liger_swiglu:  # LigerSiLUMulFunction saves gate and up whenever either needs a gradient
        w.tok += liger_swiglu_saved(gd, I) if (lg or lu) else 0
    else:
        w.tok += gd * I * ((1 if lg else 0) + (1 if lg else 0) + (1 if lu else 0))
    return w.linears((lins["down_proj"],), gd, False, lg or lu)[0]


def _moe_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], n2: int, live: bool) -> None:
    """Sparse MoE block: router, transformers 5's grouped_mm experts, and a gated shared expert."""
    d, targets = w.d, w.targets
    H, E, k, M = arch.hidden_size, arch.num_experts, arch.experts_per_token, arch.moe_intermediate_size
    # transformers 5 ``integrations/moe.py::_grouped_mm`` casts the input to the expert weights' dtype
    # (grouped_mm is not autocast-enabled), so experts compute in other_w, autocast or not
    ed = d.other_w
    if live:
        # router: fp32 softmax output (E) + top-k indices (int64) and weights.
        w.tok += 4 * E + 12 * k
        if d.autocast and d.other_w != d.c:
            w.const += d.c * E * H  # router weight's bf16 copy, saved for the input gradient
        # each (token, expert) pair (transformers 5 grouped_mm experts): gate_up output (2M) and
        # act output (M) kept by act/mul, expert output (H) kept by the multiply with its routing
        # weight, gather index (int64).
        w.tok += k * (ed * (3 * M + H) + 8)
        if "experts" in targets:
            # grouped_mm saves its inputs (gathered x: H, and the act product: M) only when the
            # expert weights need a gradient (LoRA-wrapped by peft's ParamWrapper): torch
            # ``derivatives.yaml`` ``_grouped_mm`` saves ``self`` for the ``mat2`` gradient.
            w.tok += k * ed * (H + M)
            # the effective weight stacks W + B·A (``baddbmm``, E·(2M·H + H·M) in the experts'
            # dtype) are saved for the input gradient.
            w.const += d.other_w * E * 3 * M * H
    S = arch.shared_expert_intermediate_size
    if S:
        sd, ls = w.linears((lins["shared_expert.gate_proj"], lins["shared_expert.up_proj"]), n2, False, live)
        w.tok += 3 * sd * S if ls else 0
        w.linears((lins["shared_expert.down_proj"],), sd, False, ls)
        w.linears((lins["shared_expert_gate"],), n2, True, live)
        w.tok += 4 + _promote(sd, n2) * H  # sigmoid output, shared-expert output for the product


def _dense_index(arch: Arch) -> int:
    moe = set(arch.moe_layers)
    return next(i for i in range(arch.num_layers) if i not in moe)


def backward_working(arch: Arch, d: Dtypes, moe: bool, targets: frozenset[str],
                     rank: int) -> tuple[int, int, int, int]:
    """Gradient buffers alive at the busiest point of one decoder layer's backward.

    Returns (a, a_fixed, b, b_fixed): the working set is max(a·T + a_fixed, b·T + b_fixed) bytes on
    top of the layer's saved tensors; b_fixed is the transient dequantized weight, a_fixed the
    gradient of a LoRA-wrapped fused expert stack (E·M·H in its dtype, peft ``ParamWrapper``). The busiest point is in the MLP's
    down projection, the first module backward meets (autograd runs the LoRA branch, created last,
    before the base branch):
    1. LoRA branch with dropout: dropout's gradient in and out coexist: 2·x·I (x = dtype entering
       dropout); without dropout, lora_A's input gradient (lb·I) and its cast (x·I).
    2. base branch: bitsandbytes dequantizes the whole weight (c·I·H, bitsandbytes 0.50.2
       ``MatMul4Bit.backward``) and produces grad_A (c·I) while the LoRA branch's gradient (x·I) waits
       in autograd's input buffer; the branch's saved tensors (mask, lora_A input) are freed by now.
    3. ``act(gate) * up`` backward: the product's gradient and both factor gradients, 3·g·I (Liger's
       SwiGLU: the product's gradient alone, 1·g·I).
    In every case the gradient of the layer output and the LoRA output's gradient and its scaled copy
    (3 · H in the MLP output dtype) are alive. Checked against the trace (docs/methodology.md).
    """
    H, c = arch.hidden_size, d.c
    n2 = norm_out(d, _promote(d.resid, c))
    gd = n2 if d.quantized else (c if d.autocast else d.base_w)
    if moe:
        I = arch.shared_expert_intermediate_size or arch.experts_per_token * arch.moe_intermediate_size
        down = "shared_expert.down_proj"
    else:
        I = arch.intermediate_size
        down = "down_proj"
    lins = {lin.name: lin for lin in arch.layer_linears(arch.moe_layers[0] if moe else _dense_index(arch))}
    w_down = lins[down].weight_params if down in lins else 0
    targeted = (down in targets) and not d.full
    convert = d.lora_input_cast
    xin = d.adapter if convert else gd
    lb = d.lora
    hpart = 3 * gd * H
    if convert and gd != d.adapter and not d.full:
        hpart += 2 * d.adapter * H  # peft's fp32 casts around a 16-bit module make two fp32 H-sized gradients
    if targeted:
        saves = (I * (1 if d.cuda else xin) if d.dropout else 0) + lb * I
        # dropout: lora_A's input gradient (lb·I) next to its saved input, then dropout's input
        # gradient (xin·I) once that input is freed: one xin·I over the saved set at either moment
        a_lora = (xin * I) if d.dropout else (lb + xin) * I
        b = c * I + xin * I - saves
    else:
        saves, a_lora, b = 0, 0, c * I
    # Liger's SwiGLU backward: the product's gradient only, da and db written into the saved gate and
    # up (``ops/swiglu.py`` ``swiglu_backward`` L201-237 returns ``a.view``, ``b.view``)
    act_grads = (1 if (d.liger_swiglu and not moe) else 3) * gd * I
    a = max(a_lora, act_grads - saves) + hpart
    if moe and "experts" in targets and not arch.shared_expert_intermediate_size:
        # LoRA-wrapped routed experts: when the act·up backward runs, two of the recomputed layer's
        # M-wide tensors per (token, expert) are already released: the act·up product grouped_mm saved
        # for the down projection (freed by its backward) and the act output the product saved
        # (checked against the trace's live tensors at the peak: Mixtral, Qwen3-MoE)
        a = max(a - 2 * d.other_w * I, hpart)
    deq = c * w_down if d.quantized else 0
    a_fixed = 0
    if moe and "experts" in targets:
        a_fixed = d.other_w * arch.num_experts * arch.moe_intermediate_size * H
    return a, a_fixed, b + hpart, deq


def sliding_sdpa_saved(arch: Arch, d: Dtypes, attn: str) -> tuple[int, int]:
    """Extra bytes one sliding-window layer saves under sdpa once the sequence reaches the window
    (the mask can no longer be skipped: ``masking_utils._ignore_causal_mask_sdpa`` needs
    kv_length < window). Returns (per token, per token·s).

    With a mask, transformers' ``sdpa_attention_forward`` does not let sdpa broadcast K/V over the
    query groups (``use_gqa_in_sdpa`` requires no mask): ``repeat_kv`` materializes K and V with every
    query head, which the kernel saves (ad·2·(q − kv) more per token); and the kernel turns the
    boolean (b, 1, s, s) mask into an additive one in the attention dtype, which it saves
    (ad per token·s). flash2 handles the window itself and eager already prices repeated K/V and the
    scores, so only sdpa pays this."""
    if attn != "sdpa":
        return 0, 0
    ad = d.c if d.autocast else _promote(d.resid, d.c)
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    return ad * 2 * (q - kv), ad
