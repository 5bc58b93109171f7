"""Optimizer state and the optimizer step's temporaries (bytes).

Symbols: P = trainable elements; a trainable tensor of n elements. Sources:
- torch 2.x ``optim/adamw.py``: ``exp_avg`` and ``exp_avg_sq`` in the parameter's dtype (fp32 here)
  -> 8 B per fp32 parameter; the multi-tensor (foreach) step materialises ``exp_avg_sq.sqrt()`` for
  all parameters at once (``_multi_tensor_adamw``: ``torch._foreach_sqrt``) -> one P-sized temporary.
- bitsandbytes 0.50.2 ``optim/optimizer.py::Optimizer2State.init_state``: a tensor with fewer than
  ``min_8bit_size`` = 4096 elements keeps fp32 ``state1``/``state2`` (8 B/elem); larger ones get
  uint8 ``state1``/``state2`` (2 B/elem) plus fp32 ``absmax1``/``absmax2``, one per 256-element
  block. ``qmap1``/``qmap2`` are the shared cached "dynamic" code (not per tensor).
- Paged variants: the same tensors, allocated by bitsandbytes' ``get_paged`` in CUDA managed
  memory (``cudaMallocManaged``), invisible to ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

from vramplan.scenario import Optim

MIN_8BIT_SIZE = 4096
BLOCK_8BIT = 256


def adamw_state_bytes(params: int, param_bytes: int = 4) -> int:
    """torch AdamW: two moments in the parameter dtype -> 2 · P · param_bytes."""
    return 2 * params * param_bytes


def adamw8bit_state_bytes(sizes: list[tuple[int, int]]) -> int:
    """bitsandbytes 8-bit AdamW over tensors given as (elements n, instances c).

    1. n < 4096: 2 fp32 states -> 8·n.
    2. else: 2 uint8 states + 2 fp32 absmax per 256-block -> 2·n + 8·ceil(n / 256).
    """
    total = 0
    for n, c in sizes:
        if n < MIN_8BIT_SIZE:
            total += c * 8 * n
        else:
            total += c * (2 * n + 8 * (-(-n // BLOCK_8BIT)))
    return total


def optimizer_state_bytes(optim: Optim, sizes: list[tuple[int, int]], param_bytes: int = 4) -> int:
    """State of ``optim`` over the trainable tensors ``sizes`` (SGD without momentum: 0)."""
    if optim is Optim.SGD:
        return 0
    if optim.eight_bit:
        return adamw8bit_state_bytes(sizes)
    return adamw_state_bytes(sum(n * c for n, c in sizes), param_bytes)


#: bitsandbytes pages a state buffer only for tensors of at least 1e5 elements
#: (``Optimizer8bit.get_state_buffer``: ``if not self.is_paged or A.numel() < 1e5: torch.zeros_like``).
PAGED_MIN_NUMEL = 100_000


def paged_split_bytes(optim: Optim, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(device bytes, managed bytes) of a paged bitsandbytes optimizer's state.

    1. state1/state2 of a tensor with n ≥ 1e5 elements go to CUDA managed memory; smaller ones and
       every 8-bit ``absmax`` buffer (plain ``torch.zeros``) stay in device memory.
    2. bytes per tensor as in ``adamw8bit_state_bytes`` / ``adamw_state_bytes``.
    """
    device = managed = 0
    for n, c in sizes:
        if optim.eight_bit and n >= MIN_8BIT_SIZE:
            states, absmax = 2 * n, 8 * (-(-n // BLOCK_8BIT))
        else:
            states, absmax = 8 * n, 0
        if n >= PAGED_MIN_NUMEL:
            managed += c * states
            device += c * absmax
        else:
            device += c * (states + absmax)
    return device, managed


def optimizer_step_temp_bytes(optim: Optim, params: int, param_bytes: int = 4) -> int:
    """Transient memory of one optimizer step.

    torch AdamW as the HF Trainer runs it (``adamw_torch_fused``, ``torch._fused_adamw_``) and the
    bitsandbytes optimizers update each tensor in place with one fused kernel: no temporaries. SGD
    updates in place. (The foreach AdamW would add one P-sized ``sqrt(v)`` list.)
    """
    return 0


def state_thresholds(optim: Optim) -> tuple[int, ...]:
    """Tensor sizes (elements) at which ``optim`` changes how it stores a tensor's state: 8-bit
    optimizers keep tensors under ``MIN_8BIT_SIZE`` in 32 bits, paged ones page only tensors of at
    least ``PAGED_MIN_NUMEL``. Crossing one can *lower* a tensor's device bytes as it grows, so the
    budget is not monotone in the LoRA rank there (``vramplan.plan.rank_breakpoints``)."""
    out: list[int] = []
    if optim.eight_bit:
        out.append(MIN_8BIT_SIZE)
    if optim.paged:
        out.append(PAGED_MIN_NUMEL)
    return tuple(out)
