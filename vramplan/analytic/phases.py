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
- ``embedding backward`` (full fine-tuning only): every gradient + the tied embedding's extra ones;
- ``evaluation`` (``Scenario.eval_batch`` > 0): the HF Trainer's evaluation loop between steps, no
  gradients, its busiest moment (``vramplan.analytic.evaluation.eval_peak``). The step's reported peak
  is the larger of it and the training phases.

Held logits (``Scenario.hold_logits``) join every phase but the loss forward, and that one too under
``Hold.LOOP`` (the previous step's output is alive until the forward returns).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from vramplan.analytic.evaluation import EvalPeak, eval_peak
from vramplan.analytic.terms import Coef, StaticTerms, Work
from vramplan.scenario import Loss, kept_positions

LOSS_BACKWARD = "loss backward"
LOSS_FORWARD = "loss forward"
LAST_LAYER = "last layer backward"
FIRST_LAYER = "first layer backward"
OPTIMIZER = "optimizer step"
EMBEDDING = "embedding backward"
EVALUATION = "evaluation"

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


def _layer(sv: Coef, T: int, s: int) -> int:
    """Saved bytes of one layer at T tokens of sequence length s."""
    return T * sv[0] + T * s * sv[1] + sv[2]


def _working(w: Work, T: int, dequant_factor: float) -> tuple[int, int]:
    """(gradient buffers, transient dequantized weight) at a layer backward's busiest point: the
    larger of the gradient moment (a·T + a_fixed) and the dequantization moment (b·T + deq·factor)."""
    dq = int(w[3] * dequant_factor)
    if T * w[0] + w[1] >= T * w[2] + dq:
        return T * w[0] + w[1], 0
    return T * w[2], dq


def batch(st: StaticTerms, seq: int, size: int, gc: bool, full: bool, dequant_factor: float) -> Batch:
    """Multiply the static coefficients out for a batch of ``size`` × ``seq`` tokens."""
    T = seq * size
    dense_b = _layer(st.dense_sv, T, seq) if st.dense else 0
    moe_b = _layer(st.moe_sv, T, seq) if st.nmoe else 0
    last_b = moe_b if st.last_moe else dense_b
    first_b = moe_b if st.first_moe else dense_b
    # sliding-window layers under sdpa once seq reaches the window: repeated K/V + additive mask
    sw_b = T * st.sw_tok + T * seq * st.sw_quad if (st.sw_n and seq >= st.window) else 0
    reent = T * st.reentrant_out  # reentrant checkpointing holds the recomputed layer's output
    last_rc = last_b + (sw_b if st.sw_last else 0) + reent
    first_rc = first_b + (sw_b if st.sw_first else 0) + reent
    if gc:
        saved_all = T * (st.ckpt0 + (st.layers - 1) * st.ckpt)
        saved_first = T * st.ckpt0
    else:
        inp = 4 * st.hidden * T if st.d.resid == 4 else 0
        first_nogc = _layer(st.first_sv, T, seq) + (inp if full else 0)
        saved_all = (st.dense * (dense_b + inp) + st.nmoe * (moe_b + inp) - first_b - inp + first_nogc
                     + st.sw_n * sw_b)
        saved_first = first_nogc + (sw_b if st.sw_first else 0)
    loss_b, loss_f, held = st.loss_terms(size, seq)

    def softmax(sm: tuple[Coef, Coef, int] | None) -> tuple[int, int, int] | None:
        if sm is None:
            return None
        return _layer(sm[0], T, seq), _layer(sm[1], T, seq), T * seq * sm[2]

    return Batch(
        tokens=T, gc=gc, saved_all=saved_all, saved_first=saved_first, last_b=last_rc, first_b=first_rc,
        work_last=_working(st.work_moe if st.last_moe else st.work_dense, T, dequant_factor),
        work_first=_working(st.work_moe if st.first_moe else st.work_dense, T, dequant_factor),
        fin=T * st.fin, loss_b=loss_b, loss_f=loss_f, held=held, mask=T * seq * st.eager_mask,
        sm_last=softmax(st.sm_moe if st.last_moe else st.sm_dense), sm_first=softmax(st.sm_first),
        plain_last=0 if gc else last_b, plain_first=0 if gc else _layer(st.first_sv, T, seq),
        eval=_evaluation(st, seq))


def _evaluation(st: StaticTerms, seq: int) -> EvalPeak | None:
    """The evaluation's peak at sequence length ``seq`` (None without evaluation)."""
    if not st.eval_batch:
        return None
    return eval_peak(seq=seq, k=kept_positions(seq, st.label_fraction), batch=st.eval_batch,
                     samples=st.eval_samples, keep=st.eval_keep, V=st.vocab, H=st.hidden, I=st.eval_inter,
                     ld=st.logits_bytes, hb=st.hidden_bytes, head_copy=st.head_copy, legacy=st.legacy,
                     resid=st.d.resid, c=st.d.c, dequant=st.eval_dequant, logit_bytes=st.eval_logit_bytes,
                     gen=st.eval_gen)


# ------------------------------------------------------------------------- phase totals
def loss_backward(st: StaticTerms, x: Batch) -> int:
    return x.saved_all + x.mask + x.fin + st.head_copy + x.loss_b


def loss_forward(st: StaticTerms, x: Batch) -> int:
    return x.saved_all + x.mask + x.fin + st.head_copy + x.loss_f


def _softmax_moment(st: StaticTerms, x: Batch, last: bool) -> int | None:
    """Eager attention: a layer backward at its softmax backward (``Batch.sm_last`` / ``sm_first``)
    without the gradients of the other layers: the checkpoints (or every other layer's saved tensors),
    the mask, the layer's bytes still saved (and reentrant checkpointing's held output), its gradient
    buffers and CUDA's temporary. None when the attention is not eager."""
    sm = x.sm_last if last else x.sm_first
    if sm is None:
        return None
    base = (x.saved_all - x.plain_last) if last else (x.saved_first - x.plain_first)
    held_out = x.tokens * st.reentrant_out if x.gc else 0
    return base + x.mask + sm[0] + held_out + sm[1] + sm[2]


def _mlp_moment(st: StaticTerms, x: Batch, last: bool) -> int:
    """A layer backward at its MLP's busiest point (``activations.backward_working``), without the
    gradients of the other layers."""
    if last:
        return x.saved_all + x.mask + (x.last_b if x.gc else 0) + sum(x.work_last)
    return x.saved_first + x.mask + (x.first_b if x.gc else 0) + sum(x.work_first)


def _layer_moment(st: StaticTerms, x: Batch, last: bool) -> tuple[int, bool]:
    """(bytes, whether the softmax backward is the busier moment) of a layer backward."""
    mlp = _mlp_moment(st, x, last)
    sm = _softmax_moment(st, x, last)
    return (sm, True) if (sm is not None and sm > mlp) else (mlp, False)


def last_layer_backward(st: StaticTerms, x: Batch) -> int:
    return _layer_moment(st, x, True)[0] + st.head_grad


def first_layer_backward(st: StaticTerms, x: Batch) -> int:
    return _layer_moment(st, x, False)[0] + st.grad_total - st.grad_per_layer


def optimizer_step(st: StaticTerms, x: Batch) -> int:
    return st.grad_total + st.opt_temp


def embedding_backward(st: StaticTerms, x: Batch) -> int:
    """Full fine-tuning, tied embeddings: the embedding backward builds a second V·H gradient and
    autograd accumulates it into lm_head's (a third buffer) while every other gradient exists."""
    return st.grad_total + st.tied_extra + x.tokens * st.hidden * 4


#: Phase name -> its dynamic bytes (on top of the static terms), in display order.
PHASES: dict[str, Callable[[StaticTerms, Batch], int]] = {
    LOSS_BACKWARD: loss_backward, LOSS_FORWARD: loss_forward, LAST_LAYER: last_layer_backward,
    FIRST_LAYER: first_layer_backward, OPTIMIZER: optimizer_step, EMBEDDING: embedding_backward,
}
#: The phases a LoRA step runs (all but the full fine-tuning embedding backward), and a full one.
_STEPS = {False: tuple((k, f) for k, f in PHASES.items() if k != EMBEDDING), True: tuple(PHASES.items())}


def holds_logits(st: StaticTerms, phase: str) -> bool:
    """Whether the loop's held logits are alive in ``phase``."""
    return phase != LOSS_FORWARD or st.held_forward


def totals(st: StaticTerms, x: Batch, full: bool) -> dict[str, int]:
    """Dynamic bytes of every phase the step runs (the embedding backward only under full fine-tuning)."""
    out = {name: f(st, x) for name, f in _STEPS[full]}
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
    elif phase == EMBEDDING:
        grads = st.grad_total
        rows = [("temporary/embedding_grad", "temporary", embedding_backward(st, x) - grads,
                 "tied embedding: second V·H gradient and its accumulation, + input gradient"), _NO_DEQUANT]
    elif phase == OPTIMIZER:
        grads = st.grad_total
        rows = [("temporary/optimizer_step", "temporary", st.opt_temp, "optimizer step buffers"), _NO_DEQUANT]
    else:
        grads, rows = _layer_rows(phase == LAST_LAYER, st, x)
    if x.held and holds_logits(st, phase):
        rows.append(("logits/held_output", "logits", x.held, "model output kept by the training loop: "
                     + ("fp32 " if st.legacy else "") + "logits, b·s·V"))
    return grads, rows


def _activation_row(st: StaticTerms, x: Batch, saved: int) -> _Row:
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
}


