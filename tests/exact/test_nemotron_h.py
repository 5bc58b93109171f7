"""Nemotron-H (``nemotron_h``): the one-block-per-layer pattern, the Mamba-2 mixer's parameters, what its
torch path saves, its generation cache and peft's refusal of out_proj. Goldens derived by hand below."""

from __future__ import annotations

import pytest

from vramplan.analytic import mixers as mx
from vramplan.analytic import static_terms
from vramplan.analytic.activations import Dtypes
from vramplan.arch import resolve
from vramplan.arch.mixers import Mamba2Shape, mamba2_shape
from vramplan.errors import VramplanError
from vramplan.scenario import Scenario

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj")
#: The shrunk mixer of tests/families (nh 8, head_dim 32, state 32, 2 groups, kernel 4, chunk 128):
#: I = 256, conv_dim = 256 + 2·2·32 = 384, in_proj width P = 256 + 384 + 8 = 648.
SMALL = Mamba2Shape(8, 32, 32, 2, 4, 128, True, False)


def test_pattern_sets_the_layers():
    """Nemotron-3-Nano-30B-A3B: 52 blocks ``MEMEM*E...``: 23 Mamba-2, 23 MoE, 6 attention layers; no
    dense MLP; the MoE and mixer-free layers follow the pattern."""
    a = resolve("NVIDIA-Nemotron-3-Nano-30B-A3B")
    assert a.num_layers == 52
    assert (a.mixers.count("mamba2"), a.mixers.count("attention"), len(a.moe_layers), a.dense_layers) == (23, 6, 23, 0)
    assert a.signature(0) == ("mamba2", "none") and a.signature(1) == ("identity", "moe")
    assert a.signature(5) == ("attention", "none")


def test_mamba2_parameters():
    """Per Mamba-2 layer of Nemotron-3-Nano (H 2688, 64 heads × 64, state 128, 8 groups, kernel 4):
    I = 4096, conv_dim = 4096 + 2·8·128 = 6144, in_proj 2688 × (4096 + 6144 + 64) = 27,697,152,
    out_proj 4096 × 2688 = 11,010,048; conv1d 6144·4 + 6144 = 30,720; dt_bias, A_log, D 64 each; the
    gated norm 4096. Routed experts (ungated): up 128 × 1856 × 2688 and down the same, per MoE layer;
    the fp32 router 128 × 2688."""
    a = resolve("NVIDIA-Nemotron-3-Nano-30B-A3B")
    c = a.param_counts()
    assert c["in_proj"] == 23 * 27_697_152 and c["out_proj"] == 23 * 11_010_048
    assert (c["mamba2.conv1d"], c["mamba2.dt_bias"], c["mamba2.norm"]) == (23 * 30_720, 23 * 64, 23 * 4096)
    assert c["experts.up_proj"] == c["experts.down_proj"] == 23 * 128 * 1856 * 2688
    assert c["router"] == 23 * 128 * 2688
    assert "shared_experts.up_proj" in c and "gate_proj" not in c


def test_mamba2_torch_path_saved_bytes():
    """What ``mamba2_core`` counts per token on the shrunk mixer (l = 128, nh = 8, n = 32, g = 2), as the
    saved-tensor hooks listed them on a real CPU run (transformers 5.24 torch path, 256 tokens):

    fp32, no autocast (pd = 4: the conv saves a view of in_proj's output, x is the whole xBC):
      in_proj output 4·648 = 2592; conv output 4·384 = 1536; dt 3·4·8 = 96; xBC 4·384 = 1536;
      L 4·8·128 = 4096, G and M's copy 2·4·1024 = 8192; C ×2, B, B_decay copies 4·4·256 = 4096, B 1024;
      x·dt copies 2·4·256 = 2048, decay_states + exp(A_cumsum) 64; chunk states 2·4·256·32/128 = 512,
      C_times_states 1024; gated norm (the gate is in_proj's view) 3·1024 + 8 = 3080: 29,896.
      Fixed: one row's extra chunk state 4·256·32 = 32,768 and two 128 × 128 bool masks 32,768: 65,536.
      (Measured: 30,171 B per token less the parameters; + 3·384·4/256 = 18 for the conv's padded
      columns, left out.)
    bf16 autocast with a 16-bit in_proj (pd = 2, e = 2): conv input copy 768 + output 768; dt 2·2·8 + 32
    = 64; x fp32 copy 1024; L 4096, G + M copy 2·2·1024 = 4096; C ×2, B, B_decay 4·2·256 = 2048, B 1024;
    x·dt copies 1024, decays 64; chunk states 256, C_times_states 512; gated norm 4·1024 + 8 = 4104:
    19,848; fixed 2·256·32 + 32,768 + the conv weight's bf16 copy 2·384·4 = 52,224."""
    fp32 = Dtypes(c=4, autocast=False, resid=4, resid0=4, norm_w=4, base_w=4, other_w=4, lora=4, quantized=False,
                  dropout=False, full=False)
    assert mx.mamba2_core(fp32, SMALL, 4) == (29_896, 65_536)
    ac = Dtypes(c=2, autocast=True, resid=4, resid0=4, norm_w=4, base_w=2, other_w=4, lora=2, quantized=False,
                dropout=False, full=False)
    assert mx.mamba2_core(ac, SMALL, 2) == (19_848, 52_224)
    # mamba-ssm's fused kernel: in_proj's output, the scan output, rstd: 4·(648 + 256) + 4·2 = 3,624
    assert mx.mamba2_kernel_core(ac, SMALL, 4) == (3_624, 0)


