"""Golden figures of the MoE family terms (glm4_moe, minimax_m2, and the Llama 4 record in progress),
derived by hand in each docstring from transformers 5.24's modeling files."""

from __future__ import annotations

from vramplan.analytic import activations as act
from vramplan.analytic import adapters as ad
from vramplan.analytic import weights as wt
from vramplan.arch import Arch, resolve
from vramplan.arch.families import LLAMA4_TEXT, llama4_chunked_layers, llama4_no_rope_layers


def _d(**kw) -> act.Dtypes:
    base = dict(c=2, autocast=True, resid=4, resid0=4, norm_w=4, base_w=2, other_w=4, lora=2, quantized=True,
                dropout=False, full=False)
    return act.Dtypes(**{**base, **kw})


def test_glm45_air_layout():
    """GLM-4.5-Air: 46 layers, first_k_dense_replace 1 -> 45 MoE layers of 128 experts (width 1408) and one
    shared expert of 1408 · n_shared_experts (1) named ``shared_experts.*``, ungated; o_proj has no bias
    (attention_bias covers q/k/v only); 106,852,245,504 parameters as transformers counts them (no MTP)."""
    a = resolve("GLM-4.5-Air")
    assert (len(a.moe_layers), a.moe_layers[0], a.num_experts, a.moe_intermediate_size) == (45, 1, 128, 1408)
    assert a.shared_expert_intermediate_size == 1408 and a.intermediate_size == 10944
    names = {lin.name for lin in a.linears()}
    assert "shared_experts.down_proj" in names and "shared_expert_gate" not in names
    assert a.qkv_bias and not a.o_bias and not a.qk_norm
    assert a.total_params == 106_852_245_504


def test_glm_all_linear_skips_the_remapped_projections():
    """peft 0.21.2 moves glm4_moe's ``gate_proj``/``up_proj``/``down_proj`` targets to the fused expert
    parameters (qwen2_moe's table), so no nn.Linear of those names is adapted: all-linear is q/k/v/o."""
    a = resolve("GLM-4.5-Air")
    assert {lin.name for lin in ad.target_linears(a, ("all-linear",), 16)} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_minimax_m25_layout():
    """MiniMax-M2.5: 62 MoE layers of 256 experts of width intermediate_size 1536, no shared expert; the
    q/k RMSNorm spans the projection: (48·128 + 8·128) = 7,168 weights per layer, 62·7,168 = 444,416, plus
    2·3,072 per layer and the final norm: 444,416 + 62·6,144 + 3,072 = 828,416 norm parameters."""
    a = resolve("MiniMax-M2.5")
    assert (len(a.moe_layers), a.num_experts, a.moe_intermediate_size, a.shared_expert_intermediate_size) == \
        (62, 256, 1536, 0)
    assert a.norm_params == 828_416
    assert a.total_params == 228_689_748_992


def test_router_saved_by_rule():
    """Per token, E = 128, k = 8, under bf16 autocast (c = 2), n_group = topk_group = 1:
    - GLM-4.5-Air (sigmoid_grouped, norm_topk_prob): 2·128 (bf16 sigmoid) + 128 (mask) + 16 + 8 + the top-k
      index 8·8 + the renormalisation's denominator and weights 4 + 4·8 = 508; fixed: the fp32
      router weight's bf16 copy 2·128·4096 = 1,048,576;
    - softmax (Qwen3-MoE rule on the same sizes): 4·128 + 96 = 608."""
    a = resolve("GLM-4.5-Air")
    assert act.router_saved(a, _d()) == (508, 1_048_576)
    m = resolve("MiniMax-M2.5")
    # MiniMax-M2.5 (sigmoid): 4·256 + 12·8 = 1,120; fixed 2·256·3072 = 1,572,864 (upcast router)
    assert act.router_saved(m, _d()) == (1_120, 1_572_864)


def test_expert_bias_buffers():
    """GLM-4.5-Air: 45 fp32 buffers of 128 values, 512 B each -> 23,040 B; MiniMax-M2.5: 62 bf16 buffers of
    256 values, 512 B each -> 31,744 B."""
    assert wt.expert_bias_buffer_bytes("fp32", 45, 128, 2) == 23_040
    assert wt.expert_bias_buffer_bytes("load", 62, 256, 2) == 31_744
    assert wt.expert_bias_buffer_bytes(None, 62, 256, 2) == 0


def test_llama4_schedule():
    """no_rope_layers by the config class's rule when config.json omits it (interval 4: layers 3, 7, ...
    NoPE), the chunked layers = the RoPE layers; none when attention_chunk_size is null."""
    cfg = {"no_rope_layer_interval": 4, "attention_chunk_size": 8192}
    assert llama4_no_rope_layers(cfg, 8) == [1, 1, 1, 0, 1, 1, 1, 0]
    assert llama4_chunked_layers(cfg, 8) == (0, 1, 2, 4, 5, 6)
    assert llama4_chunked_layers({"attention_chunk_size": None}, 8) == ()
    assert LLAMA4_TEXT.model_type == "llama4_text" and LLAMA4_TEXT.router_linear


def test_llama4_scout_terms():
    """Scout's text decoder (E = 16, k = 1, H = 5120, M = 8192, 40 heads, 8 kv heads, head_dim 128), n2 = 4
    (fp32 residual after the recipe's upcast), c = 2:
    - 36 chunked (RoPE) MoE layers and 12 NoPE MoE layers; 107,769,861,120 parameters;
    - the L2 q/k norm: 4·128·40 + 4·40 + 4·128·8 + 4·8 = 24,768 per token;
    - dense-bmm experts: 16·(4·5120 + 2 + 3·2·8192) = 1,114,144 per token, fixed bf16 copies of the fp32
      stacks 2·3·16·8192·5120 = 4,026,531,840;
    - the recompute's end: 4·16·5120 + 2·2·16·5120 + 2·4·5120 + 2·5120 + 4·5120 = 727,040 per token;
    - router: 4·16 + 8·1 = 72 per token, fixed 2·16·5120 = 163,840;
    - the router is an nn.Linear bitsandbytes leaves alone: not among the quantizable linears."""
    a = resolve("vramplan-llama4-scout-text")
    classes = {(c.mixer, c.ffn): c.count for c in a.layer_classes()}
    assert classes == {("chunked_attention", "moe"): 36, ("attention", "moe"): 12}
    assert a.total_params == 107_769_861_120
    assert act.l2_qk_norm_saved(a, True, True) == 24_768
    assert act.moe_dense_bmm_saved(a, _d(), 4) == (1_114_144, 4_026_531_840)
    assert act.dense_bmm_recompute_end(a, _d(), 4) == 727_040
    assert act.router_saved(a, _d()) == (72, 163_840)
    assert [lin.name for lin in a.router_linears] == ["router"]
    assert "router" not in {lin.name for lin in a.quantizable_linears()}
