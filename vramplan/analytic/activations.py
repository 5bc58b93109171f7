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

from vramplan.arch.families import EXPERTS_DENSE_BMM, ROUTER_SIGMOID_GROUPED, ROUTER_TOPK_SIGMOID
from vramplan.arch.mixers import ATTENTION, IDENTITY
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
    dora: bool = False
    """DoRA (``Scenario.dora``): each target also saves its base and LoRA outputs (``dora_saved``)."""
    lora_fa: bool = False
    """LoRA-FA (``Scenario.lora_fa``): lora_A is frozen, so it saves no input."""
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
    gc: bool = False
    """Gradient checkpointing: every layer's input is a checkpoint the phases count (``StaticTerms.ckpt``),
    so a post-norm layer's projections reading that input save nothing new of it (``_attention_saved``)."""


def _promote(a: int, b: int) -> int:
    return a if a >= b else b


def norm_out(d: Dtypes, x: int) -> int:
    """Bytes per element of an RMSNorm's output for an input of ``x`` bytes."""
    return x if d.norm_keeps_dtype else _promote(d.norm_w, x)


def layer_norm_saved(width: int) -> int:
    """Bytes per token a mean-subtracting LayerNorm without bias saves while its input needs a gradient
    (``Family.layer_norm``; transformers 5.24 ``modeling_cohere2.py`` ``Cohere2LayerNorm.forward``
    L95-102): ``(x - mean).pow(2)`` saves its fp32 base (4·width), the second ``x - mean`` is saved by
    its product with ``rsqrt`` (4·width), which saves the fp32 ``rsqrt`` per row (4); ``x.to(float32)``
    and ``mean`` are saved by nothing (``sub`` and ``mean`` keep shapes only), and the frozen weight's
    product keeps its fp32 weight copy only. 8·width + 4, whatever the input's dtype."""
    return 8 * width + 4


def residual_dropout_saved(arch: Arch) -> int:
    """Bytes per token one residual-branch dropout saves (``Family.residual_dropout_key``; Seed-OSS:
    transformers 5.24 ``modeling_seed_oss.py`` ``SeedOssAttention.forward`` drops o_proj's output and
    ``SeedOssMLP.forward`` down_proj's, ``nn.functional.dropout(..., p=residual_dropout, training=True)``):
    CUDA's fused ``native_dropout`` keeps a bool mask, 1 B per element of the H-wide output (its
    output is the residual add's operand, saved by nothing). 0 without such a dropout."""
    return arch.hidden_size if arch.family.residual_dropout(arch.config) > 0 else 0


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

    __slots__ = ("d", "r", "targets", "tok", "quad", "const", "core", "dora", "dora_in", "kernels", "fused",
                 "mlp_node", "shared", "cache")

    def __init__(self, d: Dtypes, rank: int, targets: frozenset[str], kernels: str = "none",
                 fused: frozenset[str] = frozenset()):
        self.d, self.r, self.targets = d, rank, targets
        self.kernels, self.fused = kernels, fused
        self.tok = 0
        self.quad = 0
        self.const = 0
        self.core: tuple[int, int, int, int, int] | None = None
        """Eager attention: (tok, quad, const) saved up to and including the attention core but V and
        the probabilities copy the matmul with V saves, V's gradient per token, the score dtype."""
        self.dora: list[tuple[int, ...]] = []  # each DoRA target's forward moment
        self.dora_in = 0  # the last DoRA target's ``dora_backward_incoming``
        self.shared = False
        """The last ``linears`` group saved its input x itself (a parallel block's MLP reads the same x)."""
        self.cache = 0
        """Bytes of autocast's cached 16-bit copies of the layer's fp32 LoRA weights (also in ``const``):
        the cache outlives the layer, so under checkpointing every layer's copies are alive until the
        forward returns (``autocast_cache_bytes``)."""
        self.mlp_node = 0
        """Dense MLP: bytes per token ``act(gate) * up`` saves plus what the autograd node run before it in
        the backward (down_proj's dropout, else its lora_A) saves (``_mlp_saved``)."""

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
        if self.d.full:  # trainable weight: the product also saves the normalised input, cast back to x's dtype
            self.tok += (4 if self.d.norm_keeps_dtype else xd) * width * rows

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
                if not d.lora_fa:
                    self.tok += lb * i
            elif d.lora_fa:
                pass  # a frozen lora_A saves no input (its weight only, counted below)
            elif xin == lb and xin == xd and (d.cuda or not d.autocast):
                shared_x = True  # no cast: every lora_A of the group saves the one x
            else:
                self.tok += lb * i
            self.tok += lb * self.r
            if d.autocast and d.adapter > d.c:  # autocast's cached 16-bit copies of the fp32 A and B
                self.const += d.c * self.r * (i + lin.out_features)
                self.cache += d.c * self.r * (i + lin.out_features)
            if d.dora:
                # the forward transient of this target, with what the layer has saved before it
                # the target's input is alive through its forward (counted here unless something saves
                # it), and so is dropout's output (``x = dropout(x)`` in the variant; peft's wrapper still
                # holds the undropped x)
                held_x = 0 if (x_saved or (not d.dropout and xin == lb and (d.cuda or not d.autocast))) else xd * i
                held_x += xin * i if d.dropout else 0
                base_out = xd if d.quantized else out
                t_tok, t_fixed, t_norm = dora_forward_transient(d, lin, xd, xin)
                self.dora.append((self.tok + held_x, self.quad, self.const, t_tok, t_fixed, t_norm,
                                  dora_held(d, lin, xd, xin, base_out)))
                self.dora_in = dora_backward_incoming(d, lin, xin, base_out)
                tok, const, dora_out = dora_saved(d, lin, base_out, xin, live)
                self.tok += tok
                self.const += const
                out = _promote(out, dora_out)
        lora_x = (d.adapter if (convert and not d.full) else xd) if shared_x else 0
        self.shared = shared_x and lora_x == xd
        if shared_x and not x_saved:
            self.tok += lora_x * group[0].in_features
        if d.quantized and d.bnb_keeps_input and live and not d.full and not x_saved and lora_x != xd:
            # bitsandbytes < 0.43.2 MatMul4Bit: ``ctx.tensors = (A, B)`` whenever A needs a gradient,
            # once per input tensor (q/k/v, gate/up share theirs); nothing new when lora_A already saves x
            self.tok += xd * group[0].in_features
        return out, out_live

    def fused_group(self, group: tuple[Linear, ...], xd: int, x_saved: bool, live: bool) -> int:
        """One fused LoRA autograd function over the linears of ``group`` reading x (dtype ``xd``), in
        place of ``linears``; returns the output dtype (the compute dtype c: the dequantized or 16-bit
        base weight's matmul under autocast). What it keeps for backward (dropout 0 unless named):
        1. x itself (``ctx.save_for_backward(X, ...)``, axolotl 0.19 ``kernels/lora.py:L907-916`` QKV,
           ``L1682-1688`` O, ``L425-440`` MLP; Unsloth 2026.10.9 ``kernels/fast_lora.py:L845-855``,
           ``L1073``, ``L448``): xd·i, unless x is already saved (o_proj reads sdpa's saved output).
        2. axolotl: the copies ``A.to(X.dtype)``, ``B.to(X.dtype)`` of every adapter, xd·r·(i + o) each
           (fixed; none when the adapter already has x's dtype). Unsloth saves the fp32 parameters
           themselves (``save_for_backward(QA, QB, ...)``): nothing new.
        3. axolotl with dropout: ``nn.Dropout`` runs outside the function (``apply_lora_qkv``,
           ``_apply_dropout``, ``L1260``), one shared mask (bool on CUDA) while x needs a gradient, and the
           function saves the dropped copy ``X_drop``: xd·i.
        Nothing of the outputs: the group's own outputs are saved by whoever reads them (the MLP's gate and
        up by ``fused_mlp_saved``). Unsloth's dropout path is refused by ``Scenario`` (its default is 0)."""
        d = self.d
        i = group[0].in_features
        if not x_saved:
            self.tok += xd * i
        if self.kernels == "axolotl":
            if d.dropout:
                self.tok += (i * (1 if d.cuda else xd) if live else 0) + xd * i
            if d.adapter != xd:
                self.const += xd * self.r * sum(lin.in_features + lin.out_features for lin in group)
        return d.c


#: The projections of each group a fused LoRA kernel covers (``Scenario.kernel_groups``).
KERNEL_PROJECTIONS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
                      "mlp": ("gate_proj", "up_proj", "down_proj")}


