"""The analytic engine's seams: typed terms, one function per phase, the cache key, the device.

Golden figures are derived by hand in the docstrings.
"""

from __future__ import annotations

from dataclasses import fields

import pytest

from vramplan.analytic import estimate, phases, static_terms
from vramplan.analytic.terms import SHAPE_FIELDS, StaticTerms
from vramplan.arch import resolve
from vramplan.breakdown import RUNTIME_CATEGORIES
from vramplan.calibration import Calibration
from vramplan.device import Device
from vramplan.scenario import Scenario

CAL = Calibration(cublas_workspace_bytes=0, allocator_reserve_fraction=0.0, cuda_context_bytes=0)

#: One valid value per Scenario field, different from the default (for the cache-key test).
OTHER = dict(rank=16, quant="fp4", double_quant=False, blocksize=128, dtype="fp16", targets=("q_proj",),
             lora_dropout=0.1, full=True, grad_checkpointing=False, attn="eager", optimizer="adamw8bit",
             recipe="trl", autocast=False, adapter_dtype="bf16", loss="legacy", hold_logits="step",
             bnb_keeps_input=True, reentrant=True, label_fraction=0.5, rope_cache="per-layer", packing="packed", dora=True,
             modules_to_save=("lm_head",), lora_fa=True,
             lora_kernels="axolotl", kernel_groups=("mlp",), eval_batch=4, eval_keep="logits", eval_samples=8, eval_new_tokens=16,
             offload="checkpoints", liger_rms_norm=True, liger_swiglu=True, liger_rope=True,
             images=1, image_size="512x512", vision="trained",
             gpus=2, nodes=2, strategy="fsdp", state_offload="params", reshard_after_forward=False,
             quant_storage="bf16", process_rank=1, bucket_cap_mb=50, gradient_as_bucket_view=True,
             reduce_bucket_size=10 ** 6, allgather_bucket_size=10 ** 6, stage3_prefetch_bucket_size=10 ** 6,
             stage3_max_live_parameters=10 ** 6, stage3_param_persistence_threshold=10 ** 4,
             stage3_max_reuse_distance=10 ** 6, overlap_comm=False, contiguous_gradients=False)


def test_full_fine_tuning_holds_the_logits_once():
    """Llama-3.2-1B full fine-tuning in bf16 at 1×2048 with ``--hold-logits step`` peaks in the
    embedding backward (tied embeddings, V = 128,256, H = 2,048, 1,235,814,400 params):
    gradients 2 B × 1,235,814,400 = 2,471,628,800; the tied embedding's second gradient and its
    accumulation 2 × V·H × 2 B = 1,050,673,152; the input gradient T·H·4 = 16,777,216; the held bf16
    logits V·T·2 = 525,336,576 (once: they were counted twice before, 501 MiB too high)."""
    a = resolve("Llama-3.2-1B")
    b = estimate(a, Scenario(quant="none", full=True, hold_logits="step", seq=2048), calibration=CAL)
    assert b.peak_phase == phases.EMBEDDING
    static = static_terms(a, Scenario(quant="none", full=True, hold_logits="step")).static
    assert b.extra["phases"][phases.EMBEDDING] - static == 2_471_628_800 + 1_050_673_152 + 16_777_216 + 525_336_576
    assert b.get("temporary/embedding_grad") == 1_050_673_152 + 16_777_216
    assert b.get("logits/held_output") == 525_336_576
    assert b.allocated_peak_bytes == b.extra["phases"][b.peak_phase]


@pytest.mark.parametrize("kw", [{}, dict(grad_checkpointing=False), dict(quant="none", full=True),
                                dict(quant="none", full=True, hold_logits="loop"), dict(hold_logits="step"),
                                dict(hold_logits="loop", loss="legacy"), dict(optimizer="paged_adamw8bit")])
@pytest.mark.parametrize("model", ["Qwen3-8B", "gemma-3-4b-pt", "Qwen1.5-MoE-A2.7B", "Llama-3.2-1B"])
def test_components_sum_to_the_peak_phase(model, kw):
    """Every phase's components sum to that phase's total (the peak phase's to the allocated peak)."""
    b = estimate(resolve(model), Scenario(**kw), calibration=CAL)
    tensors = sum(c.bytes for c in b.components if c.category not in RUNTIME_CATEGORIES)
    assert tensors == b.allocated_peak_bytes == b.extra["phases"][b.peak_phase] == max(b.extra["phases"].values())


