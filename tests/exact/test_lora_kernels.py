"""Issue 14 feature 4, fused LoRA kernels: golden numbers derived by hand, and the validation.

The tiny dense arch: H 256, I 768, 8 heads / 4 KV heads of 32 (q 256, kv 128), r 16; axolotl's recipe on an
NF4 base (c = 2, residual and norms bf16, fp32 adapters), sdpa, bf16 autocast, CUDA semantics."""

from __future__ import annotations

import pytest

from vramplan.analytic import activations as act
from vramplan.analytic import estimate
from vramplan.analytic.terms import dtypes, static_terms
from vramplan.arch.spec import Arch
from vramplan.scenario import Scenario, ScenarioError

ALL = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
GROUPS = frozenset({"qkv", "o", "mlp"})


def _arch(model_type: str = "llama", **extra) -> Arch:
    cfg = dict(model_type=model_type, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
               num_attention_heads=8, num_key_value_heads=4, head_dim=32, vocab_size=64,
               max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu")
    cfg.update(extra)
    return Arch.from_config(cfg, name=f"tiny-{model_type}")


def _d(**kw):
    return dtypes(_arch(), Scenario(**{**dict(recipe="axolotl", lora_dropout=0.0), **kw}))


def test_axolotl_layer_saved_golden():
    """Per token: input norm fp32 x + rsqrt 4·256 + 4 = 1028; LoRA_QKV's X 2·256 = 512; sdpa q, k, v, out,
    lse 2·(256 + 2·128) + 2·256 + 4·8 = 1568 (o_proj reads the saved output: nothing new); post-attention
    norm 1028; LoRA_MLP's X 512 and gate, up 2·2·768 = 3072: 7720. Fixed: the bf16 copies of the fp32 A/B,
    2·16·(in + out) per linear: q 512, k 384, v 384 -> 40,960; o 512 -> 16,384; gate, up 1024 each ->
    65,536; down 1024 -> 32,768: 155,648."""
    d = _d()
    assert act.layer_saved(_arch(), d, 16, ALL, "sdpa", False, kernels="axolotl", fused=GROUPS) == (7720, 0, 155648)


def test_unsloth_saves_the_same_activations_and_no_copies():
    """Unsloth saves the fp32 parameters themselves (``save_for_backward(QA, QB, ...)``): no fixed bytes."""
    d = _d()
    assert act.layer_saved(_arch(), d, 16, ALL, "sdpa", False, kernels="unsloth", fused=GROUPS) == (7720, 0, 0)


def test_peft_layer_saves_more():
    d = _d()
    tok, _, _ = act.layer_saved(_arch(), d, 16, ALL, "sdpa", False)
    # peft keeps act(gate)·up's third I-wide tensor (2·768) and every lora_A output (2·16 per linear) more
    assert tok >= 7720 + 2 * 768 + 7 * 2 * 16


def test_fused_mlp_backward_golden():
    """g = 2·256 = 512 (the incoming gradient); R (recompute at the down projection) = c·I + c·H + o·H + g
    = 1536 + 512 + 512 + 512 = 3072; B = c·I + c·H + 2·c·r + g = 1536 + 512 + 64 + 512 = 2624; b = 3072,
    a = b; a_fixed = the c gradients of the six adapters, 2·16·(1024·3) = 98,304; b_fixed = down's weight
    dequantized, 2·768·256 = 393,216. Reentrant: R without o·H = 2560 < B. Unsloth: a = R, a_fixed = copies +
    gradients 196,608, b = c·I + 2·c·r + g = 2112."""
    d, a = _d(), _arch()
    assert act.fused_mlp_backward(a, d, "axolotl", 16) == (3072, 98304, 3072, 393216)
    assert act.fused_mlp_backward(a, d, "axolotl", 16, reentrant=True) == (2624, 98304, 2624, 393216)
    assert act.fused_mlp_backward(a, d, "axolotl", 16, gc=False) == (2624, 98304, 2624, 393216)
    dd = _d(lora_dropout=0.05)
    assert act.fused_mlp_backward(a, dd, "axolotl", 16) == (1536 + 1024 + 64 + 512, 98304, 3072, 393216)
    assert act.fused_mlp_backward(a, d, "unsloth", 16) == (3072, 196608, 2112, 393216)


def test_final_norm_backward_and_unsloth_scratch_golden():
    """Final norm: fp32 input + rsqrt 4·256 + 4 and five fp32 b·s·H buffers 20·256: 6148 per token. Unsloth's
    scratch: the largest fused weight (gate/up/down, 768·256) in bf16: 393,216 B."""
    d, a = _d(), _arch()
    assert act.final_norm_backward_bytes(a, d) == 6148
    assert act.unsloth_scratch_bytes(a, 2, GROUPS, True) == 393216
    assert act.unsloth_scratch_bytes(a, 2, frozenset({"o"}), True) == 2 * 256 * 256
    assert act.unsloth_scratch_bytes(a, 2, GROUPS, False) == 0


def test_fused_groups_follow_the_frameworks_rules():
    a, d = _arch(), _d()
    assert act.fused_groups(a, d, "axolotl", ("qkv", "o", "mlp"), ALL) == (GROUPS, ())
    assert act.fused_groups(a, d, "none", ("qkv", "o", "mlp"), ALL) == (frozenset(), ())
    fused, notes = act.fused_groups(a, d, "axolotl", ("qkv", "o", "mlp"), frozenset({"q_proj", "v_proj"}))
    assert fused == frozenset() and len(notes) == 3 and "not all of q_proj, k_proj, v_proj" in notes[0]
    # hf-peft's fp32 norms: q/k/v and the MLP read fp32 under bf16 autocast; o reads the bf16 attention output
    hf = dtypes(a, Scenario(lora_dropout=0.0))
    fused, notes = act.fused_groups(a, hf, "unsloth", ("qkv", "o", "mlp"), ALL)
    assert fused == frozenset({"o"}) and all("32-bit under 16-bit autocast" in n for n in notes)
    # Unsloth leaves projections with a base bias (Qwen2's q/k/v) to peft; axolotl fuses them
    q2 = _arch("qwen2")
    assert act.fused_groups(q2, dtypes(q2, Scenario(recipe="axolotl", lora_dropout=0.0)), "unsloth",
                            ("qkv", "o", "mlp"), ALL)[0] == frozenset({"o", "mlp"})
    assert act.fused_groups(q2, dtypes(q2, Scenario(recipe="axolotl", lora_dropout=0.0)), "axolotl",
                            ("qkv", "o", "mlp"), ALL)[0] == GROUPS


def test_kernels_price_less_and_default_is_unchanged():
    a = _arch()
    base = Scenario(recipe="axolotl", lora_dropout=0.0, seq=1024, batch=4, rank=16)
    assert static_terms(a, base) is static_terms(a, base.replace(lora_kernels="none"))
    none, ax = estimate(a, base), estimate(a, base.replace(lora_kernels="axolotl"))
    un = estimate(a, base.replace(lora_kernels="unsloth"))
    assert ax.allocated_peak_bytes < none.allocated_peak_bytes
    assert {c.name: c.bytes for c in un.components}["temporary/dequant_scratch"] == 393216
    assert any(n.startswith("analytic-only: Unsloth") for n in un.notes)
    nogc = estimate(a, base.replace(lora_kernels="axolotl", grad_checkpointing=False))
    assert nogc.peak_phase == "final norm backward"
    assert "final norm backward" not in none.extra["phases"]


@pytest.mark.parametrize("kw,message", [
    (dict(lora_kernels="unsloth", lora_dropout=0.05), "lora_dropout 0"),
    (dict(lora_kernels="unsloth", lora_dropout=0.0, dtype="fp32", quant="none"), "fp32 base"),
    (dict(lora_kernels="axolotl", quant="int8"), "8-bit"),
    (dict(lora_kernels="axolotl", full=True, quant="none"), "applies to LoRA adapters"),
    (dict(kernel_groups="mlp"), "which is none"),
    (dict(lora_kernels="axolotl", kernel_groups="mlp,attn"), "kernel_groups must name"),
])
def test_refused_combinations(kw, message):
    with pytest.raises(ScenarioError, match=message):
        Scenario(**kw)


def test_kernel_groups_parse_in_a_fixed_order():
    assert Scenario(lora_kernels="axolotl", kernel_groups="mlp, qkv").kernel_groups == ("qkv", "mlp")
