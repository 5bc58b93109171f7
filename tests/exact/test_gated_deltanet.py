"""Gated DeltaNet (Qwen3-Next, Qwen3.5): the mixer's shapes, its saved bytes and its generation cache.

Golden figures are derived by hand in the docstrings (transformers 5.24 ``modeling_qwen3_next.py``,
``modeling_qwen3_5.py``; the delta rule's torch fallback ``torch_chunk_gated_delta_rule``).
"""

from __future__ import annotations

from vramplan.analytic.mixers import state_bytes

from vramplan.analytic import activations as act
from vramplan.analytic import adapters as ad
from vramplan.analytic.evaluation import GenTerms, generation_peak
from vramplan.analytic.mixers import deltanet_core_saved
from vramplan.arch import resolve
from vramplan.arch.mixers import deltanet_dims


def _d(c: int, autocast: bool) -> act.Dtypes:
    return act.Dtypes(c=c, autocast=autocast, resid=4, resid0=4, norm_w=4, base_w=c, other_w=4, lora=c,
                      quantized=True, dropout=False, full=False)


def test_qwen3_next_linears_and_params():
    """Qwen3-Next-80B-A3B (H 2048, 48 layers, 36 gated DeltaNet + 12 full attention; nk 16, nv 32,
    dk = dv = 128, kernel 4): in_proj_qkvz 2048 × (2·2048 + 2·4096 = 12,288) × 36 = 905,969,664;
    in_proj_ba 2048 × 64 × 36 = 4,718,592; out_proj 4096 × 2048 × 36 = 301,989,888; the gated q_proj
    2048 × 2·16·256 (8,192) × 12 = 201,326,592; conv1d (2·2048 + 4096 = 8,192 channels) × 4 × 36 =
    1,179,648; A_log and dt_bias 32 × 36 = 1,152 each."""
    a = resolve("Qwen3-Next-80B-A3B-Instruct")
    p = a.param_counts()
    assert (p["in_proj_qkvz"], p["in_proj_ba"], p["out_proj"], p["q_proj"]) == (
        905_969_664, 4_718_592, 301_989_888, 201_326_592)
    assert (p["gated_deltanet.conv1d"], p["gated_deltanet.A_log"], p["gated_deltanet.dt_bias"]) == (
        1_179_648, 1_152, 1_152)
    assert a.mixer_params == 1_179_648 + 2 * 1_152
    assert [c.count for c in a.layer_classes()] == [36, 12] and a.mixer_layers("attention") == 12


def test_qwen3_5_reads_the_text_part_and_the_outer_tie():
    """Qwen3.5-0.8B nests its text model (``text_config``, model_type qwen3_5_text) and writes
    ``tie_word_embeddings: true`` beside it too; the split projections: in_proj_qkv 1024 ×
    (2·16·128 + 16·128 = 6,144), in_proj_z 1024 × 2,048, in_proj_b / in_proj_a 1024 × 16; the gated
    q_proj 1024 × 2·8·256 = 4,096."""
    a = resolve("Qwen3.5-0.8B")
    assert a.model_type == "qwen3_5_text" and a.tie_embeddings and a.lm_head_params == 0
    outs = {lin.name: lin.out_features for lin in a.linears()}
    assert (outs["in_proj_qkv"], outs["in_proj_z"], outs["in_proj_b"], outs["in_proj_a"], outs["q_proj"]) == (
        6_144, 2_048, 16, 16, 4_096)


def test_delta_rule_saved_bytes():
    """``deltanet_core_saved`` for nv 32, dk = dv = 128, C = 64 (Qwen3-Next):
    without autocast (fp32 everywhere): 4·32·(8·128 + 3·128 + 5·64 + 6) = 128 · 1,734 = 221,952, and
    the states 4·32·(128·128 + 1) / 64 = 32,770 per token: 254,722;
    bf16 autocast: fp32 4·32·(6·128 + 2·128 + 2·64 + 6) = 128 · 1,158 = 148,224; the matmuls' bf16
    copies 2·32·(7·128 + 3·64 + 2·128) = 64 · 1,344 = 86,016; the states (2·2 + 4)·32·16,384 + 4·32 =
    4,194,432 per chunk, 65,538 per token: 299,778."""
    assert deltanet_core_saved(_d(4, False), 32, 128, 128) == 221_952 + 32_770
    assert deltanet_core_saved(_d(2, True), 32, 128, 128) == 148_224 + 86_016 + 65_538


def test_peft_does_not_adapt_a_shared_expert_named_like_the_experts():
    """peft 0.21 moves ``gate_proj``/``up_proj``/``down_proj`` of qwen3_next (qwen2_moe conversion) to
    the fused experts' ``target_parameters``: the shared expert's linears of those names get no LoRA;
    ``shared_expert_gate`` keeps it. Qwen3.5-MoE (qwen3_5_moe_text: no expert mapping) adapts them."""
    names = {lin.name for lin in ad.target_linears(resolve("Qwen3-Next-80B-A3B-Instruct"), ("all-linear",), 16)}
    assert "shared_expert_gate" in names and not any(n.startswith("shared_expert.") for n in names)
    names = {lin.name for lin in ad.target_linears(resolve("Agents-A1"), ("all-linear",), 16)}
    assert {"shared_expert.gate_proj", "shared_expert.down_proj", "shared_expert_gate"} <= names


def test_generation_cache_counts_attention_layers_and_states():
    """A generating evaluation of Qwen3-Next keeps K/V for its 12 attention layers only and, per
    sequence, each gated DeltaNet layer's convolution window (8,192 channels × 4 in bf16: 65,536 B)
    and fp32 recurrent state (32 × 128 × 128 × 4 = 2,097,152 B): 36 × 2,162,688 = 77,856,768 B. The
    prefill of b = 2 prompts of 100 tokens with kv_tok 10: 200 · 12 · 10 + 2 · 77,856,768."""
    a = resolve("Qwen3-Next-80B-A3B-Instruct")
    t = deltanet_dims(a)
    assert (t.conv_dim, t.nv, t.dk, t.dv) == (8_192, 32, 128, 128)
    assert state_bytes(a, 2) == 36 * (2 * 8_192 * 4 + 4 * 32 * 128 * 128) == 77_856_768
    g = GenTerms(new_tokens=1, layers=a.mixer_layers("attention"), kv_tok=10, v_tok=5, layer_tok=0, head_seq=0,
                 prev_seq=0, state_seq=state_bytes(a, 2))
    assert generation_peak(g, 2, 100)[1] == 200 * 12 * 10 + 2 * 77_856_768
