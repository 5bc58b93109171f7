"""Hand-derived goldens for the gpt_oss family's terms (``Family`` traits ``attention_sinks``,
``expert_bias``, ``router_bias``, ``clamped_swiglu``; ``weights.mxfp4_bytes``). No torch."""

from __future__ import annotations

from vramplan.analytic import activations as act
from vramplan.analytic import weights as wt
from vramplan.analytic.terms import checkpoint_notes
from vramplan.arch import resolve
from vramplan.scenario import Scenario

#: QLoRA under the hf-peft recipe: bf16 autocast, everything but the 4-bit linears upcast to fp32.
QLORA = act.Dtypes(c=2, autocast=True, resid=4, resid0=4, norm_w=4, base_w=2, other_w=4, lora=2, quantized=True,
                   dropout=False, full=False, norm_keeps_dtype=True)
#: LoRA on the dequantized bf16 model (Mxfp4Config(dequantize=True)), plain recipe, bf16 autocast.
BF16 = act.Dtypes(c=2, autocast=True, resid=2, resid0=2, norm_w=2, base_w=2, other_w=2, lora=2, quantized=False,
                  dropout=False, full=False, norm_keeps_dtype=True)


def test_param_counts_of_the_published_configs():
    a = resolve("gpt-oss-20b")
    c = a.param_counts()
    # q: 24·(2880·4096 + 4096 bias) = 283,213,824; k, v: 24·(2880·512 + 512) = 35,401,728 each;
    # o: 24·(4096·2880 + 2880) = 283,184,640
    assert (c["q_proj"], c["k_proj"], c["o_proj"]) == (283_213_824, 35_401_728, 283_184_640)
    # experts: 24 layers · 32 experts · 2880·5760 and · 2880·2880; biases 768·5760 and 768·2880
    assert (c["experts.gate_up_proj"], c["experts.down_proj"]) == (12_740_198_400, 6_370_099_200)
    assert (c["experts.gate_up_proj_bias"], c["experts.down_proj_bias"]) == (4_423_680, 2_211_840)
    # router: 24·(32·2880 weight + 32 bias); sinks: 24 layers · 64 heads; norms (2·24 + 1)·2880
    assert (c["router"], c["sinks"], c["norms"]) == (2_212_608, 1_536, 141_120)
    # + embeddings and the untied lm_head, 201088·2880 each
    assert a.total_params == 20_914_757_184
    assert resolve("gpt-oss-120b").total_params == 116_829_156_672


def test_mxfp4_bytes():
    # gate_up of one expert: n = 2880·5760 = 16,588,800 -> n/2 + n/32 = 8,294,400 + 518,400
    assert wt.mxfp4_bytes(2880 * 5760) == 8_812_800
    # 4.25 bits per element
    assert wt.mxfp4_bytes(32 * 1000) * 8 == 32 * 1000 * 4.25


def test_sink_softmax_saved():
    # gpt-oss-20b: q = 64 heads · 64 = 4096, nh = 64
    # QLoRA: ad = 2 (autocast), sd = max(2, resid0 = 4) = 4 (the fp32 mask promotes the scores), the
    # matmul operand m = 2 != 4: tok = 3·2·4096 + 8·64 + 4·64 = 25,344; quad = 4·64 + 2·64 = 384
    assert act.sink_softmax_saved(QLORA, 2, 4, 4096, 64) == (25_344, 384, 128)
    # bf16: sd = 2 = m, the slice of the saved probabilities itself: tok = 24,576 + 512 + 128; quad = 2·64
    assert act.sink_softmax_saved(BF16, 2, 2, 4096, 64) == (25_216, 128, 0)


def test_sink_softmax_backward():
    a = resolve("gpt-oss-20b")
    # tok: layer output gradient 4·2880 + V's 16,384 + the two s+1 gradients' sink column 2·4·64 + the CUDA
    # temporary's 4·64; quad: 2·4·64; CUDA temporary 4·64 per token·s
    assert act.sink_softmax_backward(a, QLORA, 16_384, 4) == ((11_520 + 16_384 + 512 + 256, 512, 0), 256)


def test_gpt_oss_moe_saved():
    # k = 4, M = H = 2880, ed = 4, ld = 2: 8·4 + 2·4 + 4·(24 + 4·(6·2880 + 2880) + 2) = 40 + 4·80,666
    # = 322,704 per token; the router weight's bf16 autocast copy 2·32·2880 = 184,320 fixed
    assert act.gpt_oss_moe_saved(QLORA, 4, 32, 4, 2880, 2880) == (322_704, 184_320)
    # bf16: ed = ld = 2: 32 + 8 + 4·(24 + 2·20,160 + 2) = 40 + 161,384; no copy (the weight is bf16)
    assert act.gpt_oss_moe_saved(BF16, 2, 32, 4, 2880, 2880) == (161_424, 0)


def test_gpt_oss_moe_forward_transient():
    a = resolve("gpt-oss-20b")
    # QLoRA: n2·H = 4·2880 = 11,520, h1 saved by the norm itself (fp32); 4·(4·2880·4 + 4 − 2) = 184,328
    assert act.gpt_oss_moe_forward_transient(a, QLORA, 4) == 195_848
    # bf16: n2·H = 5,760, h1 (bf16, the norm saved an fp32 copy) 5,760; 4·(4·2880·2 + 4 − 2) = 92,168
    assert act.gpt_oss_moe_forward_transient(a, BF16, 2) == 103_688


def test_checkpoint_notes():
    a = resolve("gpt-oss-20b")
    notes = checkpoint_notes(a, Scenario())
    # kept: (8,812,800 + 4,406,400) · 32 experts · 24 layers = 10,152,345,600 B = 9.46 GiB
    assert "9.46 GiB of blocks and scales" in notes[0] and "does not train" in notes[0]
    assert any("BitsAndBytesConfig" in n for n in notes)
    assert not any("BitsAndBytesConfig" in n for n in checkpoint_notes(a, Scenario(quant="none")))
    assert checkpoint_notes(resolve("Qwen3-30B-A3B"), Scenario()) == ()
