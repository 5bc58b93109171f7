"""The scenario-shape terms of the analytic engine: everything that does not depend on batch or seq.

``static_terms(arch, scenario, semantics)`` prices the weights, quantization state, adapters and
optimizer state in bytes, and the per-token / per-token·s coefficients of the activations, once per
(arch, scenario less its batch shape, semantics); ``vramplan.analytic.phases`` multiplies them out for
a batch. Each field of ``StaticTerms`` is one term or coefficient; each comes from one pure function
of ``weights``, ``adapters``, ``optimizer``, ``activations`` or ``logits``, which cite their sources.
No ``model_type`` string appears here: per-family facts come from ``arch.family`` and per-recipe
dtype policy from ``vramplan.recipes``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, NamedTuple

from vramplan.analytic import activations as act
from vramplan.analytic import adapters as ad
from vramplan.analytic import evaluation as ev
from vramplan.analytic import logits as lg
from vramplan.analytic import optimizer as opt
from vramplan.analytic import mixers as mx
from vramplan.analytic import vision as av
from vramplan.analytic import weights as wt
from vramplan.arch.mixers import ATTENTION
from vramplan.arch.spec import Arch, Linear
from vramplan.breakdown import Component
from vramplan.device import SEMANTICS
from vramplan.recipes import spec as recipe_spec
from vramplan.scenario import Attn, BatchLayout, Dtype, Hold, Loss, Offload, Quant, RopeCache, Scenario, kept_positions

#: Note added to both engines' breakdowns when ``effective_attention`` swaps sdpa for eager.
SDPA_FALLBACK_NOTE = ("{name} does not support sdpa (soft-capped attention scores, transformers' "
                      "_supports_sdpa = False): priced with eager attention, which transformers runs when no "
                      "attn_implementation is named; an explicit attn_implementation='sdpa' fails to load")

#: The losses whose Triton kernels never build the logits, priced from their drivers' allocations
#: (``logits.liger_flce_bytes``, ``cce_bytes``, ``unsloth_ce_bytes``).
NO_LOGITS = (Loss.LIGER, Loss.CCE, Loss.UNSLOTH)

#: Scenario fields that set the batch's shape; every other field is part of the cache key.
SHAPE_FIELDS = ("seq", "batch")
_KEY = attrgetter(*(f.name for f in fields(Scenario) if f.name not in SHAPE_FIELDS))
#: Attribute of an Arch instance holding its cache (key -> StaticTerms); see ``static_terms``.
_CACHE_ATTR = "_vramplan_static_terms"
_CACHE_MAX = 4096

Coef = tuple[int, int, int]
"""Saved bytes of one layer: (per token, per token·s, fixed)."""
Work = tuple[int, ...]
"""A layer backward's working set (``activations.backward_working``): (a, a_fixed, b, b_fixed), then any
further gradient moments as (per token, fixed) pairs."""


class ClassTerms(NamedTuple):
    """The decoder layers of one (mixer, feed-forward) signature (``Arch.layer_classes``)."""

    count: int
    sv: Coef
    """Saved bytes of one such layer (``activations.layer_saved``)."""
    work: Work
    """Its backward working set (``activations.backward_working``)."""
    sm: tuple[Coef, Coef, int] | None
    """Eager attention: the layer at its softmax backward (``activations.eager_softmax_backward``:
    saved bytes still alive, gradients, CUDA temporary per token·s); None for other attention or a
    mixer that is not softmax attention."""
    last: int
    """The index of the last such layer."""
    mixer: str
    ffn: str
    first: int = -1
    """The index of the first such layer (−1: not recorded)."""
    grad: int = -1
    """Bytes of the LoRA gradients of one such layer (its targets' A and B, and its fused experts' and
    router's when they are adapted); −1: not derived (full fine-tuning), the per-layer average is used."""


#: The breakdown note of each offload kind priced from its source alone (the trace cannot run its hooks).
OFFLOAD_NOTES: dict[Offload, tuple[str, ...]] = {
    Offload.CHECKPOINTS: ("offloaded checkpoints: every layer input is copied to pinned host memory (power-of-two "
                          "blocks); under LoRA layer 0's input also stays on the GPU (peft's enable_input_require_grads "
                          "makes it a leaf autograd keeps), and on CUDA each recomputed layer first copies its input "
                          "back",),
    Offload.UNSLOTH: ("analytic-only: Unsloth's offloaded checkpoints (unsloth_zoo UnslothCheckpointFunction, CUDA "
                      "streams) priced from its source: layer inputs over 2 MiB but the last layer's in pinned host "
                      "slots (fp32 stored as bf16), two GPU restore buffers (double buffering assumed: more than "
                      "512 MiB free), the 200-slot start-up pool; layer 0's input also stays on the GPU (a leaf "
                      "autograd keeps)",),
    Offload.ACTIVATIONS: ("TRL/torchtune OffloadActivations: with layer checkpointing only the layer inputs, the final "
                          "norm's and the loss's saved tensors reach its hooks (the last five stay on the GPU too, "
                          "the forward stash); without it every layer's saved tensors go to host memory but the norms' "
                          "deduplicated inputs and rsqrt and the rotary tables, and come back two backward nodes "
                          "at a time (a MoE layer or fused MLP kernel: its whole saved set, an upper bound), and "
                          "the analytic host figure omits the pinned "
                          "allocator's per-tensor power-of-two rounding (a lower bound; the trace counts it)",),
}


def effective_attention(arch: Arch, s: Scenario) -> tuple[Attn, str | None]:
    """The attention implementation transformers 5.24 actually runs, and a note when it differs.

    Gemma 2 (``modeling_gemma2.py``: ``_supports_sdpa = False``, "sdpa does not support softcapping")
    is recognised by its attention-score soft-capping, any other family without sdpa by its record
    (``Family.sdpa_refusal``: gpt-oss, ``_supports_sdpa = False`` for its learned sinks). Loading one with
    no ``attn_implementation`` (the Trainer default), ``PreTrainedModel.get_correct_attn_implementation``
    tries sdpa, catches ``_sdpa_can_dispatch``'s ValueError and falls back to eager; vramplan's default
    ``sdpa`` stands for that default request, so both engines price eager and say so. (An explicit
    ``attn_implementation="sdpa"`` raises instead: ``vramplan.hf.build.meta_model`` does the same.)"""
    if s.attn is Attn.SDPA and arch.attn_logit_softcapping:
        return Attn.EAGER, SDPA_FALLBACK_NOTE.format(name=arch.name)
    if s.attn is Attn.SDPA and arch.family.sdpa_refusal:  # the same fallback, another reason (gpt-oss sinks)
        return Attn.EAGER, SDPA_FALLBACK_NOTE.format(name=arch.name).replace(
            "soft-capped attention scores", arch.family.sdpa_refusal)
    return s.attn, None


def checkpoint_notes(arch: Arch, s: Scenario) -> tuple[str, ...]:
    """What both engines say about a checkpoint that ships MXFP4 experts (config.json
    ``quantization_config.quant_method == "mxfp4"``, gpt-oss), whose three loading paths transformers
    5.24 offers for training differ:
    (a) ``Mxfp4Config(dequantize=True)`` (the OpenAI cookbook, TRL's recipe): ``Mxfp4Dequantize``
        (``integrations/mxfp4.py``) turns blocks and scales into the parameter's own dtype, the bf16
        ``GptOssExperts`` of the modeling file: what both engines price (``--quant none``);
    (b) a ``BitsAndBytesConfig``: refused for the published checkpoint (``quantizers/auto.py``
        ``merge_quantization_configs`` raises when the checkpoint's config class differs), so it needs a
        bf16 copy, where bitsandbytes reaches the attention linears only (the router is a bare
        parameter, the experts 3-D parameters): priced so for a 4-bit ``--quant``;
    (c) MXFP4 kept (``Mxfp4Config()``, Triton and the ``kernels`` package on compute capability 7.5+):
        ``Mxfp4HfQuantizer.is_trainable`` is False, ``trainer_utils.validate_quantization_for_training``
        refuses it, and the Triton ``matmul_ogs`` experts have no backward: it does not train (the note
        gives what its experts would hold, ``weights.mxfp4_bytes``).
    Empty for every other checkpoint."""
    qc = arch.config.get("quantization_config")
    if not (isinstance(qc, dict) and qc.get("quant_method") == "mxfp4" and arch.moe_layers):
        return ()
    gib = 1 << 30
    kept = sum(t.count * t.num_experts * wt.mxfp4_bytes(t.out_features * t.in_features)
               for t in arch.expert_tensors() if t.in_features > 1)
    rs = recipe_spec(s.recipe)
    eb = rs.group_bytes("experts", s.quant is not Quant.NONE, s.dtype.nbytes)
    out = (f"{arch.name} ships MXFP4 experts ({kept / gib:.2f} GiB of blocks and scales, 4.25 bits per element); "
           f"priced as transformers 5.24 loads them for training, dequantized (Mxfp4Config(dequantize=True)) "
           f"to {arch.expert_params * eb / gib:.2f} GiB at {eb} B/param. Kept as MXFP4 (Mxfp4Config(), Triton "
           "kernels) the model does not train: Mxfp4HfQuantizer.is_trainable is False, the Trainer refuses it "
           "(validate_quantization_for_training) and the Triton matmul_ogs experts have no backward",)
    if s.quant is not Quant.NONE:
        out += ("a BitsAndBytesConfig cannot load the published MXFP4 checkpoint (transformers raises 'The model "
                "is quantized with Mxfp4Config but you are passing a BitsAndBytesConfig config'): priced for a bf16 "
                "copy of it, where bitsandbytes quantizes the attention linears only and the router and the 3-D "
                "experts stay floating point (transformers 5.24 never calls bitsandbytes' "
                "replace_parameter_4bit for 3-D parameters)",)
    if not s.full and s.targets == ("all-linear",):
        out += ("peft 0.21's all-linear reaches q/k/v/o_proj only here (the router and the fused experts are not "
                "nn.Linear, and peft has no v4 name remapping for gpt_oss); the cookbook's extra "
                "target_parameters on a few layers' experts are not priced",)
    return out


def dtypes(arch: Arch, s: Scenario, cuda: bool = True) -> act.Dtypes:
    """Byte widths implied by the recipe (``vramplan.recipes.RecipeSpec``: the k-bit preparation's fp32
    upcast and what the recipe casts back) and the family (Gemma's norms return their input's dtype,
    so its residual stream keeps the embedding's dtype). The upcast runs only for a quantized model."""
    c = s.dtype.nbytes
    rs = recipe_spec(s.recipe)
    quantized = s.quant is not Quant.NONE
    up = rs.upcasts(quantized)
    embed_w = rs.group_bytes("embeddings", quantized, c)
    norm_w = rs.group_bytes("norms", quantized, c)
    keeps = arch.family.norm_keeps_input_dtype or s.liger_rms_norm  # Liger's Y is allocated in X.dtype
    autocast = s.autocast and c == 2
    return act.Dtypes(
        c=c, autocast=autocast, resid=embed_w if keeps else (4 if up and 4 in (embed_w, norm_w) else c),
        resid0=embed_w,
        norm_w=norm_w, base_w=c, other_w=rs.group_bytes("experts", quantized, c),
        lora=c if autocast else s.adapter_dtype.nbytes, adapter=s.adapter_dtype.nbytes,
        bnb_keeps_input=s.bnb_keeps_input, quantized=quantized, dropout=s.lora_dropout > 0, full=s.full,
        norm_keeps_dtype=keeps, fp16=s.dtype is Dtype.FP16, dora=s.dora, lora_fa=s.lora_fa, cuda=cuda,
        liger_norm=s.liger_rms_norm, liger_swiglu=s.liger_swiglu, gc=s.grad_checkpointing)


@dataclass(frozen=True)
class StaticTerms:
    """Every batch-independent term and coefficient of one (arch, scenario shape, semantics)."""

    d: act.Dtypes
    """Byte widths of every saved tensor kind."""
    comps: tuple[Component, ...]
    """Static components: weights, quantization state, adapters, optimizer state, buffers."""
    static: int
    """Their sum (bytes alive in every phase)."""
    notes: tuple[str, ...]
    """Caveats for the breakdown (sdpa fallback, peft's dropout refusal on fused experts)."""
    n_train: int
    """Trainable elements (LoRA A/B, or every weight in full fine-tuning)."""
    grad_name: str
    """Component name of the gradients: ``gradients/lora`` or ``gradients/full``."""
    grad_total: int
    """Bytes of every trainable gradient."""
    grad_per_layer: int
    """Gradient bytes of one decoder layer (the layer-0 backward has all but one alive)."""
    head_grad: int
    """Full fine-tuning: lm_head's (or the tied embedding's) and the final norm's gradient, alive from
    the lm_head backward on; 0 for LoRA."""
    tied_extra: int
    """Full fine-tuning with tied embeddings: the embedding backward's second V·H gradient and the
    accumulation buffer (2·V·H, trainable dtype)."""
    opt_temp: int
    """The optimizer step's transient bytes (``optimizer.optimizer_step_temp_bytes``)."""
    paged: int
    """Paged optimizer state in CUDA managed memory (not allocated; process total only)."""
    layers: int
    """Decoder layers L."""
    hidden: int
    """Residual width H."""
    classes: tuple[ClassTerms, ...]
    """The decoder layers by (mixer, feed-forward) signature (``Arch.layer_classes``), each with its
    saved bytes and backward working set."""
    layer_class: tuple[int, ...]
    """Decoder layer i -> its index in ``classes``."""
    first_sv: Coef
    """Saved bytes of layer 0 without checkpointing (its input needs no gradient under LoRA)."""
    sw_n: int
    """Sliding-window layers that pay sdpa's mask and repeated K/V (0 when none do)."""
    sw_tok: int
    """Their extra saved bytes per token (``activations.sliding_sdpa_saved``)."""
    sw_quad: int
    """Their extra saved bytes per token·s (the additive mask)."""
    sw_layers: frozenset[int]
    """The layers that pay them."""
    window: int
    """The sliding window (tokens); the extra bytes apply once seq reaches it."""
    ckpt0: int
    """Checkpointed input of layer 0 per token (the embedding output)."""
    ckpt: int
    """Checkpointed input of a later layer per token (the residual stream)."""
    fin: int
    """Bytes per token kept for the final norm and the lm_head (fp32 input + rsqrt, LoRA on lm_head,
    full fine-tuning's saved norm output)."""
    head_copy: int
    """Autocast's bf16 copy of an fp32 lm_head weight, saved until the lm_head backward."""
    out_held: int
    """Bytes per token of the decoder's final hidden state (the final norm's output) that the base model's
    output object holds while the causal-LM forward computes the logits and the loss, where nothing saves
    that tensor for the backward (``_head_terms``); alive in the loss forward only."""
    lora_cache: int
    """Autocast's cached 16-bit copies of every layer's fp32 LoRA weights, as one forward leaves them
    (``activations.autocast_cache_bytes``): alive at the end of any forward under autocast, the
    evaluation's included."""
    fwd_cache: int
    """Under checkpointing: autocast's cached 16-bit copies of every layer's fp32 LoRA weights, alive from
    the forward to the loss (``activations.autocast_cache_bytes``); 0 without checkpointing, where the
    layers' saved bytes hold them."""
    vocab: int
    """Vocabulary V."""
    logits_bytes: int
    """Bytes per logit element (``logits.logits_dtype_bytes``)."""
    softcap: bool
    """Final-logit soft-capping (Gemma 2) keeps a tanh output."""
    legacy: bool
    """The transformers ≤ 4.44 loss (``Loss.LEGACY``)."""
    loss: Loss
    """The loss kernel (``Scenario.loss``)."""
    label_fraction: float
    """Share of positions whose logits are computed (``Scenario.label_fraction``)."""
    hidden_bytes: int
    """Bytes per element of the final hidden states (the final norm's output)."""
    head_chunk_copy: int
    """TRL's fused head: the per-chunk cast of a wider lm_head weight to the compute dtype (bytes)."""
    reentrant_out: int
    """Reentrant checkpointing: bytes per token of the recomputed layer's output, held while its
    backward runs (0 for non-reentrant or no checkpointing)."""
    held: int
    """Held logits per token (``logits.held_logits_bytes`` over one token; 0 when not held)."""
    held_forward: bool
    """``Hold.LOOP``: the previous step's logits are also alive through this forward."""
    eager_mask: int
    """Eager attention under checkpointing: the float causal mask's bytes per token·s
    (``activations.eager_mask_bytes``), alive from the forward to layer 0's backward; else 0."""
    sm_first: tuple[Coef, Coef, int] | None
    """The same for layer 0 (its input needs no gradient without checkpointing under LoRA)."""
    eval_batch: int = 0
    """``Scenario.eval_batch`` (0: no evaluation)."""
    eval_samples: int = 0
    """``Scenario.eval_samples``."""
    eval_keep: str = "none"
    """``Scenario.eval_keep`` (its value)."""
    eval_logit_bytes: int = 4
    """Bytes per logit the evaluation keeps (``evaluation.kept_logits_bytes``)."""
    eval_inter: int = 0
    """The MLP width of the eval layer moment (``evaluation.layer_bytes``)."""
    eval_dequant: int = 0
    """The dequantized 4-bit weight of the eval layer moment (CUDA, 4-bit; ``evaluation.layer_bytes``)."""
    layout_tok: int = 0
    """A packed or padding-free batch (``Scenario.packing``): bytes per token alive from the forward to
    the end of backward (the per-row RoPE cos/sin, ``activations.rope_table_bytes``)."""
    rope_row: int = 0
    """Bytes per sequence position of the one shared row of RoPE cos/sin tables an unpacked batch's
    rotary module returns (``activations.rope_table_bytes``), alive from the forward to the end of
    backward; a packed batch's rows beyond it are ``layout_tok``'s."""
    layout_quad: int = 0
    """Bytes per token·s alive from the forward to the end of backward (transformers' packed sdpa
    mask kept by checkpointing, ``activations.packed_mask_bytes``)."""
    batch_tok: int = 0
    """Bytes per token the collator adds to the batch, alive all step (int64 position ids)."""
    batch_quad: int = 0
    """Bytes per token·s the collator adds to the batch, alive all step (its 4D float mask)."""
    embed_grad: int = 0
    """``modules_to_save`` with ``embed_tokens``: the trainable copy's V·H gradient (its dtype), built
    by the embedding backward after every layer's (0 otherwise)."""
    mts_head_input: bool = False
    """``modules_to_save`` with ``lm_head``: the trainable output projection saves its input (the
    final norm's output) for its weight gradient."""
    dora_fwd: tuple[tuple[int, ...], ...] = ()
    """DoRA: each target's forward moment in the last layer (``activations.dora_forward_moments``);
    empty without DoRA."""
    norm_back: int = 0
    """Fused LoRA kernels: bytes per token over the saved layers while the final norm's backward runs
    (``activations.final_norm_backward_bytes``); 0 when that moment is not priced as its own phase."""
    offload: Offload = Offload.NONE
    """Activation offloading (``Scenario.offload``; terms in ``vramplan.analytic.offload``)."""
    dora_grad_in: int = 0
    """DoRA under checkpointing: bytes per token of the incoming gradient beyond 2 · ``ckpt`` when the
    last layer's last linear is a DoRA target whose wrapper casts its output back
    (``activations.dora_incoming``); 0 otherwise."""
    eval_gen: "ev.GenTerms | None" = None
    """A generating evaluation's coefficients (``Scenario.eval_new_tokens``; ``evaluation.GenTerms``)."""
    trl_resident: tuple[int, int, int] = (0, 0, 0)
    """TRL ``OffloadActivations`` without checkpointing: bytes per token a later decoder layer and layer 0
    keep on the device (their norms' deduplicated fp32 inputs and rsqrt, ``offload.trl_resident_bytes``),
    and the shared rotary tables' bytes per sequence position (``offload.trl_rope_resident``); zeros
    otherwise."""
    pre: tuple[int, int, int] = (0, 0, 0)
    """What the model saves outside its decoder layers, alive from the forward to the end of the
    backward (``Family.layout``: ``vramplan.analytic.mixers.MODEL_SAVED``, Gemma 4's per-layer inputs and
    rotary tables): bytes per token, per sequence position, and per token·s once seq reaches the
    sliding window; zeros for the other families."""
    kv_hold: tuple[tuple[int, int], ...] = ()
    """(layer, bytes per token) the model holds from that layer's backward to the end of the backward
    (``vramplan.analytic.mixers.MODEL_HOLD``: Gemma 4's recomputed shared keys and values under
    checkpointing); empty for the other families."""
    grad_hold: tuple[tuple[int, int, int], ...] = ()
    """(consumer, producer, bytes per token) of a gradient a later layer's backward makes for an earlier
    layer's tensor, alive from the consumer's backward to the producer's (``mixers.MODEL_GRAD_HOLD``:
    Gemma 4's kv-shared layers' key/value gradients); empty for the other families."""
    image_batch: int = 0
    """A multimodal batch's image inputs per sample, alive all step (``vision.pixel_bytes``)."""
    image_saved: int = 0
    """Bytes per sample the images leave saved from the forward to the end of the decoder's backward
    (``vision.tower_saved_bytes``)."""
    image_step: int = 0
    """Bytes per step the same (the merger's autocast weight copies)."""
    image_tok: int = 0
    """Bytes per token the placeholder scatter keeps beside layer 0's input (``vision.tower_saved_bytes``)."""
    image_quad: int = 0
    """Bytes per sample² the same (Pixtral's block-diagonal mask over the micro-batch's images)."""
    trl_node: tuple[int, int] = (0, 0)
    """TRL ``OffloadActivations`` without checkpointing: bytes per token restored on the device at the
    last layer's and layer 0's busiest backward moment (``activations.trl_mlp_node``); 0 where not
    derived (MoE, fused MLP kernels: the whole layer's saved set is used)."""

    def loss_workspace(self, batch: int, seq: int) -> int:
        """``loss_workspace`` of this batch's loss terms."""
        return loss_workspace(*self.loss_terms(batch, seq))

    def of_class(self, mixer: str, ffn: str) -> ClassTerms | None:
        """The terms of the layers with signature (mixer, ffn), None when the model has none."""
        return next((c for c in self.classes if (c.mixer, c.ffn) == (mixer, ffn)), None)

    @property
    def dense_sv(self) -> Coef:
        """Saved bytes of a plain-attention dense-MLP layer ((0, 0, 0) when there is none)."""
        c = self.of_class(ATTENTION, "dense")
        return c.sv if c else (0, 0, 0)

    @property
    def work_dense(self) -> Work:
        """Backward working set of a plain-attention dense-MLP layer ((0, 0, 0, 0) when there is none)."""
        c = self.of_class(ATTENTION, "dense")
        return c.work if c else (0, 0, 0, 0)

    def loss_terms(self, batch: int, seq: int) -> tuple[int, int, int]:
        """(loss backward, loss forward, held logits) bytes for this batch: ``logits.py``'s terms over
        T = b·s tokens (T1 = b·(s−1) shifted ones for the legacy loss), or over the kept label
        positions (``label_fraction``), by loss kernel."""
        V, ld = self.vocab, self.logits_bytes
        T, T1 = seq * batch, batch * (seq - 1)
        cap = ld * V * T if self.softcap else 0
        if self.loss is Loss.CHUNKED_HEAD:
            scored = min(kept_positions(seq, self.label_fraction), seq - 1) if self.d.cuda else seq - 1
            fwd, bwd = lg.fused_head_bytes(batch * max(scored, 1), self.hidden, ld, self.hidden_bytes,
                                           self.head_chunk_copy, self.d.cuda, V)
            return bwd, fwd, 0
        if self.loss in NO_LOGITS:
            d, H, N = self.d, self.hidden, batch * seq
            K = batch * max(min(kept_positions(seq, self.label_fraction), seq - 1), 1)
            trains = self.head_grad > 0
            if self.loss is Loss.LIGER:
                fwd, bwd = lg.liger_flce_bytes(N, H, V, self.hidden_bytes, d.resid0, d.c, d.autocast, trains,
                                               batch * kept_positions(seq, self.label_fraction))
            elif self.loss is Loss.CCE:
                fwd, bwd = lg.cce_bytes(N, K, H, V, self.hidden_bytes, d.c, d.resid0, trains)
            else:
                # _compute_dtype: the autocast dtype, else the head weight's
                fwd, bwd = lg.unsloth_ce_bytes(N, K, H, V, self.hidden_bytes, d.resid0, d.c if d.autocast else d.resid0,
                                               trains)
            return bwd, fwd, 0
        if self.loss is Loss.CHUNKED_CE:
            Tc = batch * -(-seq // lg.TORCHTUNE_CHUNKS)
            return (lg.chunked_ce_backward_bytes(V, T, Tc) + cap, lg.chunked_ce_forward_bytes(V, ld, T, Tc) + cap,
                    T * self.held)
        Tk = batch * kept_positions(seq, self.label_fraction)
        args = (V, ld, self.softcap, Tk, T1, self.legacy)
        return lg.loss_backward_bytes(*args), lg.loss_forward_bytes(*args), Tk * self.held


def loss_workspace(loss_backward: int, loss_forward: int, held: int) -> int:
    """Bytes the loss holds at its busiest moment, whichever phase the step's peak falls in: the
    larger of the loss forward and the loss backward (``logits.loss_forward_bytes`` /
    ``loss_backward_bytes``), plus the logits a loop keeps (``held_logits_bytes``). The caching
    allocator's reserve grows with it (``runtime.allocator_reserve_bytes``)."""
    return max(loss_backward, loss_forward) + held


def static_terms(arch: Arch, s: Scenario, semantics: str = "cuda") -> StaticTerms:
    """The scenario-shape terms (cached on the Arch instance, keyed by every Scenario field but the
    batch shape ``SHAPE_FIELDS``, so a new field can never be left out of the key)."""
    # The cache lives in the Arch instance's __dict__ (Arch is frozen): it dies with the instance,
    # and two Arch objects that compare equal but carry different config dicts never share entries.
    cache = arch.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = arch.__dict__[_CACHE_ATTR] = {}
    key = (semantics, _KEY(s))
    hit = cache.get(key)
    if hit is not None:
        return hit
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r} ({' or '.join(SEMANTICS)})")
    if len(cache) > _CACHE_MAX:
        cache.clear()
    out = cache[key] = _build(arch, s, dtypes(arch, s, cuda=semantics == "cuda"))
    return out


def _build(arch: Arch, s: Scenario, d: act.Dtypes) -> StaticTerms:
    attn, attn_note = effective_attention(arch, s)
    weights, unquantized = _weight_components(arch, s, d)
    train = _trainable(arch, s, d, unquantized)
    comps = weights + train.comps
    layer = _layer_terms(arch, s, d, attn.value, train.targets)
    comps = comps + _kernel_components(arch, s, d, layer.fused)
    notes = ((attn_note,) if attn_note else ()) + checkpoint_notes(arch, s) + layer.notes + loss_notes(arch, s, d) \
        + OFFLOAD_NOTES.get(s.offload, ()) + liger_layer_notes(arch, s) \
        + mx.kind_notes(arch, d, s.rank, _target_set(arch, s, train.targets)) + av.vision_notes(arch, s)
    return StaticTerms(
        d=d, comps=tuple(Component(*c) for c in comps), static=sum(c[2] for c in comps), notes=notes,
        n_train=train.n_train, grad_name="gradients/" + ("full" if s.full else "lora"),
        grad_total=train.grad_total,
        grad_per_layer=(train.grad_total - train.head_grad - train.embed_grad - train.vision_grad) // arch.num_layers,
        head_grad=train.head_grad, tied_extra=train.tied_extra,
        opt_temp=opt.optimizer_step_temp_bytes(s.optimizer, train.n_train, train.pbytes) + train.opt_temp,
        paged=train.paged, embed_grad=train.embed_grad, mts_head_input="lm_head" in s.modules_to_save,
        dora_fwd=act.dora_forward_moments(arch, d, s.rank, _target_set(arch, s, train.targets), attn.value,
                                          (arch.num_layers - 1) in set(arch.moe_layers)) if s.dora else (),
        dora_grad_in=act.dora_incoming(arch, d, s.rank, _target_set(arch, s, train.targets), attn.value,
                                       (arch.num_layers - 1) in set(arch.moe_layers)) if s.dora else 0,
        layers=arch.num_layers, hidden=arch.hidden_size, **layer.fields, **_head_terms(arch, s, d, train.targets),
        **_eval_terms(arch, s, d, layer.fields, train.targets), offload=s.offload,
        **_trl_terms(arch, s, d, attn.value, train.targets), **_image_terms(arch, s, d))


def _image_terms(arch: Arch, s: Scenario, d: act.Dtypes) -> dict:
    """``StaticTerms.image_*``: a multimodal model's images (``vramplan.analytic.vision``); none
    for a text-only model or no images (every other estimate keeps the defaults)."""
    if arch.vision is None or not s.images:
        return {}
    a = d.c if d.autocast else d.other_w  # the tower's activations: autocast's dtype, else its weights'
    per, step = av.tower_saved_bytes(arch, s, a, d.other_w, d.resid0)
    return dict(image_batch=av.pixel_bytes(arch.vision, s), image_saved=per, image_step=step,
                image_tok=arch.hidden_size * d.resid0 if av.keeps_embedding_copy(arch, s) else 0,
                image_quad=av.tower_mask_bytes(arch, s, d.other_w))


def _trl_terms(arch: Arch, s: Scenario, d: act.Dtypes, attn: str, targets: tuple[Linear, ...]) -> dict:
    """``StaticTerms.trl_resident`` / ``trl_node``: only for TRL's activation offloading without
    checkpointing (every other scenario keeps the defaults, so its estimate is unchanged)."""
    if s.offload is not Offload.ACTIVATIONS or s.grad_checkpointing:
        return {}
    from vramplan.analytic import offload as off

    L, H, npl = arch.num_layers, arch.hidden_size, arch.family.norms_per_layer
    live0 = s.full or "embed_tokens" in s.modules_to_save  # as ``first_sv`` (layer 0's input needs a gradient)
    tset = _target_set(arch, s, targets)
    moe = set(arch.moe_layers)
    unpacked = s.packing is BatchLayout.NONE  # packed layouts price the rope tables in ``layout_tok``
    rope = off.trl_rope_resident(act.rope_table_bytes(d, wt.rotary_dim(arch.head_dim, arch.config),
                                                      arch.family.rotary_sets(arch.config, L))) if unpacked else 0
    fused, _ = act.fused_groups(arch, d, s.lora_kernels.value, s.kernel_groups, tset)
    kw = dict(kernels=s.lora_kernels.value, fused=fused)
    node = act.trl_mlp_node(arch, d, s.rank, tset, attn, **kw)
    node0 = act.trl_mlp_node(arch, d, s.rank, tset, attn, live_in=live0, **kw)
    return dict(trl_resident=(off.trl_resident_bytes(H, npl), off.trl_resident_bytes(H, npl - (0 if live0 else 1)), rope),
                trl_node=(0 if (L - 1) in moe else node, 0 if 0 in moe else node0))


# ---------------------------------------------------------------------------------- weights
_Row = tuple[str, str, int, str]


def _weight_components(arch: Arch, s: Scenario, d: act.Dtypes) -> tuple[list[_Row], list[tuple[str, int, int]]]:
    """Frozen base linears (packed 4-bit + quant state, int8 + row scales, or floating), the model's
    buffers, and the unquantized parameter groups. Returns (rows, unquantized groups as (group,
    elements, bytes per element)); under full fine-tuning the groups are trainable ``adapter/`` rows."""
    qlins = arch.quantizable_linears()
    vlins = av.tower_quantized_linears(arch, s)  # the vision tower's, when bitsandbytes replaces them
    n_q = sum(lin.count * lin.weight_params for lin in qlins)
    rows: list[_Row] = _base_linears(qlins + vlins, s, d, n_q)
    buffers = wt.model_buffer_bytes(arch.family, arch.head_dim, arch.num_layers, arch.config)
    rows.append(("weights/buffers", "weights", buffers,
                 "rotary inv_freq / original_inv_freq (fp32) and Gemma's embed_scale, 512 B blocks"))
    bias_buf = wt.expert_bias_buffer_bytes(arch.family.score_bias, len(arch.moe_layers), arch.num_experts, s.dtype.nbytes)
    if bias_buf:
        rows.append(("weights/expert_bias", "weights", bias_buf,
                     "e_score_correction_bias buffers (E per MoE layer), 512 B blocks"))
    if s.rope_cache is not RopeCache.NONE:
        rows.append(("weights/rope_cache", "weights",
                     wt.rope_cache_bytes(s.rope_cache.value, arch.head_dim, arch.max_position_embeddings,
                                         arch.num_layers),
                     f"torchtune's fp32 RoPE table ({s.rope_cache.value}) for {arch.max_position_embeddings} positions"))
    bias = sum(lin.count * lin.out_features for lin in qlins if lin.bias)
    groups = [("embeddings", arch.embed_params, d.resid0), ("lm_head", arch.lm_head_params, d.resid0),
              ("norms", arch.norm_params, d.norm_w), ("biases", bias, d.c if d.quantized else d.base_w),
              ("router", arch.router_params, 4 if arch.family.router_fp32 else d.other_w),
              ("experts", arch.expert_params, d.other_w), ("mixers", arch.mixer_params, d.other_w),
              ("sinks", arch.sink_params, d.other_w),
              ("fp32_linears", arch.fp32_linear_params, 4 if d.quantized else d.base_w)]
    unq = [g for g in groups if g[1]]
    for nm, n, b in unq:
        if s.full:
            rows.append((f"adapter/{nm}", "adapter", n * b, f"trainable, {b} B/param"))
        else:
            rows.append((f"weights/{nm}", "weights", n * b, f"unquantized, {b} B/param"))
    if arch.vision is not None:
        rows += _vision_weights(arch, s, d, bool(vlins), unq)
    return rows, unq


def _vision_weights(arch: Arch, s: Scenario, d: act.Dtypes, quantized: bool, unq: list) -> list[_Row]:
    """The vision tower and projector beside the decoder (``vramplan.analytic.vision``): its buffers,
    and its floating parameters (every one, or all but the linear weights bitsandbytes packed, which
    ``_base_linears`` prices with the decoder's): biases of bitsandbytes layers in the compute dtype,
    the rest as the recipe leaves unquantized parameters (fp32 after a k-bit preparation's upcast).
    Trained in full (``--full --vision trained``), they join the trainable groups ``unq``."""
    v = arch.vision
    rows: list[_Row] = [("weights/vision_buffers", "weights", av.tower_buffer_bytes(v),
                         "vision tower rotary inv_freq / original_inv_freq (fp32), 512 B blocks")]
    if quantized:
        rows.append(("weights/vision_biases", "weights", v.bias_params * d.c, f"bitsandbytes layers' biases, {d.c} B/param"))
        rows.append(("weights/vision", "weights", v.other_params * d.other_w,
                     f"vision tower norms, patch embedding, position table: {d.other_w} B/param"))
        return rows
    n = v.total_params
    if s.full and av.tower_trains(arch, s):
        unq.append(("vision", n, d.base_w))
        rows.append(("adapter/vision", "adapter", n * d.base_w, f"vision tower trained, {d.base_w} B/param"))
    else:
        b = d.base_w if s.full else d.other_w
        rows.append(("weights/vision", "weights", n * b, f"vision tower and projector, frozen, {b} B/param"))
    return rows


def _base_linears(qlins: tuple[Linear, ...], s: Scenario, d: act.Dtypes, n_q: int) -> list[_Row]:
    if s.quantized_4bit:
        packed = sum(lin.count * wt.packed_4bit_bytes(lin.weight_params) for lin in qlins)
        qs = sum(lin.count * wt.quant_state_4bit_bytes(lin.weight_params, s.blocksize, s.double_quant)
                 for lin in qlins) + wt.nested_code_bytes(sum(lin.count for lin in qlins), s.double_quant)
        return [("weights/" + s.quant.value, "weights", packed, "packed 4-bit linears: ceil(n/2) B"),
                ("quant_state/absmax", "quant_state", qs, "absmax per block" + (" (double-quantized)" if
                 s.double_quant else "") + " + code tables (per weight)")]
    if s.quant is Quant.INT8:
        w8 = sum(lin.count * wt.int8_weight_bytes(lin.in_features, lin.out_features)[0] for lin in qlins)
        sc = sum(lin.count * wt.int8_weight_bytes(lin.in_features, lin.out_features)[1] for lin in qlins)
        return [("weights/int8", "weights", w8, "LLM.int8 weights: 1 B/param"),
                ("quant_state/row_scales", "quant_state", sc, "fp32 scale per output row")]
    name = "adapter/full_weights" if s.full else "weights/linears"
    return [(name, "adapter" if s.full else "weights", wt.float_bytes(n_q, d.base_w),
             f"linear weights, {d.base_w} B/param")]


# ------------------------------------------------------------------------------- trainable
@dataclass(frozen=True)
class _Trainable:
    comps: list[_Row]
    targets: tuple[Linear, ...]
    n_train: int
    pbytes: int
    grad_total: int
    head_grad: int
    tied_extra: int
    paged: int
    embed_grad: int = 0
    opt_temp: int = 0
    vision_grad: int = 0


def _trainable(arch: Arch, s: Scenario, d: act.Dtypes, unq: list[tuple[str, int, int]]) -> _Trainable:
    """LoRA adapters (or every weight, full), their optimizer state, and their gradients' sizes."""
    rows: list[_Row] = []
    vision_grad = 0  # the tower's adapter gradients: made by the tower's backward, after every decoder layer's
    if s.full:
        targets: tuple[Linear, ...] = ()
        qlins = arch.quantizable_linears()
        sizes = [(lin.weight_params, lin.count) for lin in qlins] + [(n, 1) for _, n, _ in unq]
        n_train = sum(lin.count * lin.weight_params for lin in qlins) + sum(n for _, n, _ in unq)
        pbytes = d.base_w
    else:
        targets = ad.target_linears(arch, s.targets, s.rank)
        # LoRA on a linear that runs under torch.no_grad (``Linear.no_grad``) is a weight only: no gradient,
        # so torch's AdamW creates no state for it (``_init_group`` skips ``p.grad is None``)
        trained = tuple(t for t in targets if not t.no_grad)
        sizes = ad.lora_tensor_sizes(targets, s.rank) + ad.expert_lora_tensors(arch, s.targets, s.rank)
        n_lora = sum(n * k for n, k in sizes)
        if len(trained) < len(targets):
            sizes = ad.lora_tensor_sizes(trained, s.rank) + ad.expert_lora_tensors(arch, s.targets, s.rank)
        # ``--vision trained``: LoRA on the tower's linears too (``vision.tower_lora_targets``); with no
        # image the tower never runs, its adapters get no gradient and AdamW makes no state for them
        tower = ad.lora_tensor_sizes(av.tower_lora_targets(arch, s), s.rank)
        tower_n = sum(n * k for n, k in tower)
        ran = ad.lora_tensor_sizes(av.tower_image_targets(arch, s), s.rank)  # those the images run
        sizes += ran if s.images else []
        vision_grad = sum(n * k for n, k in ran) * s.adapter_dtype.nbytes if s.images else 0
        n_lora += tower_n
        pbytes = s.adapter_dtype.nbytes
        if s.lora_fa:  # only B is trained: no A gradient, no A state; A is a frozen weight
            sizes = ad.lora_fa_trainable_sizes(trained, s.rank) + ad.expert_lora_tensors(arch, s.targets, s.rank)
            n_b = sum(n * k for n, k in sizes)
            rows.append(("weights/lora_A_frozen", "weights", (n_lora - n_b) * pbytes,
                         f"LoRA-FA: lora_A frozen, {s.adapter_dtype.value}"))
            n_lora = n_b
        rows.append(("adapter/lora", "adapter", n_lora * pbytes,
                     f"LoRA {'B' if s.lora_fa else 'A/B'}, {len(targets)} target kinds, {s.adapter_dtype.value}"))
        if s.dora:
            mag = ad.dora_magnitude_sizes(targets)
            rows.append(("adapter/dora_magnitude", "adapter", sum(n * k for n, k in mag) * pbytes,
                         f"DoRA magnitude vectors (out_features per target), {s.adapter_dtype.value}"))
            sizes = sizes + mag
        n_train = sum(n * k for n, k in sizes)
    state, paged = opt.optimizer_state_bytes(s.optimizer, sizes, pbytes), 0
    if s.optimizer.paged:
        state, paged = opt.paged_split_bytes(s.optimizer, sizes)
    # modules_to_save: a trainable copy of each module in its (recipe) dtype, its gradient and state
    mts = {} if s.full else ad.modules_to_save_params(arch, s.modules_to_save)
    mts_bytes = {"embed_tokens": d.resid0, "lm_head": d.resid0}
    mts_grad = {m: n * mts_bytes[m] for m, n in mts.items()}
    for m, n in mts.items():
        rows.append((f"adapter/modules_to_save/{m}", "adapter", n * mts_bytes[m],
                     f"peft ModulesToSaveWrapper: trainable copy of {m}, {mts_bytes[m]} B/param"))
        st = opt.optimizer_state_bytes(s.optimizer, [(n, 1)], mts_bytes[m])
        if s.optimizer.paged:
            dev, man = opt.paged_split_bytes(s.optimizer, [(n, 1)])
            st, paged = dev, paged + man
        state += st
    n_train += sum(mts.values())
    if state or s.optimizer is not opt.Optim.SGD:
        rows.append((f"optimizer/{s.optimizer.value}", "optimizer", state, "optimizer state" + (
            " kept on the device (tensors < 1e5 elements, absmax)" if s.optimizer.paged else "")))
    V, H = arch.vocab_size, arch.hidden_size
    # full fine-tuning: lm_head's gradient (the embedding's, when tied) and the final norm's exist as
    # soon as the lm_head backward has run
    head_grad = (V * H + H) * pbytes if s.full else mts_grad.get("lm_head", 0)
    tied_extra = 2 * V * H * pbytes if (s.full and arch.tie_embeddings) else 0
    grad_total = (n_train - sum(mts.values())) * pbytes + sum(mts_grad.values())
    opt_temp = ad.lora_fa_step_temp_bytes(targets, s.rank, pbytes, d.c) if s.lora_fa else 0
    return _Trainable(rows, targets, n_train, pbytes, grad_total, head_grad, tied_extra, paged,
                      mts_grad.get("embed_tokens", 0), opt_temp, vision_grad)


# ------------------------------------------------------------------------------ activations
@dataclass(frozen=True)
class _LayerTerms:
    fields: dict
    notes: tuple[str, ...]
    fused: frozenset[str] = frozenset()


#: Breakdown note of a run with fused LoRA kernels, by ``Scenario.lora_kernels``.
KERNEL_NOTES = {
    "axolotl": "axolotl 0.19 fused LoRA kernels (kernels/lora.py LoRA_QKV / LoRA_O / LoRA_MLP) on {groups}: their "
               "saved tensors and backward buffers priced from the source; the trace runs the functions themselves "
               "(Triton activation through axolotl's registered fake kernels, NF4 dequantization as a same-size "
               "allocation)",
    "unsloth": "analytic-only: Unsloth 2026.10.9 fused LoRA kernels (kernels/fast_lora.py LoRA_QKV / LoRA_W / "
               "LoRA_MLP) on {groups}, priced from the source (importing Unsloth patches transformers process-wide, so "
               "the trace engine refuses it); the rest of Unsloth's forward (its RMSNorm, attention and loss kernels) is "
               "priced as transformers'",
}


def _kernel_components(arch: Arch, s: Scenario, d: act.Dtypes, fused: frozenset[str]) -> list[_Row]:
    """Unsloth's resident dequantization scratch (``activations.unsloth_scratch_bytes``)."""
    if s.lora_kernels.value != "unsloth":
        return []
    n = act.unsloth_scratch_bytes(arch, d.c, fused, d.quantized)
    return [("temporary/dequant_scratch", "temporary", n,
             "Unsloth's resident buffer for the largest dequantized 4-bit weight")] if n else []


def _layer_grad_bytes(arch: Arch, s: Scenario, targets: tuple[Linear, ...], layer: int) -> int:
    """Bytes of decoder layer ``layer``'s LoRA gradients (``ClassTerms.grad``): A and B of each target
    linear it holds that gets a gradient (``Linear.no_grad`` ones get none), plus, in a MoE layer, its
    adapted router and fused experts (``adapters.expert_lora_tensors`` per layer); −1 under full
    fine-tuning or a variant that changes the trained set (DoRA, LoRA-FA)."""
    if s.full or s.dora or s.lora_fa:
        return -1
    names = {t.name for t in targets if not t.no_grad}
    lins = tuple(lin for lin in arch.layer_linears(layer) if lin.name in names)
    n = sum(k * e for e, k in ad.lora_tensor_sizes(lins, s.rank))
    if layer in set(arch.moe_layers):
        n += sum(e for e, _ in ad.expert_lora_tensors(arch, s.targets, s.rank))
    return n * s.adapter_dtype.nbytes


def _target_set(arch: Arch, s: Scenario, targets: tuple[Linear, ...]) -> frozenset[str]:
    """The names the layer walk treats as LoRA targets (``experts`` for wrapped fused experts)."""
    parts = frozenset() if s.full else ad.expert_parts(arch, s.targets)
    return (frozenset(lin.name for lin in targets) | (frozenset({"experts"}) if parts - {"router"} else frozenset())
            | (frozenset({"router"}) if "router" in parts else frozenset()))


def _layer_terms(arch: Arch, s: Scenario, d: act.Dtypes, attn: str, targets: tuple[Linear, ...]) -> _LayerTerms:
    """Per-layer saved bytes and backward working sets, dense and MoE, and the sliding-window extras."""
    parts = frozenset() if s.full else ad.expert_parts(arch, s.targets)
    notes: tuple[str, ...] = () if s.full else ad.rank_notes(arch, targets, s.rank)
    if parts and s.lora_dropout > 0:
        notes += (f"peft 0.21 refuses lora_dropout > 0 on {arch.name}'s fused experts/router (ParamWrapper): "
                 "this run fails as configured; priced as if those wrappers had no dropout",)
    if not s.full and arch.router_linears and ("all-linear" in s.targets or "router" in s.targets):
        notes += (f"peft 0.21.2's all-linear reaches {arch.name}'s MoE router (an nn.Linear subclass returning a "
                  "tuple) and its LoRA wrapper fails in the forward: this run fails as configured; priced without "
                  "LoRA on the router (name the targets, e.g. q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)",)
    tset = _target_set(arch, s, targets)
    L = arch.num_layers
    kernels = s.lora_kernels.value
    fused, knotes = act.fused_groups(arch, d, kernels, s.kernel_groups, tset)
    notes += knotes + ((KERNEL_NOTES[kernels].format(groups=", ".join(sorted(fused))),) if fused else ())
    kw = dict(kernels=kernels, fused=fused)
    classes, layer_class = [], [0] * L
    for n, c in enumerate(arch.layer_classes()):
        moe, rep = c.ffn == "moe", c.layers[0]
        sm = _softmax_of(arch, d, s, tset, c.mixer, moe, rep, attn, kw)
        classes.append(ClassTerms(
            c.count, act.layer_saved(arch, d, s.rank, tset, attn, moe, layer=rep, **kw),
            act.backward_working(arch, d, moe, tset, s.rank, gc=s.grad_checkpointing, reentrant=s.reentrant,
                                 layer=rep, **kw), sm, c.layers[-1], c.mixer, c.ffn, c.layers[0],
            _layer_grad_bytes(arch, s, targets, rep)))
        for i in c.layers:
            layer_class[i] = n
    first = classes[layer_class[0]]
    # layer 0 without checkpointing: its input needs no gradient (peft enables input gradients only
    # for checkpointing), so nothing before the first LoRA module is saved.
    first_sv, sm_first = first.sv, first.sm
    first_moe = arch.ffn(0) == "moe"
    if not s.grad_checkpointing and not s.full and "embed_tokens" not in s.modules_to_save:
        first_sv = act.layer_saved(arch, d, s.rank, tset, attn, first_moe, live_in=False, layer=0, **kw)
    if sm_first is not None and not s.grad_checkpointing and not s.full:
        sm_first = _softmax_of(arch, d, s, tset, arch.signature(0)[0], first_moe, 0, attn, kw, live_in=False)
    sw_layers = arch.family.sliding_layers(arch.config, L)
    sw_tok, sw_quad = act.sliding_sdpa_saved(arch, d, attn) if sw_layers else (0, 0)
    window = arch.family.window(arch.config)
    layout = s.packing.value
    pk_tok, pk_quad = act.packed_attention_saved(arch, d, attn, layout)
    if pk_tok or pk_quad:  # a packed mask reaches every layer's sdpa from the first token on
        sw_layers, sw_tok, sw_quad, window = tuple(range(L)), pk_tok, pk_quad, 0
    slid = arch.family.sliding_layers(arch.config, L)
    kinds = 2 if 0 < len(slid) < L else 1  # full and sliding-window masks both built
    m_step, m_batch = act.packed_mask_bytes(d, attn, layout, s.grad_checkpointing, kinds)
    if av.sliding_image_mask(arch, s, attn) and not (pk_tok or pk_quad):
        window = 0  # images: the sliding layers' sdpa mask exists from the first token
    if pk_quad:
        notes += ("packed rows under sdpa: transformers builds a b×1×s×s block-diagonal mask from the position ids "
                  "and every layer's sdpa saves its additive copy with K/V repeated per query head; flash2 (or "
                  "axolotl's sdpa_varlen) attends per sample without it",)
    unpacked = s.packing is BatchLayout.NONE
    cache = 0 if s.full else sum(c.count * act.autocast_cache_bytes(arch, d, s.rank, tset, attn, c.ffn == "moe",
                                                                     layer=c.layers[0], **kw)
                                 for c in arch.layer_classes())
    return _LayerTerms(dict(
        layout_tok=0 if unpacked else act.rope_table_bytes(d, wt.rotary_dim(arch.head_dim, arch.config),
                                                           arch.family.rotary_sets(arch.config, L)),
        # the shared row; TRL's activation offload prices it as resident (``trl_rope_resident``), a family
        # layout's rule with the model's other tensors (``mixers.MODEL_SAVED``: Gemma 4's per-type tables)
        rope_row=0 if ((s.offload is Offload.ACTIVATIONS and not s.grad_checkpointing) or arch.family.layout) else
        act.rope_table_bytes(d, wt.rotary_dim(arch.head_dim, arch.config), arch.family.rotary_sets(arch.config, L)),
        layout_quad=m_step,
        batch_tok=0 if unpacked else act.POSITION_ID_BYTES, batch_quad=m_batch,
        classes=tuple(classes), layer_class=tuple(layer_class), first_sv=first_sv,
        sw_n=len(sw_layers) if (sw_tok or sw_quad) else 0, sw_tok=sw_tok, sw_quad=sw_quad,
        sw_layers=frozenset(sw_layers) if (sw_tok or sw_quad) else frozenset(), window=window,
        ckpt0=wt.embedding_leaf_factor(arch.family, s.grad_checkpointing, s.full or "embed_tokens" in s.modules_to_save)
        * d.resid0 * arch.hidden_size, ckpt=d.resid * arch.hidden_size,
        reentrant_out=d.resid * arch.hidden_size if (s.reentrant and s.grad_checkpointing) else 0,
        eager_mask=kinds * act.eager_mask_bytes(d) if (attn == "eager" and s.grad_checkpointing
                                               and s.packing is not BatchLayout.PACKED_MASK)
        else act.DSA_CAUSAL_MASK_BYTES if (arch.family.dsa_mask and attn == "sdpa" and s.grad_checkpointing) else 0,
        sm_first=sm_first, pre=_model_saved(arch, d, s, tset, attn), kv_hold=_model_hold(arch, d, s, tset, attn),
        grad_hold=_model_grad_hold(arch, d, s, tset, attn),
        norm_back=act.final_norm_backward_bytes(arch, d) if fused else 0,
        lora_cache=cache, fwd_cache=cache if (s.grad_checkpointing and not s.full) else 0), notes, fused)


def _softmax_of(arch: Arch, d: act.Dtypes, s: Scenario, tset: frozenset[str], kind: str, moe: bool, layer: int,
                attn: str, kw: dict[str, Any], live_in: bool = True) -> tuple | None:
    """``ClassTerms.sm`` of a layer class: eager attention's softmax backward (softmax attention's, or a
    whole-layer kind's own walk of it, ``mixers.EAGER_MOMENTS``), else the kind's own moment
    (``_kind_moment``)."""
    from vramplan.analytic.mixers import EAGER_MOMENTS
    if attn == "eager" and kind == ATTENTION:
        return act.eager_softmax_backward(arch, d, s.rank, tset, moe, live_in=live_in, layer=layer, **kw)
    if attn == "eager" and kind in EAGER_MOMENTS and s.lora_kernels.value == "none":
        return EAGER_MOMENTS[kind](arch, d, tset, s.rank, layer, live_in=live_in)
    return _kind_moment(arch, d, s, tset, kind, layer, attn) if live_in else None


def _kind_moment(arch: Arch, d: act.Dtypes, s: Scenario, tset: frozenset[str], kind: str, layer: int,
                 attn: str) -> tuple | None:
    """``ClassTerms.sm`` of a token-mixer kind with a moment of its own (``mixers.MOMENTS``), tagged with the
    kind (``phases`` names its rows by it); None for the other kinds, full fine-tuning and fused kernels."""
    from vramplan.analytic.mixers import MOMENTS
    if kind not in MOMENTS or s.full or s.lora_kernels.value != "none":
        return None
    moment = MOMENTS[kind](arch, d, tset, s.rank, layer, attn)
    return None if moment is None else (*moment, kind)


def _model_saved(arch: Arch, d: act.Dtypes, s: Scenario, tset: frozenset[str], attn: str) -> tuple[int, int, int]:
    """``StaticTerms.pre``: the family layout's saved bytes outside the decoder layers (zeros without one)."""
    from vramplan.analytic.mixers import MODEL_SAVED
    rule = MODEL_SAVED.get(arch.family.layout or "")
    return rule(arch, d, s.rank, tset, s.grad_checkpointing, attn) if rule else (0, 0, 0)


def _model_hold(arch: Arch, d: act.Dtypes, s: Scenario, tset: frozenset[str], attn: str) -> tuple[tuple[int, int], ...]:
    """``StaticTerms.kv_hold``: what the family layout holds from a layer's backward on (empty without one)."""
    from vramplan.analytic.mixers import MODEL_HOLD
    rule = MODEL_HOLD.get(arch.family.layout or "")
    return rule(arch, d, s.rank, tset, s.grad_checkpointing, attn) if rule else ()


def _model_grad_hold(arch: Arch, d: act.Dtypes, s: Scenario, tset: frozenset[str],
                     attn: str) -> tuple[tuple[int, int, int], ...]:
    """``StaticTerms.grad_hold``: gradients the family layout holds between two layers' backwards (empty
    without one; none under full fine-tuning's own rules either way)."""
    from vramplan.analytic.mixers import MODEL_GRAD_HOLD
    rule = MODEL_GRAD_HOLD.get(arch.family.layout or "")
    return rule(arch, d, s.rank, tset, s.grad_checkpointing, attn) if rule else ()


def _gen_terms(arch: Arch, s: Scenario, d: act.Dtypes, targets: tuple[Linear, ...]) -> ev.GenTerms:
    """A generating evaluation's coefficients. The model generating is peft's inner causal LM, outside
    accelerate's autocast (``evaluation.GenTerms``): every projection outputs its input's dtype (a
    bitsandbytes layer's, or the unquantized weight's), LoRA's branch runs in the adapter dtype; a full
    fine-tuning model generates through its prepared forward (autocast, ``convert_to_fp32``)."""
    nout = act.norm_out(d, d.resid)
    convert = s.full and d.autocast and d.c == 2
    proj = d.c if convert else (nout if d.quantized else d.base_w)
    kb, vb = ev.kv_cache_dtypes(proj, d.resid0, d.norm_w, arch.qk_norm)
    lora_up = not s.full and any(lin.name in ("up_proj", "gate_up_proj") for lin in targets)
    inter = arch.intermediate_size if arch.dense_layers else arch.experts_per_token * arch.moe_intermediate_size
    ld = d.c if convert else max(nout, d.resid0)
    return ev.GenTerms(
        new_tokens=s.eval_new_tokens, layers=arch.mixer_layers(ATTENTION), kv_tok=arch.kv_out * (kb + vb),
        v_tok=arch.kv_out * vb, state_seq=mx.state_bytes(arch, proj),
        layer_tok=ev.prefill_layer_bytes(arch.hidden_size, inter, arch.head_dim, d.resid0, d.resid, nout, proj,
                                         d.adapter, lora_up),
        head_seq=ev.decode_head_bytes(arch.vocab_size, ld, convert), prev_seq=4 * arch.vocab_size)


def _eval_terms(arch: Arch, s: Scenario, d: act.Dtypes, layer: dict, targets: tuple[Linear, ...]) -> dict:
    """The evaluation loop's coefficients (``vramplan.analytic.evaluation``); none without evaluation."""
    if not s.eval_batch:
        return {}
    gen = {"eval_gen": _gen_terms(arch, s, d, targets)} if s.eval_new_tokens else {}
    work = next((c.work for c in layer["classes"] if c.ffn == "dense"), layer["classes"][0].work)
    moe_width = (arch.experts_per_token * arch.moe_intermediate_size) if arch.moe_layers else 0
    return dict(eval_batch=s.eval_batch, eval_samples=s.eval_samples, eval_keep=s.eval_keep.value,
                eval_logit_bytes=ev.kept_logits_bytes(lg.logits_dtype_bytes(d.c, d.autocast, d.resid0), d.autocast,
                                                      s.loss is Loss.LEGACY),
                eval_inter=arch.intermediate_size if arch.dense_layers else moe_width,
                eval_dequant=work[3] if (s.quantized_4bit and d.cuda) else 0, **gen)


def _head_terms(arch: Arch, s: Scenario, d: act.Dtypes, targets: tuple[Linear, ...]) -> dict:
    """The final norm, lm_head and loss coefficients. lm_head follows the embedding's dtype (tied, or
    cast back by the recipe)."""
    V, H, c, head_w = arch.vocab_size, arch.hidden_size, d.c, d.resid0
    ld = lg.logits_dtype_bytes(c, d.autocast, head_w)
    # LoRA on a named lm_head: dropout mask + lora_A input (H) and lora_B input (r) per token, kept
    # until the lm_head backward (peft's LoRA forward, as for any target)
    head_lora = 0
    if any(lin.group == "lm_head" for lin in targets):
        xin = d.adapter if (not d.autocast or not d.cuda) else act.norm_out(d, d.resid)
        head_lora = (H * (1 if d.cuda else xin) if d.dropout else 0) + d.lora * (H + s.rank)
    if "lm_head" in s.modules_to_save and not s.full:
        # a trainable lm_head copy (peft ModulesToSaveWrapper) saves its input for the weight gradient:
        # the final norm's output, or its cast copy under autocast
        head_lora += (c if d.autocast else act.norm_out(d, d.resid)) * H
    legacy = s.loss is Loss.LEGACY
    fused = s.loss is Loss.CHUNKED_HEAD
    holds = s.hold_logits is not Hold.NONE and not fused and s.loss not in NO_LOGITS
    no_head_call = fused or s.loss in NO_LOGITS  # the lm_head module never runs: no autocast copy saved
    # the final hidden state, held by the base model's output (``outputs.last_hidden_state``) while the
    # causal-LM forward runs the lm_head and the loss (transformers 5.24 ``LlamaForCausalLM.forward``); a new
    # tensor unless the lm_head's own weight gradient saves that very tensor (full fine-tuning, or a trainable
    # lm_head copy reading it without a cast). The fused losses price the hidden states they keep themselves;
    # torchtune's chunked loss drops its reference once the chunks are projected (``del`` in its loss step).
    out_dt = act.norm_out(d, d.resid)
    # TRL's fused head binds the backbone's output through the head too (``_fused_forward``), and on CUDA
    # scores a copy of the label rows (``hidden_states[mask]``); the CPU path scores a view of it.
    saves_it = (s.full or ("lm_head" in s.modules_to_save and (not d.autocast or c == out_dt))
                or s.loss is Loss.CHUNKED_CE)
    held_out = (fused and d.cuda and not s.full) or not (no_head_call or saves_it)
    return dict(
        out_held=out_dt * H if held_out else 0,
        fin=(act.liger_norm_saved(d.resid, H) if d.liger_norm else
             (act.layer_norm_saved(H) if arch.family.layer_norm else 4 * H + 4) + (c * H if s.full else 0)
             # full fine-tuning: the final norm's trainable weight saves its normalised input (x's dtype)
             + ((4 if d.norm_keeps_dtype else d.resid) * H if (s.full and not arch.family.layer_norm) else 0))
        + head_lora,
        # torchtune's chunked loss projects each of its chunks with the frozen weight itself: under autocast, one
        # uncached copy per chunk, each saved by its chunk's linear
        head_copy=0 if no_head_call else lg.head_weight_copy_bytes(V, H, c, d.autocast, head_w)
        * (lg.TORCHTUNE_CHUNKS if s.loss is Loss.CHUNKED_CE else 1), vocab=V, logits_bytes=ld,
        softcap=bool(arch.final_logit_softcapping), legacy=legacy, loss=s.loss, label_fraction=s.label_fraction,
        hidden_bytes=out_dt,
        head_chunk_copy=min(V, lg.FUSED_TILE_COLS) * H * ld if (fused and head_w != ld) else 0,
        held=lg.held_logits_bytes(V, ld, 1, legacy, holds),
        held_forward=s.hold_logits is Hold.LOOP and holds)


def liger_layer_notes(arch: Arch, s: Scenario) -> tuple[str, ...]:
    """The breakdown notes of Liger's layer kernels (``Scenario.liger_rms_norm`` / ``liger_swiglu``)."""
    out: tuple[str, ...] = ()
    if s.liger_rms_norm:
        out += ("Liger's RMSNorm (Triton, liger-kernel 0.8.5): priced from what LigerRMSNormFunction saves, the "
                "norm's own input and an fp32 rstd per row, and its output in the input's dtype; the trace runs "
                "a torch stand-in saving the same tensors",)
    if s.liger_swiglu:
        moe = " (the dense MLPs only: MoE experts are priced as transformers' own)" if arch.moe_layers else ""
        out += ("Liger's SwiGLU (Triton, liger-kernel 0.8.5): priced from what LigerSiLUMulFunction saves, gate "
                "and up, and its backward, which writes their gradients into them" + moe + "; the trace runs a "
                "torch stand-in saving the same tensors",)
    return out


def loss_notes(arch: Arch, s: Scenario, d: act.Dtypes) -> tuple[str, ...]:
    """The breakdown notes of a loss whose Triton kernel the trace cannot run (``NO_LOGITS``)."""
    if s.loss not in NO_LOGITS:
        return ()
    V, H = arch.vocab_size, arch.hidden_size
    if s.loss is Loss.LIGER:
        rows = lg.liger_chunk_rows(s.batch * kept_positions(s.seq, s.label_fraction), H, V)
        out = (f"analytic-only: Liger's fused linear cross-entropy is Triton; priced from liger-kernel 0.8.5's "
               f"allocations (chunks of next_pow2(ceil(b·s / ceil(V/H))) = {rows} rows × V logits in the input "
               "dtype, the b·s × H input gradient built in the forward and kept for backward); the trace "
               "allocates the same tensors in its stead",)
        if not (s.liger_rms_norm or s.liger_swiglu):
            out += ("Liger's RMSNorm / SwiGLU kernels, on by default beside its loss, are not priced here "
                    "(transformers' modules are: set --liger-rms-norm / --liger-swiglu when they are on)",)
    elif s.loss is Loss.CCE:
        out = ("analytic-only: Cut Cross-Entropy is Triton; priced from cut-cross-entropy 25.1.1's allocations "
               "(saved for backward: the hidden states, fp32 LSE and int64 index per label row, an fp32 logit "
               "average of V; backward adds the hidden-state gradient); the trace allocates the same tensors "
               "in its stead",)
        if d.resid0 == 4:
            out += ("Cut Cross-Entropy's backward asserts a 16-bit classifier: with this recipe's fp32 lm_head the "
                    "run fails as configured (axolotl casts lm_head back to the compute dtype)",)
    else:
        K = s.batch * max(min(kept_positions(s.seq, s.label_fraction), s.seq - 1), 1)
        trains = s.full
        if lg.unsloth_flash(K, V, d.c if d.autocast else d.resid0, trains):
            path = "its tiled path (K >= 4096 label rows, V > 32768: 4096-row × 16384-column fp32 tiles of 256 MiB)"
        else:
            rows = lg.unsloth_chunk_rows(K, H, V, 4)
            path = f"its chunked path ({rows} rows × V fp32 logits per chunk)"
        out = ("analytic-only: Unsloth's fused cross-entropy is Triton; priced from unsloth_zoo 2026.10.9's "
               f"allocations, {path}; its chunk budget is min(2 GiB, half the free memory at the first call): "
               "assumed at least 4 GiB free (budget 2 GiB; less free memory only shrinks the chunks), on a card "
               "above 24.5 GiB (smaller cards take the tiled path at any row count)",)
    return out
