"""Issue 14, feature 1: Liger's RMSNorm / SwiGLU / RoPE kernels, per-token saved bytes derived by hand.

liger-kernel 0.8.5: ``LigerRMSNormFunction`` saves ``(X, W, RSTD)`` (the input itself, an fp32 rstd per
row) and returns ``X.dtype``; ``LigerSiLUMulFunction`` saves ``(a, b)`` (gate, up) and writes da, db into
them; ``LigerRopeFunction`` saves ``(cos, sin)`` as transformers' RoPE does. transformers' ``LlamaRMSNorm``
saves an fp32 copy of a 16-bit input + rsqrt (4·H + 4), ``act(gate) * up`` saves gate, up and act (3·g·I).
"""

from __future__ import annotations

from vramplan.analytic import activations as act
from vramplan.analytic import estimate
from vramplan.analytic.terms import dtypes, static_terms
from vramplan.arch import resolve
from vramplan.scenario import Scenario

LIGER = dict(liger_rms_norm=True, liger_swiglu=True, liger_rope=True)


def test_the_kernels_alone():
    # Llama-3.1-8B: H = 4096, I = 14336; bf16 input: 2·4096 + 4 = 8196; gate + up in bf16: 2·2·14336 = 57344
    assert act.liger_norm_saved(2, 4096) == 8196
    assert act.liger_norm_saved(2, 128, 40) == 2 * 128 * 40 + 4 * 40  # Qwen3 q_norm: 10,400
    assert act.liger_swiglu_saved(2, 14336) == 57344


def _delta(model, **fields):
    arch = resolve(model)
    off, on = Scenario(**fields), Scenario(**fields, **LIGER)
    t_off, t_on = static_terms(arch, off), static_terms(arch, on)
    return arch, t_off, t_on


def test_llama_plain_nf4_autocast():
    # plain recipe, NF4, bf16 autocast: residual, norm outputs, q/k/v and gate/up outputs all bf16 (c = 2).
    # input norm: 4·H + 4 -> 4 (its input is the layer's own input): -4·4096 = -16,384
    # pre-MLP norm: 4·H + 4 -> 2·H + 4: -8,192; MLP: 3·2·I -> 2·2·I: -2·14336 = -28,672
    # per layer: -53,248 B/token; layer 0 without checkpointing (input not live): -36,864
    arch, off, on = _delta("Llama-3.1-8B", recipe="plain")
    assert on.dense_sv[0] - off.dense_sv[0] == -53248
    _, off0, on0 = _delta("Llama-3.1-8B", recipe="plain", grad_checkpointing=False)
    assert on0.first_sv[0] - off0.first_sv[0] == -36864
    # final norm: 4·H + 4 -> 2·H + 4 (the last hidden state itself): 16,388 -> 8,196
    assert (off.fin, on.fin) == (16388, 8196)
    # the output of Liger's norm keeps the input's dtype (the walk's norm_out)
    assert on.d.norm_keeps_dtype and on.d.liger_norm and on.d.liger_swiglu


def test_qwen3_plain_nf4_autocast():
    # Qwen3-14B: H = 5120, I = 17408, 40 q heads, 8 kv heads, head_dim 128, per-head q/k norms.
    # input norm -4·H = -20,480; pre-MLP norm -2·H = -10,240; MLP -2·I = -34,816;
    # q_norm: 4·128·40 + 4·40 -> 2·128·40 + 4·40: -10,240; k_norm: -2·128·8 = -2,048. Sum -77,824.
    arch, off, on = _delta("Qwen3-14B", recipe="plain")
    assert on.dense_sv[0] - off.dense_sv[0] == -77824


def test_llama_hf_peft_nf4():
    # hf-peft: the k-bit preparation upcasts embeddings and norms to fp32, the residual stream is fp32 and
    # every norm's input is the fp32 tensor itself in both: no change there. gate/up come out of
    # bitsandbytes in their fp32 input's dtype: 3·4·I -> 2·4·I = -4·14336 = -57,344.
    arch, off, on = _delta("Llama-3.1-8B", recipe="hf-peft")
    assert on.d.resid == off.d.resid == 4
    assert on.dense_sv[0] - off.dense_sv[0] == -57344
    assert on.fin == off.fin == 4 * 4096 + 4


def test_swiglu_backward_holds_the_product_gradient_only():
    # plain NF4 autocast, LoRA on down_proj (dropout 0.05, CUDA: bool mask): g = 2, saves = I + 2·I;
    # a = max(a_lora = x·I = 2·I, k·g·I - saves) + 3·g·H, k = 3 (transformers) or 1 (Liger):
    # transformers max(2·I, 6·I - 3·I) = 3·I; Liger max(2·I, 2·I - 3·I) = 2·I: a drops by I = 14,336.
    arch, off, on = _delta("Llama-3.1-8B", recipe="plain")
    assert off.work_dense[0] - on.work_dense[0] == 14336
    # the dequantization moment (b = c·I + x·I - saves + H part): with a Liger kernel on, only the layer
    # output's gradient (g·H) is left of the 3·g·H by then (``liger_base_branch_hpart``):
    # off 2·I + 2·I - 3·I + 3·2·H = 14,336 + 24,576 = 38,912; on 14,336 + 2·4096 = 22,528 (-2·g·H = -16,384)
    assert off.work_dense[2] == 38912
    assert on.work_dense[2] == 22528
    assert on.work_dense[3] == off.work_dense[3]  # the dequantized weight itself is unchanged
    # kernels off, MoE, or an untargeted down projection: hpart as it was
    d_off = dtypes(arch, Scenario(recipe="plain"))
    assert act.liger_base_branch_hpart(d_off, 2, 4096, False, True, 24576) == 24576
    assert act.liger_base_branch_hpart(on.d, 2, 4096, True, True, 24576) == 24576
    assert act.liger_base_branch_hpart(on.d, 2, 4096, False, False, 24576) == 24576
    assert act.liger_base_branch_hpart(on.d, 2, 4096, False, True, 24576) == 8192


def test_rope_alone_changes_nothing_and_defaults_are_untouched():
    arch = resolve("Llama-3.1-8B")
    base = estimate(arch, Scenario())
    assert estimate(arch, Scenario(liger_rope=True)).allocated_peak_bytes == base.allocated_peak_bytes
    assert not dtypes(arch, Scenario()).liger_norm
    notes = estimate(arch, Scenario(liger_rms_norm=True, liger_swiglu=True)).notes
    assert any("LigerRMSNormFunction" in n for n in notes) and any("LigerSiLUMulFunction" in n for n in notes)
    # without checkpointing each layer's input is saved by Liger's input norm: + 2·H per token per later layer
    sc = dict(grad_checkpointing=False, recipe="plain", seq=1024)
    a = estimate(arch, Scenario(**sc, liger_rms_norm=True))
    assert a.allocated_peak_bytes < estimate(arch, Scenario(**sc)).allocated_peak_bytes
