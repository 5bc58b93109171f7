"""The analytic engine: hand-derived golden numbers, invariants, errors, property tests."""

from __future__ import annotations


import pytest

from vramplan.analytic import estimate
from vramplan.arch import resolve
from vramplan.breakdown import RUNTIME_CATEGORIES
from vramplan.calibration import Calibration
from vramplan.errors import VramplanError
from vramplan.scenario import Scenario, ScenarioError

CAL = Calibration(cuda_context_bytes=512 * 2**20, cublas_workspace_bytes=32 * 2**20,
                  allocator_reserve_fraction=0.1, allocator_reserve_bytes=0, upper_bound_fraction=0.05)


@pytest.fixture(scope="module")
def q14():
    return resolve("Qwen3-14B")


def test_qwen3_14b_default_golden(q14):
    """Every term of Qwen3-14B, r=8 all-linear, 1×2048, GC, hf-peft, AdamW, derived by hand.

    H=5120, I=17408, L=40, q=5120, kv=1024, V=151,936, T=2048.
    """
    b = estimate(q14, Scenario(), calibration=CAL)
    # per layer quantized elements: 2·5120² + 2·5120·1024 + 3·5120·17408 = 330,301,440; ×40
    assert b.get("weights/nf4") == 13_212_057_600 // 2
    # absmax per tensor: nb + 4·ceil(nb/256) + 4 (offset) + 64 (NF4 code); nb = n/64
    #   q,o: 409,600 + 6,400 + 68 = 416,068; k,v: 81,920 + 1,280 + 68 = 83,268;
    #   gate/up/down: 1,392,640 + 21,760 + 68 = 1,414,468 -> per layer 5,242,076; + the 1,024 B nested
    #   code each of the 7 weights holds a copy of -> 5,249,244; ×40
    assert b.get("quant_state/absmax") == 5_249_244 * 40
    assert b.get("weights/embeddings") == 151_936 * 5120 * 4 == b.get("weights/lm_head")
    assert b.get("weights/norms") == (40 * (2 * 5120 + 2 * 128) + 5120) * 4
    # rotary inv_freq + original_inv_freq: 64 fp32 each = 256 B -> one 512 B block each
    assert b.get("weights/buffers") == 2 * 512
    # LoRA: 8 · (10240 + 6144 + 6144 + 10240 + 3 · 22528) = 802,816 per layer, fp32
    assert b.get("adapter/lora") == 802_816 * 40 * 4
    assert b.get("optimizer/adamw") == 802_816 * 40 * 8
    assert b.peak_phase == "loss backward"
    assert b.get("gradients/lora") == 0  # no LoRA gradient exists yet when the loss backward peaks
    assert b.get("activations/checkpoints") == 2048 * 4 * 5120 * 40  # fp32 layer inputs
    assert b.get("activations/final_norm") == 2048 * (4 * 5120 + 4)
    assert b.get("temporary/lm_head_autocast_copy") == 2 * 151_936 * 5120
    assert b.get("logits/loss") == 12 * 151_936 * 2048  # 3 fp32 b·s·V tensors
    # RoPE's shared row: cos and sin, (1, 2048, 128) in the fp32 embedding output's dtype
    assert b.get("activations/rope") == 2 * 4 * 128 * 2048
    assert b.allocated_peak_bytes == (
        6_606_028_800 + 209_969_760 + 2 * 3_111_649_280 + 1_699_840 + 1_024 + 128_450_560 + 256_901_120
        + 1_677_721_600 + 41_951_232 + 1_555_824_640 + 3_733_979_136 + 32 * 2**20 + 2 * 4 * 128 * 2048)
    assert b.reserved_peak_bytes == b.allocated_peak_bytes + int(b.allocated_peak_bytes * 0.1)
    assert b.total_bytes == b.reserved_peak_bytes + 512 * 2**20


def test_components_sum_and_extra(q14):
    for sc in (Scenario(), Scenario(grad_checkpointing=False, recipe="plain"),
               Scenario(optimizer="paged_adamw8bit", rank=64), Scenario(quant="none", full=True)):
        b = estimate(q14, sc, calibration=CAL)
        assert b.engine == "analytic"
        assert b.allocated_peak_bytes == sum(c.bytes for c in b.components if c.category not in RUNTIME_CATEGORIES)
        assert b.upper.allocated == int(b.allocated_peak_bytes * 1.05)
        assert b.upper.reserved == int(b.reserved_peak_bytes * 1.05)
        assert b.upper.total == int(b.total_bytes * 1.05)
        assert b.peak_phase in b.extra["phases"]
        assert max(b.extra["phases"].values()) + 32 * 2**20 == b.allocated_peak_bytes