def test_static_terms_are_typed_and_documented():
    st = static_terms(resolve("Qwen3-8B"), Scenario())
    assert isinstance(st, StaticTerms)
    import vramplan.analytic.terms as terms

    src = open(terms.__file__, encoding="utf-8").read()
    for f in fields(StaticTerms):  # every field carries a docstring right below it
        head = src.split(f"    {f.name}: ", 1)[1].splitlines()
        assert head[1].strip().startswith('"""'), f.name


#: The multi-GPU knobs, each with the strategy it configures (``Scenario._check_parallel``).
PARALLEL_OWNER = dict(process_rank="ddp", bucket_cap_mb="ddp", gradient_as_bucket_view="ddp",
                      state_offload="fsdp", reshard_after_forward="fsdp", reduce_bucket_size="zero2",
                      allgather_bucket_size="zero2", overlap_comm="zero2", contiguous_gradients="zero2",
                      stage3_prefetch_bucket_size="zero3", stage3_max_live_parameters="zero3",
                      stage3_param_persistence_threshold="zero3", stage3_max_reuse_distance="zero3")


@pytest.mark.parametrize("name", [f.name for f in fields(Scenario) if f.name not in SHAPE_FIELDS])
def test_cache_key_covers_every_scenario_field(name):
    """Changing any field but the batch shape yields other terms, never a stale cache hit."""
    a = resolve("Qwen3-0.6B")
    base = Scenario(quant="none") if name == "full" else Scenario()
    changed = dict(quant="none") if name == "full" else {}
    if name == "kernel_groups":  # read only with fused kernels: the base has them on every group
        base, changed = Scenario(lora_kernels="axolotl"), dict(lora_kernels="axolotl")
    changed[name] = OTHER[name]
    if name in ("quant", "double_quant", "blocksize", "bnb_keeps_input"):
        changed.setdefault("quant", "nf4")
    if name == "adapter_dtype":
        changed["dtype"] = "bf16"
    if name in ("eval_keep", "eval_samples"):  # both describe a kept evaluation: from one that keeps logits
        base = Scenario(eval_batch=4, eval_keep="ids" if name == "eval_keep" else "logits", eval_samples=8)
        changed.update(eval_batch=4, eval_keep="logits", eval_samples=8 if name == "eval_keep" else 16)
    if name == "eval_new_tokens":  # a generating evaluation, from one that generates fewer tokens
        base = Scenario(eval_batch=4, eval_new_tokens=8)
        changed.update(eval_batch=4)
    if name in PARALLEL_OWNER:  # a multi-GPU knob: from a run of the strategy it configures
        own = dict(gpus=2, strategy=PARALLEL_OWNER[name])
        base = Scenario(**own)
        changed.update({k: v for k, v in own.items() if k not in changed})
    other = Scenario(**changed)
    assert static_terms(a, base) is static_terms(a, base)
    assert static_terms(a, other) is not static_terms(a, base)
    assert static_terms(a, base.replace(seq=4096, batch=3)) is static_terms(a, base)


def test_other_every_field_named():
    assert set(OTHER) == {f.name for f in fields(Scenario)} - set(SHAPE_FIELDS)


def test_device_decides_semantics_and_runtime():
    """One Device value: 'cpu' prices the CPU program without CUDA runtime terms, a GPU name the CUDA
    program with that card's constants, None an unnamed CUDA device."""
    a, sc = resolve("Qwen3-0.6B"), Scenario(seq=512, grad_checkpointing=False)
    cpu = estimate(a, sc, device="cpu")
    assert cpu.total_bytes == cpu.allocated_peak_bytes and not cpu.get("runtime/cuda_context")
    assert estimate(a, sc, device=Device.cpu()).to_dict() == cpu.to_dict()
    cuda = estimate(a, sc)
    # CPU semantics: dropout masks in the input dtype and peft's fp32 cast of LoRA inputs cost more
    assert cpu.allocated_peak_bytes > cuda.allocated_peak_bytes - cuda.get("temporary/cublas_workspace")
    assert Device.parse("NVIDIA H200").semantics == "cuda" and Device.parse("cuda:1").name is None
    assert estimate(a, sc, device="NVIDIA H200").get("runtime/cuda_context") == \
        estimate(a, sc, device="H200").get("runtime/cuda_context") != cuda.get("runtime/cuda_context")