def fused_groups(arch: Arch, d: Dtypes, kernels: str, groups: tuple[str, ...],
                 targets: frozenset[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The projection groups (``qkv``, ``o``, ``mlp``) whose fused LoRA kernel runs, and a note for each
    requested group that stays on peft's path.

    A group is fused when every projection in it is a LoRA target, named separately (axolotl 0.19
    ``monkeypatch/lora_kernels.py:L563-600`` ``can_patch_qkv/o/mlp``: ``hasattr(module, "lora_A")``; Unsloth
    2026.10.9 ``models/llama.py:L5338-5395``, which also needs no base bias), on a dense MLP (neither patches
    a routed MoE block or a fused ``qkv_proj``/``gate_up_proj``), and its input has the compute dtype under
    autocast (Unsloth ``fast_lora.py:L173-185`` ``_autocast_dtype_mismatch`` falls back to peft; axolotl's
    ``out.addmm_(X_lora @ A, B)`` in ``matmul_lora`` raises on an fp32 x, "self and mat2 must have the same
    dtype", as torch 2.13 does for a bf16 autocast output and fp32 B; axolotl's own recipe casts the norms
    to bf16, so its x is bf16)."""
    if kernels == "none":
        return frozenset(), ()
    lins = {lin.name: lin for lin in arch.layer_linears(_dense_index(arch) if arch.dense_layers else 0)}
    names = KERNEL_PROJECTIONS
    n1 = norm_out(d, d.resid)
    x_of = {"qkv": n1, "o": d.c if d.autocast else n1, "mlp": norm_out(d, _promote(d.resid, d.c))}
    out, notes = set(), []
    for g in groups:
        why = None
        if g == "mlp" and not arch.dense_layers:
            why = "every MLP is a routed MoE block"
        elif not all(n in lins for n in names[g]):
            why = "the model fuses these projections in one linear"
        elif not all(n in targets for n in names[g]):
            why = "not all of " + ", ".join(names[g]) + " are LoRA targets"
        elif kernels == "unsloth" and any(lins[n].bias for n in names[g]):
            why = "Unsloth does not fuse projections with a base bias"
        elif d.autocast and x_of[g] != d.c:
            why = f"its input is {8 * x_of[g]}-bit under {8 * d.c}-bit autocast"
        if why:
            notes.append(f"{kernels} fused LoRA kernel for {g}: not applied ({why}); priced as peft's layers")
        else:
            out.add(g)
    return frozenset(out), tuple(notes)


def dora_saved(d: Dtypes, lin: Linear, base_out: int, xin: int, live: bool = True) -> tuple[int, int, int]:
    """What DoRA adds to one target's saved tensors: (bytes per token, fixed bytes, output dtype bytes).

    peft 0.21.2 ``tuners/lora/dora.py::DoraLinearLayer.forward`` (``variants.py::DoraLinearVariant``
    passes ``base_result = result`` when dropout is ``nn.Identity``, else ``None``):
    1. ``weight_norm`` (detached, o) of the dequantized ``W + s·B·A`` in x's dtype, and
       ``mag_norm_scale = magnitude / weight_norm`` (o): ``div`` saves ``weight_norm``, the two
       products save ``mag_norm_scale`` and ``mag_norm_scale - 1`` (o each, the scale's dtype sd =
       the adapter dtype promoted with x's): (x + 2·sd)·o fixed.
    2. ``(mag_norm_scale - 1) * base_result`` saves ``base_result`` (o per token): without dropout the
       base layer's output (its dtype ``base_out``); with dropout a second base matmul
       ``F.linear(dropout(x), W.to(x.dtype))``, which saves W when x needs a gradient (``live``; o·i:
       the compute dtype under autocast, else x's dtype; the parameter itself for an unquantized base
       already in x's dtype) and returns the compute dtype under autocast, else x's.
    3. ``mag_norm_scale * lora_result`` saves ``lora_result = lora_B(lora_A(x))`` (o, LoRA operand
       dtype lb).
    4. The bitsandbytes wrappers add the fp32 DoRA term to the base output without casting back when
       no conversion ran (autocast on CUDA: ``lora/bnb.py``), so the output is promoted to sd; the
       plain ``lora.Linear`` and the converting path cast back (``result.to(torch_result_dtype)``).
    The weight norm's inputs (the dequantized weight, ``B·A`` built from ``lora_B(lora_A(eye))``) are
    forward transients, freed when the forward returns."""
    o, i = lin.out_features, lin.in_features
    sd = _promote(d.adapter, xin)
    const = (xin + 2 * sd) * o
    if d.dropout:
        rb = d.c if d.autocast else xin
        if live and (d.quantized or d.autocast or xin != d.base_w):
            const += rb * o * i
    else:
        rb = base_out
    tok = rb * o + d.lora * o
    out = _promote(base_out, sd) if (d.quantized and not d.lora_input_cast) else base_out
    return tok, const, out


def dora_held(d: Dtypes, lin: Linear, xd: int, xin: int, base_out: int) -> int:
    """Bytes per token one DoRA target's wrapper holds through its DoRA forward that are neither saved
    yet nor in ``dora_forward_transient``. peft 0.21.2 ``tuners/lora/layer.py::Linear.forward``
    (lines 179-202) and ``variants.py::DoraLinearVariant.forward`` (lines 100-116):
    1. ``result = self.base_layer(x)``: the base output (o, ``base_out``; the bitsandbytes wrappers'
       ``result.clone()``, ``lora/bnb.py``), alive from before the weight norm until the DoRA term is
       added (``base_result = result`` is saved only after, by ``dora_saved``);
    2. ``x = self._cast_input_dtype(x, lora_A.weight.dtype)``: when that cast makes a new tensor (xin
       differs from x's dtype xd) the wrapper holds it beside the caller's x, unless lora_A saves it
       (no dropout and lora_A computing in xin; with dropout lora_A and the second base matmul read
       ``dropout(x)``)."""
    o, i = lin.out_features, lin.in_features
    cast = xin * i if (xin != xd and (d.dropout or xin != d.lora)) else 0
    return base_out * o + cast


def dora_backward_incoming(d: Dtypes, lin: Linear, xin: int, base_out: int) -> int:
    """Bytes per token the backward creates before the first DoRA node unpacks a saved tensor, beyond
    the layer output's gradient and its scaled copy (``phases.dora_forward``: 2 · resid · H), when the
    layer's last linear is this DoRA target. peft 0.21.2 ``tuners/lora/layer.py::Linear.forward``
    line 204 ``result = result.to(torch_result_dtype)`` casts the sum of the base output and the DoRA
    term (the scale's dtype sd, ``dora.py::DoraLinearLayer.forward`` line 165) back; its backward
    casts the gradient to sd (o·sd), the add hands the base output's part back in its own dtype
    (o·base_out), and ``* scaling`` copies the sd gradient (o·sd, in place of the resid-dtype copy
    counted in the phase). Nothing extra when no cast back runs (the bitsandbytes wrappers under
    autocast on CUDA, ``lora/bnb.py``) or sd is the output dtype: 0."""
    sd = _promote(d.adapter, xin)
    cast_back = not (d.quantized and not d.lora_input_cast)
    if not cast_back or sd == base_out:
        return 0
    return (2 * sd + base_out - d.resid) * lin.out_features


def dora_forward_transient(d: Dtypes, lin: Linear, xd: int, xin: int) -> tuple[int, int, int]:
    """The bytes one DoRA target's forward holds beyond what it saves, at its busiest moment:
    (per token, fixed, norm): fixed + max(norm, T · per token) at T tokens. peft 0.21.2 ``tuners/lora/dora.py::DoraLinearLayer.forward``; every local
    lives until the forward returns:
    1. ``get_lora_weight``: ``lora_B(lora_A(eye(i)))``: lora_A saves its input for A's gradient (the
       i×i identity; its compute-dtype copy under autocast), alive while ``lora_weight`` is; then
       ``lora_weight.to(x.dtype)`` (o·i in x's dtype);
    2. ``dequantize_module_weight(base_layer).to(x.dtype)``: the base weight in x's dtype (o·i; the
       parameter itself for an unquantized base already in that dtype);
    3. ``get_weight_norm``: ``scaling * lora_weight`` and ``weight + that`` (2·o·i, x's dtype), freed
       with the norm; or, later, the output arithmetic: ``(scale - 1) * base_result``,
       ``scale * lora_result`` and its ``* scaling`` (3·sd·o per token, sd = the scale's dtype), beside
       the base layer's cloned output (x's dtype·o per token) when dropout made ``base_result`` a
       second matmul (else the clone is ``base_result``, already saved)."""
    o, i = lin.out_features, lin.in_features
    sd = _promote(d.adapter, xin)
    eye = (d.c if d.autocast else d.adapter) * i * i
    weight = xin * o * i if (d.quantized or xin != d.base_w) else 0
    fixed = eye + xin * o * i + weight
    return 3 * sd * o + (xd * o if d.dropout else 0), fixed, 2 * xin * o * i


def dora_forward_moments(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], attn: str,
                         moe: bool, layer: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Each DoRA target's forward moment in one layer: (saved per token, per token·s and fixed bytes
    of the layer before that target, then its ``dora_forward_transient``: per token, fixed, norm, then
    its ``dora_held`` per token)."""
    w = _Walk(d, rank, targets)
    lins, sig = _layer_lins(arch, moe, layer)
    _layer_walk(w, arch, lins, attn, True, sig)
    return tuple(w.dora)


def dora_incoming(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], attn: str, moe: bool,
                  layer: int | None = None) -> int:
    """``dora_backward_incoming`` of the last layer's last linear when it is a DoRA target (the
    gradient reaches it first), else 0."""
    w = _Walk(d, rank, targets)
    lins, sig = _layer_lins(arch, moe, layer)
    _layer_walk(w, arch, lins, attn, True, sig)
    last = list(lins)[-1] if lins else None
    return w.dora_in if last in targets else 0


def layer_saved(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], attn: str, moe: bool,
                live_in: bool = True, kernels: str = "none", fused: frozenset[str] = frozenset(),
                layer: int | None = None) -> tuple[int, int, int]:
    """Bytes autograd holds for one decoder layer, excluding the layer's input tensor itself.

    Returns (per token, per token·s, fixed). ``live_in``: whether the layer input needs a gradient
    (False for layer 0 without checkpointing: peft enables input gradients only with checkpointing,
    so nothing before the first LoRA module is saved). A MoE layer's autocast copies of its fp32
    experts are priced by the caller (they depend on how many experts the batch touches).
    The walk: ``_attention_saved`` (steps 1-5), the residual add and pre-MLP norm (step 6), then
    ``_mlp_saved`` or ``_moe_saved`` (step 7) and Gemma's post-feedforward norm. ``fused``: the groups
    a fused LoRA kernel of ``kernels`` runs (``fused_groups``), priced by ``_Walk.fused_group`` and
    ``fused_mlp_saved`` instead.
    """
    w = _Walk(d, rank, targets, kernels, fused if not moe else fused - {"mlp"})
    lins, sig = _layer_lins(arch, moe, layer)
    _layer_walk(w, arch, lins, attn, live_in, sig)
    return w.tok, w.quad, w.const


def autocast_cache_bytes(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], attn: str, moe: bool,
                         kernels: str = "none", fused: frozenset[str] = frozenset(), layer: int | None = None) -> int:
    """Bytes of the 16-bit copies autocast caches of one decoder layer's fp32 LoRA weights.

    torch 2.13 ``aten/src/ATen/autocast_mode.cpp`` ``cached_cast``: a cast to the autocast dtype of an
    fp32 leaf that requires a gradient is kept in a thread-local cache, cleared only when the outermost
    autocast region exits (``torch.autocast.__exit__``, ``clear_cache``). accelerate wraps the model's
    forward in that region and the HF models compute the loss inside their forward, so the copies of
    every layer's A and B, c·r·(in + out) each, stay alive until the loss is computed. Without
    checkpointing the layer's graph saves the same copies (``layer_saved``'s fixed bytes); with it, the
    checkpointed forward saves nothing, and the cache is what holds them. None when the adapters are
    already in the compute dtype (nothing is cast) or there is no autocast."""
    w = _Walk(d, rank, targets, kernels, fused if not moe else fused - {"mlp"})
    lins, sig = _layer_lins(arch, moe, layer)
    _layer_walk(w, arch, lins, attn, True, sig)
    return w.cache


def trl_mlp_node(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], attn: str, live_in: bool = True,
                 kernels: str = "none", fused: frozenset[str] = frozenset(), layer: int | None = None) -> int:
    """Bytes per token TRL 1.16's ``OffloadActivations`` holds restored on the device at a dense layer's
    busiest backward moment without checkpointing: the saved tensors of the autograd node running
    (``act(gate) * up``: its two factors, g·I each) and of the node unpacked before it (down_proj's
    dropout mask, or its lora_A's input copy). TRL keeps a node's restored tensors in
    ``bwd_tensor_stash`` until the next unpacking node's hook has run (``activation_offloading.py``
    L425-428, L514-522), so at most two nodes' tensors are back at once. 0 for a MoE layer or a fused
    MLP kernel (not derived; the caller keeps the whole layer's saved set, an upper bound)."""
    if "mlp" in fused:
        return 0
    w = _Walk(d, rank, targets, kernels, fused)
    lins, sig = _layer_lins(arch, False, layer)
    _layer_walk(w, arch, lins, attn, live_in, sig)
    return w.mlp_node


def _layer_lins(arch: Arch, moe: bool, layer: int | None) -> tuple[dict[str, Linear], tuple[str, str]]:
    """The linears of a representative decoder layer, by name, and its (mixer, feed-forward) signature:
    layer ``layer`` when given, else the first MoE (``moe``) or dense-MLP layer."""
    if layer is None:
        layer = arch.moe_layers[0] if moe else _dense_index(arch)
    return {lin.name: lin for lin in arch.layer_linears(layer)}, arch.signature(layer)


def _layer_walk(w: _Walk, arch: Arch, lins: dict[str, Linear], attn: str, live_in: bool,
                sig: tuple[str, str]) -> None:
    """One decoder layer: its token mixer (``_attention_saved``, or the kind's walk in
    ``vramplan.analytic.mixers``), then its feed-forward block unless it has none."""
    d = w.d
    mixer, ffn = sig
    moe = ffn == "moe"
    if mixer == ATTENTION:
        od, lo = _attention_saved(w, arch, lins, attn, live_in)
    else:
        from vramplan.analytic.mixers import WALKS
        od, lo = WALKS[mixer](w, arch, lins, attn, live_in)
    if ffn == "none":
        return
    if arch.family.parallel_block and not moe:
        # the MLP reads the attention's normalized input h (Cohere 2); the residual adds save nothing.
        # A LoRA input that is h itself was saved by q/k/v's group (``_Walk.shared``) when that saved it.
        _mlp_saved(w, arch, lins, norm_out(d, d.resid), live_in, x_saved=w.shared)
        return
    # 6. h1 = x + attn (dtype promotes); the pre-MLP norm saves fp32 h1 (h1 itself when fp32) + rsqrt.
    #    Post-norm layers (``Family.post_norms``, OLMo 2) feed h1 to the MLP as it is.
    live = live_in or lo
    post = arch.family.post_norms
    if mixer in PRENORMED:  # the feed-forward block alone: the mixer walk priced its one pre-norm
        n2 = od
    else:
        hd1 = _promote(d.resid, od)
        if not post:
            w.norm(arch.hidden_size, 1, live, hd1)
        n2 = hd1 if post else norm_out(d, hd1)
    # 7. MLP.
    if moe:
        _moe_saved(w, arch, lins, n2, live)
        md = n2
    else:
        md = _mlp_saved(w, arch, lins, n2, live)
        w.tok += residual_dropout_saved(arch)  # the MLP output needs a gradient (its down_proj is live)
    if arch.norms_per_layer == 4 or post:  # Gemma / OLMo 2 post_feedforward_layernorm
        w.norm(arch.hidden_size, xd=md)


#: Token-mixer kinds whose walk is the layer's one pre-norm, read by its feed-forward block directly.
PRENORMED = frozenset({IDENTITY})


def eager_softmax_backward(arch: Arch, d: Dtypes, rank: int, targets: frozenset[str], moe: bool,
                           live_in: bool = True, kernels: str = "none", fused: frozenset[str] = frozenset(),
                           layer: int | None = None) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
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
    Zero triples when the layer's attention saves nothing (a frozen layer of a frozen input).
    ``kernels`` / ``fused``: fused LoRA kernels on q/k/v (``layer_saved``) change what is saved before
    the scores, not the scores' own tensors."""
    w = _Walk(d, rank, targets, kernels, fused if not moe else fused - {"mlp"})
    lins, sig = _layer_lins(arch, moe, layer)
    if sig[0] != ATTENTION:
        return (0, 0, 0), (0, 0, 0), 0
    _attention_saved(w, arch, lins, "eager", live_in)
    if w.core is None:
        return (0, 0, 0), (0, 0, 0), 0
    tok, quad, const, v_grad, ad = w.core
    nh = arch.num_heads
    if arch.family.attention_sinks:
        return (tok, quad, const), *sink_softmax_backward(arch, d, v_grad, ad)
    half = d.cuda and d.fp16 and not d.autocast and ad == 2
    grad_in = 2 if half else 4
    grads = (_promote(d.resid, d.c) * arch.hidden_size + v_grad, (4 + grad_in) * nh, 0)
    return (tok, quad, const), grads, (4 * nh if d.cuda else 0)


def eager_mask_bytes(d: Dtypes) -> int:
    """Eager attention's additive causal mask per token·s: b × 1 × s × s in the embedding output's
    dtype (transformers 5.24 ``masking_utils.eager_mask``, ``dtype=inputs_embeds.dtype``), built once
    per forward and passed to every layer. Gradient checkpointing keeps it (an argument of every
    checkpointed layer) until layer 0's backward; without checkpointing no op saves it. One per mask
    kind the model builds: a model mixing full and sliding-window layers builds both
    (``create_causal_mask`` and ``create_sliding_window_causal_mask``; the caller multiplies). A collator's
    own 4D mask (``BatchLayout.PACKED_MASK``) replaces it (``masking_utils`` passes a 4D mask through)."""
    return d.resid0


def l2_qk_norm_saved(arch: Arch, lq: bool, lk: bool) -> int:
    """Bytes per token Llama 4's weightless L2 q/k norm saves (transformers 5.24
    ``models/llama4/modeling_llama4.py`` ``Llama4TextL2Norm.forward``: ``self._norm(x.float()).type_as(x)``):
    the fp32 copy of q (k) that ``pow`` and the product save, 4·heads·head_dim, and one fp32 ``rsqrt``
    per head, 4·heads; no weight, so nothing more under full fine-tuning."""
    hd = arch.head_dim
    return (4 * hd * arch.num_heads + 4 * arch.num_heads if lq else 0) + \
        (4 * hd * arch.num_kv_heads + 4 * arch.num_kv_heads if lk else 0)


#: Bytes per token·s of the boolean (b, 1, s, s) causal mask GLM-5's model always builds for sdpa
#: (``GlmMoeDsaModel.forward``: ``create_causal_mask(..., allow_is_causal_skip=False)``, the indexer reads
#: it); like eager's mask, checkpointing keeps it as every layer's argument until layer 0's backward.
DSA_CAUSAL_MASK_BYTES = 1


def _attention_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], attn: str, live: bool,
                     l2_qk: bool = False) -> tuple[int, bool]:
    """Steps 1-5 of ``layer_saved``: input norm, q/k/v, q/k norms, RoPE and the attention core, then
    o_proj (and Gemma's post-attention norm). Returns (o_proj output dtype, whether it needs a gradient).
    ``l2_qk``: Llama 4's weightless L2 q/k norm after RoPE (``l2_qk_norm_saved``)."""
    d, targets = w.d, w.targets
    H, nh, nkv, hd = arch.hidden_size, arch.num_heads, arch.num_kv_heads, arch.head_dim
    q, kv = nh * hd, nkv * hd
    # 1. input_layernorm on the residual x (bytes resid): fp32 x + rsqrt. When x is fp32 it is the
    #    tensor itself; the caller counts x (checkpoint or layer input), so only the rsqrt is new here.
    post = arch.family.post_norms
    if live and not post and arch.family.layer_norm:
        w.tok += layer_norm_saved(H)
    elif live and not post:  # Liger: the input itself (counted by the caller) + the fp32 rstd
        w.tok += 4 + (4 * H if (d.resid != 4 and not d.liger_norm) else 0)
        if d.full and not d.liger_norm:  # the trainable weight's product saves x normalised, in x's dtype
            w.tok += (4 if d.norm_keeps_dtype else d.resid) * H
    n1 = d.resid if post else norm_out(d, d.resid)
    # post-norm layers (OLMo 2) project the layer input itself: a LoRA input that is x is the checkpoint
    # (gradient checkpointing) or the fp32 residual the phases count without it (``phases.batch``: inp)
    x_in_saved = post and (d.gc or (live and (d.resid == 4 or d.liger_norm)))
    # 2. q/k/v projections (fused qkv_proj on Phi-3) read the normalised x.
    if "qkv" in w.fused:
        qd = w.fused_group((lins["q_proj"], lins["k_proj"], lins["v_proj"]), n1, False, live)
        lq = lk = lv = True
    elif "qkv_proj" in lins:
        qd, lq = w.linears((lins["qkv_proj"],), n1, x_in_saved, live)
        lk = lv = lq
    else:
        qd, lq = w.linears((lins["q_proj"], lins["k_proj"], lins["v_proj"]), n1, x_in_saved, live)
        # per-projection liveness (a frozen, non-target projection of a frozen input needs no grad)
        lk = live or d.full or "k_proj" in targets
        lv = live or d.full or "v_proj" in targets
        lq = live or d.full or "q_proj" in targets
    qd_raw = qd  # q_proj's output dtype (a gated attention's gate)
    # 3. per-head q/k RMSNorm (Qwen3, Gemma 3): fp32 q and k + one rsqrt per head; MiniMax-M2 normalises
    #    the whole projection (``Family.qk_norm_full``): one rsqrt per token each.
    if arch.qk_norm and arch.family.qk_norm_full:
        w.norm(q, 1, lq, qd)
        w.norm(kv, 1, lk, qd)
        qd = norm_out(d, qd)
    elif arch.qk_norm:
        w.norm(hd, nh, lq, qd)
        w.norm(hd, nkv, lk, qd)
        qd = norm_out(d, qd)
    if l2_qk:  # output ``.type_as(x)``: q keeps its dtype
        w.tok += l2_qk_norm_saved(arch, lq, lk)
    # 4. RoPE saves cos/sin only (shared by all layers, b·s·head_dim: negligible).
    # 5. attention core: saves only if q, k or v needs a gradient.
    la = lq or lk or lv
    if attn == "eager" and arch.family.attention_sinks:
        ad = d.c if d.autocast else qd
        if la:
            tok, quad, probs = sink_softmax_saved(d, ad, qd, q, nh)
            w.tok += tok
            w.quad += quad
            sd = sink_scores_dtype(d, ad)
            # the softmax backward runs in the scores' dtype over s + 1 columns (``sink_softmax_backward``)
            w.core = (w.tok - ad * q, w.quad - probs, w.const, qd * q, sd)
        x_o_saved = False
    elif attn == "eager":
        ad = d.c if d.autocast else qd
        if la:
            # q, repeat_kv(k), repeat_kv(v) as the matmuls save them (cast copies under autocast).
            w.tok += ad * (q + q + q)
            # softmax(dtype=fp32) saves its fp32 output; the matmul with v saves the probabilities
            # in its operand dtype (a second copy unless everything is fp32).
            probs = ad * nh if (ad != 4 or qd != 4) else 0
            if arch.family.attention_dropout(arch.config) > 0:
                # attention dropout (``Family.attention_dropout_key``): dropout of the probabilities saves
                # its bool mask (CUDA ``native_dropout``, 1 B) and the matmul with V saves the dropped
                # copy (a new tensor even when everything is fp32)
                probs = ad * nh
                w.quad += nh
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
    o_in = ad
    if arch.family.attn_output_gate and la:
        # gated attention (``Qwen3NextAttention.forward``): ``attn_output * torch.sigmoid(gate)``, gate the
        # second half of q_proj's output: sigmoid saves its output (gd · q) while the gate needs a gradient,
        # the product saves the attention output (``attn_output.reshape(...).contiguous()``, a copy of the
        # kernel's output in the trace: ad · q) and o_proj reads the new product (the two dtypes promoted).
        # When q_proj's output is already fp32, q_norm's ``x.float()`` is the query view itself, so the
        # norm keeps the whole query-and-gate output alive (gd · q more than its fp32 copy of the query)
        gd = qd_raw
        if lq:
            w.tok += gd * q + ad * q + (gd * q if (arch.qk_norm and gd == 4 and not d.liger_norm) else 0)
        o_in, x_o_saved = _promote(ad, gd), False
    if "o" in w.fused:
        od, lo = w.fused_group((lins["o_proj"],), o_in, x_o_saved, la), True
    else:
        od, lo = w.linears((lins["o_proj"],), o_in, x_o_saved, la)
    if lo:
        w.tok += residual_dropout_saved(arch)
    if arch.norms_per_layer == 4 or post:  # Gemma / OLMo 2 post_attention_layernorm on the attention output
        w.norm(H, 1, lo, od)
        od = norm_out(d, od)
    return od, lo