def test_paged_optimizer_is_managed(q14):
    """Paged state leaves the allocated peak and joins the process total (tensors >= 1e5 elements)."""
    plain = estimate(q14, Scenario(optimizer="adamw8bit", rank=64), calibration=CAL)
    paged = estimate(q14, Scenario(optimizer="paged_adamw8bit", rank=64), calibration=CAL)
    managed = next(c.bytes for c in paged.components if c.category == "managed")
    # r=64: every A (64 × 5120 = 327,680) and B (≥ 1024 × 64 = 65,536 -> k/v B stay) ...
    assert managed > 0
    assert paged.allocated_peak_bytes < plain.allocated_peak_bytes
    assert plain.get("optimizer/adamw8bit") == paged.get("optimizer/paged_adamw8bit") + managed


def test_tied_embeddings_counted_once():
    a = resolve("Llama-3.2-1B")
    assert a.tie_embeddings
    b = estimate(a, Scenario(), calibration=CAL)
    assert b.get("weights/lm_head") == 0
    assert b.get("weights/embeddings") == a.vocab_size * a.hidden_size * 4


def test_recipes_change_dtypes(q14):
    hf = estimate(q14, Scenario(), calibration=CAL)
    trl = estimate(q14, Scenario(recipe="trl"), calibration=CAL)
    plain = estimate(q14, Scenario(recipe="plain"), calibration=CAL)
    assert trl.get("weights/embeddings") == hf.get("weights/embeddings") // 2
    assert trl.get("weights/norms") == hf.get("weights/norms")  # TRL keeps norms fp32
    assert plain.get("weights/norms") == hf.get("weights/norms") // 2
    # bf16 lm_head: no autocast copy of it
    assert trl.get("temporary/lm_head_autocast_copy") == 0 == plain.get("temporary/lm_head_autocast_copy")
    assert plain.get("activations/checkpoints") == hf.get("activations/checkpoints") // 2


def test_int8_and_no_double_quant(q14):
    b = estimate(q14, Scenario(quant="int8"), calibration=CAL)
    assert b.get("weights/int8") == 13_212_057_600
    nodq = estimate(q14, Scenario(double_quant=False), calibration=CAL)
    # 4 · nb + 64 per tensor
    per_layer = 2 * (4 * 409_600 + 64) + 2 * (4 * 81_920 + 64) + 3 * (4 * 1_392_640 + 64)
    assert nodq.get("quant_state/absmax") == 40 * per_layer


def test_moe_all_linear_adapts_experts():
    a = resolve("Qwen3-30B-A3B")
    b = estimate(a, Scenario(lora_dropout=0.0), calibration=CAL)
    qv = estimate(a, Scenario(lora_dropout=0.0, targets=("q_proj", "v_proj")), calibration=CAL)
    assert b.get("adapter/lora") > 50 * qv.get("adapter/lora")
    assert b.get("weights/experts") == a.expert_params * 4  # fp32 under hf-peft


def test_errors(q14):
    with pytest.raises(VramplanError, match="unknown target module 'qq_proj'"):
        estimate(q14, Scenario(targets=("qq_proj",)))


@pytest.mark.parametrize("kw,names", [(dict(rank=2048, targets=("k_proj",)), "k_proj (1024)"),
                                      (dict(rank=6000), "q_proj (5120), k_proj (1024), v_proj (1024)")])
def test_rank_above_a_dimension_is_priced_with_a_note(q14, kw, names):
    """peft builds A (r × in) and B (out × r) at any rank (``LoraLayer.update_layer`` checks r > 0
    only): Qwen3-14B's k_proj is 5120 → 1024, so r = 2048 gives A 2048·5120 + B 1024·2048 per layer."""
    b = estimate(q14, Scenario(**kw), calibration=CAL)
    assert any(f"rank {kw['rank']} exceeds the smaller dimension of {names}" in n for n in b.notes)
    if kw.get("targets") == ("k_proj",):
        assert b.get("adapter/lora") == 40 * (2048 * 5120 + 1024 * 2048) * 4


