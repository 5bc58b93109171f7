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

import math


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
    columns: the buffer is 32768 wide whatever V).
    On CUDA, both loops also bind ``hidden_chunk = hidden[a:b].to(fc)``, a copy of min(N, 4096) rows
    when hb is not fc; the backward binds its weight cast too (``w_chunk = weight[a:b].to(fc)``), so
    while the next chunk's cast is made the previous one is still alive: two casts at once, or at the
    return one cast beside ``grad_hidden``'s hb copy, whichever is larger."""
    rows = min(N, FUSED_TILE_ROWS)
    tile = rows * FUSED_TILE_COLS
    used = rows * min(V, FUSED_TILE_COLS)
    small = 7 * 4 * N + 8 * N
    fwd = fc * tile + N * H * hb + small + weight_copy
    if not cuda:
        bwd = fc * tile + N * H * (hb + 4 + hb) + 4 * 4 * N + weight_copy
        fwd += CPU_FOLD_FORWARD * used
        bwd += CPU_FOLD_BACKWARD * used - 2 * N * H
        return fwd, bwd
    chunk = rows * H * fc if hb != fc else 0
    fwd += chunk
    bwd = fc * tile + N * H * (hb + 4) + 4 * 4 * N + chunk + max(2 * weight_copy, weight_copy + N * H * hb)
    return fwd, bwd


# ------------------------------------------------- losses that never build the logits (Loss.LIGER/CCE/UNSLOTH)
# Symbols: N rows of hidden states (b·s), K label rows (the rows whose logits are computed), H hidden, V
# vocabulary; hb the hidden states' bytes, hw the lm_head weight's, c the compute dtype's; ``autocast``
# whether the forward runs under 16-bit autocast; ``head_trains`` full fine-tuning's trainable lm_head.
# These kernels are Triton: each function below prices the tensors its Python driver allocates (the
# Triton kernels allocate nothing); ``vramplan.hf.fused_losses`` allocates the same tensors in the trace.


