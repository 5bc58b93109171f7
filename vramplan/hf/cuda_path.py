"""Where bitsandbytes' CPU code path allocates differently from the CUDA path users run.

An op-level trace (fake or real CPU) sees what an operator returns, not what it allocates and frees
inside. bitsandbytes 0.50's CUDA kernel for ``bitsandbytes::gemm_4bit``
(``bitsandbytes/backends/cuda/ops.py``) uses its fused 4-bit GEMM only for inputs of at most
``_gemm_4bit_custom_max_m`` = 1536 rows whose inner dimension is a multiple of the block size; past
that it runs ``_dequant_linear_fallback``, which inside the op allocates:

1. with double quantization: the fp32 absmax dequantized (``absmax_dq``), then ``absmax_dq + offset``
   (a second fp32 tensor of the same size), both alive until the op returns;
2. the whole weight dequantized to the input's dtype (``B_dq``, N x K);
3. the output of ``F.linear`` (the op's result, which the tracker counts anyway).

``gemm_4bit_transient`` returns items 1 and 2 so the tracker can count them for the op's duration.
The fused path (short inputs) allocates nothing extra. Tiny-M heuristics that may pick the fallback
for some short shapes on some GPUs are not modelled.
"""

from __future__ import annotations

from typing import Any

from vramplan.hf.tracker import round_up

#: ``bitsandbytes/backends/cuda/ops.py``: rows above which CUDA dequantizes then calls F.linear.
CUDA_CUSTOM_MAX_M = 1536
CATEGORY = "temporary/fused_dequant"


def gemm_4bit_transient(func: Any, args: tuple, kwargs: dict) -> tuple[str, int] | None:
    """Bytes the CUDA ``gemm_4bit`` allocates inside the op for these arguments (None if none)."""
    import torch

    if func is not torch.ops.bitsandbytes.gemm_4bit.default:
        return None
    names = ("A", "B", "shapeB", "absmax", "blocksize", "quant_type", "bias", "absmax_8bit",
             "absmax_code", "absmax_offset")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    A, shapeB, blocksize = bound["A"], bound["shapeB"], bound["blocksize"]
    K = A.shape[-1]
    M = A.numel() // K
    if M <= CUDA_CUSTOM_MAX_M and K % blocksize == 0:
        return None
    nbytes = round_up(int(shapeB[0]) * int(shapeB[1]) * A.element_size())
    absmax_8bit = bound.get("absmax_8bit")
    if absmax_8bit is not None:
        nbytes += 2 * round_up(4 * absmax_8bit.numel())
    return CATEGORY, nbytes
