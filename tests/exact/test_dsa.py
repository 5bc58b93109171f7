"""DeepSeek sparse attention (``dsa``, GLM-5): the indexer's forward transient, hand-derived goldens.

Shapes: transformers 5.24 ``models/glm_moe_dsa/modeling_glm_moe_dsa.py`` (``GlmMoeDsaIndexer.forward``
L184-243, ``GlmMoeDsaAttention.forward`` L371-446); the arithmetic is derived in the docstrings of
``vramplan.analytic.mixers.dsa_indexer_scores``, ``dsa_indexer_locals`` and ``dsa_recompute_moment``.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.analytic.activations import Dtypes
from vramplan.analytic.mixers import dsa_indexer_locals, dsa_indexer_scores, dsa_recompute_moment
from vramplan.arch import Arch, resolve

#: 2 layers: layer 0 runs its indexer (dsa) with a dense MLP, layer 1 reuses its top-k (mla) with the MoE.
#: H 256, 4 heads, q_lora_rank 64, kv_lora_rank 32, qk_nope 32, qk_rope 16, v 32; indexer 4 heads of 32.
SMALL = dict(resolve("GLM-5.1").config, hidden_size=256, intermediate_size=512, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=1024, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32,
             qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=128, n_routed_experts=8,
             num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, num_hidden_layers=2,
             index_n_heads=4, index_head_dim=32, index_topk=64, indexer_types=["full", "shared"])

#: QLoRA under bf16 autocast, fp32 residual stream and norms (the hf-peft recipe), no dropout, checkpointing.
QLORA = Dtypes(c=2, autocast=True, resid=4, resid0=4, norm_w=4, base_w=2, other_w=4, lora=2, quantized=True,
               dropout=False, full=False, gc=True)
#: all-linear on GLM-5 (peft 0.21: the MLA projections, the indexer's linears, the fused experts, the router).
TARGETS = frozenset({"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "indexer.wq_b",
                     "indexer.wk", "indexer.weights_proj", "experts", "router"})


def _arch() -> Arch:
    return Arch.from_config(SMALL, name="small-dsa")


def test_indexer_scores_per_token_s():
    """``q·kᵀ`` over 4 indexer heads and its ``* softmax_scale`` copy, both alive: under autocast in bf16,
    2 · 4 · 2 = 16 B per token·s (b·s·s·4 each); without autocast in fp32 (``q.float()``), 2 · 4 · 4 = 32."""
    assert dsa_indexer_scores(QLORA, 4) == 16
    assert dsa_indexer_scores(replace(QLORA, autocast=False), 4) == 32


def test_indexer_locals():
    """What the layer references at the scores, none of it saved (B per token, fp32 throughout: bitsandbytes
    returns its input's dtype and the LoRA sum stays fp32; the rotary table is fp32):
    1. the attention input 4·256 = 1,024 (lora_A saves bf16 casts, not x itself);
    2. q_resid 4·64 = 256, q_states 4·4·48 = 768, k_pass 4·32 = 128, kv_b_proj's output 4·4·(32 + 32) = 1,024,
       rotated q_rot 4·4·16 = 256 and k_rot 4·16 = 64, query_states 768, key_states 768: 4,032 + 1,024;
    3. the indexer: wq_b's output 4·4·32 = 512, its rotated rope part 4·4·16 = 256 and the cat 512;
       k_norm's output 4·32 = 128, its rope part 4·16 = 64 and the cat 128: 1,600.
    Total 6,656. Fixed: autocast's bf16 copies of the r 8 A and B of wq_b, 2·8·(64 + 128) = 3,072, and of
    wk, 2·8·(256 + 32) = 4,608: 7,680."""
    a = _arch()
    lins = {lin.name: lin for lin in a.layer_linears(0)}
    assert dsa_indexer_locals(a, QLORA, TARGETS, 8, lins) == (6_656, 7_680)


def test_recompute_moment():
    """Layer 0's backward under checkpointing at its indexer's scores (``phases``' softmax-moment form):
    held = ``mla_walk`` steps 1-3 (rsqrt 4; q_a/kv_a bf16 casts + lora_A outputs 1,056; q_a_layernorm 260;
    q_b_proj 144; kv_a_layernorm 132 + the view's rope columns 64; kv_b_proj 80: 1,740; fixed LoRA copies
    q_a 5,120 + kv_a 4,864 + q_b 4,096 + kv_b 4,608 = 18,688) + the locals (6,656; 7,680):
    (8,396, 0, 26,368); gradients: the layer output's 4·256 and the frozen 4-bit down_proj's input gradient
    in fp32, 4·512: 3,072 per token; scores 16 per token·s. At 1 × 1024: 8,396·1,024 + 26,368 = 8,623,872
    held (the trace's 8,624,128), 3,145,728 of gradients (its 3,145,728), 16,777,216 of scores (its)."""
    a = _arch()
    assert dsa_recompute_moment(a, QLORA, TARGETS, 8, 0, "sdpa") == ((8_396, 0, 26_368), (3_072, 0, 0), 16)
    assert dsa_recompute_moment(a, replace(QLORA, gc=False), TARGETS, 8, 0, "sdpa") is None
