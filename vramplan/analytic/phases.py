"""The phases of one training step, each a function of the static terms and the batch.

Step ≥ 2, so optimizer state exists; the HF Trainer sets gradients to None after each step. The
allocated peak of the step is the largest phase; the phase's components are what ``components``
returns for it. Phases (``PHASES``, in this order):

- ``loss backward``: every checkpoint (or every saved activation) + the log-softmax backward;
- ``loss forward``: the same with the loss forward's logits copies;
- ``last layer backward``: the last layer recomputed (GC) + its backward buffers + the transient
  dequantized weight, with no LoRA gradient yet;
- ``first layer backward``: one checkpoint, layer 0 recomputed, every other gradient alive;
- ``optimizer step``: every gradient + the optimizer's temporaries;
- ``embedding backward`` (full fine-tuning, or a trainable embedding copy): every gradient + the
  tied embedding's extra ones;
- ``lm_head backward`` (a trainable lm_head copy only): the logits' gradient + lm_head's weight gradient.
- ``evaluation`` (``Scenario.eval_batch`` > 0): the HF Trainer's evaluation loop between steps, no
  gradients, its busiest moment (``vramplan.analytic.evaluation.eval_peak``). The step's reported peak
  is the larger of it and the training phases.
- ``final norm backward`` (fused LoRA kernels only, ``StaticTerms.norm_back``): every checkpoint (or every
  saved activation) + the final RMSNorm's backward buffers.

Held logits (``Scenario.hold_logits``) join every phase but the loss forward, and that one too under
``Hold.LOOP`` (the previous step's output is alive until the forward returns).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from vramplan.analytic import offload as off
from vramplan.analytic.evaluation import EvalPeak, eval_peak
from vramplan.analytic.terms import Coef, StaticTerms, Work
from vramplan.scenario import Loss, Offload, kept_positions

LOSS_BACKWARD = "loss backward"
LOSS_FORWARD = "loss forward"
LAST_LAYER = "last layer backward"
FIRST_LAYER = "first layer backward"
OPTIMIZER = "optimizer step"
EMBEDDING = "embedding backward"
EVALUATION = "evaluation"
LM_HEAD = "lm_head backward"
DORA_FORWARD = "DoRA forward"
FINAL_NORM = "final norm backward"

_Row = tuple[str, str, int, str]
_NO_DEQUANT = ("temporary/dequant", "temporary", 0, "no 4-bit weight is dequantized at this phase")


class Batch(NamedTuple):
    """The batch-dependent quantities every phase reads (bytes unless named otherwise)."""

    tokens: int
    """T = b·s."""
    gc: bool
    """Gradient checkpointing."""
    saved_all: int
    """Every checkpoint, or every layer's saved tensors without checkpointing."""
    saved_first: int
    """What is left saved when layer 0's backward runs."""
    last_b: int
    """The last layer's saved tensors (recomputed under GC), sliding-window extras included."""
    first_b: int
    """Layer 0's saved tensors (recomputed under GC), sliding-window extras included."""
    work_last: tuple[int, int]
    """(gradient buffers, dequantized weight) at the last layer backward's busiest point."""
    work_first: tuple[int, int]
    """The same for layer 0."""
    fin: int
    """Final norm and lm_head inputs."""
    loss_b: int
    """The loss backward's buffers (``logits.loss_backward_bytes``)."""
    loss_f: int
    """The loss forward's buffers (``logits.loss_forward_bytes``)."""
    held: int
    """Logits the loop holds (``logits.held_logits_bytes``)."""
    mask: int = 0
    """Eager attention's float causal mask, kept by checkpointing (``activations.eager_mask_bytes``)."""
    sm_last: tuple[int, int, int] | None = None
    """Eager attention: the last layer at its softmax backward, (layer bytes still saved, gradient
    buffers, CUDA temporary) (``activations.eager_softmax_backward``); None for other attention."""
    sm_first: tuple[int, int, int] | None = None
    """The same for layer 0."""
    plain_last: int = 0
    """The last layer's own saved bytes inside ``saved_all`` (no checkpointing): what its softmax
    moment replaces by ``sm_last``'s saved part."""
    plain_first: int = 0
    """The same for layer 0 inside ``saved_first``."""
    eval: EvalPeak | None = None
    """The evaluation loop's peak over the static terms (None without evaluation)."""
    layout: int = 0
    """A packed layout's tensors alive from the forward to the end of backward (RoPE rows, a mask
    kept by checkpointing)."""
    rope: int = 0
    """The share of ``layout`` that is the one shared row of RoPE cos/sin (``StaticTerms.rope_row``),
    which every batch has, packed or not (its own breakdown row)."""
    layout_batch: int = 0
    """What the packed collator adds to the batch, alive in every phase (position ids, a 4D mask)."""
    images: int = 0
    """A multimodal batch's image inputs, alive in every phase."""
    images_live: int = 0
    """What the images leave saved from the forward to the end of the decoder's backward."""
    seq: int = 0
    """s, the sequence length (eager attention's per token·s terms)."""
    saved_last: int = 0
    """What is left saved when the last layer's backward runs (``saved_all`` without offloading)."""
    host: int = 0
    """Host memory of activation offloading (pinned), alive from the forward to the layers' backward."""
    grads_after: int = 0
    """The LoRA gradients of the layers after ``last_index`` (a hybrid's busier layer of another kind)."""
    last_index: int = -1
    """The layer whose backward the ``last layer backward`` phase prices (−1: layer L − 1)."""