def sink_softmax_backward(arch: Arch, d: Dtypes, v_grad: int, sd: int) -> tuple[tuple[int, int, int], int]:
    """Eager attention with sinks at its softmax backward: (gradient bytes per token / per token·s / 0,
    CUDA temporary per token·s), beside the saved probabilities (sd over s + 1 columns). Backward meets
    ``matmul(probs, V)`` first (its operand and V's copy released, V's gradient left), then the slice
    ``probs[..., :-1]``, whose backward writes the gradient into zeros of all s + 1 columns (sd), then
    ``_softmax_backward_data`` in sd (no fp32 upcast: the forward softmax ran in the scores' dtype)
    making the input gradient (sd, s + 1 columns) and, on CUDA, its ``grad * output`` temporary (sd).
    Per token besides: the layer output's gradient and V's (as ``eager_softmax_backward``)."""
    nh = arch.num_heads
    tmp = sd * nh if d.cuda else 0
    grads = (_promote(d.resid, d.c) * arch.hidden_size + v_grad + 2 * sd * nh + tmp, 2 * sd * nh, 0)
    return grads, tmp


def sink_scores_dtype(d: Dtypes, ad: int) -> int:
    """Bytes per element of gpt-oss's combined scores: the matmul's output (ad) promoted by the eager
    mask (``masking_utils.eager_mask``, ``dtype=inputs_embeds.dtype``: resid0) and by ``torch.cat`` with
    the sinks parameter (the experts' group dtype ``other_w``: fp32 after ``prepare_model_for_kbit_training``,
    which TRL's and axolotl's casts leave fp32)."""
    return _promote(_promote(ad, d.resid0), d.other_w)


