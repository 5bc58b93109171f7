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
- ``embedding backward`` (full fine-tuning only): every gradient + the tied embedding's extra ones.

Held logits (``Scenario.hold_logits``) join every phase but the loss forward, and that one too under
``Hold.LOOP`` (the previous step's output is alive until the forward returns).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from vramplan.analytic import offload as off
from vramplan.analytic.terms import Coef, StaticTerms, Work
from vramplan.scenario import Loss, Offload

LOSS_BACKWARD = "loss backward"
LOSS_FORWARD = "loss forward"
LAST_LAYER = "last layer backward"
FIRST_LAYER = "first layer backward"
OPTIMIZER = "optimizer step"
EMBEDDING = "embedding backward"

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
    saved_last: int = 0
    """What is left saved when the last layer's backward runs (``saved_all`` without offloading)."""
    host: int = 0
    """Host memory of activation offloading (pinned), alive from the forward to the layers' backward."""


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
    saved_last, host = saved_all, 0
    if st.offload is not Offload.NONE:
        saved_all, saved_last, saved_first, host = _offloaded(st, T, gc, full, saved_all, last_b, first_b)
    loss_b, loss_f, held = st.loss_terms(size, seq)
    return Batch(
        saved_last=saved_last, host=host,
        tokens=T, gc=gc, saved_all=saved_all, saved_first=saved_first, last_b=last_rc, first_b=first_rc,
        work_last=_working(st.work_moe if st.last_moe else st.work_dense, T, dequant_factor),
        work_first=_working(st.work_moe if st.first_moe else st.work_dense, T, dequant_factor),
        fin=T * st.fin, loss_b=loss_b, loss_f=loss_f, held=held)


def _offloaded(st: StaticTerms, T: int, gc: bool, full: bool, saved_all: int, last_b: int,
               first_b: int) -> tuple[int, int, int, int]:
    """(saved at the loss, at the last layer's backward, at layer 0's backward, host bytes) on the device
    under ``st.offload`` (``vramplan.analytic.offload``):

    1. checkpoints (and activation offloading with checkpointing, whose hooks see only the layer
       inputs): the host holds a pinned copy of every layer input; the device keeps layer 0's input
       under LoRA (a leaf autograd keeps alive), and on CUDA a layer's recompute first copies its input
       back (the unpack's ``tensor.to(device)``: T·ckpt, layer 0's T·ckpt0); on CPU the host copy is used.
    2. unsloth: inputs over 2 MiB but the last layer's go to host slots; the device keeps the last
       layer's input, layer 0's leaf and two restore buffers of the stored size; an fp32 input restored
       from its bf16 copy is cast back (T·H·4) for its recompute.
    3. activations without checkpointing: every layer's saved tensors go to host memory; a layer's come
       back for its backward (its whole saved set, ``last_b`` / ``first_b``); the host holds them
       without the pinned allocator's per-tensor rounding (a lower bound of it).
    4. activations, either way: the final norm's and the loss's saved tensors are copied to the host too
       (``trl_head_host_bytes``) while the forward stash keeps them on the device."""
    L, H = st.layers, st.hidden
    leaf = 0 if full else T * st.ckpt0
    head = off.trl_head_host_bytes(T, H, st.vocab) if st.offload is Offload.ACTIVATIONS else 0
    if not gc:  # Offload.ACTIVATIONS (validation refuses the checkpoint kinds without checkpointing)
        return 0, last_b, first_b, saved_all + head
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
    return x.saved_all + x.fin + st.head_copy + x.loss_b


def loss_forward(st: StaticTerms, x: Batch) -> int:
    return x.saved_all + x.fin + st.head_copy + x.loss_f


def last_layer_backward(st: StaticTerms, x: Batch) -> int:
    return x.saved_last + (x.last_b if x.gc else 0) + sum(x.work_last) + st.head_grad


def first_layer_backward(st: StaticTerms, x: Batch) -> int:
    return x.saved_first + (x.first_b if x.gc else 0) + sum(x.work_first) + st.grad_total - st.grad_per_layer


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
    return out


# ---------------------------------------------------------------------------- components
def components(phase: str, st: StaticTerms, x: Batch) -> tuple[int, list[_Row]]:
    """(gradient bytes alive, the other dynamic components) at ``phase``; they sum to its total."""
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
}


def _loss_rows(phase: str, st: StaticTerms, x: Batch) -> list[_Row]:
    back = phase == LOSS_BACKWARD
    what = _LOSS_WHAT[st.loss][back]
    return [_activation_row(st, x, x.saved_all),
            ("activations/final_norm", "activations", x.fin, "final RMSNorm input (fp32) + rsqrt"),
            ("temporary/lm_head_autocast_copy", "temporary", st.head_copy,
             "bf16 copy of the fp32 lm_head weight saved under autocast"),
            ("logits/loss", "logits", x.loss_b if back else x.loss_f,
             what + (" (legacy loss: shifted fp32 copy)" if st.legacy else "")),
            _NO_DEQUANT]


def _layer_rows(last: bool, st: StaticTerms, x: Batch) -> tuple[int, list[_Row]]:
    grads = st.head_grad if last else st.grad_total - st.grad_per_layer
    rows = [_activation_row(st, x, x.saved_last if last else x.saved_first)]
    if x.gc:
        rows.append(("activations/recompute", "activations", x.last_b if last else x.first_b,
                     "one decoder layer re-run by gradient checkpointing"))
    wk, dq = x.work_last if last else x.work_first
    rows.append(("activations/backward", "activations", wk, "gradient buffers inside one layer's backward"))
    rows.append(("temporary/dequant", "temporary", dq, "largest 4-bit weight dequantized to the compute dtype"))
    return grads, rows
