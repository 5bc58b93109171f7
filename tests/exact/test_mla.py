"""Multi-head latent attention (``mla``) and DeepSeek's MoE layout: hand-derived goldens.

Shapes: transformers 5.24 ``modeling_deepseek_v3.py`` (``DeepseekV3Attention``, ``DeepseekV3MoE``,
``DeepseekV3TopkRouter``); the walk's arithmetic is derived in each docstring.
"""

from __future__ import annotations

from vramplan.analytic.activations import Dtypes, _layer_lins, _Walk, backward_working, moe_output_backward, router_saved
from vramplan.analytic.adapters import target_linears
from vramplan.analytic.mixers import mla_walk
from vramplan.arch import Arch, resolve

#: 2 layers (layer 0 dense, layer 1 MoE), H 256, 4 heads, q_lora_rank 64, kv_lora_rank 32, qk_nope 32,
#: qk_rope 16, v 32; 8 experts of 128 in 2 groups, top-2 of one group.
SMALL = dict(resolve("DeepSeek-R1").config, hidden_size=256, intermediate_size=512, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=1024, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32,
             qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=128, n_routed_experts=8,
             num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, num_hidden_layers=2)

#: QLoRA under bf16 autocast, fp32 residual stream and norms (the hf-peft recipe), no dropout.
QLORA = Dtypes(c=2, autocast=True, resid=4, resid0=4, norm_w=4, base_w=2, other_w=4, lora=2, quantized=True,
               dropout=False, full=False)


def test_moonlight_layout():
    """Moonlight-16B-A3B (q_lora_rank null, 27 layers, first_k_dense_replace 1, 64 experts of 1408, 2 shared):
    per layer q_proj 2048 × 16·(128 + 64) = 6,291,456, kv_a_proj_with_mqa 2048 × (512 + 64) = 1,179,648,
    kv_b_proj 512 × 16·(128 + 128) = 2,097,152, o_proj 16·128 × 2048 = 4,194,304; 26 MoE layers with
    ``shared_experts`` of 2 · 1408 = 2816 and an fp32 router of 64 × 2048; total 15,960,108,544 (= the
    transformers model on the meta device, tests/families)."""
    a = resolve("Moonlight-16B-A3B-Instruct")
    c = a.param_counts()
    assert (c["q_proj"], c["kv_a_proj_with_mqa"], c["kv_b_proj"], c["o_proj"]) == (
        27 * 6_291_456, 27 * 1_179_648, 27 * 2_097_152, 27 * 4_194_304)
    assert a.moe_layers == tuple(range(1, 27)) and a.shared_expert_intermediate_size == 2816
    assert c["shared_experts.gate_proj"] == 26 * 2048 * 2816 and c["router"] == 26 * 64 * 2048
    assert c["mla.kv_a_layernorm"] == 27 * 512 and a.head_dim == 64
    assert a.total_params == 15_960_108_544


def test_glm_flash_dense_prefix_ignores_first_k_dense_replace():
    """Glm4MoeLiteConfig builds ``mlp_layer_types = ["dense"] + ["sparse"] * 46`` whatever
    ``first_k_dense_replace`` says: layer 0 alone is dense."""
    a = resolve("GLM-4.7-Flash")
    assert a.moe_layers == tuple(range(1, 47))
    b = Arch.from_config(dict(a.config, first_k_dense_replace=5), name="x")
    assert b.moe_layers == a.moe_layers
    c = Arch.from_config(dict(a.config, mlp_layer_types=["dense"] * 3 + ["sparse"] * 44), name="y")
    assert c.moe_layers == tuple(range(3, 47))