def sink_softmax_saved(d: Dtypes, ad: int, qd: int, q: int, nh: int) -> tuple[int, int, int]:
    """Eager attention with learned sinks (``Family.attention_sinks``): (per token, per token·s, the part
    of the per token·s bytes that the probabilities' matmul operand adds). transformers 5.24
    ``models/gpt_oss/modeling_gpt_oss.py::eager_attention_forward`` L230-255, what each op saves (torch
    ``derivatives.yaml``):
    1. ``matmul(query, repeat_kv(key).T)`` and ``matmul(probs, repeat_kv(value))``: q and the repeated k
       and v in the matmul dtype ad (cast copies under autocast): 3·ad·q per token, as plain eager;
    2. ``* scaling``, ``+ attention_mask``, ``cat([scores, sinks])``: nothing; the mask (eager's, in the
       embedding output's dtype resid0) and the sinks (a parameter in the experts' dtype, fp32 after the
       k-bit upcast) promote the scores to sd (``sink_scores_dtype``);
    3. ``combined.max(dim=-1)``: its int64 indices, 8·nh per token (``- max`` saves nothing);
    4. ``softmax(combined, dtype=combined.dtype)``: its output, sd over s + 1 columns (the sink's too):
       sd·nh per token·s + sd·nh per token. No fp32 upcast: the dtype is the scores' own (CUDA autocast's
       ``fp32_set_opt_dtype`` policy leaves an explicit dtype alone);
    5. ``probs[..., :-1].to(value.dtype)`` and the matmul with v: the operand m is the compute dtype
       under autocast, else v's dtype qd; when m is not sd the matmul saves that s-column copy
       (m·nh per token·s), else the slice of the saved probabilities itself (nothing new).
    Dropout is p = 0 (``attention_dropout``): the input itself."""
    sd = sink_scores_dtype(d, ad)
    m = d.c if d.autocast else qd
    probs = m * nh if m != sd else 0
    return 3 * ad * q + 8 * nh + sd * nh, sd * nh + probs, probs