def test_mamba2_working_set():
    """The shrunk mixer under bf16 autocast (e = 2, H = 256, g = max(4, 2)·H = 1,024):
    the recomputed forward at the end of the chunk scan: 4·8·128 + 8·8·32 + 12·256 + 2·256 + 2·256·32/128
    − 4·2 + 2·1,024 = 4,096 + 2,048 + 3,072 + 512 + 128 − 8 + 2,048 = 11,896 per token (the trace's live set
    at the shrunk row's peak: 12,109); the intra-chunk backward (12 − 2)·8·128 − 2·(256 + 256 + 64) − 8
    + 1,024 = 10,104 (the tracker measured 8,854 on the mixer alone, without g) is the smaller."""
    ac = Dtypes(c=2, autocast=True, resid=4, resid0=4, norm_w=4, base_w=2, other_w=4, lora=2, quantized=True,
                dropout=True, full=False)

    a, a_fixed, b, b_fixed = _working(ac)
    assert (a, a_fixed) == (11_896, 0)
    assert b == 4 * 648 + 2 * 256 + 4 * 256 and b_fixed == 2 * 648 * 256


def _working(d: Dtypes) -> tuple[int, int, int, int]:
    from vramplan.arch import Arch
    a = Arch.from_config(dict(model_type="nemotron_h", hidden_size=256, hybrid_override_pattern="M", mamba_num_heads=8,
                              mamba_head_dim=32, n_groups=2, ssm_state_size=32, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=64, vocab_size=1024))
    assert mamba2_shape(a) == SMALL
    return mx.mamba2_working(a, d)


def test_generation_cache_counts_attention_layers_and_mamba_states():
    """Nemotron-H-8B generating: 4 attention layers hold K/V; each of the 24 Mamba-2 layers holds a conv
    state conv_dim × kernel = (8192 + 2·8·128) × 4 in in_proj's output dtype and an fp32 SSM state
    128 × 64 × 128: with a 2-byte in_proj output 2·10240·4 + 4·1,048,576 = 4,276,224 B per sequence.
    The KV cache counts the attention layers only."""
    a = resolve("Nemotron-H-8B-Base-8K")
    assert mx.mamba2_state(a, 2) == 4_276_224
    st = static_terms(a, Scenario(targets=TARGETS, eval_batch=2, eval_new_tokens=8))
    assert st.eval_gen.layers == 4
    # QLoRA: the norm output is fp32 and a 4-bit in_proj returns its input's dtype: 4·10240·4 + 4,194,304
    assert st.eval_gen.state_seq == 24 * 4_358_144 == 24 * mx.mamba2_state(a, 4)


def test_peft_refuses_out_proj():
    """peft 0.21.2 ``_check_lora_target_modules_mamba``: ``out_proj`` (and so all-linear) on nemotron_h."""
    a = resolve("Nemotron-H-8B-Base-8K")
    with pytest.raises(VramplanError, match="out_proj"):
        static_terms(a, Scenario())
    with pytest.raises(VramplanError, match="out_proj"):
        static_terms(a, Scenario(targets=("out_proj",)))
    assert static_terms(a, Scenario(targets=TARGETS)).n_train > 0
