"""The output head and the loss: logits, their fp32 upcast, log-softmax and its gradient.

Symbols: T = b·s tokens, V vocabulary, H hidden, c compute bytes, ld logits bytes.
Source: transformers 5.24 ``loss/loss_utils.py::ForCausalLMLoss`` (``logits.float()`` then
``nn.functional.cross_entropy``, i.e. ``log_softmax`` + ``nll_loss``; ``log_softmax`` saves its fp32
output) and the HF ``Trainer.compute_loss``, which drops the model output (and its logits) before
``backward``. A frozen lm_head saves no input; under autocast a fp32 lm_head's bf16 weight copy is
saved for the input gradient (``mm`` saves ``mat2`` when ``self`` needs a gradient).
"""

from __future__ import annotations


def logits_dtype_bytes(c: int, autocast: bool, head_w: int) -> int:
    """lm_head output bytes: the autocast dtype, else the head weight's dtype."""
    return c if autocast else head_w


def loss_forward_bytes_per_token(V: int, ld: int, softcap: bool) -> int:
    """Live at the end of the loss forward, per token.

    1. logits: ld·V.
    2. ``logits.float()``: a fp32 copy 4·V unless the logits already are fp32 (then a no-op).
    3. log_softmax output (saved for backward): 4·V.
    4. Gemma 2 final soft-capping (logits/cap, tanh, ·cap) keeps the tanh output: ld·V.
    """
    return ld * V + (4 * V if ld != 4 else 0) + 4 * V + (ld * V if softcap else 0)


def loss_backward_bytes_per_token(V: int, ld: int, softcap: bool) -> int:
    """Live during the log_softmax backward, per token.

    1. saved log_softmax output: 4·V;
    2. nll_loss's gradient w.r.t. the log-probabilities (dense fp32): 4·V;
    3. log_softmax's gradient w.r.t. the fp32 logits: 4·V;
    4. Gemma 2 soft-capping: the saved tanh output, ld·V.
    The bf16 logits were dropped with the model output before backward (HF Trainer).
    """
    return 12 * V + (ld * V if softcap else 0)


def head_weight_copy_bytes(V: int, H: int, c: int, autocast: bool, head_w: int) -> int:
    """Autocast's bf16 copy of a fp32 lm_head weight, saved until the lm_head backward: c·V·H."""
    return c * V * H if (autocast and head_w != c) else 0