def _mlp_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], n2: int, live: bool, x_saved: bool = False) -> int:
    """Dense gated MLP: gate/up (fused on Phi-3), ``act(gate) * up``, down. Returns the output dtype.
    ``x_saved``: its input is already saved as it is (a parallel block's q/k/v LoRA saved it)."""
    targets, full = w.targets, w.d.full
    I = arch.intermediate_size
    if "mlp" in w.fused:
        fused_mlp_saved(w, (lins["gate_proj"], lins["up_proj"], lins["down_proj"]), n2, live)
        return
    if "gate_proj" not in lins and "gate_up_proj" not in lins:
        return _ungated_mlp_saved(w, lins["up_proj"], lins["down_proj"], n2, live)
    if "gate_up_proj" in lins:
        gd, lg = w.linears((lins["gate_up_proj"],), n2, x_saved, live)
        lu = lg
    else:
        gd, _ = w.linears((lins["gate_proj"], lins["up_proj"]), n2, x_saved, live)
        lg = live or full or "gate_proj" in targets
        lu = live or full or "up_proj" in targets
    # act(gate) saves gate; act(gate) * up saves up (if gate needs grad) and act (if up does).
    if w.d.liger_swiglu:  # LigerSiLUMulFunction saves gate and up whenever either needs a gradient
        w.tok += liger_swiglu_saved(gd, I) if (lg or lu) else 0
    else:
        w.tok += gd * I * ((1 if lg else 0) + (1 if lg else 0) + (1 if lu else 0))
    before = w.tok
    md = w.linears((lins["down_proj"],), gd, False, lg or lu)[0]
    # the node before the product's in the backward: a trainable down_proj's matmul (its input), else a
    # LoRA down_proj's dropout (its mask) when it has one, else its lora_A (its input copy: down's saved
    # bytes less lora_B's input, lb·r); nothing when down_proj is a frozen untargeted base
    if full:
        prev = w.tok - before
    elif "down_proj" in targets:
        prev = I * (1 if w.d.cuda else gd) if (w.d.dropout and (lg or lu)) else w.tok - before - w.d.lora * w.r
    else:
        prev = 0
    w.mlp_node = gd * I * ((1 if lg else 0) + (1 if lu else 0)) + max(prev, 0)
    return md


def _ungated_mlp_saved(w: _Walk, up: Linear, down: Linear, n2: int, live: bool) -> int:
    """``down(act(up(x)))`` (Nemotron-H ``NemotronHMLP``, modeling_nemotron_h.py L640-652) with relu2
    (``activations.ReLUSquaredActivation``: ``torch.square(relu(x))``): ``relu`` saves its output
    (``threshold_backward(grad, result)``) and ``square`` its input, the same tensor, u·I; up's output
    itself is not saved. Returns the output dtype."""
    ud, lu = w.linears((up,), n2, False, live)
    lu = lu or w.d.full
    if lu:
        w.tok += ud * up.out_features
    before = w.tok
    md = w.linears((down,), ud, False, lu)[0]
    prev = w.tok - before if w.d.full else 0
    w.mlp_node = ud * up.out_features + prev
    return md


def fused_mlp_saved(w: _Walk, mlp: tuple[Linear, Linear, Linear], n2: int, live: bool) -> None:
    """The fused LoRA MLP (axolotl 0.19 ``kernels/lora.py::LoRA_MLP``, Unsloth 2026.10.9
    ``kernels/fast_lora.py::LoRA_MLP``): one autograd function for gate, up, act·up and down.
    1. its input x and (axolotl) the A/B copies of gate and up, as ``_Walk.fused_group``;
    2. the gate and up outputs, c·I each (axolotl ``save_for_backward(X, X_drop, gate, up, ...)``
       ``L425-440``; Unsloth ``save_for_backward(..., X, e, g)`` ``L448``);
    3. nothing of act(gate)·up or of the down projection's LoRA branch: the backward recomputes the
       activation in place (axolotl ``swiglu_backward``/``geglu_backward`` write h, d_gate, d_up into the
       gradient, gate and up buffers, ``kernels/swiglu.py:L150-178``; Unsloth
       ``swiglu_DWf_DW_dfg_kernel``); (axolotl) down's A/B copies, c·r·(I + H), and no dropout on
       down's input (``LoRA_MLP`` docstring)."""
    gate, up, down = mlp
    c = w.fused_group((gate, up), n2, False, live)
    w.tok += 2 * c * gate.out_features
    if w.kernels == "axolotl" and w.d.adapter != n2:
        w.const += n2 * w.r * (down.in_features + down.out_features)


def router_saved(arch: Arch, d: Dtypes) -> tuple[int, int]:
    """Bytes a MoE layer's router saves for backward while its input needs a gradient, by the family's
    router rule (``Family.router``), as (per token, fixed). E experts, k top-k, c compute bytes.

    - ``softmax`` (Mixtral / Qwen ``*TopKRouter``): the fp32 softmax output (4·E), the top-k indices
      (int64) and weights (fp32): 4·E + 12·k.
    - ``sigmoid`` (MiniMax-M2, transformers 5.24 ``modeling_minimax_m2.py`` ``MiniMaxM2TopKRouter.forward``):
      ``sigmoid(router_logits.float())`` saves its fp32 output (4·E); the top-k of the bias-corrected
      scores saves its int64 indices (``gather`` saves the same tensor), the renormalised weights fp32:
      4·E + 12·k.
    - ``sigmoid_grouped`` (GLM-4.5 ``modeling_glm4_moe.py`` ``Glm4MoeTopkRouter.forward``, DeepSeek-V3
      ``modeling_deepseek_v3.py`` ``DeepseekV3TopkRouter.forward`` L125-150): the sigmoid output in the
      logits' dtype (c under autocast, which runs the fp32 ``F.linear`` in c; else fp32); the group top-2
      (int64, 2 per group) and group top-k (int64, ``topk_group``) indices; ``masked_fill``'s bool mask (E);
      the expert ``topk`` and ``gather`` one int64 index (8·k, shared); with ``norm_topk_prob`` (the
      default) the renormalising division its fp32 denominator and the k weights (4 + 4·k):
      s·E + E + 16·n_group + 8·topk_group + 8·k (+ 4 + 4·k).
    - ``softmax`` with ``Family.router_topk_first`` (Granite MoE ``GraniteMoeTopKRouter``): top-k of the raw
      logits, softmax over those k: 12·k.
    - ``topk_sigmoid`` (Llama 4 ``Llama4Router.forward``): the top-k of the logits (int64 indices, shared
      by ``scatter_``), ``sigmoid(scores.float())``'s fp32 output (4·E) and its cast back to the logits'
      dtype (the experts' input scaling reads it: ``moe_dense_bmm_saved``): 4·E + 8·k.
    Fixed: under autocast the router's fp32 (or upcast) weight is cast to c for the matmul and saved for
    the input gradient: c·E·H."""
    fam, E, k, H = arch.family, arch.num_experts, arch.experts_per_token, arch.hidden_size
    rw = 4 if fam.router_fp32 else d.other_w
    const = d.c * E * H if (d.autocast and rw != d.c) else 0
    if fam.router == ROUTER_SIGMOID_GROUPED:
        sd = d.c if d.autocast else 4
        cfg = arch.config
        groups = int(cfg.get("n_group", fam.class_defaults.get("n_group", 1)) or 1)
        top_groups = int(cfg.get("topk_group", fam.class_defaults.get("topk_group", 1)) or 1)
        norm = 4 + 4 * k if cfg.get("norm_topk_prob", True) else 0
        return sd * E + E + 16 * groups + 8 * top_groups + 8 * k + norm, const
    if fam.router == ROUTER_TOPK_SIGMOID:
        return 4 * E + 8 * k, const
    if fam.router_topk_first:  # softmax over the k kept logits (``GraniteMoeTopKRouter``): no E-wide output
        return 12 * k, const
    return 4 * E + 12 * k, const


def moe_dense_bmm_saved(arch: Arch, d: Dtypes, n2: int) -> tuple[int, int]:
    """Bytes Llama 4's routed experts save (``Family.experts`` ``dense_bmm``): every token through every
    expert (transformers 5.24 ``models/llama4/modeling_llama4.py``: ``Llama4TextMoe.forward`` L150-158,
    ``Llama4TextExperts.forward`` L60-66), as (per token, fixed), with frozen experts (peft adapts none):
    1. ``routed_in = hidden.repeat(E, 1) * scores.transpose(0, 1).reshape(-1, 1)``: the product saves
       both factors: the repeated input (n2·E·H) and the reshaped score column (a copy, its dtype c·E);
    2. ``torch.bmm(routed_in, gate_up_proj)``: under autocast its output is c, and the weight's cast
       copy is saved for the input gradient (fixed c·E·2M·H when the experts are not c already);
       the output (c·E·2M) is kept whole by ``act(gate)`` (its gate half) and the product (its up half);
    3. ``up * act(gate)``: the act output (c·E·M);
    4. ``torch.bmm(.., down_proj)``: the down weight's cast copy (fixed c·E·M·H); its input only when
       the weight needs a gradient (never here).
    Per token: E·(n2·H + c + 3·c·M); fixed c·3·E·M·H under autocast with non-c experts."""
    E, H, M, c = arch.num_experts, arch.hidden_size, arch.moe_intermediate_size, d.c
    ed = c if d.autocast else d.other_w
    const = c * 3 * E * M * H if (d.autocast and d.other_w != c) else 0
    return E * (n2 * H + ed + 3 * ed * M), const


def _moe_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], n2: int, live: bool) -> None:
    """Sparse MoE block: router (``router_saved``), the routed experts (transformers 5's grouped_mm, or
    Llama 4's dense bmm: ``moe_dense_bmm_saved``), and a shared expert (gated or not)."""
    d, targets = w.d, w.targets
    H, E, k, M = arch.hidden_size, arch.num_experts, arch.experts_per_token, arch.moe_intermediate_size
    fam = arch.family
    # transformers 5 ``integrations/moe.py::_grouped_mm`` casts the input to the expert weights' dtype
    # (grouped_mm is not autocast-enabled), so experts compute in other_w, autocast or not
    ed = d.other_w
    if not arch.family.mlp_gated:
        _ungated_moe_saved(w, arch, lins, n2, live)
        return
    if live and arch.family.clamped_swiglu:
        tok, const = gpt_oss_moe_saved(d, n2, E, k, M, H)
        w.tok += tok
        w.const += const
    elif live:
        tok, const = router_saved(arch, d)
        w.tok += tok
        w.const += const
        if arch.family.router_fp32 and "router" in targets:
            # peft's ParamWrapper makes the router weight need a gradient: ``F.linear`` saves its input,
            # autocast's compute-dtype copy of ``hidden_states.type(float32)`` (an fp32 copy of a 16-bit
            # input without autocast)
            w.tok += (d.c if d.autocast else (4 if n2 != 4 else 0)) * H
        if fam.experts == EXPERTS_DENSE_BMM:
            tok, const = moe_dense_bmm_saved(arch, d, n2)
            w.tok += tok
            w.const += const
        else:
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
    _shared_expert_saved(w, arch, lins, n2, live)


