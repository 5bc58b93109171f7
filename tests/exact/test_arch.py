"""Arch from config.json: golden parameter counts derived by hand, and config validation."""

import pytest

from vramplan.arch import Arch, ArchError, resolve

QWEN3_14B = dict(model_type="qwen3", hidden_size=5120, intermediate_size=17408, num_hidden_layers=40,
                 num_attention_heads=40, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                 tie_word_embeddings=False, attention_bias=False)


def test_qwen3_14b_golden():
    a = Arch.from_config(QWEN3_14B)
    # By hand: per layer q 5120·5120 + k,v 2·5120·1024 + o 5120·5120 = 62,914,560;
    # MLP 3·5120·17408 = 267,386,880; norms 2·5120 + q/k norm 2·128 = 10,496.
    # 40 layers -> 13,212,057,600 linear + 419,840 norms; embed + lm_head 2·151936·5120 = 1,555,824,640;
    # final norm 5120. Total 14,768,307,200.
    assert a.quantized_params == 13_212_057_600
    assert a.total_params == 14_768_307_200
    assert a.param_counts()["q_proj"] == 40 * 5120 * 5120
    assert a.param_counts()["norms"] == 40 * (2 * 5120 + 2 * 128) + 5120


def test_registry_golden_numbers():
    assert resolve("Qwen3-14B").total_params == 14_768_307_200
    assert resolve("Qwen3-14B").quantized_params == 13_212_057_600
    assert resolve("Llama-3.1-8B").total_params == 8_030_261_248


def test_counts_sum_to_total_and_split():
    for name in ("Qwen3-30B-A3B", "gemma-2-2b", "phi-4", "Qwen2.5-7B", "Mixtral-8x7B-v0.1"):
        a = resolve(name)
        assert sum(a.param_counts().values()) == a.total_params
        assert a.quantized_params + a.unquantized_params == a.total_params


def test_tied_embeddings_counted_once():
    a = resolve("gemma-2-2b")
    assert a.tie_embeddings and a.lm_head_params == 0
    assert any(lin.name == "lm_head" for lin in a.linears())  # still a Linear, never quantized
    assert all(lin.name != "lm_head" for lin in a.quantizable_linears())


def test_qwen2_has_qkv_bias_only():
    a = resolve("Qwen2.5-7B")
    by = {lin.name: lin for lin in a.linears()}
    assert by["q_proj"].bias and by["k_proj"].bias and by["v_proj"].bias
    assert not by["o_proj"].bias and not by["gate_proj"].bias


def test_phi3_fused_projections():
    a = resolve("Phi-3-mini-4k-instruct")
    names = [lin.name for lin in a.linears()]
    assert "qkv_proj" in names and "gate_up_proj" in names and "q_proj" not in names
    qkv = next(lin for lin in a.linears() if lin.name == "qkv_proj")
    assert qkv.out_features == 3 * 3072  # 32 heads, 32 kv heads, head_dim 96


def test_moe_experts_are_not_linears():
    a = resolve("Qwen3-30B-A3B")
    assert a.is_moe and a.num_experts == 128 and len(a.moe_layers) == 48
    # 48 layers × 128 experts × 3 × 2048 × 768 fused 3-D parameters stay unquantized.
    assert a.expert_params == 48 * 128 * 3 * 2048 * 768
    assert a.router_params == 48 * 128 * 2048
    assert "gate" not in a.linear_names()


def test_qwen2_moe_shared_expert():
    a = resolve("Qwen1.5-MoE-A2.7B")
    assert a.shared_expert_intermediate_size == 5632
    assert "shared_expert_gate" in a.linear_names()


def test_nested_text_config():
    a = resolve("gemma-3-4b-pt")
    assert a.model_type == "gemma3_text" and a.qk_norm and a.norms_per_layer == 4


def test_missing_field_named():
    cfg = dict(QWEN3_14B)
    del cfg["hidden_size"]
    with pytest.raises(ArchError, match="hidden_size"):
        Arch.from_config(cfg)


def test_bad_field_value():
    with pytest.raises(ArchError, match="num_hidden_layers"):
        Arch.from_config(dict(QWEN3_14B, num_hidden_layers=0))


def test_unsupported_model_type():
    """A type with no record builds a stand-in Arch (the trace prices it); the analytic engine refuses it,
    naming the reason and the trace."""
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario

    arch = Arch.from_config(dict(QWEN3_14B, model_type="mamba"))
    assert not arch.family.record
    with pytest.raises(ArchError, match="selective scan has no token-mixer kind.*--method trace"):
        estimate(arch, Scenario())
    with pytest.raises(ArchError, match="'gpt2' is not priced by the analytic engine"):
        estimate(Arch.from_config(dict(QWEN3_14B, model_type="gpt2")), Scenario())


def test_bad_gqa():
    with pytest.raises(ArchError, match="multiple"):
        Arch.from_config(dict(QWEN3_14B, num_key_value_heads=7))
