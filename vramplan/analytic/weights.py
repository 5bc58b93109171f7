"""Frozen base weights and their quantization state (bytes).

Symbols: n = elements of one weight matrix (in × out), B = 4-bit block size (``--blocksize``),
nb = ceil(n / B) blocks. Sources: QLoRA (Dettmers et al., arXiv 2305.14314, §3 "Double
Quantization"), bitsandbytes 0.50.2 ``functional.py::quantize_4bit`` / ``QuantState`` and
``nn/modules.py::Int8Params``; the bytes are checked "ours vs theirs" against bitsandbytes' own
quantization in the tests (``test_analytic_theirs.py``).
"""

from __future__ import annotations

from typing import Any, Mapping

from vramplan.arch.families import Family

#: NF4/FP4 code table: 16 fp32 values, one tensor per quantized weight
#: (bitsandbytes ``get_4bit_type`` builds a fresh tensor on every ``quantize_4bit`` call).
CODE4_BYTES = 16 * 4
#: Double-quant nested block size: bitsandbytes quantizes the absmax in blocks of 256.
NESTED_BLOCK = 256
#: The 256-entry fp32 "dynamic" code of the nested absmax. bitsandbytes caches the table per device
#: (``name2qmap``), but 0.50.2 ``functional.py::quantize_blockwise`` stores
#: ``code.to(A.device, copy=True)`` in every QuantState it returns, so each double-quantized weight
#: holds its own 1 KiB copy (``nested_code_bytes``).
NESTED_CODE_BYTES = 256 * 4


def packed_4bit_bytes(n: int) -> int:
    """Packed 4-bit weight: two codes per uint8 byte.

    ``n`` elements -> ceil(n / 2) bytes (bitsandbytes stores a ``((n + 1) // 2, 1)`` uint8 tensor).
    """
    return (n + 1) // 2


def nested_code_bytes(tensors: int, double_quant: bool) -> int:
    """The nested absmax's 256-entry fp32 code, one copy per double-quantized weight (see
    ``NESTED_CODE_BYTES``): 1 KiB × tensors, 0 without double quantization."""
    return tensors * NESTED_CODE_BYTES if double_quant else 0


def quant_state_4bit_bytes(n: int, blocksize: int, double_quant: bool) -> int:
    """Per-tensor 4-bit quantization state, excluding the nested code table (``nested_code_bytes``).

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


#: MXFP4 (OCP microscaling FP4): 32 elements share one uint8 E8M0 scale.
MXFP4_BLOCK = 32


def mxfp4_bytes(n: int) -> int:
    """An MXFP4 weight of ``n`` elements as gpt-oss ships it: ``*_blocks`` (two FP4 E2M1 codes per
    uint8, n / 2 bytes) and ``*_scales`` (one uint8 exponent per block of 32, n / 32 bytes): 4.25 bits
    per element. transformers 5.24 ``integrations/mxfp4.py``: ``Mxfp4GptOssExperts`` holds
    ``gate_up_proj`` as (E, 2M, H / 2) uint8 and ``_convert_moe_packed_tensors`` reads blocks of
    16 bytes (32 codes) against one scale each. (Kept for inference, the Triton layout
    ``swizzle_mxfp4`` may pad these; not priced.)"""
    return n // 2 + -(-n // MXFP4_BLOCK)


def float_bytes(n: int, nbytes: int) -> int:
    """``n`` elements stored in a floating dtype of ``nbytes`` bytes each (2: bf16/fp16, 4: fp32)."""
    return n * nbytes


#: Allocation granularity of the CUDA caching allocator (``c10/cuda/CUDACachingAllocator.cpp``
#: ``kMinBlockSize``): a tensor of a few bytes still takes one 512 B block.
ALLOC_BLOCK = 512

def _blocks(nbytes: int) -> int:
    return -(-nbytes // ALLOC_BLOCK) * ALLOC_BLOCK


def round_block(nbytes: int) -> int:
    """``nbytes`` rounded up to the caching allocator's 512 B block (one tensor)."""
    return _blocks(nbytes)