def _mask_rows(x: Batch) -> list[_Row]:
    if not x.mask:
        return []
    return [("activations/attention_mask", "activations", x.mask,
             "eager attention's float causal mask, b·s·s, kept by gradient checkpointing")]


def _loss_rows(phase: str, st: StaticTerms, x: Batch) -> list[_Row]:
    back = phase == LOSS_BACKWARD
    what = _LOSS_WHAT[st.loss][back]
    return [_activation_row(st, x, x.saved_all), *_mask_rows(x),
            ("activations/final_norm", "activations", x.fin, "final RMSNorm input (fp32) + rsqrt"),
            ("temporary/lm_head_autocast_copy", "temporary", st.head_copy,
             "bf16 copy of the fp32 lm_head weight saved under autocast"),
            ("logits/loss", "logits", x.loss_b if back else x.loss_f,
             what + (" (legacy loss: shifted fp32 copy)" if st.legacy else "")),
            _NO_DEQUANT]


def _layer_rows(last: bool, st: StaticTerms, x: Batch) -> tuple[int, list[_Row]]:
    grads = st.head_grad if last else st.grad_total - st.grad_per_layer
    if _layer_moment(st, x, last)[1]:
        return grads, _softmax_rows(last, st, x)
    rows = [_activation_row(st, x, x.saved_all if last else x.saved_first), *_mask_rows(x)]
    if x.gc:
        rows.append(("activations/recompute", "activations", x.last_b if last else x.first_b,
                     "one decoder layer re-run by gradient checkpointing"))
    wk, dq = x.work_last if last else x.work_first
    rows.append(("activations/backward", "activations", wk, "gradient buffers inside one layer's backward"))
    rows.append(("temporary/dequant", "temporary", dq, "largest 4-bit weight dequantized to the compute dtype"))
    return grads, rows


def _softmax_rows(last: bool, st: StaticTerms, x: Batch) -> list[_Row]:
    """The rows of a layer backward whose busiest moment is eager attention's softmax backward."""
    saved, work, tmp = x.sm_last if last else x.sm_first
    base = (x.saved_all - x.plain_last) if last else (x.saved_first - x.plain_first)
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

