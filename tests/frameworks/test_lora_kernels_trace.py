"""Issue 14 feature 4, both engines on axolotl 0.19's fused LoRA kernels: the trace runs axolotl's own
``LoRA_QKV`` / ``LoRA_O`` / ``LoRA_MLP`` autograd functions on its fake tensors (``vramplan.hf.interventions``
item 22: its Triton activations through their registered fake kernels, the NF4 dequantization as its two
allocations), the analytic engine prices what they save from the source (``vramplan.analytic.activations``:
``fused_groups``, ``fused_mlp_saved``, ``fused_mlp_backward``, ``final_norm_backward_bytes``). Tiny 2-layer
Llama and Qwen3 NF4 models (H 256, I 768, 8 heads / 4 KV heads of 32, r 16), axolotl's recipe, 4 × 1024
tokens; the allocated peak without the cuBLAS workspace (a constant both engines add) within 1 %.

axolotl pins its own stack, so this runs in the framework venv of ``.ci/frameworks``; elsewhere it skips.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
pytest.importorskip("axolotl.kernels.lora",
                    reason="installed only in the framework venv of .ci/frameworks (axolotl pins its own stack)")

pytestmark = pytest.mark.torch


def _arch(model_type: str):
    from vramplan.arch.spec import Arch

    cfg = dict(model_type=model_type, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
               num_attention_heads=8, num_key_value_heads=4, head_dim=32, vocab_size=64,
               max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu")
    return Arch.from_config(cfg, name=f"tiny-{model_type}")


def _dynamic(b) -> int:
    return b.allocated_peak_bytes - sum(c.bytes for c in b.components if c.name == "temporary/cublas_workspace")


CASES = [
    ("llama", dict()),
    ("qwen3", dict()),
    ("llama", dict(lora_dropout=0.05)),
    ("qwen3", dict(reentrant=True)),
    ("llama", dict(grad_checkpointing=False)),
    ("qwen3", dict(targets=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))),
]


@pytest.mark.parametrize("model,kw", CASES, ids=[f"{m}-{'-'.join(k) or 'default'}" for m, k in CASES])
def test_axolotl_kernels_trace_vs_analytic(model, kw):
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = _arch(model)
    sc = Scenario(**{**dict(recipe="axolotl", lora_dropout=0.0, seq=1024, batch=4, rank=16,
                            lora_kernels="axolotl"), **kw})
    theirs = trace(arch, sc, extrapolate=False)
    ours = estimate(arch, sc)
    err = _dynamic(ours) / _dynamic(theirs) - 1
    assert abs(err) < 0.01, f"{err:+.2%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"
    assert any("axolotl 0.19 fused LoRA kernels" in n for n in ours.notes)


def test_kernels_change_what_the_trace_counts():
    """The patch took: the same run through peft's layers saves more (gate/up/act and the LoRA inputs)."""
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = _arch("llama")
    sc = Scenario(recipe="axolotl", lora_dropout=0.0, seq=1024, batch=4, rank=16)
    fused = trace(arch, sc.replace(lora_kernels="axolotl"), extrapolate=False)
    peft = trace(arch, sc, extrapolate=False)
    assert _dynamic(fused) < 0.9 * _dynamic(peft)


def test_axolotl_kernels_intervention_is_scoped():
    """Item 18 undoes its process-wide patches: the attention class's forward and axolotl's dequantizer."""
    from axolotl.kernels import quantize
    from transformers.models.llama.modeling_llama import LlamaAttention

    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    forward, dequant = LlamaAttention.forward, quantize._ctypes_nf4_dequant
    trace(_arch("llama"), Scenario(recipe="axolotl", lora_dropout=0.0, seq=64, lora_kernels="axolotl"),
          extrapolate=False)
    assert LlamaAttention.forward is forward and "_original_forward" not in LlamaAttention.__dict__
    assert quantize._ctypes_nf4_dequant is dequant
    # and a plain run afterwards still traces peft's layers
    trace(_arch("llama"), Scenario(recipe="axolotl", seq=64), extrapolate=False)
