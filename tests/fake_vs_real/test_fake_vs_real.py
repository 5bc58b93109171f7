"""Fake equals real: the fake-tensor trace against the same step run for real on CPU.

The real run quantizes real random weights with bitsandbytes, runs the forward/backward for real and
takes a real optimizer step (torch fused AdamW, bitsandbytes 8-bit AdamW, ...). Both runs are read by
the same LiveTensorTracker; the traced peak of each step must be within 1 % of the real one (in
practice they are equal to the byte).
"""

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytestmark = pytest.mark.torch

from archhelp import small_llama  # noqa: E402
from vramplan.arch import resolve  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402
from vramplan.trace import trace_run  # noqa: E402


BASE = dict(seq=96, batch=2, rank=16)
CASES = {
    "nf4-dq-gc-sdpa-adamw-hfpeft": dict(),
    "gc-off": dict(grad_checkpointing=False),
    "recipe-trl": dict(recipe="trl"),
    "recipe-plain": dict(recipe="plain"),
    "adamw8bit": dict(optimizer="adamw8bit"),
    "paged-adamw8bit": dict(optimizer="paged_adamw8bit"),
    "eager": dict(attn="eager"),
    "eager-gc-off": dict(attn="eager", grad_checkpointing=False),
    "fp4-nodq-bs128": dict(quant="fp4", double_quant=False, blocksize=128),
    "flash2-standin": dict(attn="flash2"),
    "lora-bf16-base": dict(quant="none"),
    "full-ft-sgd": dict(quant="none", full=True, optimizer="sgd", recipe="plain"),
    "no-autocast": dict(autocast=False),
    # the stand-ins of the Triton losses (vramplan.hf.fused_losses) run on real CPU tensors too
    "loss-liger": dict(loss="liger"),
    "loss-cce": dict(loss="cce", recipe="plain"),
    "loss-unsloth": dict(loss="unsloth"),
}


def scenario(case: str) -> Scenario:
    kw = {**BASE, **CASES[case]}
    if kw.get("full"):
        del kw["rank"]  # full fine-tuning takes no LoRA field
    return Scenario(**kw)


def _fake_and_real(arch, sc, device):
    """Two steps of the same program on fake tensors and on real CPU tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (trace_run(arch, sc, steps=2, fake=True, device=device),
                trace_run(arch, sc, steps=2, fake=False, device=device))


@pytest.mark.parametrize("case", list(CASES))
def test_fake_peak_equals_real_peak(case):
    fake, real = _fake_and_real(small_llama(), scenario(case), "cpu")
    for f, r in zip(fake.steps, real.steps):
        assert r.peak_bytes > 0
        err = abs(f.peak_bytes - r.peak_bytes) / r.peak_bytes
        assert err <= 0.01, (case, f.peak_bytes, r.peak_bytes)
    assert fake.managed_bytes == real.managed_bytes


@pytest.mark.parametrize("recipe", ["hf-peft", "trl", "plain"])
def test_fake_equals_real_moe(recipe):
    """transformers 5 MoE (fused 3-D experts, grouped_mm) with peft's expert LoRA (no dropout)."""
    sc = Scenario(seq=64, batch=2, rank=8, lora_dropout=0.0, recipe=recipe)
    fake, real = _fake_and_real(resolve("vramplan-debug-moe"), sc, "cpu")
    for f, r in zip(fake.steps, real.steps):
        assert abs(f.peak_bytes - r.peak_bytes) / r.peak_bytes <= 0.01, (f.peak_bytes, r.peak_bytes)


def test_without_the_unpacked_hint_fake_tensors_overcount(monkeypatch):
    """Why ``sequence_layout`` exists: under fake tensors transformers cannot read the position ids,
    assumes packed sequences, builds a 4-D mask and repeats K/V for GQA, so the trace grows above the
    real run. With the hint (the default) fake equals real (tests above)."""
    import contextlib

    from vramplan.hf import interventions

    sc = Scenario(**BASE)
    arch = small_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = trace_run(arch, sc, steps=1, fake=False, device="cpu")
        monkeypatch.setattr(interventions, "sequence_layout", lambda packed: contextlib.nullcontext())
        fake = trace_run(arch, sc, steps=1, fake=True, device="cpu")
    assert fake.steps[0].phases["forward"][0] > real.steps[0].phases["forward"][0]


@pytest.mark.parametrize("case", ["nf4-dq-gc-sdpa-adamw-hfpeft", "gc-off", "lora-bf16-base"])
def test_cuda_semantics_fake_equals_real_and_saves_bytes(case):
    """The CUDA emulation (bool dropout masks via native_dropout; no peft fp32 cast of bnb LoRA inputs
    under autocast) runs identically on fake and real CPU tensors, and allocates no more than the
    CPU program (both emulated behaviours only shrink saved tensors)."""
    sc, arch = scenario(case), small_llama()
    fake, real = _fake_and_real(arch, sc, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = trace_run(arch, sc, steps=2, fake=True, device="cpu")
    for f, r, c in zip(fake.steps, real.steps, cpu.steps):
        assert abs(f.peak_bytes - r.peak_bytes) / r.peak_bytes <= 0.01, (case, f.peak_bytes, r.peak_bytes)
        assert f.peak_bytes < c.peak_bytes, (case, f.peak_bytes, c.peak_bytes)