def next_pow2(n: int) -> int:
    """``triton.next_power_of_2``: the smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def liger_chunk_rows(N: int, H: int, V: int) -> int:
    """Rows per chunk of Liger's fused linear cross-entropy (liger-kernel 0.8.5
    ``ops/fused_linear_cross_entropy.py`` L99-106, ``chunk_mem_const`` 1): (1) ``inc_factor =
    ceil(V / H)``; (2) ``chunk = next_pow2(ceil(N / inc_factor))``; (3) at most N. E.g. N = 16384,
    V = 32000, H = 4096: inc 8, chunk 2048 (the source's own example)."""
    inc = -(-V // H)
    return min(next_pow2(-(-N // inc)), N)


def liger_flce_bytes(N: int, H: int, V: int, hb: int, hw: int, c: int, autocast: bool, head_trains: bool,
                     rows: int | None = None) -> tuple[int, int]:
    """(forward, backward) bytes of ``LigerFusedLinearCrossEntropyFunction`` over N rows (liger-kernel
    0.8.5 ``ops/fused_linear_cross_entropy.py``; the HF integration ``transformers/model/loss_utils.py``
    ``LigerForCausalLMLoss`` pads and shifts the labels, so every one of the b·s rows is projected).

    Forward, inside one chunk of R = ``liger_chunk_rows`` rows (L108-160, L156-376):
    1. ``grad_input = zeros_like(_input)``: N·H·hb, filled chunk by chunk and saved for backward;
    2. ``grad_weight = zeros_like(weight)`` when the lm_head trains: V·H·hw (``accum_dtype`` None);
    3. ``loss_1d`` (fp32, N) and ``target_mask`` (bool, N): 5·N; and the hidden states passed in
       (N·H·hb), which the patched model forward holds while the loss runs;
    4. the chunk's logits, R·V in the matmul's dtype (c under autocast, else hb), which the Triton
       cross-entropy kernel overwrites with their gradient in place. On CUDA with one dtype throughout
       (``_can_use_mm_out``) it is one preallocated buffer and ``grad_input`` is written with ``out=``;
    5. otherwise (mixed dtypes under autocast: ``custom_fwd`` keeps autocast on) each ``@`` casts its
       operands: the frozen weight to c (c·V·H, not cached: not a leaf that requires grad) and, if
       hb != c, the input chunk (R·H·c); the ``grad_logits @ weight`` result (R·H·c) is copied into
       ``grad_input``. The busiest moment is the first matmul (input copy) or the second (its result),
       the same bytes.
    Backward (L411-455): the saved ``grad_input`` (and ``grad_weight``), scaled in place by
    ``element_mul_kernel``: nothing new. The kernels need CUDA, so this is the CUDA program on either
    device.
    ``rows`` < N: only that many rows reach the loss (ms-swift's ``logits_to_keep`` slices the hidden
    states to the label positions and its ``LigerForCausalLMLoss`` patch makes them contiguous: a copy
    of rows·H·hb beside the N·H·hb hidden states); the terms above then count ``rows`` rows."""
    n = N if rows is None else rows
    R = liger_chunk_rows(n, H, V)
    ld = c if autocast else hb
    one_dtype = hb == hw and (not autocast or hb == c)
    saved = n * H * hb + (V * H * hw if head_trains else 0)
    # + the hidden states themselves (alive in the model's forward) and the kept rows' copy
    small = 5 * n + N * H * hb + (n * H * hb if n < N else 0)
    if one_dtype:
        return saved + small + R * V * ld, saved
    wcast = c * V * H if (autocast and hw != c) else 0
    xcast = R * H * c if (autocast and hb != c) else 0
    return saved + small + R * V * ld + wcast + max(xcast, R * H * ld), saved


def cce_bytes(N: int, K: int, H: int, V: int, hb: int, c: int, hw: int, head_trains: bool) -> tuple[int, int]:
    """(forward, backward) bytes of Cut Cross-Entropy's ``LinearCrossEntropyFunction`` over N rows of
    which K carry a (shifted) label (cut-cross-entropy 25.1.1 ``cce.py``, ``cce_lse_forward.py``,
    ``indexed_dot.py``, ``cce_backward.py``, ``utils.py``; axolotl's fork ``transformers/utils.py``
    ``apply_lce`` calls it with ``shift=True``).

    Forward: the hidden states e (N·H·hb; ``apply_lce`` casts fp32 ones to a bf16 classifier's dtype,
    N·H·c, both alive); ``valids`` (``(targets != ignore).nonzero().to(int32)``, then ``.sum(1)``:
    int64, 8·K); ``lse`` (fp32 K); ``logit_avg`` (fp32 V, since ``filter_eps`` is set); ``neg_dot``
    (fp32 K, ``nll`` adds ``lse`` into it in place). Saved for backward: e, lse, valids, logit_avg
    (the targets are the batch's labels, the classifier a parameter): no logits at any moment.
    Backward: the saved tensors, ``vocab_ordering`` (``argsort(logit_avg).to(int32)``: 4·V, the
    int64 argsort 8·V freed first), ``de = zeros_like(e)`` (N·H·c), ``dc`` (V·H·hw when the
    classifier trains), and the lock arrays (int32, ~K and ~V elements: ``new_zeros((ceil(K/n), n))``,
    n = ceil(H/64)); after a cast, the cast's backward (N·H·hb beside ``de``)."""
    cast = N * H * hb if hb != c else 0
    e = N * H * c
    saved = e + 4 * K + 8 * K + 4 * V
    fwd = saved + 4 * K + cast
    n = -(-H // 64)
    locks = 4 * (-(-K // n) * n + -(-V // n) * n)
    bwd = saved + 4 * V + e + (V * H * hw if head_trains else 0) + locks
    if cast:  # then ``ToCopyBackward``: the gradient cast back to the fp32 hidden states, e freed
        bwd = max(bwd, e + cast)
    return fwd, bwd


#: unsloth_zoo 2026.10.9 ``fused_losses/fused_linear.py``: ``_CHUNK_GB`` (the budget's cap, GiB),
#: ``_MIN_LOGITS``, ``_MAX_ROWS``, the flash path's ``_SPLIT_COLS``, ``_BWD_ROWS``, ``_BWD_TILE_BYTES``,
#: and ``_SMALL_CARD_BYTES`` (cards at or below it take the flash path at any row count).
UNSLOTH_BUDGET = 2 * 2**30
UNSLOTH_MIN_LOGITS, UNSLOTH_MAX_ROWS = 512 * 151936, 4096
UNSLOTH_SPLIT_COLS, UNSLOTH_FLASH_ROWS, UNSLOTH_TILE_BYTES = 16384, 4096, 256 * 2**20


def unsloth_budget_bytes(free: int | None) -> int:
    """``_budget_bytes``: min(2 GiB, half the free device memory at the first call), cached per device
    (``tiled_mlp._default_target_gb``: ``torch.cuda.mem_get_info()[0] · 0.5``). ``free`` None: the cap
    (any card with at least 4 GiB free when the loss first runs)."""
    return UNSLOTH_BUDGET if free is None else max(min(UNSLOTH_BUDGET, free // 2), 1)


def _pow2_at_or_below(x: float) -> int:
    """``_pow2(x)`` halved when above x (``fused_linear_rows``): the largest power of two <= x, 0 below 1."""
    p = 1 << max(math.ceil(math.log2(max(x, 1))), 0)
    return p // 2 if p > x else p


def unsloth_chunk_rows(K: int, H: int, V: int, bpl: int, budget: int = UNSLOTH_BUDGET) -> int:
    """Rows per chunk of Unsloth's chunked cross-entropy (``fused_linear_rows``, L140-154): (1) the
    largest power of two <= K·H/V (Liger's rule, rounded down); (2) clamped to [m, 4096], m the largest
    power of two <= 512·151936/V, itself within [512, 4096]; (3) at most budget // (V·bpl) rows (at least
    2); (4) within [1, K]."""
    rows = _pow2_at_or_below(K * H / V)
    lo = min(max(_pow2_at_or_below(UNSLOTH_MIN_LOGITS / V), 512), UNSLOTH_MAX_ROWS)
    rows = min(max(rows, lo), UNSLOTH_MAX_ROWS)
    rows = min(rows, max(budget // (V * bpl), 2))
    return max(min(rows, K), 1)


def unsloth_flash(K: int, V: int, c: int, head_trains: bool, small_card: bool = False) -> bool:
    """Whether ``_ce_impl`` takes the tiled "flash" forward (L1316-1318): fp32 logits (CUDA, sm >= 80),
    a 16-bit compute dtype, a frozen head, more than two 16384-column splits (V > 32768) and K >= 4096
    label rows (any K on a card of at most 24.5 GiB)."""
    return c == 2 and not head_trains and -(-V // UNSLOTH_SPLIT_COLS) > 2 and (small_card or K >= UNSLOTH_FLASH_ROWS)


def unsloth_tile_layout(K: int, V: int, budget: int = UNSLOTH_BUDGET) -> tuple[int, int]:
    """(rows, vocabulary columns) of the tiled path's fp32 tile (``_tiled_layout`` L1088-1097, on a card
    above 24.5 GiB, no row cap): (1) the tile budget min(256 MiB, budget); (2) rows = min(4096, K,
    tile budget // (16384·4)); (3) columns = max(tile budget // (4·rows), 16384), rounded down to a
    multiple of 16384 and at most V rounded up to one."""
    tb = min(UNSLOTH_TILE_BYTES, budget)
    R = max(min(UNSLOTH_FLASH_ROWS, K, tb // (UNSLOTH_SPLIT_COLS * 4)), 1)
    tile = max(tb // (R * 4), UNSLOTH_SPLIT_COLS)
    return R, min(tile - tile % UNSLOTH_SPLIT_COLS, -(-V // UNSLOTH_SPLIT_COLS) * UNSLOTH_SPLIT_COLS)


def unsloth_ce_bytes(N: int, K: int, H: int, V: int, hb: int, hw: int, c: int, head_trains: bool,
                     budget: int = UNSLOTH_BUDGET) -> tuple[int, int]:
    """(forward, backward) bytes of Unsloth's ``fused_linear_cross_entropy`` over N rows, K of them
    labelled (unsloth_zoo 2026.10.9 ``fused_losses/fused_linear.py`` ``_ce_impl`` L1286-1386,
    ``_tiled_forward`` L1100-1186, ``_ce_backward`` L1700-1714), on CUDA with fp32 logits (sm >= 80);
    c is ``_compute_dtype``'s: the autocast dtype, else the head weight's.

    Both paths: the hidden states passed in (N·H·hb, held by the model's forward); ``grad_h`` (N·H·hb,
    zeros, saved for backward); ``acc_w`` (V·H·hw) when the head
    trains; ``idx`` (``keep.nonzero()``, int64 K) and ``lp_all`` (fp32 K); ``w = weight.to(c)``
    (c·V·H when hw != c); each chunk's rows ``.to(c)`` (R·H·c when hb != c; an ``index_select``
    copy, R·H·hb, when K < N).
    Chunked path: one buffer of R × ceil8(V) fp32 logits (``_Buffers``; fp32 since ``_logits_mode``
    picks fp32 logits on sm >= 80, and fp32 compute has 4-byte logits anyway), R = ``unsloth_chunk_rows``;
    the chunk's hidden-state gradient ``_dz_w`` (fp32 R·H, then ``.to(hb)`` R·H·hb when K < N and
    hb is 16-bit).
    Flash path: R = min(4096, K) rows × a vocabulary tile of max(256 MiB // (4·R), 16384) columns
    (a multiple of 16384, at most V rounded up), fp32; ``acc`` (fp32 R·H), ``m_run`` (fp32 R), ``part``
    (fp32 8 × ceil(V/16384) × R), ``lse`` (fp32 K).
    Backward: the saved ``grad_h`` and its scaled copy (``fused_linear_scale_rows``: N·H·hb), and
    likewise for ``acc_w``."""
    gw = V * H * hw if head_trains else 0
    # grad_h and the hidden states themselves (held by the model's forward while the loss runs)
    base = 2 * N * H * hb + gw + 12 * K + (c * V * H if hw != c else 0)

    def rows_copy(R: int) -> int:
        return R * H * c if hb != c else (R * H * hb if K < N else 0)

    if unsloth_flash(K, V, c, head_trains):
        R, tile = unsloth_tile_layout(K, V, budget)
        splits = -(-V // UNSLOTH_SPLIT_COLS)
        fwd = base + 4 * K + R * (-(-tile // 8) * 8) * 4 + 4 * R * H + 4 * R + 4 * 8 * splits * R + rows_copy(R)
    else:
        R = min(unsloth_chunk_rows(K, H, V, 4, budget), K)
        fwd = base + R * (-(-V // 8) * 8) * 4 + rows_copy(R) + 4 * R * H + (R * H * hb if K < N and hb != 4 else 0)
    bwd = 2 * (N * H * hb + gw)
    return fwd, bwd
