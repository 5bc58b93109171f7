"""The output head and the loss: logits, their fp32 upcast, log-softmax and its gradient.

Symbols: T = b·s tokens, T1 = b·(s−1) shifted tokens, V vocabulary, H hidden, c compute bytes,
ld logits bytes. Sources:
- ``Loss.HF``: transformers 5.24 ``loss/loss_utils.py::ForCausalLMLoss`` (``logits.float()`` then
  ``nn.functional.cross_entropy`` on the full logits with shifted, padded labels: ``log_softmax`` +
  ``nll_loss``; ``log_softmax`` saves its fp32 output).
- ``Loss.LEGACY``: transformers ≤ 4.44 ``LlamaForCausalLM.forward`` (e.g. v4.38.2): ``logits =
  logits.float()`` in the model, so ``output.logits`` is fp32 and the 16-bit logits are freed; then
  ``shift_logits = logits[..., :-1, :].contiguous()`` (a T1·V fp32 copy, freed when the forward
  returns: ``clone`` and slicing save nothing) and ``CrossEntropyLoss``.
- The HF ``Trainer.compute_loss`` drops the model output (and its logits) before ``backward``; a loop
  that binds ``outputs = model(**batch)`` keeps them through backward and the optimizer step, and,
  unless it deletes them, until the next step's forward returns (``Scenario.hold_logits``).
A frozen lm_head saves no input; under autocast a fp32 lm_head's bf16 weight copy is saved for the
input gradient (``mm`` saves ``mat2`` when ``self`` needs a gradient).
"""

from __future__ import annotations


def logits_dtype_bytes(c: int, autocast: bool, head_w: int) -> int:
    """lm_head output bytes: the autocast dtype, else the head weight's dtype."""
    return c if autocast else head_w


def loss_forward_bytes(V: int, ld: int, softcap: bool, T: int, T1: int, legacy: bool) -> int:
    """Live at the loss forward's busiest moment.

    hf: (1) logits ld·V·T; (2) ``logits.float()``, a fp32 copy 4·V·T unless the logits already are
    fp32 (a no-op then); (3) the log_softmax output 4·V·T.
    legacy: the larger of (a) the upcast moment, ld·V·T + 4·V·T (ld < 4), and (b) the cross-entropy
    moment: fp32 logits 4·V·T + shifted copy 4·V·T1 + log_softmax output 4·V·T1.
    Both: Gemma 2 final soft-capping (logits/cap, tanh, ·cap) keeps the tanh output, ld·V·T.
    """
    cap = ld * V * T if softcap else 0
    up = 4 * V * T if ld != 4 else 0
    if legacy:
        return max(ld * V * T + up, 4 * V * T + 8 * V * T1) + cap
    return ld * V * T + up + 4 * V * T + cap


def loss_backward_bytes(V: int, ld: int, softcap: bool, T: int, T1: int, legacy: bool) -> int:
    """Live during the log_softmax backward (its busiest moment), over N = T (hf) or T1 (legacy) rows:

    1. the saved log_softmax output: 4·V·N;
    2. nll_loss's gradient w.r.t. the log-probabilities (dense fp32): 4·V·N;
    3. log_softmax's gradient w.r.t. its input: 4·V·N;
    4. Gemma 2 soft-capping: the saved tanh output, ld·V·T.
    The later slice backward (legacy: zeros 4·V·T + the 4·V·T1 gradient) and the fp32→ld cast back
    are smaller. The logits themselves are gone unless the loop holds them (``held_logits_bytes``).
    """
    n = T1 if legacy else T
    return 12 * V * n + (ld * V * T if softcap else 0)


def held_logits_bytes(V: int, ld: int, T: int, legacy: bool, hold: bool) -> int:
    """Logits a loop that keeps ``outputs`` holds (through backward and the optimizer step; with
    ``Hold.LOOP`` also through the next forward): the fp32 ``output.logits`` (legacy) or the
    ld-dtype ones (hf); 0 when not held."""
    if not hold:
        return 0
    return (4 if legacy else ld) * V * T


def slice_gradient_segment_bytes(V: int, T: int, legacy: bool) -> int:
    """Reserve the legacy loss adds by block shape, not by size: the backward of
    ``logits[..., :-1, :]`` allocates a zero-filled fp32 gradient of the full b·s·V shape (4·V·T),
    while every fp32 b·s·V-class block the allocator has cached by then has b·(s−1) rows (the shifted
    copy, the log-softmax output, its gradients) and the full-shape fp32 logits are still alive. A
    cached block serves only requests no larger than itself, so that request maps a new segment:
    +4·V·T reserved over what the transformers-5 loss (one shape throughout) leaves. 0 for ``hf``."""
    return 4 * V * T if legacy else 0


