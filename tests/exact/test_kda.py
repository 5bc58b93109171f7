"""Kimi Delta Attention (``kda``) and the kimi_linear family: hand-derived goldens.

Shapes: transformers 5.24 ``modeling_kimi_linear.py`` (``KimiLinearDeltaAttention``, ``KimiLinearForgetGate``,
``chunk_kimi_delta_attention``); the arithmetic is derived in ``vramplan.analytic.mixers.kda_core_saved``.
"""

from __future__ import annotations

from vramplan.analytic.mixers import kda_core_saved
from vramplan.arch import resolve
from vramplan.arch.families import FAMILIES


def test_kda_core_saved_fp32():
    """nh 4, dk 64 (D 256), C 64, no autocast, in fp32 (4 B) units:
    per D: 15 · 256 + 3 · 64 · 256 = 3,840 + 49,152 = 52,992; per head: 4 · (2 + 1 + 64 + 64) = 524;
    4 · (52,992 + 524) = 214,064. Per chunk: S 4 · 64 · 64 = 16,384, exp(g_last) 256, substitution clones
    4 · Σ_{i<64} (i + i²) = 4 · (2,016 + 85,344) = 349,440: 366,080 · 4 // 64 = 22,880. Total 236,944 B per
    token (the torch fallback measured 236,736 with saved-tensor hooks at s = 256: 0.09 % apart)."""
    assert kda_core_saved(4, 64) == 236_944


def test_kda_core_saved_autocast_bf16():
    """The same under bf16 autocast (c = 2): − (4 − 2) · (6 · 256 + 4 · 64) = − 3,584; attn + eye's two bf16
    copies for its fp32 one: − (4 · 256 − 2 · 2 · 256) = 0; S's two bf16 copies per chunk: + 2 · 2 · 4 · 4,096 // 64
    = + 1,024. 236,944 − 3,584 + 1,024 = 234,384 (measured 233,920 under CPU autocast: 0.2 % apart)."""
    assert kda_core_saved(4, 64, autocast_c=2) == 234_384


def test_kimi_linear_layout():
    """Kimi-Linear-48B-A3B-Instruct: 27 layers, ``linear_attn_config`` 1-based: full attention at 4, 8, ..., 24,
    27 (7 NoPE latent-attention layers), the other 20 KDA; layer 0 dense, 26 MoE layers of 256 experts of 1024
    with one shared expert (``num_experts`` / ``num_experts_per_token`` / ``num_shared_experts``); no rotary."""
    arch = resolve("Kimi-Linear-48B-A3B-Instruct")
    assert arch.mixers.count("kda") == 20 and arch.mixers.count("mla") == 7
    assert [i for i, k in enumerate(arch.mixers) if k == "mla"] == [3, 7, 11, 15, 19, 23, 26]
    assert (arch.num_experts, arch.experts_per_token, len(arch.moe_layers)) == (256, 8, 26)
    assert arch.shared_expert_intermediate_size == 1024
    assert FAMILIES["kimi_linear"].rotary_sets(arch.config, arch.num_layers) == 0
    # per KDA layer: q/k/v/o 4 · 2304 · 4096, f_a/g_a 2 · 2304 · 128, f_b/g_b 2 · 128 · 4096, b_proj 2304 · 32
    kda = {lin.name: lin.params for lin in arch.layer_linears(0)}
    assert sum(v for n, v in kda.items() if n not in ("gate_proj", "up_proj", "down_proj")) == \
        4 * 2304 * 4096 + 2 * 2304 * 128 + 2 * 128 * 4096 + 2304 * 32
