"""Frozen base weights and their quantization state (bytes).

Symbols: n = elements of one weight matrix (in × out), B = 4-bit block size (``--blocksize``),
nb = ceil(n / B) blocks. Sources: QLoRA (Dettmers et al., arXiv 2305.14314, §3 "Double
Quantization"), bitsandbytes 0.50.2 ``functional.py::quantize_4bit`` / ``QuantState`` and
``nn/modules.py::Int8Params``; the bytes are checked "ours vs theirs" in tests/test_analytic_weights.py.
"""

from __future__ import annotations

#: NF4/FP4 code table: 16 fp32 values, one tensor per quantized weight
#: (bitsandbytes ``get_4bit_type`` builds a fresh tensor on every ``quantize_4bit`` call).
CODE4_BYTES = 16 * 4
#: Double-quant nested block size: bitsandbytes quantizes the absmax in blocks of 256.
NESTED_BLOCK = 256
#: The 256-entry fp32 "dynamic" code of the nested absmax; bitsandbytes caches it per device
#: (``name2qmap``), so the whole model shares one.
NESTED_CODE_BYTES = 256 * 4


def packed_4bit_bytes(n: int) -> int:
    """Packed 4-bit weight: two codes per uint8 byte.

    ``n`` elements -> ceil(n / 2) bytes (bitsandbytes stores a ``((n + 1) // 2, 1)`` uint8 tensor).
    """
    return (n + 1) // 2


def quant_state_4bit_bytes(n: int, blocksize: int, double_quant: bool) -> int:
    """Per-tensor 4-bit quantization state, excluding the shared nested code table.

    1. nb = ceil(n / B) absmax values, one per block.
    2. Without double quant: absmax is fp32 -> 4·nb, plus the 16-entry fp32 code (64 B).
    3. With double quant (QLoRA §3): absmax is re-quantized to uint8 -> nb bytes, plus
       ceil(nb / 256) fp32 second-level absmax, one fp32 offset (the absmax mean), plus the 64 B code.
    Per parameter at B = 64: 32/64 = 0.5 bit (no DQ) or 8/64 + 32/(64·256) = 0.127 bit (DQ), so
    4.5000 and 4.1270 bits/param with the packed weight.
    """
    nb = -(-n // blocksize)
    if not double_quant:
        return 4 * nb + CODE4_BYTES
    return nb + 4 * (-(-nb // NESTED_BLOCK)) + 4 + CODE4_BYTES


def int8_weight_bytes(in_features: int, out_features: int) -> tuple[int, int]:
    """LLM.int8 (``Linear8bitLt``): int8 weight plus one fp32 row scale (``SCB``) per output row.

    Returns (weight bytes, quant-state bytes) = (in·out, 4·out). Source: bitsandbytes 0.50.2
    ``nn/modules.py::Int8Params._quantize`` (``int8_vectorwise_quant`` -> CB, SCB).
    """
    return in_features * out_features, 4 * out_features


def float_bytes(n: int, nbytes: int) -> int:
    """``n`` elements stored in a floating dtype of ``nbytes`` bytes each (2: bf16/fp16, 4: fp32)."""
    return n * nbytes
