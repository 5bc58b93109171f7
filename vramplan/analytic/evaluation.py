"""The evaluation loop run between training steps: its peak, priced beside the training step's.

Sources: transformers 5.24 ``trainer.py`` (``evaluate`` L2805-2902: ``prediction_loss_only=True``
when no ``compute_metrics``; ``evaluation_loop`` L2904-3111: ``model.eval()``, ``all_preds.add`` /
``all_labels.add`` every batch, ``to_cpu_and_numpy`` every ``eval_accumulation_steps``;
``prediction_step`` L3193-3300: the forward under ``torch.no_grad()``, returning ``(loss, None,
None)`` when ``prediction_loss_only``), ``trainer_pt_utils.py`` (``EvalLoopContainer`` L352-401,
``nested_concat`` -> ``torch_pad_and_concatenate``: ``torch.cat`` of the old and the new tensors),
accelerate 1.15 (``Accelerator.prepare_model`` L1824-1835 wraps the forward in
``convert_outputs_to_fp32`` under mixed precision; ``utils/operations.py::convert_to_fp32`` L889-910
upcasts every fp16/bf16 output, so the logits the loop keeps are fp32), transformers 5.24
``loss/loss_utils.py::ForCausalLMLoss`` L53-74 (``logits.float()``, the labels padded and shifted).

What is alive during an evaluation: the training state (weights, quantization state, adapters,
optimizer state; the gradients are None, ``zero_grad(set_to_none=True)`` ran before
``_maybe_log_save_evaluate``) and, per eval batch of b sequences of s tokens (T = b·s, Tk = b·k
logit rows, k the kept positions of ``Scenario.label_fraction``):

1. the batch on the device: input_ids + labels, int64: 16·T (the loop variable ``inputs``);
2. the forward, which under ``no_grad`` saves nothing: one decoder layer's working tensors
   (``layer_bytes``), then at the head the final hidden states (T·H·hb) with either autocast's copy
   of a wider lm_head weight (c·V·H, freed after the matmul) or, in the loss, the logits + their
   fp32 upcast + the log-softmax output (``logits.loss_forward_bytes``) and the padded and shifted
   labels (2 × 8·T) (``forward_bytes``);
3. the predictions kept so far (``Scenario.eval_keep``: P bytes per sample of predictions, L of
   labels), and from the second batch on their concatenation, the old, the new and the result
   alive at once (``concat_bytes``); through a forward the loop's ``logits`` variable still binds
   the previous batch's predictions, which have their own storage from the third batch on (the
   first batch's are the container's tensor itself).

Symbols: V vocabulary, H hidden, I intermediate, ld logits bytes, hb final hidden-state bytes,
c compute bytes. Bytes inside, ints.
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.analytic.logits import loss_forward_bytes

#: int64 token ids and labels.
ID_BYTES = 8
#: bitsandbytes 0.50.2 CUDA ``gemm_4bit`` dequantizes the whole weight for inputs of more rows
#: (``backends/cuda/ops.py``; ``vramplan.hf.interventions.CUDA_CUSTOM_MAX_M``).
DEQUANT_ROWS = 1536

_Row = tuple[str, str, int, str]


def kept_logits_bytes(ld: int, autocast: bool, legacy: bool) -> int:
    """Bytes per logit the loop keeps: 4 under mixed precision (accelerate's ``convert_to_fp32`` on the
    forward's outputs) or with the legacy loss (fp32 ``output.logits``), else the lm_head output's ld."""
    return 4 if (autocast or legacy) else ld


def kept_per_sample(keep: str, V: int, k: int, s: int, logit_bytes: int) -> tuple[int, int]:
    """(predictions, labels) bytes one eval sample leaves on the device.

    ``logits``: the (k, V) logits in ``logit_bytes``; ``ids``: the (k,) argmax ids (int64); both keep
    the sample's (s,) labels (int64; ``prediction_step`` returns the labels whenever it returns
    predictions). ``none``: nothing (the per-batch fp32 loss the loop keeps, 4·b bytes, is not priced).
    Batches are padded to the longest across batches (``torch_pad_and_concatenate``): s is that
    longest sequence."""
    if keep == "logits":
        return logit_bytes * V * k, ID_BYTES * s
    if keep == "ids":
        return ID_BYTES * k, ID_BYTES * s
    return 0, 0


def inputs_bytes(T: int) -> int:
    """The eval batch on the device: input_ids + labels, int64."""
    return 2 * ID_BYTES * T


def forward_bytes(T: int, Tk: int, T1: int, V: int, H: int, ld: int, hb: int, head_copy: int, legacy: bool) -> int:
    """The eval forward's busiest moment at the head (batch inputs excluded), the larger of:

    (a) the lm_head matmul: final hidden states T·H·hb + autocast's weight copy (``head_copy``) + the
        logits ld·V·Tk;
    (b) the loss: hidden states + logits + fp32 upcast + log-softmax (``loss_forward_bytes``, no
        soft-capping tanh: nothing is saved under no_grad) + the padded and the shifted labels 2·8·T.
    T1: the legacy loss's b·(s−1) shifted rows.
    """
    hidden = T * H * hb
    head = hidden + head_copy + ld * V * Tk
    loss = hidden + loss_forward_bytes(V, ld, False, Tk, T1, legacy) + 2 * ID_BYTES * T
    return max(head, loss)


def layer_bytes(T: int, H: int, I: int, resid: int, c: int, dequant: int) -> int:
    """One decoder layer's live tensors under no_grad at the MLP (approximate, the largest of a layer's
    moments for an MLP wider than the attention): the residual stream and the normalised input
    ((resid + resid)·H per token), and gate/up's activation, up's output and their product in the
    compute dtype (3·c·I per token); on CUDA with more than ``DEQUANT_ROWS`` rows, bitsandbytes'
    dequantized 4-bit weight (``dequant``)."""
    return T * (2 * resid * H + 3 * c * I) + (dequant if T > DEQUANT_ROWS else 0)


def concat_bytes(n_prev: int, b: int, P: int, L: int) -> int:
    """Kept predictions at the concatenation of batch b after ``n_prev`` samples (``nested_concat``):
    the predictions old + new + result (2·(n_prev + b)·P), the labels kept so far (n_prev·L; the new
    labels are the batch's, counted with the inputs), and, at the labels' concatenation, the other way
    round; the larger of the two moments."""
    n = n_prev + b
    preds = 2 * n * P + n_prev * L
    labels = n * P + (n_prev + n) * L
    return max(preds, labels)


class EvalPeak(NamedTuple):
    """The evaluation's peak over the training state: its total and the rows summing to it."""

    total: int
    rows: tuple[_Row, ...]
    moment: str
    """``forward`` (the loss or the lm_head of an eval batch), ``layer`` or ``concatenation``."""


def eval_peak(*, seq: int, k: int, batch: int, samples: int, keep: str, V: int, H: int, I: int, ld: int,
              hb: int, head_copy: int, legacy: bool, resid: int, c: int, dequant: int,
              logit_bytes: int) -> EvalPeak:
    """The largest moment of the evaluation loop: over the last two eval batches (earlier ones hold
    fewer predictions), the forward with the predictions kept before it, and the concatenation.

    Batches: ``samples`` kept samples in ceil(samples / batch) batches, the last one of the remainder
    (one batch of ``batch`` when nothing is kept)."""
    P, L = kept_per_sample(keep, V, k, seq, logit_bytes)
    n_batches = max(1, -(-samples // batch)) if P or L else 1
    sizes = [batch] * (n_batches - 1) + [samples - batch * (n_batches - 1) if (P or L) else batch]
    best: EvalPeak | None = None
    for j in range(max(0, n_batches - 2), n_batches):
        b, n_prev = sizes[j], batch * j
        T, Tk = b * seq, b * k
        inp = inputs_bytes(T)
        # the loop's ``logits`` still binds the previous batch's predictions through this forward: their
        # own storage once a concatenation has copied them (batches from the third on)
        kept = n_prev * (P + L) + (batch * P if j >= 2 else 0)
        fwd = forward_bytes(T, Tk, b * (seq - 1), V, H, ld, hb, head_copy, legacy)
        lay = layer_bytes(T, H, I, resid, c, dequant)
        cands = [("forward", kept, fwd, 0), ("layer", kept, 0, lay)]
        if j and (P or L):
            cands.append(("concatenation", concat_bytes(n_prev, b, P, L), 0, 0))
        for moment, kb, fb, lb in cands:
            total = inp + kb + fb + lb
            if best is None or total > best.total:
                best = EvalPeak(total, _rows(keep, inp, kb, fb, lb, n_prev, b, moment), moment)
    assert best is not None
    return best


def _rows(keep: str, inp: int, kept: int, fwd: int, lay: int, n_prev: int, b: int, moment: str) -> tuple[_Row, ...]:
    what = {"logits": "logits + labels", "ids": "argmax ids + labels", "none": "nothing"}[keep]
    kept_note = (f"{what} of the {n_prev} eval samples kept on the device before this batch" if moment != "concatenation"
                 else f"{what} of {n_prev} + {b} samples concatenated (old, new and result alive)")
    return (("activations/eval_inputs", "activations", inp, "eval batch on the device (input_ids + labels, int64)"),
            ("activations/eval_layer", "activations", lay, "one decoder layer's tensors under no_grad"),
            ("logits/eval_forward", "logits", fwd,
             "eval forward's head: hidden states + logits + fp32 upcast + log-softmax (nothing saved, no_grad)"),
            ("logits/eval_predictions", "logits", kept, kept_note))
