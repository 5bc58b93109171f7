"""Eager attention's softmax backward on CUDA: the trace's temporary is exactly CUDA's ``grad * output``,
and the analytic engine agrees with the trace within 1 % in each of the three softmax dtype paths:
fp32 scores (fp16 without autocast under hf-peft's fp32 upcast), bf16 under autocast (the scores cast
to fp32 by autocast's fp32 list), and fp16 scores outside autocast (CUDA's ``half_to_float`` softmax)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

pytestmark = [pytest.mark.torch]

CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=256, intermediate_size=512,
              num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, vocab_size=2048,
              max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu")
CASES = {
    "fp32-scores": dict(dtype="fp16", autocast=False, recipe="hf-peft", double_quant=False),
    "bf16-autocast": dict(dtype="bf16", autocast=True, recipe="hf-peft"),
    "fp16-half-to-float": dict(dtype="fp16", autocast=False, recipe="plain", quant="none"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_softmax_backward_temporary_and_engines_agree(case):
    from vramplan.analytic import estimate
    from vramplan.arch.spec import Arch
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = Arch.from_config(CONFIG, name="tiny-eager")
    sc = Scenario(seq=512, batch=2, rank=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"), lora_dropout=0.0,
                  attn="eager", hold_logits="step", **CASES[case])
    t = trace(arch, sc, extrapolate=False)
    a = estimate(arch, sc)
    tr = {c.name: c.bytes for c in t.components}
    an = {c.name: c.bytes for c in a.components}
    # b · heads · s · s fp32 elements: 2 · 8 · 512 · 512 · 4 B
    assert tr["temporary/softmax_backward"] == an["temporary/softmax_backward"] == 2 * 8 * 512 * 512 * 4
    err = a.allocated_peak_bytes / t.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{case}: {err:+.3%}"
    # the CPU program has no such temporary, in either engine
    t_cpu = trace(arch, sc, extrapolate=False, device="cpu")
    assert "temporary/softmax_backward" not in {c.name for c in t_cpu.components if c.bytes}
    a_cpu = estimate(arch, sc, device="cpu")
    assert abs(a_cpu.allocated_peak_bytes / t_cpu.allocated_peak_bytes - 1) < 0.01
