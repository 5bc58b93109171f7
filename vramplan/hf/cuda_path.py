"""Where the CPU code path allocates differently from the CUDA path users run.

The trace runs on CPU (fake tensors). With ``semantics="cuda"`` (the default) it emulates three CUDA
behaviours, each at the op or call that differs, so the count is what the same program allocates on
CUDA; ``semantics="cpu"`` leaves the CPU program exactly as it runs (fake-vs-real tests, CPU
profiles):

A. ``cuda_semantics()``: dropout. ``aten::dropout`` (``ATen/native/Dropout.cpp``) takes the fused
   ``native_dropout`` only for CUDA inputs (``is_fused_kernel_acceptable``: ``input.is_cuda()``); on
   CPU it is the composite ``input * bernoulli_mask / (1 - p)`` whose saved mask has the input's
   dtype (2 or 4 B/element). On CUDA ``native_dropout`` saves a bool mask (1 B/element). Emulated by
   routing ``torch.nn.functional.dropout`` (training, 0 < p < 1, not in place) through
   ``torch.ops.aten.native_dropout``, whose CPU kernel also returns a bool mask.
B. ``cuda_semantics()``: peft's CPU-only cast. peft 0.21.2 ``lora/bnb.py`` (``Linear8bitLt`` /
   ``Linear4bit.forward``) sets ``requires_conversion = not torch.is_autocast_enabled()``; the
   argument-less call reads CUDA's autocast flag, False under CPU autocast, so on CPU peft casts the
   LoRA input to the fp32 adapter dtype (and the output back) even under autocast; on CUDA under
   autocast it does not. Emulated by answering the argument-less ``torch.is_autocast_enabled()``
   with the CPU autocast state that stands in for CUDA's (calls naming a device are unchanged).
   The unconditional ``self._cast_input_dtype(x, lora_A.weight.dtype)`` of plain ``lora.Linear``
   (``lora/layer.py``, unquantized bases) runs on both devices and is left alone.
C. ``gemm_4bit_transient`` (below): bitsandbytes' in-kernel dequantization.

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

import contextlib
from typing import Any, Iterator

from vramplan.hf.tracker import round_up

#: The two modes of the trace: what the program allocates on CUDA (the product) or on CPU.
SEMANTICS = ("cuda", "cpu")


@contextlib.contextmanager
def cuda_semantics(enabled: bool = True) -> Iterator[None]:
    """Emulate behaviours A and B of the module docstring while the block runs (no-op if not ``enabled``)."""
    if not enabled:
        yield
        return
    import torch
    import torch.nn.functional as F

    orig_dropout = F.dropout
    orig_autocast = torch.is_autocast_enabled

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if training and not inplace and 0.0 < p < 1.0 and input.numel() > 0:
            return torch.ops.aten.native_dropout(input, p, True)[0]
        return orig_dropout(input, p, training, inplace)

    def is_autocast_enabled(*args: Any, **kwargs: Any) -> bool:
        if args or kwargs:
            return orig_autocast(*args, **kwargs)
        return orig_autocast() or orig_autocast("cpu")

    F.dropout = dropout
    torch.is_autocast_enabled = is_autocast_enabled
    try:
        yield
    finally:
        F.dropout = orig_dropout
        torch.is_autocast_enabled = orig_autocast

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