def _shared_expert_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], n2: int, live: bool) -> None:
    """A gated MoE block's shared expert (gate/up, act·up, down; Qwen2-MoE's sigmoid gate on its output)."""
    S, fam, H = arch.shared_expert_intermediate_size, arch.family, arch.hidden_size
    if S:
        p = fam.shared_expert_module
        sd, ls = w.linears((lins[f"{p}.gate_proj"], lins[f"{p}.up_proj"]), n2, False, live)
        w.tok += 3 * sd * S if ls else 0
        w.linears((lins[f"{p}.down_proj"],), sd, False, ls)
        if fam.shared_expert_gated:
            w.linears((lins["shared_expert_gate"],), n2, True, live)
            w.tok += 4 + _promote(sd, n2) * H  # sigmoid output, shared-expert output for the product


def dense_bmm_recompute_end(arch: Arch, d: Dtypes, n2: int) -> int:
    """Bytes per token beyond a Llama 4 MoE layer's saved tensors at the end of its forward recomputed
    under gradient checkpointing (``Family.experts`` ``dense_bmm``; transformers 5.24
    ``models/llama4/modeling_llama4.py`` ``Llama4TextMoe.forward`` L150-158): the locals ``routed_in``
    (the scaled E-fold input, n2·E·H, read by the bmm's cast and freed when the forward returns) and
    ``routed_out`` (c·E·H), the block's input ``hidden_states`` (the post-attention norm's output, n2·H,
    which no op saves), the shared expert's output ``out`` (n2·H: the 4-bit down projection returns its
    input's dtype) and the routed sum added into it (c·H); and the gradient the backward made before the
    first saved tensor was unpacked: ``sum(dim=0)``'s expanded gradient, copied by ``reshape`` (c·E·H), and
    the layer output's (o·H). Checked against the trace's live tensors at the peak (shrunk Llama 4, E = 4)."""
    E, H, c = arch.num_experts, arch.hidden_size, d.c
    return n2 * E * H + 2 * c * E * H + 2 * n2 * H + c * H + _promote(d.resid, c) * H


def _ungated_moe_saved(w: _Walk, arch: Arch, lins: dict[str, Linear], n2: int, live: bool) -> None:
    """Nemotron-H's MoE block (modeling_nemotron_h.py ``NemotronHMoE`` L716-752, ``NemotronHTopkRouter``
    L755-790, ``NemotronHExperts`` under transformers 5's grouped_mm experts, ``integrations/moe.py``
    L424-530 with ``has_gate=False``):
    1. the router runs in fp32 on its fp32 weight (``_keep_in_fp32_modules_strict``): the sigmoid's
       output (4·E), the group-limited top-k's indices (int64: 2 of each group's scores, the groups
       kept, the k experts) and ``masked_fill``'s bool mask (E), ``topk_weights /= denominator``'s
       operands (4·k + 4);
    2. per (token, expert) pair: relu2's output (the relu result ``square`` and relu save, M), the
       expert output kept by the multiply with its routing weight (H), the routing weight (4), the
       sort permutation and the inverse one (int64 each): k·(ed·(M + H) + 20);
    3. the shared expert, a ``NemotronHMLP`` (up, relu2, down: ``_ungated_mlp_saved``)."""
    d, targets = w.d, w.targets
    H, E, k, M = arch.hidden_size, arch.num_experts, arch.experts_per_token, arch.moe_intermediate_size
    ed = d.other_w
    groups = max(int(arch.config.get("n_group") or 1), 1)
    kept = int(arch.config.get("topk_group") or 1)
    if live:
        w.tok += 4 * E + E + 8 * (2 * groups + kept + k) + 4 * k + 4
        w.tok += k * (ed * (M + H) + 20)
        if "experts" in targets:
            w.tok += k * ed * (H + M)
            w.const += d.other_w * E * 2 * M * H
    up = next(lin for lin in lins.values() if lin.group == "shared_expert" and lin.name.endswith("up_proj"))
    down = next(lin for lin in lins.values() if lin.group == "shared_expert" and lin.name.endswith("down_proj"))
    _ungated_mlp_saved(w, up, down, n2, live)
def gpt_oss_moe_saved(d: Dtypes, n2: int, E: int, k: int, M: int, H: int) -> tuple[int, int]:
    """What a gpt-oss MoE block saves for backward with frozen experts and router, as (bytes per token,
    fixed bytes). T tokens, S = k·T (token, expert) pairs; ed = the experts' dtype (``Dtypes.other_w``),
    ld = the router logits' dtype (the compute dtype under autocast, else the promotion of x and the
    router weight). transformers 5.24, what each op saves (torch ``derivatives.yaml``):
    1. router (``GptOssTopKRouter.forward``): ``F.linear(x, W, b)`` saves W (its bf16 autocast copy
       when W is wider, c·E·H fixed; a frozen W saves no input); ``topk`` its int64 indices (8·k per
       token); ``softmax`` over the k selected logits its output (ld·k per token);
    2. ``integrations/moe.py::grouped_mm_experts_forward`` L436-530: ``hidden[perm // k]`` and
       ``weights[perm]`` save their int64 indices, ``weighted_out[inv_perm]`` its own (3 × 8 per pair);
       the grouped matmuls of frozen experts save only the expert weight (a parameter) and the in-place
       bias adds nothing;
    3. ``GptOssExperts._apply_gate``: both clamps save their input, strided views of the one gate_up
       output (2M); ``sigmoid`` its output, ``gate * sigmoid`` the clamped gate, ``(up + 1) * glu`` both
       factors (M each): 6·M·ed per pair;
    4. ``proj_out * weights[perm]``: the down output (H·ed) and the pair's routing weight (ld).
    Per token: 8·k + ld·k + k·(24 + ed·(6M + H) + ld)."""
    ed = d.other_w
    ld = d.c if d.autocast else _promote(n2, ed)
    const = d.c * E * H if (d.autocast and ed != d.c) else 0
    return 8 * k + ld * k + k * (24 + ed * (6 * M + H) + ld), const


def gpt_oss_moe_forward_transient(arch: Arch, d: Dtypes, hd1: int) -> int:
    """Bytes per token a gpt-oss MoE block holds beyond its layer's saved tensors at its forward's
    busiest moment, ``(up + 1) * glu`` in ``GptOssExperts._apply_gate`` (transformers 5.24
    ``integrations/moe.py::grouped_mm_experts_forward`` L436-501, locals alive until it returns):
    1. the MLP input (n2·H, the post-attention norm's output), and the post-attention residual h1
       (hd1·H) when the norm saved an fp32 copy instead of h1 itself (Liger's norm saves h1 itself);
    2. per (token, expert) pair: the gathered input ``hidden[perm // k]`` (ed·H), the gathered bias
       ``gate_up_proj_bias[expert_ids_g]`` (ed·2M), the clamped up and the product being made (ed·M
       each), the sorted expert ids (int64) and ``histc``'s input (4 B);
    3. less what is saved only after this moment: the down output (ed·H), the routing weight (ld) and
       ``inv_perm`` (int64).
    Total n2·H (+ hd1·H) + k·(4·M·ed + 4 − ld). Without checkpointing this is the last layer's forward;
    with it the recomputation inside backward, while the layer output's gradients wait
    (``backward_working``). Checked against the trace's live tensors at its peak (the tiny gpt-oss of
    the family harness)."""
    H, k, M, ed = arch.hidden_size, arch.experts_per_token, arch.moe_intermediate_size, d.other_w
    n2 = norm_out(d, hd1)
    ld = d.c if d.autocast else _promote(n2, ed)
    h1 = hd1 * H if (hd1 != 4 and not d.liger_norm) else 0  # Liger's norm saves its input itself
    return n2 * H + h1 + k * (4 * M * ed + 4 - ld)


def _dense_index(arch: Arch) -> int:
    """The first dense-MLP layer with plain attention (else the first dense-MLP layer, else layer 0)."""
    dense = [i for i in range(arch.num_layers) if arch.ffn(i) == "dense"]
    return next((i for i in dense if arch.mixer(i) == ATTENTION), dense[0] if dense else 0)