def rotary_dim(head_dim: int, cfg: Mapping[str, Any]) -> int:
    """Rotated dimensions per head: head_dim · ``partial_rotary_factor`` (config.json, or its rope
    parameters; 1 by default), as transformers' rotary modules size ``inv_freq``."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    factor = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0) if isinstance(rope, dict) else 1.0)
    return int(head_dim * (factor or 1.0))


def model_buffer_bytes(family: Family, head_dim: int, num_layers: int, cfg: Mapping[str, Any]) -> int:
    """Non-parameter buffers of the transformers model, at the allocator's 512 B granularity.

    1. Rotary embedding (``*RotaryEmbedding.__init__``, transformers 5.24): ``inv_freq`` and its
       ``original_inv_freq`` clone, each ``dim / 2`` fp32 values, dim = head_dim ·
       ``partial_rotary_factor`` (1 by default); one pair per attention layer type for families with
       ``Family.rotary_per_layer_type`` (Gemma 3), else one pair (``Family.rotary_sets``).
    2. A scaled embedding (``Family.scaled_embedding``, Gemma): one scalar ``embed_scale`` (a 512 B block).
    A family with a ``Family.layout`` counts its own (Gemma 4: ``vramplan.arch.layouts``).
    Each tensor is rounded up to 512 B, as the caching allocator (and the trace) count it: e.g.
    Llama / Qwen3 (head_dim 128): 2 × round512(64 · 4) = 1,024 B.
    """
    if family.layout is not None:  # the family's own buffers (``vramplan.arch.layouts``)
        from vramplan.arch.layouts import LAYOUTS
        return LAYOUTS[family.layout].buffers(cfg, num_layers)
    dim = rotary_dim(head_dim, cfg)
    out = family.rotary_sets(cfg, num_layers) * 2 * _blocks(4 * (dim // 2))
    if family.scaled_embedding:
        out += _blocks(1)
    return out


def embedding_leaf_factor(family: Family, gc: bool, embedding_trains: bool) -> int:
    """How many embedding-sized tensors (resid0·H per token) stay alive from the forward to the end of
    backward under gradient checkpointing: 1, layer 0's checkpointed input. 2 for a family that scales
    the embedding output outside the embedding module (``Family.embedding_multiplier``: Granite,
    ``inputs_embeds = inputs_embeds * self.embedding_multiplier``, ``modeling_granite.py``
    ``GraniteModel.forward``): peft's ``enable_input_require_grads`` hook (on checkpointing, under LoRA)
    makes the embedding's own output an autograd leaf, which its ``AccumulateGrad`` node holds until
    the graph is freed, beside the scaled copy layer 0 reads (the trace's tracker at the peak: the
    embedding output and the product both alive). A trainable embedding's output is no leaf: 1."""
    return 2 if (family.embedding_multiplier and gc and not embedding_trains) else 1
def expert_bias_buffer_bytes(kind: str | None, moe_layers: int, experts: int, load_bytes: int) -> int:
    """The routers' ``e_score_correction_bias`` buffers (``Family.score_bias``): one tensor of E values
    per MoE layer, a buffer (``prepare_model_for_kbit_training`` upcasts parameters only), each rounded
    to 512 B. GLM-4.5 keeps it in fp32 (transformers 5.24 ``modeling_glm4_moe.py``
    ``Glm4MoeTopkRouter.__init__``, ``_keep_in_fp32_modules_strict``; Nemotron-H ``NemotronHTopkRouter``); MiniMax-M2 in the load dtype
    (``MiniMaxM2SparseMoeBlock.__init__``: ``torch.zeros(num_local_experts)`` under the load dtype).
    E.g. GLM-4.5-Air: 45 layers × round512(4 · 128) = 23,040 B."""
    if not kind or not moe_layers:
        return 0
    return moe_layers * _blocks((4 if kind == "fp32" else load_bytes) * experts)


def rope_cache_bytes(mode: str, head_dim: int, positions: int, num_layers: int) -> int:
    """torchtune's precomputed rotary tables (``Scenario.rope_cache``), fp32, non-persistent buffers
    that move to the device with the model (torchtune 0.6.1):

    - ``shared``: ``modules/position_embeddings.py`` ``RotaryPositionalEmbeddings.build_rope_cache``
      (and ``Llama3ScaledRoPE``): ``stack([cos, sin], -1)`` of max_seq_len × head_dim/2 angles:
      4 · head_dim · positions bytes, one table for the model (the builders pass one module to every layer);
    - ``wide``: ``models/qwen2/_positional_embeddings.py`` / ``models/phi3/_position_embeddings.py``:
      ``cat([cos, sin], -1)`` of the doubled angles, max_seq_len × 2·head_dim: 8 · head_dim · positions;
    - ``per-layer``: the ``wide`` table once per layer (``lora_qwen2_self_attention`` /
      ``lora_phi3_self_attention`` construct their own).
    E.g. torchtune's ``lora_qwen2_5_7b_base`` (28 layers, head_dim 128, max_seq_len 131072):
    28 · 8 · 128 · 131072 = 3,758,096,384 B (3.5 GiB)."""
    if mode == "none" or positions <= 0:
        return 0
    per = (4 if mode == "shared" else 8) * head_dim * positions
    return _blocks(per) * (num_layers if mode == "per-layer" else 1)
