"""Packed and padding-free batches: the analytic engine held to the fake-tensor trace (within 1 %),
and the trace's own delta over the unpacked run equal to the hand-derived one of
tests/exact/test_packing.py (the trace runs transformers 5.24's packed-mask code on the layout's
position ids: ``interventions.sequence_layout``)."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.torch

from archhelp import small_gemma3, small_llama  # noqa: E402
from vramplan.analytic import estimate  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402
from vramplan.trace import trace  # noqa: E402


def _trace(sc: Scenario, device: str = "cuda") -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace(small_llama(), sc, extrapolate=False, device=device).allocated_peak_bytes


BASE = Scenario(seq=512, batch=2)
# (layout, extra fields, trace delta over the same scenario unpacked: tests/exact/test_packing.py)
CASES = {
    "packed-sdpa-gc": ("packed", {}, 2_363_392),
    "packed-mask-sdpa-gc": ("packed-mask", {}, 1_839_104),
    "padding-free-flash2": ("padding-free", dict(attn="flash2"), 266_240),
}


@pytest.fixture(scope="module")
def unpacked() -> dict[str, int]:
    return {"sdpa": _trace(BASE), "flash2": _trace(BASE.replace(attn="flash2"))}


@pytest.mark.parametrize("case", list(CASES))
def test_trace_delta_is_the_hand_derived_one(case, unpacked):
    layout, kw, delta = CASES[case]
    sc = BASE.replace(packing=layout, **kw)
    got = _trace(sc)
    assert got - unpacked[kw.get("attn", "sdpa")] == delta
    ours = estimate(small_llama(), sc).allocated_peak_bytes
    assert abs(ours / got - 1) < 0.01, (ours, got)


@pytest.mark.parametrize("kw", [dict(grad_checkpointing=False), dict(recipe="trl", lora_dropout=0.0)],
                         ids=["gc-off", "trl-nodropout"])
def test_packed_sdpa_within_1_percent(kw):
    sc = BASE.replace(packing="packed", **kw)
    got, ours = _trace(sc), estimate(small_llama(), sc).allocated_peak_bytes
    assert abs(ours / got - 1) < 0.01, (ours, got)


def test_packed_mask_on_the_cpu_program():
    """The CPU program (what CPU profiles measure): the same delta as on CUDA, no checkpointing."""
    sc = BASE.replace(grad_checkpointing=False)
    got = _trace(sc.replace(packing="packed-mask"), "cpu")
    ours = estimate(small_llama(), sc.replace(packing="packed-mask"), device="cpu").allocated_peak_bytes
    assert abs(ours / got - 1) < 0.01, (ours, got)


def test_eager_packed_delta():
    """Eager scores are b·h·s·s per row packed or not, and transformers builds the same float mask; the
    packed run adds the RoPE rows and position ids only, over the 128 tokens the unpacked run's one row
    lacks: 128 · (8 + 2 · 4 B · 64) = 66,560, in both engines. (The eager baseline itself, the float
    causal mask and the CUDA softmax-backward temporary, is issue 14's feature 7.)"""
    sc = Scenario(seq=128, batch=2, attn="eager")
    t0, t1 = _trace(sc), _trace(sc.replace(packing="packed"))
    a0 = estimate(small_llama(), sc).allocated_peak_bytes
    a1 = estimate(small_llama(), sc.replace(packing="packed")).allocated_peak_bytes
    assert t1 - t0 == a1 - a0 == 66_560


def test_packed_gemma3_two_masks_two_rotary_tables():
    """Gemma 3 mixes sliding-window and full layers and runs one rotary module per layer type: packed
    rows cost two bool masks and two RoPE row tables (tests/exact/test_packing.py: 1,181,696)."""
    arch = small_gemma3()
    sc = Scenario(seq=256, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = trace(arch, sc, extrapolate=False).allocated_peak_bytes
        t1 = trace(arch, sc.replace(packing="packed"), extrapolate=False).allocated_peak_bytes
    assert t1 - t0 == 1_181_696
    ours = estimate(arch, sc.replace(packing="packed")).allocated_peak_bytes
    assert abs(ours / t1 - 1) < 0.01, (ours, t1)