def head_weight_copy_bytes(V: int, H: int, c: int, autocast: bool, head_w: int) -> int:
    """Autocast's bf16 copy of a fp32 lm_head weight, saved until the lm_head backward: c·V·H."""
    return c * V * H if (autocast and head_w != c) else 0


# --------------------------------------------------------------- chunked losses (Loss.CHUNKED_*)
#: torchtune ``CEWithChunkedOutputLoss.num_output_chunks`` (0.3 – 0.6).
TORCHTUNE_CHUNKS = 8
#: trl 1.16 ``kernels/chunked_logprob.py``: ``TOKEN_CHUNK_SIZE`` rows × ``_CHUNKED_LOGPROB_CHUNK_SIZE``
#: (``trainer/utils.py``) vocabulary columns per projection tile.
FUSED_TILE_ROWS, FUSED_TILE_COLS = 4096, 32768
#: trl 1.16's torch fallback folds (``_forward_tile`` / ``_backward_tile``, and ``_addmm_fp32``'s
#: ``.float()`` copies) on devices without Triton: bytes per tile element alive at the forward's and
#: the backward's busiest moment besides the tile itself. Read off the CPU trace of trl 1.16
#: (Qwen3-0.6B, 511 and 1023 positions; tests/engines/test_frameworks_engines.py holds both engines to it).
CPU_FOLD_FORWARD, CPU_FOLD_BACKWARD = 13, 29


def chunked_ce_forward_bytes(V: int, ld: int, T: int, Tc: int) -> int:
    """torchtune's chunked loss at its forward's busiest moment (the last chunk): every chunk's logits
    (ld·V·T, the list is alive until the loss returns), every chunk's saved fp32 log-softmax
    (4·V·T), and the last chunk's fp32 upcast (4·V·Tc, none when the logits already are fp32).
    Source: torchtune 0.6.1 ``modules/loss/ce_chunked_output_loss.py`` (``compute_cross_entropy``:
    ``F.cross_entropy(logits.float(), labels, reduction="sum")`` per chunk)."""
    return ld * V * T + 4 * V * T + (4 * V * Tc if ld != 4 else 0)


def chunked_ce_backward_bytes(V: int, T: int, Tc: int) -> int:
    """torchtune's chunked loss at its backward's busiest moment (the first chunk's log-softmax
    backward): every chunk's saved log-softmax (4·V·T) + that chunk's nll gradient and log-softmax
    gradient (2 × 4·V·Tc). The logits list was deleted after the loss (recipe ``del logits``)."""
    return 4 * V * T + 8 * V * Tc


def fused_head_bytes(N: int, H: int, fc: int, hb: int, weight_copy: int, cuda: bool, V: int = FUSED_TILE_COLS
                     ) -> tuple[int, int]:
    """(forward, backward) bytes of TRL's fused LM head (trl 1.16 ``ChunkedLogProbFunction``) over
    N scored positions, fc the projection's compute bytes, hb the hidden states' bytes.

    Forward: the tile buffer ``mm_buf`` (min(N, 4096) × 32768, fc), the scored hidden states (on
    CUDA the compact path's copy ``hidden_states[mask]``, N·H·hb, saved for backward), seven fp32
    statistics of N and the targets; the per-chunk weight cast ``weight[a:b].to(fc)`` (32768·H·fc)
    when the lm_head is wider than fc (``weight_copy``).
    Backward: the saved hidden states, ``grad_hidden`` accumulated in fp32 (4·N·H) and cast back to
    hb as the function returns, the tile buffer again and the weight cast.
    On CUDA the Triton folds allocate nothing; the CPU fallback's torch folds hold
    ``CPU_FOLD_FORWARD`` / ``CPU_FOLD_BACKWARD`` bytes per element of the used tile (min(V, 32768)
    columns: the buffer is 32768 wide whatever V)."""
    rows = min(N, FUSED_TILE_ROWS)
    tile = rows * FUSED_TILE_COLS
    used = rows * min(V, FUSED_TILE_COLS)
    small = 7 * 4 * N + 8 * N
    fwd = fc * tile + N * H * hb + small + weight_copy
    bwd = fc * tile + N * H * (hb + 4 + hb) + 4 * 4 * N + weight_copy
    if not cuda:
        fwd += CPU_FOLD_FORWARD * used
        bwd += CPU_FOLD_BACKWARD * used - 2 * N * H
    return fwd, bwd