def _layer(sv: Coef, T: int, s: int) -> int:
    """Saved bytes of one layer at T tokens of sequence length s."""
    return T * sv[0] + T * s * sv[1] + sv[2]


def _working(w: Work, T: int, dequant_factor: float) -> tuple[int, int]:
    """(gradient buffers, transient dequantized weight) at a layer backward's busiest point: the
    larger of the gradient moments (a·T + a_fixed, and any further (per token, fixed) pairs the tuple
    carries after its first four) and the dequantization moment (b·T + deq·factor)."""
    dq = int(w[3] * dequant_factor)
    grad = max([T * w[0] + w[1]] + [T * w[i] + w[i + 1] for i in range(4, len(w), 2)])
    if grad >= T * w[2] + dq:
        return grad, 0
    return T * w[2], dq


def batch(st: StaticTerms, seq: int, size: int, gc: bool, full: bool, dequant_factor: float) -> Batch:
    """Multiply the static coefficients out for a batch of ``size`` × ``seq`` tokens."""
    T = seq * size
    per = [_layer(c.sv, T, seq) for c in st.classes]
    lc, fc = st.layer_class[-1], st.layer_class[0]
    last_b, first_b = per[lc], per[fc]
    # sliding-window layers under sdpa once seq reaches the window: repeated K/V + additive mask
    sw_b = T * st.sw_tok + T * seq * st.sw_quad if (st.sw_n and seq >= st.window) else 0
    reent = T * st.reentrant_out  # reentrant checkpointing holds the recomputed layer's output
    last_rc = last_b + (sw_b if (st.layers - 1) in st.sw_layers else 0) + reent
    first_rc = first_b + (sw_b if 0 in st.sw_layers else 0) + reent
    inp = 0
    if gc:
        saved_all = T * (st.ckpt0 + (st.layers - 1) * st.ckpt)
        saved_first = T * st.ckpt0
    else:
        # a layer's input, when its input norm saves it itself: an fp32 residual, or Liger's RMSNorm
        inp = (st.d.resid if st.d.liger_norm else 4) * st.hidden * T if (st.d.resid == 4 or st.d.liger_norm) else 0
        first_nogc = _layer(st.first_sv, T, seq) + (inp if full else 0)
        saved_all = (sum(c.count * (b + inp) for c, b in zip(st.classes, per)) - first_b - inp + first_nogc
                     + st.sw_n * sw_b)
        saved_first = first_nogc + (sw_b if 0 in st.sw_layers else 0)
    # the model's own saved tensors outside the layers (``StaticTerms.pre``: Gemma 4's per-layer inputs)
    pre = T * st.pre[0] + seq * st.pre[1] + (T * seq * st.pre[2] if seq >= st.window else 0)
    saved_all, saved_first = saved_all + pre, saved_first + pre

    def held_after(j: int) -> int:  # ``StaticTerms.kv_hold``: held once a later layer's backward ran
        return T * sum(b for i, b in st.kv_hold if i > j) + grads_held(j)

    def grads_held(j: int) -> int:  # ``StaticTerms.grad_hold``: from a later consumer's backward to j's
        return T * sum(b for c, p, b in st.grad_hold if p <= j < c)
    saved_first += held_after(0)
    saved_last, host = saved_all, 0
    plain_last, plain_first = (0, 0) if gc else (last_b, _layer(st.first_sv, T, seq))
    if st.offload is not Offload.NONE:
        saved_all, saved_last, saved_first, host = _offloaded(st, T, gc, full, saved_all, last_b, first_b, seq)
        if not gc:  # the eager softmax moment adds the layer's own saved bytes to what stays on the device
            res0, rope = st.trl_resident[1:]
            plain_last, plain_first = saved_last - saved_all, saved_first - T * res0 - seq * rope
    loss_b, loss_f, held = st.loss_terms(size, seq)

    def softmax(sm: tuple[Coef, Coef, int] | None) -> tuple[int, int, int] | None:
        if sm is None:
            return None
        return (_layer(sm[0], T, seq), _layer(sm[1], T, seq), T * seq * sm[2], *sm[3:])

    x = Batch(
        saved_last=saved_last, host=host,
        tokens=T, gc=gc, saved_all=saved_all, saved_first=saved_first, last_b=last_rc, first_b=first_rc,
        work_last=_working(st.classes[lc].work, T, dequant_factor),
        work_first=_working(st.classes[fc].work, T, dequant_factor),
        fin=T * st.fin, loss_b=loss_b, loss_f=loss_f, held=held, mask=T * seq * st.eager_mask,
        sm_last=softmax(st.classes[lc].sm), sm_first=softmax(st.sm_first),
        plain_last=plain_last, plain_first=plain_first,
        eval=_evaluation(st, seq),
        # per-token layout tensors over the unpacked run's one shared row of seq positions (T − s more)
        layout=(T - seq) * st.layout_tok + seq * st.rope_row + T * seq * st.layout_quad, rope=seq * st.rope_row,
        layout_batch=(T - seq) * st.batch_tok + T * seq * st.batch_quad, seq=seq,
        images=size * st.image_batch, images_live=size * st.image_saved + st.image_step + T * st.image_tok
        + (-(-size * size * st.image_quad // 512) * 512 if st.image_quad else 0))
    if len(st.classes) == 1 or st.offload is not Offload.NONE:
        return x
    # a hybrid model: the last layer of each other signature may be the busier layer backward (its
    # own saved set and working buffers), with fewer checkpoints alive and the later layers' gradients;
    # so may the first layer of each signature (the most later layers' gradients alive: GLM-4.5's first
    # MoE layer, after 44 MoE layers' expert-LoRA gradients, checked against the trace)
    best, best_x = last_layer_backward(st, x), x
    # the first layer of a class after layer 0 (e.g. DeepSeek's first MoE layer after its dense ones)
    # meets every later layer's gradients: with large per-layer gradients (LoRA'd fused experts) it is
    # the class's busiest layer; its later gradients are summed per class (``ClassTerms.grad``) where
    # every class's are derived, else the per-layer average
    per_class = all(c.grad >= 0 for c in st.classes)
    firsts = [(n, c.first, _grads_after(st, c.first) if per_class else None) for n, c in enumerate(st.classes)
              if c.first > 0 and c.first != c.last]
    for n, j, grads in [(n, c.last, None) for n, c in enumerate(st.classes)] + firsts:
        c = st.classes[n]
        if (n == lc and j == c.last and grads is None) or j == 0:
            continue
        after = range(j + 1, st.layers)
        if gc:
            kept = T * (st.ckpt0 + j * st.ckpt) + pre + held_after(j)
        else:
            kept = saved_all - sum(per[st.layer_class[i]] + inp + (sw_b if i in st.sw_layers else 0)
                                   for i in after) + grads_held(j)
        cand = x._replace(
            saved_last=kept, last_b=per[n] + (sw_b if j in st.sw_layers else 0) + reent,
            work_last=_working(c.work, T, dequant_factor), sm_last=softmax(c.sm),
            plain_last=0 if gc else per[n], grads_after=len(after) * st.grad_per_layer if grads is None else grads,
            last_index=j)
        total = last_layer_backward(st, cand)
        if total > best:
            best, best_x = total, cand
    return best_x


def _grads_after(st: StaticTerms, j: int) -> int:
    """The LoRA gradients of decoder layers j + 1 … L − 1, each layer's own (``ClassTerms.grad``)."""
    return sum(st.classes[st.layer_class[i]].grad for i in range(j + 1, st.layers))


def _evaluation(st: StaticTerms, seq: int) -> EvalPeak | None:
    """The evaluation's peak at sequence length ``seq`` (None without evaluation)."""
    if not st.eval_batch:
        return None
    return eval_peak(seq=seq, k=kept_positions(seq, st.label_fraction), batch=st.eval_batch,
                     samples=st.eval_samples, keep=st.eval_keep, V=st.vocab, H=st.hidden, I=st.eval_inter,
                     ld=st.logits_bytes, hb=st.hidden_bytes, head_copy=st.head_copy, legacy=st.legacy,
                     resid=st.d.resid, c=st.d.c, dequant=st.eval_dequant, logit_bytes=st.eval_logit_bytes,
                     gen=st.eval_gen, autocast_cache=st.lora_cache)


def _offloaded(st: StaticTerms, T: int, gc: bool, full: bool, saved_all: int, last_b: int,
               first_b: int, seq: int = 0) -> tuple[int, int, int, int]:
    """(saved at the loss, at the last layer's backward, at layer 0's backward, host bytes) on the device
    under ``st.offload`` (``vramplan.analytic.offload``):

    1. checkpoints (and activation offloading with checkpointing, whose hooks see only the layer
       inputs): the host holds a pinned copy of every layer input; the device keeps layer 0's input
       under LoRA (a leaf autograd keeps alive), and on CUDA a layer's recompute first copies its input
       back (the unpack's ``tensor.to(device)``: T·ckpt, layer 0's T·ckpt0); on CPU the host copy is used.
    2. unsloth: inputs over 2 MiB but the last layer's go to host slots; the device keeps the last
       layer's input, layer 0's leaf and two restore buffers of the stored size; an fp32 input restored
       from its bf16 copy is cast back (T·H·4) for its recompute.
    3. activations without checkpointing: every layer's saved tensors go to host memory but what TRL
       deduplicates (``st.trl_resident``: the norms' fp32 inputs and rsqrt per token of every layer,
       ``offload.trl_resident_bytes``, and the rotary tables per position, ``trl_rope_resident``), on the
       device from the forward to the loss; a layer's backward adds the two autograd nodes' restored
       tensors (``st.trl_node``, ``offload.trl_restored_bytes``; the whole saved set ``last_b`` /
       ``first_b`` where not derived, MoE and fused MLP kernels), layer 0's with only its own resident
       bytes and the rotary tables left; the host holds every saved tensor without the pinned
       allocator's per-tensor rounding (a lower bound of it: the walk sums bytes per token, not per
       tensor).
    4. activations, either way: the final norm's and the loss's saved tensors are copied to the host too
       (``trl_head_host_bytes``) while the forward stash keeps them on the device."""
    L, H = st.layers, st.hidden
    leaf = 0 if full else T * st.ckpt0
    head = off.trl_head_host_bytes(T, H, st.vocab) if st.offload is Offload.ACTIVATIONS else 0
    if not gc:  # Offload.ACTIVATIONS (validation refuses the checkpoint kinds without checkpointing)
        res, res0, rope = st.trl_resident
        kept_all = T * (res0 + (L - 1) * res) + seq * rope
        kept_first = T * res0 + seq * rope
        node_last, node_first = st.trl_node
        last = kept_all + T * node_last if node_last else off.trl_restored_bytes(0, last_b)
        first = kept_first + T * node_first if node_first else off.trl_restored_bytes(0, first_b)
        return kept_all, last, first, saved_all + head
    if st.offload is Offload.UNSLOTH:
        store = off.unsloth_store_bytes(T, H, st.d.resid)
        host = off.unsloth_host_bytes(store, L)
        if not off.unsloth_offloads(store):
            return saved_all, saved_all, T * st.ckpt0, host
        buf = off.unsloth_gpu_buffers(store)
        last_in = T * st.ckpt if L > 1 else 0  # the last checkpointed layer keeps its input on the device
        cast = T * H * 4 if st.d.resid == 4 else 0
        return leaf + last_in + buf, leaf + last_in + buf, leaf + buf + cast, host
    host = off.checkpoint_host_bytes(T, st.ckpt0, st.ckpt, L) + head
    back = st.d.cuda
    restored_last = (T * st.ckpt if L > 1 else T * st.ckpt0) if back else 0
    return leaf, leaf + restored_last, leaf + (T * st.ckpt0 if back else 0), host


# ------------------------------------------------------------------------- phase totals
def loss_backward(st: StaticTerms, x: Batch) -> int:
    return x.saved_all + x.mask + x.fin + st.head_copy + x.loss_b


def loss_forward(st: StaticTerms, x: Batch) -> int:
    return x.saved_all + x.mask + x.fin + st.head_copy + x.loss_f + x.tokens * st.out_held + st.fwd_cache


def _softmax_moment(st: StaticTerms, x: Batch, last: bool) -> int | None:
    """Eager attention: a layer backward at its softmax backward (``Batch.sm_last`` / ``sm_first``)
    without the gradients of the other layers: the checkpoints (or every other layer's saved tensors),
    the mask, the layer's bytes still saved (and reentrant checkpointing's held output), its gradient
    buffers and CUDA's temporary. None when the attention is not eager."""
    sm = x.sm_last if last else x.sm_first
    if sm is None:
        return None
    base = (x.saved_last - x.plain_last) if last else (x.saved_first - x.plain_first)
    held_out = x.tokens * st.reentrant_out if x.gc else 0
    return base + x.mask + sm[0] + held_out + sm[1] + sm[2]


def _mlp_moment(st: StaticTerms, x: Batch, last: bool) -> int:
    """A layer backward at its MLP's busiest point (``activations.backward_working``), without the
    gradients of the other layers."""
    if last:
        return x.saved_last + x.mask + (x.last_b if x.gc else 0) + sum(x.work_last)
    return x.saved_first + x.mask + (x.first_b if x.gc else 0) + sum(x.work_first)


def _layer_moment(st: StaticTerms, x: Batch, last: bool) -> tuple[int, bool]:
    """(bytes, whether the softmax backward is the busier moment) of a layer backward."""
    mlp = _mlp_moment(st, x, last)
    sm = _softmax_moment(st, x, last)
    return (sm, True) if (sm is not None and sm > mlp) else (mlp, False)


def last_layer_backward(st: StaticTerms, x: Batch) -> int:
    """The last layer's backward (or, in a hybrid, the last layer of another kind, ``Batch.last_index``)."""
    return _layer_moment(st, x, True)[0] + st.head_grad + x.grads_after


def first_layer_backward(st: StaticTerms, x: Batch) -> int:
    """Every gradient but layer 0's and a trainable embedding's (``modules_to_save``), built after it."""
    return _layer_moment(st, x, False)[0] + st.grad_total - st.grad_per_layer - st.embed_grad


def optimizer_step(st: StaticTerms, x: Batch) -> int:
    return st.grad_total + st.opt_temp


def embedding_backward(st: StaticTerms, x: Batch) -> int:
    """Full fine-tuning, tied embeddings: the embedding backward builds a second V·H gradient and
    autograd accumulates it into lm_head's (a third buffer) while every other gradient exists. A LoRA
    run with a trainable embedding copy (``modules_to_save``) has the same moment without the tie:
    the embedding's V·H gradient (in ``grad_total``) beside the gradient of its output (b·s·H, the
    embedding's dtype)."""
    if st.embed_grad:
        return st.grad_total + x.tokens * st.ckpt0
    return st.grad_total + st.tied_extra + x.tokens * st.hidden * 4


def lm_head_backward(st: StaticTerms, x: Batch) -> int:
    """A trainable lm_head copy (``modules_to_save``): its backward builds the weight gradient (V·H).
    1. inside the matmul's backward: the logits' gradient (b·s·V, logits dtype), the saved autocast
       copy of the weight and the new weight gradient (its 16-bit matmul result under autocast);
    2. after it (the saved copy and the logits' gradient freed): that 16-bit gradient and its fp32
       cast into the fp32 ``.grad`` (the autocast cast's backward, ``ToCopyBackward``) coexist.
    Without autocast (or a 16-bit lm_head) the matmul writes the gradient in the weight's dtype."""
    temp = st.vocab * st.hidden * st.d.c if st.head_copy else 0
    inside = st.head_copy + x.tokens * st.vocab * st.logits_bytes + (temp or st.head_grad)
    return x.saved_all + x.mask + x.fin + max(inside, temp + st.head_grad)


def dora_transient(st: StaticTerms, x: Batch) -> int:
    """The last layer's busiest DoRA target forward at this batch (``activations.dora_forward_moments``):
    that target's transient (fixed + the larger of its weight norm and its output arithmetic) and what
    its wrapper holds meanwhile (``activations.dora_held``: alive with or without checkpointing), plus,
    under checkpointing, what the recomputed layer has saved before it (without checkpointing the
    whole layer is already in ``saved_all``)."""
    T = x.tokens
    out = 0
    for tb, qb, cb, t_tok, t_fixed, t_norm, held in st.dora_fwd:
        before = T * tb + T * x.seq * qb + cb if x.gc else 0
        out = max(out, before + T * held + t_fixed + max(T * t_tok, t_norm))
    return out


def _dora_own(st: StaticTerms, x: Batch) -> int:
    """The busiest target's own transient (the part of ``dora_transient`` that is not saved tensors)."""
    T, best, own = x.tokens, -1, 0
    for tb, qb, cb, t_tok, t_fixed, t_norm, held in st.dora_fwd:
        before = T * tb + T * x.seq * qb + cb if x.gc else 0
        mine = T * held + t_fixed + max(T * t_tok, t_norm)
        if before + mine > best:
            best, own = before + mine, mine
    return own


def dora_forward(st: StaticTerms, x: Batch) -> int:
    """DoRA: the last layer's forward (recomputed under checkpointing) at its busiest target. Under
    checkpointing the recompute runs inside backward, when the first node of the layer's backward
    unpacks a saved tensor: the gradient of the layer output and its scaled copy (the LoRA/DoRA
    term's ``* scaling``, the last target's output width H) are alive (2 · T · H, residual dtype), plus
    the casts of peft's ``result.to(torch_result_dtype)`` (``st.dora_grad_in`` per token)."""
    incoming = x.tokens * (2 * st.ckpt + st.dora_grad_in) if x.gc else 0
    return x.saved_all + x.mask + dora_transient(st, x) + incoming


def final_norm_backward(st: StaticTerms, x: Batch) -> int:
    """Fused LoRA kernels: the final RMSNorm's backward, every layer's saved tensors still alive."""
    return x.saved_all + x.mask + x.tokens * st.norm_back + st.head_grad


#: Phase name -> its dynamic bytes (on top of the static terms), in display order.
PHASES: dict[str, Callable[[StaticTerms, Batch], int]] = {
    LOSS_BACKWARD: loss_backward, LOSS_FORWARD: loss_forward, LAST_LAYER: last_layer_backward,
    FIRST_LAYER: first_layer_backward, OPTIMIZER: optimizer_step, EMBEDDING: embedding_backward,
    LM_HEAD: lm_head_backward, DORA_FORWARD: dora_forward, FINAL_NORM: final_norm_backward,
}
#: The phases that run while a packed layout's forward tensors (RoPE rows, a kept mask) are alive.
_LAYOUT_PHASES = frozenset({LOSS_BACKWARD, LOSS_FORWARD, LAST_LAYER, FIRST_LAYER, LM_HEAD, DORA_FORWARD, FINAL_NORM})
#: The phases a LoRA step runs (the embedding backward only when the embedding trains: full
#: fine-tuning or ``modules_to_save``; the lm_head backward only for a trainable lm_head copy;
#: the final norm backward is added by ``totals`` when fused LoRA kernels price it).
_STEPS = {(emb, head, dora): tuple((k, f) for k, f in PHASES.items()
                                   if (k != EMBEDDING or emb) and (k != LM_HEAD or head) and (k != DORA_FORWARD or dora)
                                   and k != FINAL_NORM)
          for emb in (False, True) for head in (False, True) for dora in (False, True)}


def holds_logits(st: StaticTerms, phase: str) -> bool:
    """Whether the loop's held logits are alive in ``phase``."""
    return phase != LOSS_FORWARD or st.held_forward


def totals(st: StaticTerms, x: Batch, full: bool) -> dict[str, int]:
    """Dynamic bytes of every phase the step runs (the embedding backward only under full fine-tuning)."""
    key = (full or bool(st.embed_grad), st.mts_head_input and not full, bool(st.dora_fwd))
    out = {name: f(st, x) + x.layout_batch + x.images + ((x.layout + x.images_live) if name in _LAYOUT_PHASES else 0)
           for name, f in _STEPS[key]}
    if st.norm_back:
        out[FINAL_NORM] = final_norm_backward(st, x) + x.layout_batch + x.layout + x.images + x.images_live
    if x.held:
        out = {k: v + (x.held if holds_logits(st, k) else 0) for k, v in out.items()}
    if x.eval is not None:
        out[EVALUATION] = x.eval.total
    return out


# ---------------------------------------------------------------------------- components
def components(phase: str, st: StaticTerms, x: Batch) -> tuple[int, list[_Row]]:
    """(gradient bytes alive, the other dynamic components) at ``phase``; they sum to its total."""
    if phase == EVALUATION:
        assert x.eval is not None
        return 0, [*x.eval.rows, _NO_DEQUANT]
    if phase in (LOSS_BACKWARD, LOSS_FORWARD):
        grads, rows = 0, _loss_rows(phase, st, x)
    elif phase == DORA_FORWARD:
        grads = 0
        rows = [_activation_row(st, x, x.saved_all), *_mask_rows(x)]
        if x.gc:
            rows.append(("activations/recompute", "activations", x.last_b, "one decoder layer re-run by gradient "
                         "checkpointing"))
        if x.gc:
            rows[-1] = ("activations/recompute", "activations", dora_transient(st, x) - _dora_own(st, x),
                        "the re-run last layer's tensors saved before its busiest DoRA target")
            rows.append(("activations/backward", "activations", x.tokens * (2 * st.ckpt + st.dora_grad_in),
                         "the re-run layer's output gradient and its scaled copy (and its casts, "
                         "activations.dora_backward_incoming)"))
        rows += [("temporary/dora_forward", "temporary", _dora_own(st, x) if x.gc else dora_transient(st, x),
                  "DoRA: a target's full weight in x's dtype, B·A, the identity lora_A saw, the weight norm "
                  "or the output arithmetic, the base output and x's cast copy its wrapper holds"), _NO_DEQUANT]
    elif phase == LM_HEAD:
        grads = st.head_grad
        rows = _loss_rows(LOSS_BACKWARD, st, x)
        at = {r[0]: i for i, r in enumerate(rows)}
        rows[at["temporary/lm_head_autocast_copy"]] = ("temporary/lm_head_autocast_copy", "temporary", 0,
                                                       "freed by the lm_head backward")
        rows[at["logits/loss"]] = ("logits/loss", "logits", lm_head_backward(st, x) - grads - x.saved_all - x.mask
                                   - x.fin, "lm_head backward: logits gradient / the weight gradient's 16-bit "
                                   "matmul result")
    elif phase == EMBEDDING:
        grads = st.grad_total
        rows = [("temporary/embedding_grad", "temporary", embedding_backward(st, x) - grads,
                 "gradient of the embedding output" if st.embed_grad else
                 "tied embedding: second V·H gradient and its accumulation, + input gradient"), _NO_DEQUANT]
    elif phase == FINAL_NORM:
        grads = st.head_grad
        norm_in = x.tokens * (4 * st.hidden + 4)
        rows = [_activation_row(st, x, x.saved_all),
                ("activations/final_norm", "activations", norm_in, "final RMSNorm input (fp32) + rsqrt"),
                ("activations/backward", "activations", x.tokens * st.norm_back - norm_in,
                 "final RMSNorm backward: five fp32 b·s·H buffers"), _NO_DEQUANT]
    elif phase == OPTIMIZER:
        grads = st.grad_total
        rows = [("temporary/optimizer_step", "temporary", st.opt_temp, "optimizer step buffers"), _NO_DEQUANT]
    else:
        grads, rows = _layer_rows(phase == LAST_LAYER, st, x)
    rope = x.rope if phase in _LAYOUT_PHASES else 0
    layout = x.layout_batch + (x.layout if phase in _LAYOUT_PHASES else 0) - rope
    if layout:
        rows.append(("activations/packing", "activations", layout,
                     "packed / padding-free batch: position ids, per-token RoPE cos/sin, block-diagonal mask"))
    if rope:
        rows.append(("activations/rope", "activations", rope,
                     "RoPE cos/sin of the shared row of positions, (1, s, rotary dim) per rotary module in the "
                     "embedding output's dtype, which every layer's RoPE saves (and checkpointing holds)"))
    images = x.images + (x.images_live if phase in _LAYOUT_PHASES else 0)
    if images:
        rows.append(("activations/images", "activations", images,
                     "images: the batch's pixel values, and under checkpointing what the frozen tower saves "
                     "(where enable_input_require_grads hooks its patch embedding) and the placeholder scatter's "
                     "copy"))
    if x.held and holds_logits(st, phase):
        rows.append(("logits/held_output", "logits", x.held, "model output kept by the training loop: "
                     + ("fp32 " if st.legacy else "") + "logits, b·s·V"))
    return grads, rows


def _activation_row(st: StaticTerms, x: Batch, saved: int) -> _Row:
    if st.offload is not Offload.NONE:
        return ("activations/checkpoints" if x.gc else "activations/layers", "activations", saved,
                f"what offload {st.offload.value} leaves on the device (the rest is in host memory)")
    if x.gc:
        return ("activations/checkpoints", "activations", saved, "layer inputs kept by gradient checkpointing")
    return ("activations/layers", "activations", saved, "every decoder layer's saved tensors")


#: (loss forward, loss backward) wording of the ``logits/loss`` row, per loss kernel.
_LOSS_WHAT = {
    Loss.HF: ("logits + fp32 upcast + log-softmax output, b·s·V", "fp32 log-softmax output + gradients, b·s·V"),
    Loss.LEGACY: ("logits + fp32 upcast + log-softmax output, b·s·V", "fp32 log-softmax output + gradients, b·s·V"),
    Loss.CHUNKED_HEAD: ("TRL fused head: 4096×32768 tile + scored hidden states (no b·s·V logits)",
                        "TRL fused head: tile + fp32 hidden-state gradient (no b·s·V logits)"),
    Loss.CHUNKED_CE: ("torchtune chunked CE: logits + fp32 log-softmax of every chunk + one chunk's upcast",
                      "torchtune chunked CE: every chunk's log-softmax + one chunk's gradients"),
    Loss.LIGER: ("Liger FLCE: input gradient (b·s×H) + one chunk's logits (no b·s·V logits)",
                 "Liger FLCE: the input gradient computed in the forward (no b·s·V logits)"),
    Loss.CCE: ("Cut Cross-Entropy: saved hidden states + LSE, index, logit average (no logits)",
               "Cut Cross-Entropy: saved hidden states + their gradient (no logits)"),
    Loss.UNSLOTH: ("Unsloth fused CE: hidden-state gradient + one chunk's fp32 logits (no b·s·V logits)",
                   "Unsloth fused CE: the stored hidden-state gradient + its scaled copy (no logits)"),
}


def _mask_rows(x: Batch) -> list[_Row]:
    if not x.mask:
        return []
    return [("activations/attention_mask", "activations", x.mask,
             "eager attention's float causal mask, b·s·s, kept by gradient checkpointing")]


def _loss_rows(phase: str, st: StaticTerms, x: Batch) -> list[_Row]:
    back = phase == LOSS_BACKWARD
    what = _LOSS_WHAT[st.loss][back]
    fwd = [] if back else [
        ("activations/model_output", "activations", x.tokens * st.out_held,
         "the final hidden state, held by the base model's output while the loss is computed"),
        ("activations/autocast_cache", "activations", st.fwd_cache,
         "autocast's cached 16-bit copies of every layer's fp32 LoRA weights, until the forward returns")]
    return [_activation_row(st, x, x.saved_all), *_mask_rows(x),
            ("activations/final_norm", "activations", x.fin, "final RMSNorm input (fp32) + rsqrt"), *fwd,
            ("temporary/lm_head_autocast_copy", "temporary", st.head_copy,
             "bf16 copy of the fp32 lm_head weight saved under autocast"),
            ("logits/loss", "logits", x.loss_b if back else x.loss_f,
             what + (" (legacy loss: shifted fp32 copy)" if st.legacy else "")),
            _NO_DEQUANT]


def _layer_rows(last: bool, st: StaticTerms, x: Batch) -> tuple[int, list[_Row]]:
    grads = st.head_grad + x.grads_after if last else st.grad_total - st.grad_per_layer - st.embed_grad
    if _layer_moment(st, x, last)[1]:
        return grads, _softmax_rows(last, st, x)
    rows = [_activation_row(st, x, x.saved_last if last else x.saved_first), *_mask_rows(x)]
    if x.gc:
        rows.append(("activations/recompute", "activations", x.last_b if last else x.first_b,
                     "one decoder layer re-run by gradient checkpointing"))
    wk, dq = x.work_last if last else x.work_first
    rows.append(("activations/backward", "activations", wk, "gradient buffers inside one layer's backward"))
    rows.append(("temporary/dequant", "temporary", dq, "largest 4-bit weight dequantized to the compute dtype"))
    return grads, rows


def _softmax_rows(last: bool, st: StaticTerms, x: Batch) -> list[_Row]:
    """The rows of a layer backward whose busiest moment is eager attention's softmax backward (or a
    token-mixer kind's own moment, ``mixers.MOMENTS``: the kind named last in the tuple)."""
    sm = x.sm_last if last else x.sm_first
    saved, work, tmp = sm[:3]
    if len(sm) > 3:
        return _kind_moment_rows(sm[3], last, st, x)
    base = (x.saved_last - x.plain_last) if last else (x.saved_first - x.plain_first)
    rows = [_activation_row(st, x, base), *_mask_rows(x)]
    if x.gc:
        rows.append(("activations/recompute", "activations", saved + x.tokens * st.reentrant_out,
                     "one decoder layer re-run by gradient checkpointing, up to its attention scores "
                     "(the MLP's and o_proj's saved tensors are freed by now)"))
    else:
        rows[0] = _activation_row(st, x, base + saved)
    rows.append(("activations/backward", "activations", work,
                 "eager softmax backward: the fp32 score gradients, V's gradient and the residual's"))
    rows.append(("temporary/softmax_backward", "temporary", tmp,
                 "CUDA softmax backward's grad * output temporary, b·heads·s·s fp32 (SoftMax.cu)"))
    rows.append(_NO_DEQUANT)
    return rows


#: A token-mixer kind's moment (``mixers.MOMENTS``) -> what its rows say: the re-run layer's tensors,
#: its gradient buffers, its per token·s transient.
_KIND_MOMENT_ROWS: dict[str, tuple[str, str, str, str]] = {
    "dsa": ("the re-run layer up to its DSA indexer: the latent attention's saved tensors and live locals, the "
            "indexer's q and k (mixers.dsa_indexer_locals)",
            "the layer output's gradient and the MLP down projection's input gradient waiting for the recompute",
            "temporary/dsa_indexer_scores",
            "DSA indexer: q·kᵀ per indexer head and its scaled copy, b·index_heads·s·s (no_grad, forward "
            "transient: mixers.dsa_indexer_scores)"),
}


def _kind_moment_rows(kind: str, last: bool, st: StaticTerms, x: Batch) -> list[_Row]:
    """The rows of a layer backward at its token-mixer kind's own moment (checkpointing only)."""
    saved, work, tmp = (x.sm_last if last else x.sm_first)[:3]
    held_what, work_what, tmp_name, tmp_what = _KIND_MOMENT_ROWS[kind]
    base = (x.saved_last - x.plain_last) if last else (x.saved_first - x.plain_first)
    return [_activation_row(st, x, base), *_mask_rows(x),
            ("activations/recompute", "activations", saved + x.tokens * st.reentrant_out, held_what),
            ("activations/backward", "activations", work, work_what),
            (tmp_name, "temporary", tmp, tmp_what), _NO_DEQUANT]