@pytest.mark.parametrize("kw", [dict(rank=0), dict(seq=-1), dict(batch=0), dict(seq=10_000_001),
                                dict(full=True), dict(optimizer="lion")])
def test_scenario_errors(kw):
    with pytest.raises(ScenarioError):
        Scenario(**kw)


@pytest.mark.parametrize("model,expected", [
    ("Qwen3-14B", 2 * 512),          # head_dim 128: 2 x 64 fp32
    ("gemma-2-2b", 2 * 512 + 512),   # one rotary pair + the scalar embed_scale
    ("gemma-3-1b-pt", 4 * 512 + 512),  # sliding and full attention each keep a pair (layer_types)
])
def test_model_buffers(model, expected):
    """Buffers the transformers 5.24 model registers (checked against ``named_buffers()`` of the
    built model in tests/engines/test_analytic_vs_trace.py via the weights category)."""
    assert estimate(resolve(model), Scenario(attn="eager")).get("weights/buffers") == expected


def test_static_cache_is_per_instance():
    """Two Arch objects with equal fields but different configs (here: a layer_types list that
    changes Gemma 3's rotary buffers) never share cached terms, and a dropped Arch's cache dies with
    it (the old ``id(arch)`` key could be reused after garbage collection)."""
    import gc

    from vramplan.arch.spec import Arch

    cfg = dict(resolve("gemma-3-1b-pt").config)
    results = []
    for types in (["sliding_attention"] * 26, None):
        c = dict(cfg)
        if types is None:
            c.pop("layer_types", None)
        else:
            c["layer_types"] = types
        a = Arch.from_config(c, name="g3")
        results.append(estimate(a, Scenario()).get("weights/buffers"))
        del a
        gc.collect()
    assert results == [2 * 512 + 512, 4 * 512 + 512]



def test_gemma2_sdpa_priced_as_transformers_runs_it():
    """transformers 5.24: Gemma2's ``_supports_sdpa = False``; with no attn_implementation named it
    falls back to eager. vramplan's default sdpa is priced as eager, with a note (the trace does the
    same, tests/engines/test_trace.py)."""
    g = resolve("gemma-2-2b")
    sdpa, eager = estimate(g, Scenario()), estimate(g, Scenario(attn="eager"))
    assert sdpa.allocated_peak_bytes == eager.allocated_peak_bytes
    assert any("does not support sdpa" in n for n in sdpa.notes) and not eager.notes
    nogc = Scenario(attn="eager", grad_checkpointing=False)
    assert estimate(g, nogc.replace(attn="flash2")).allocated_peak_bytes < estimate(g, nogc).allocated_peak_bytes


@pytest.mark.parametrize("model,sliding", [("gemma-3-1b-pt", 22), ("gemma-2-2b", 13), ("Mistral-7B-v0.1", 32),
                                           ("Qwen2-7B", 0), ("Qwen3-14B", 0), ("Mixtral-8x7B-v0.1", 0)])
def test_sliding_layers_as_transformers_counts_them(model, sliding):
    """Sliding-window layers per transformers 5.24's config classes (layer_types: 22 of Gemma 3 1B's 26,
    Gemma 2's even layers, every Mistral-v0.1 layer; Qwen2's use_sliding_window is off)."""
    a = resolve(model)
    assert len(a.family.sliding_layers(a.config, a.num_layers)) == sliding


def test_sliding_window_mask_priced_from_the_window_on():
    """Gemma 3 1B (window 512, 22 sliding layers, 4 heads / 1 KV head of 256) under sdpa without
    checkpointing: below the window the mask is skipped (is_causal) and sdpa prices as flash2; from 512
    tokens on each sliding layer also saves K/V repeated to 4 heads and an additive s x s bf16 mask:
    per layer 512 tok x 2 B x 2 x (1024 - 256) + 512 x 512 x 2 B = 2,097,152 B; x 22 = 46,137,344 B."""
    g = resolve("gemma-3-1b-pt")

    def act(seq, attn):
        sc = Scenario(seq=seq, grad_checkpointing=False, recipe="plain", attn=attn)
        return estimate(g, sc).get("activations/layers")

    assert act(511, "sdpa") == act(511, "flash2")
    assert act(512, "sdpa") - act(512, "flash2") == 46_137_344