def backward_working(arch: Arch, d: Dtypes, moe: bool, targets: frozenset[str],
                     rank: int, kernels: str = "none", fused: frozenset[str] = frozenset(),
                     gc: bool = True, reentrant: bool = False, layer: int | None = None) -> tuple[int, int, int, int]:
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
    (3 · H in the MLP output dtype) are alive. Checked against the trace (docs/methodology.md). With a
    Liger layer kernel on, the base branch's moment (b) counts the layer output's gradient alone
    (``liger_base_branch_hpart``).
    """
    if layer is not None and (arch.signature(layer) != (ATTENTION, "moe" if moe else "dense")):
        from vramplan.analytic.mixers import backward_working_of
        return backward_working_of(arch, d, targets, rank, layer, kernels=kernels, fused=fused, gc=gc,
                                   reentrant=reentrant)
    if "mlp" in fused and not moe:
        return fused_mlp_backward(arch, d, kernels, rank, gc, reentrant)
    H, c = arch.hidden_size, d.c
    n2 = norm_out(d, _promote(d.resid, c))
    gd = n2 if d.quantized else (c if d.autocast else d.base_w)
    if moe:
        I = arch.shared_expert_intermediate_size or arch.experts_per_token * arch.moe_intermediate_size
        down = arch.shared_expert_down
    else:
        I = arch.intermediate_size
        down = "down_proj"
    lins, sig = _layer_lins(arch, moe, layer)
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
    if moe and gc and arch.family.moe_recompute_moment and "experts" not in targets and not d.full:
        a = max(a, moe_recompute_end_bytes(arch, d, n2) + hpart)
    if moe and gc and arch.family.experts == EXPERTS_DENSE_BMM:
        a = max(a, dense_bmm_recompute_end(arch, d, n2))
    deq = c * w_down if d.quantized else 0
    if moe and arch.family.clamped_swiglu:
        # gpt-oss: the experts' forward (recomputed under checkpointing) outweighs their backward
        # (``gpt_oss_moe_forward_transient``); the recomputation runs with three H-sized gradients of the
        # layer output's dtype waiting (as ``hpart``; counted by the trace's tracker at that moment)
        o = _promote(d.resid, c)
        a = max(a, gpt_oss_moe_forward_transient(arch, d, _promote(d.resid, o)) + (3 * o * H if gc else 0))
    a_fixed = 0
    if moe and "experts" in targets:
        a_fixed = d.other_w * arch.num_experts * arch.moe_intermediate_size * H
    work = (a, a_fixed, b + liger_base_branch_hpart(d, gd, H, moe, targeted, hpart), deq)
    if moe and arch.family.moe_output_moment and arch.family.experts != EXPERTS_DENSE_BMM \
            and not arch.family.clamped_swiglu and not d.full:
        # the shared expert's down projection (``a``) runs before any routed expert's backward: no expert
        # gradient yet; the routed experts' moments follow (``moe_output_backward``)
        return (a, 0, *work[2:], *moe_output_backward(arch, d, n2, targets, rank, lins))
    return work


def moe_output_backward(arch: Arch, d: Dtypes, n2: int, targets: frozenset[str], rank: int,
                        lins: dict[str, Linear]) -> tuple[int, ...]:
    """The routed experts' backward in DeepSeek's MoE block (``Family.moe_output_moment``), as extra
    (per token, fixed) moments of ``backward_working``'s tuple. ``DeepseekV3MoE.forward`` (transformers 5.24
    ``models/deepseek_v3/modeling_deepseek_v3.py`` L215-222) adds the shared expert last: its backward (its
    saved tensors then freed) runs before the routed experts', whose input gradient it leaves accumulated
    (n2·H). Then ``integrations/moe.py::grouped_mm_experts_forward`` (L424-537) backward, k (token, expert)
    pairs per token, wd = the routed output's dtype (the experts' ed promoted with the routing weights'):
    1. ``weighted_out.view(T, k, H).sum(1)`` and ``weighted_out[inv_perm]`` (L529-535): the expanded
       gradient's copy and the index backward's zeros (k·H·wd each; CUDA scatters in place; under a
       ``TorchDispatchMode`` torch's ``index_backward`` takes the out-of-place ``index_put`` and the trace
       counts a third, never more than moment 2); the saved ``inv_perm`` (int64) is freed;
    2. ``proj_out * sample_weights_g`` (L524) backward: the gradient (k·H·wd), its product with the routing
       weight (the down output's gradient) and with the down output (reduced to the weight's gradient
       after): 3·k·H·wd, with the layer output's gradient (o·H) and the shared expert's input gradient;
    3. with LoRA-wrapped experts, the down projection's ``grouped_mm`` backward: its saved output (k·H·ed)
       and the routed gradient freed, the down output's gradient (k·H·wd), the input gradient (k·M·ed) and
       the effective weight's gradient (fixed E·M·H·ed; the gate_up one comes after the act·up backward
       has freed the block's M-wide tensors).
    Less, at every moment, the shared expert's saved bytes (``_shared_expert_saved``) and ``inv_perm``.
    Returns (moment 2 per token, 0) and, with LoRA-wrapped experts, (moment 3 per token, its fixed bytes).
    Checked against the trace's live tensors at the peak (shrunk DeepSeek-R1, 1 × 256 and 1 × 1024)."""
    H, k, M, E = arch.hidden_size, arch.experts_per_token, arch.moe_intermediate_size, arch.num_experts
    ed = d.other_w
    wd = _promote(ed, d.c if d.autocast else 4)  # the router's F.linear on fp32: autocast gives c
    o = _promote(d.resid, n2)
    w = _Walk(d, rank, targets)
    _shared_expert_saved(w, arch, lins, n2, True)
    held = o * H + (n2 * H if arch.shared_expert_intermediate_size else 0) - w.tok - 8 * k
    out = (held + 3 * k * H * wd, 0)
    if "experts" in targets:
        out += (held - k * H * ed + k * H * wd + k * M * ed, ed * E * M * H)
    return out


def moe_recompute_end_bytes(arch: Arch, d: Dtypes, xd: int) -> int:
    """Bytes per token beyond a MoE layer's saved tensors at the end of its recomputed MoE block, under
    gradient checkpointing with frozen experts (``Family.moe_recompute_moment``): the backward's first
    unpack (``weighted_out[inv_perm]``'s saved index) re-runs the layer, and the recompute stops once that
    index exists, when transformers 5.24 ``integrations/moe.py::grouped_mm_experts_forward`` (L424-533)
    still holds its locals:
    1. the block's input, ``hidden_states`` (xd·H; the pre-MLP norm's output, saved by nothing while the
       router and the experts are frozen);
    2. ``selected_hidden_states_g = hidden_states[perm // num_top_k]`` (L441), k·H in xd (grouped_mm casts
       a copy to the experts' dtype inside ``_grouped_linear`` and frees it);
    3. ``weighted_out = proj_out * sample_weights_g.unsqueeze(-1)`` (L524), k·H in the promoted dtype of
       the experts' output (other_w) and the routing weights (xd: ``GraniteMoeTopKRouter`` returns
       ``type_as(hidden_states)``);
    4. the routing bookkeeping, k per token each: ``expert_ids_g``, ``perm``, ``perm // num_top_k``,
       ``arange`` (int64, 8 B) and ``sample_weights_g`` (xd); ``inv_perm`` is the saved index (in the layer's
       saved bytes).
    The caller adds the incoming gradients (``hpart``). Counted by the trace's tracker at the peak (tiny
    granite-3.1-3b-a800m, NF4, LoRA on attention, bf16 autocast, checkpointing: the gathered input, the
    weighted output and the block input alive beside the recomputed saved set)."""
    H, k = arch.hidden_size, arch.experts_per_token
    return xd * H + k * H * xd + k * H * _promote(d.other_w, xd) + k * (4 * 8 + xd)


def liger_base_branch_hpart(d: Dtypes, gd: int, hidden: int, moe: bool, targeted: bool, hpart: int) -> int:
    """H-sized gradient bytes per token alive at ``backward_working``'s b moment (the down projection's
    base branch: dequantized weight and grad_A) when a Liger layer kernel (``liger_norm`` or
    ``liger_swiglu``) is on in a dense layer with a LoRA-targeted down projection: the layer output's
    gradient alone, gd·H, not ``hpart``'s three. peft 0.21.2 ``lora/bnb.py::Linear4bit.forward`` L548-551
    builds ``result = result + lora_B(lora_A(dropout(x))) * scaling``; autograd runs that LoRA branch
    (created last) first, so the ``* scaling`` gradient (the scaled copy) and lora_B's incoming gradient
    are released once lora_B's backward has run, before bitsandbytes 0.50.2 ``MatMul4Bit.backward``
    L384 dequantizes (``grad_A = torch.matmul(grad_output, F.dequantize_4bit(B, ...))``). What stays is
    ``grad_output``, the layer output's gradient (the residual add passes it through; with Liger's
    RMSNorm as the final norm it is the fused loss's stored gradient, written in place by
    ``LigerRMSNormFunction.backward``, liger-kernel 0.8.5 ``ops/rms_norm.py`` ``in_place=True``).
    Counted by the trace's tracker at that moment (tiny Llama-3.1-8B, NF4, plain recipe, bf16 autocast,
    checkpointing, Liger loss and kernels: dequantized down weight, grad_A, the LoRA branch's dropout
    gradient and one b·s·H gradient alive). Returns ``hpart`` unchanged with the kernels off (every
    existing estimate keeps its bytes; the same trace shows one H there too, see issue 14's notes), for
    MoE layers and when the down projection is not a target; peft's fp32 casts (``hpart`` beyond
    3·gd·H) are kept."""
    if not (d.liger_norm or d.liger_swiglu) or moe or not targeted:
        return hpart
    return hpart - 2 * gd * hidden