def test_peft_all_linear_skips_the_dense_and_shared_mlps():
    """peft 0.21 maps deepseek_v3 to the qwen2_moe conversion: ``gate_proj``/``up_proj``/``down_proj`` become
    target parameters (the fused experts), so the dense MLP and ``shared_experts`` linears get no LoRA:
    all-linear adapts the five MLA projections only."""
    a = Arch.from_config(SMALL, name="small")
    assert [lin.name for lin in target_linears(a, ("all-linear",), 8)] == [
        "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]


def test_sigmoid_router_saved():
    """E 8 in 2 groups, top-2, topk_group 1, bf16 autocast: sigmoid output 2·8 = 16, the group topk(2)
    indices 16·2 = 32, the group topk 8·1 = 8, the bool mask 8, the expert topk/gather index 8·2 = 16,
    the renormalisation 4 + 4·2 = 12: 92 B per token; fixed, autocast's bf16 copy of the fp32 router
    weight, 2·8·256 = 4,096."""
    assert router_saved(Arch.from_config(SMALL, name="small"), QLORA) == (92, 4096)


def test_mla_walk():
    """One MLA block of SMALL, QLORA, LoRA r 8 on the five projections, sdpa, input live (B per token):
    1. input_layernorm of an fp32 residual: its rsqrt, 4;
    2. q_a_proj and kv_a_proj_with_mqa read the fp32 x: each lora_A saves autocast's bf16 copy 2·256 and
       lora_B its input 2·8: 2 · 528 = 1,056;
    3. q_a_layernorm 4·64 + 4 = 260; q_b_proj 2·64 + 16 = 144; kv_a_layernorm 4·32 + 4 = 132 and the
       fp32 view keeps k_rot's 16 columns, 4·16 = 64; kv_b_proj 2·32 + 16 = 80;
    4. sdpa in bf16: q and k 2·4·48 each, v (an fp32 view, cast) 2·4·32, output 2·4·32, lse 4·4:
       768 + 256 + 256 + 16 = 1,296;
    5. o_proj reads the saved bf16 output (lora_A saves it, nothing new): lora_B 16.
    Total 3,052. Fixed: autocast's bf16 copies of A and B, 2·8·(i + o): q_a 5,120, kv_a 4,864, q_b 4,096,
    kv_b 4,608, o 6,144 = 24,832."""
    a = Arch.from_config(SMALL, name="small")
    lins = {lin.name: lin for lin in a.layer_linears(0)}
    w = _Walk(QLORA, 8, frozenset({"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}))
    od, live = mla_walk(w, a, lins, "sdpa", True)
    assert (w.tok, w.quad, w.const, od, live) == (3_052, 0, 24_832, 2, True)


def test_glm5_indexer_layers_and_fp32_weights_proj():
    """GLM-5.1 (78 layers, no ``indexer_types``: every layer runs its indexer, ``dsa``); ``weights_proj``
    (6144 → 32 per layer) stays fp32 and out of bitsandbytes: 78 · 6144 · 32 = 15,335,424 parameters; its
    indexer linears run under torch.no_grad. With ``index_topk_freq`` 4 and ``index_skip_topk_offset`` 3
    (``GlmMoeDsaConfig.__post_init__``: full when max(i − 3 + 1, 0) % 4 == 0) layers 0-2 and 6 run their
    own indexer, 3-5 and 7 reuse the previous top-k (``mla``)."""
    a = resolve("GLM-5.1")
    assert a.mixers == ("dsa",) * 78 and a.moe_layers == tuple(range(3, 78))
    assert a.fp32_linear_params == 15_335_424
    lins = {lin.name: lin for lin in a.linears()}
    assert not lins["indexer.weights_proj"].quantized and lins["indexer.wq_b"].no_grad
    assert a.quantized_params + a.fp32_linear_params == sum(
        lin.count * lin.weight_params for lin in a.adaptable_linears())
    b = Arch.from_config(dict(a.config, index_topk_freq=4, index_skip_topk_offset=3), name="x")
    assert b.mixers[:8] == ("dsa", "dsa", "dsa", "mla", "mla", "mla", "dsa", "mla")


def test_kimi_k2_reads_as_deepseek_v3():
    """Kimi-K2-Instruct's config.json says ``model_type: kimi_k2`` (remote code): read as deepseek_v3
    (``ALIASES``), 61 layers, layer 0 dense, 384 experts of 2048, 64 heads, q_lora_rank 1536."""
    a = resolve("Kimi-K2-Instruct")
    assert a.model_type == "deepseek_v3" and a.moe_layers == tuple(range(1, 61)) and a.num_experts == 384
    assert a.total_params == 1_026_408_209_408


def test_moe_output_backward_moments():
    """SMALL's MoE layer, QLORA, LoRA r 8 on the five MLA projections, the router and the fused experts
    (peft's ParamWrapper): ``DeepseekV3MoE.forward`` adds the shared expert last, so its backward runs first.
    B per token, H 256, k 2, M 128, E 8, experts fp32 (ed 4), routing weights bf16 (autocast): wd 4.
    Waiting throughout: the layer output's gradient 4·256 and the shared expert's input gradient 4·256;
    freed: the shared expert's saved act·up (frozen, 3·4·128 = 1,536) and ``inv_perm`` (8·2 = 16): 496.
    1. ``proj_out * sample_weights_g`` backward: 3·2·256·4 = 6,144 → 6,640, nothing fixed;
    2. the down projection's grouped_mm backward: − the saved down output 2·256·4, + its gradient 2·256·4,
       + the input gradient 2·128·4 = 1,024 → 1,520; fixed, the effective weight's gradient 4·8·128·256 =
       1,048,576.
    ``backward_working`` keeps the shared expert's down-projection moment first, without an expert gradient
    (a_fixed 0), then these two. At 1 × 1024 under checkpointing: 6,640 · 1,024 = 6,799,360 on top of the
    recomputed layer, the trace's live gradients (8,388,608) less the freed 1,589,248."""
    a = Arch.from_config(SMALL, name="small")
    targets = frozenset({"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "experts", "router"})
    lins, _ = _layer_lins(a, True, None)
    assert moe_output_backward(a, QLORA, 4, targets, 8, lins) == (6_640, 0, 1_520, 1_048_576)
    assert moe_output_backward(a, QLORA, 4, targets - {"experts"}, 8, lins) == (6_640, 0)
    assert backward_working(a, QLORA, True, targets, 8) == (4_608, 0, 3_328, 65_536, 6_640, 0, 1_520, 1_048_576)