def fused_mlp_backward(arch: Arch, d: Dtypes, kernels: str, rank: int, gc: bool = True,
                       reentrant: bool = False) -> tuple[int, int, int, int]:
    """The busiest moments of a layer's backward around a fused LoRA MLP, as ``backward_working``'s
    (a, a_fixed, b, b_fixed): max(a·T + a_fixed, b·T + b_fixed) on top of the layer's saved tensors (x,
    gate, up, ...). T tokens; c compute bytes; I, H, r; g the incoming gradient of the MLP output (the layer
    output's, in its dtype o = max(resid, c), plus its cast to c when they differ): g = o·H (+ c·H).

    axolotl 0.19 ``kernels/lora.py``:
    R. under gradient checkpointing, the layer's recomputed forward reaching the down projection inside
       ``LoRA_MLP.forward`` (``L414``, ``matmul_lora``: ``W = dequantize(W.t(), W_quant)`` then
       ``torch.matmul(X, W)``) while g waits: the activation output ``hidden`` (c·I), the down output (c·H),
       the decoder layer's post-attention residual (o·H, a local of ``LlamaDecoderLayer.forward`` until
       its last add) and the dequantized down weight (c·I·H): c·I + c·H + o·H + g, fixed c·I·H. The
       trace's peak is here (tiny Llama / Qwen3, non-reentrant checkpointing).
    B. ``LoRA_MLP.backward`` (``L560-690``): ``matmul_lora(grad_output, down_weight.t(), ...)`` (grad_down,
       c·I, and the dequantized weight); ``swiglu_backward`` writes h, d_gate, d_up into grad_down, gate
       and up (``kernels/swiglu.py:L150-178``: nothing new); ``grad_B_up``/``grad_B_gate`` (c·r per token
       each) and the adapters' gradients (``torch.empty_like`` of the c copies: c·r·(i + o) each, fixed);
       then up's weight dequantized again while ``dX = grad_up @ W.t()`` (c·H) forms:
       c·I + c·H + 2·c·r + g, fixed c·I·H.
    D. with dropout, ``dX_drop = zeros_like(X_lora)`` (c·H) once the weights are freed: c·I + 2·c·H + 2·c·r + g.
    b = the larger of R (with checkpointing) and B, b_fixed the dequantized weight; a = D with dropout, else b.
    Reentrant checkpointing holds the recomputed layer's output through its backward (priced by the
    phase, ``StaticTerms.reentrant_out``, o·H), which does not exist yet at R: R counts o·H less.
    Unsloth 2026.10.9 ``kernels/fast_lora.py::LoRA_MLP``: R without the dequantized weight (the forward
    dequantizes into the resident scratch, ``unsloth_scratch_bytes``) is the a moment; B (``L458-600``)
    writes ``dX`` into the saved x (``torch.matmul(df, upW.t(), out=X)``) and dequantizes up's and gate's
    weight fresh (``fast_dequantize`` without the global buffer): b = c·I + 2·c·r + g, fixed c·I·H; the A/B
    copies ``gateA.to(dtype)`` ... and their gradients are fixed c·r·(i + o) each (a_fixed)."""
    H, c, I = arch.hidden_size, d.c, arch.intermediate_size
    lins = {lin.name: lin for lin in arch.layer_linears(_dense_index(arch))}
    o = _promote(d.resid, c)
    g = o * H + (c * H if o != c else 0)
    mlp = [lins[n] for n in ("gate_proj", "up_proj", "down_proj")]
    small = c * rank * sum(lin.in_features + lin.out_features for lin in mlp)  # the adapters' c gradients
    deq = c * lins["down_proj"].weight_params if d.quantized else 0
    recompute = c * I + c * H + (0 if reentrant else o * H) + g if gc else 0
    if kernels == "unsloth":
        return recompute, 2 * small, c * I + 2 * c * rank + g, deq
    b = max(recompute, c * I + c * H + 2 * c * rank + g)
    a = c * I + 2 * c * H + 2 * c * rank + g if d.dropout else b
    return a, small, b, deq


#: fp32 H-sized tensors transformers' RMSNorm backward holds at its busiest moment, beyond its incoming
#: gradient (``hidden.to(float32)``, ``pow``, ``mean``, ``rsqrt`` and ``mul`` backward in torch 2.13
#: ``derivatives.yaml``: counted by the trace's tracker on ``LlamaRMSNorm`` with bf16 and fp32 weights).
NORM_BACKWARD_FP32 = 5


def final_norm_backward_bytes(arch: Arch, d: Dtypes) -> int:
    """Bytes per token alive beyond every layer's saved tensors at the busiest moment of the final
    RMSNorm's backward: its own saved fp32 input and rsqrt (4·H + 4) and five fp32 H-sized tensors
    (``NORM_BACKWARD_FP32``); the lm_head input gradient is released by then (the axolotl trace of tiny
    Llama without checkpointing: the five fp32 b·s·H buffers and the norm's fp32 input are alive at the
    peak, no compute-dtype H-sized gradient is). With fused LoRA kernels a layer's backward needs less
    than this, so without checkpointing it can be the step's peak."""
    H = arch.hidden_size
    return 4 * H + 4 + 4 * NORM_BACKWARD_FP32 * H


def unsloth_scratch_bytes(arch: Arch, s_c: int, fused: frozenset[str], quantized: bool) -> int:
    """Unsloth 2026.10.9's resident dequantization scratch: the fused kernels' forward (and the MLP's
    down backward) dequantize each 4-bit weight into one buffer per device that only grows
    (``kernels/utils.py:L634-660`` ``_scratch``, ``matmul_lora(..., use_global_buffer=True)`` ``L1855-1890``),
    so it holds the largest fused weight in the compute dtype (s_c bytes) from the first step on. The
    bitsandbytes ctypes path (GPUs below sm_70) also keeps an fp32 absmax scratch, not priced. 0 for a
    16-bit base (``fast_dequantize`` returns the weight)."""
    if not quantized or not fused:
        return 0
    lins = {lin.name: lin for lin in arch.layer_linears(_dense_index(arch) if arch.dense_layers else 0)}
    return s_c * max(lins[n].weight_params for g in fused for n in KERNEL_PROJECTIONS[g])


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


# ----------------------------------------------------------------------- packed batch layouts
#: Bytes per token of the position ids a packed or padding-free collator adds to the batch (int64).
POSITION_ID_BYTES = 8


def packed_attention_saved(arch: Arch, d: Dtypes, attn: str, layout: str) -> tuple[int, int]:
    """Extra bytes every decoder layer saves for a packed batch layout (``Scenario.packing``).
    Returns (per token, per token·s).

    - ``packed`` under sdpa: transformers 5.24 reads the packed position ids
      (``masking_utils.find_packed_sequence_indices``) and hands sdpa a boolean (b, 1, s, s)
      block-diagonal mask, so every layer pays what a sliding-window layer pays once its mask exists
      (``sliding_sdpa_saved``): K/V repeated over the query groups and the kernel's additive copy of
      the mask in the attention dtype (torch ``attention.cpp::convert_boolean_attn_mask``, saved by
      the efficient / CPU flash kernel for backward: ``derivatives.yaml``).
    - ``packed-mask`` under sdpa: the collator's mask is already additive in the compute dtype, so
      the kernel saves it as is (no per-layer copy); K/V are still repeated (a mask is present:
      ``sdpa_attention.py::use_gqa_in_sdpa``).
    - eager: the scores are b·h·s·s per row whatever the mask; flash2 and padding-free rows attend
      per sample with no mask (varlen): nothing extra."""
    if attn != "sdpa" or layout not in ("packed", "packed-mask"):
        return 0, 0
    tok, quad = sliding_sdpa_saved(arch, d, attn)
    return (tok, quad) if layout == "packed" else (tok, 0)


def rope_table_bytes(d: Dtypes, rotary_dim: int, sets: int = 1) -> int:
    """Bytes per token of the rotary cos and sin tables when the batch carries its own position ids.

    transformers' rotary embedding (``modeling_llama.py::LlamaRotaryEmbedding.forward``) returns
    ``cos.to(x.dtype), sin.to(x.dtype)`` of shape (rows, tokens, head_dim) from the position ids' shape:
    one shared row (1 × s) without them, every token's row with a packed or padding-free collator's
    (b × s or 1 × b·s). Each layer's RoPE ``mul`` saves them (the same two tensors for every layer), and
    checkpointing keeps them as layer arguments, so they live until the backward ends:
    2 · resid0 · rotary_dim per token and rotary module (resid0 = the embedding output's dtype, x here;
    ``sets``: Gemma 3 runs one rotary module per layer type, ``Family.rotary_sets``). An unpacked run has
    the one shared row (2 · resid0 · rotary_dim · s per set: ``StaticTerms.rope_row``), a packed one a row
    per token (``layout_tok``)."""
    return sets * 2 * d.resid0 * rotary_dim


def packed_mask_bytes(d: Dtypes, attn: str, layout: str, gc: bool, kinds: int = 1) -> tuple[int, int]:
    """Bytes per token·s of a packed layout's (b, 1, s, s) mask, as (alive from the forward to the end of
    backward, alive all step with the batch).

    - ``packed`` under sdpa: transformers' boolean mask (``masking_utils.sdpa_mask``), 1 B per element;
      freed when the model's forward returns unless gradient checkpointing keeps it as every layer's
      argument (``GradientCheckpointingLayer``'s ``partial(forward, **kwargs)``) until the backward.
      One per mask kind the model builds (``kinds``: a model mixing full and sliding-window layers builds
      both, ``create_causal_mask`` and ``create_sliding_window_causal_mask``, e.g. Gemma 3, Qwen2).
    - ``packed`` under eager: the float causal-shaped mask transformers builds for eager runs packed
      or not (``masking_utils.eager_mask``): no change from the unpacked run, so nothing here.
    - ``packed-mask``: the collator's float mask in the compute dtype, c B per element, in the batch
      (llamafactory 0.9.5 ``data/collator.py::prepare_4d_attention_mask``; its int and bool
      construction temporaries live on the host, in the data loader) for the whole step.
    Its construction temporaries on the device (``packed``: the broadcast comparisons, a few bool
    b·s·s tensors at the start of the forward, when activations are still empty) are left out."""
    if layout == "packed" and attn == "sdpa":
        return (kinds if gc else 0), 0
    if layout == "packed-mask":
        return 0, d.c
    return 0, 0
