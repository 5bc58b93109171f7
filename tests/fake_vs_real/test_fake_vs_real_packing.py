"""Packed and padding-free batches, fake against real: the fake-tensor trace of each layout against
the very same step on real CPU tensors (real position ids, LLaMA-Factory's real 4D mask), read by the
same LiveTensorTracker; and the layout hint (``interventions.sequence_layout``) against transformers'
own ``find_packed_sequence_indices`` on real position ids."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytestmark = pytest.mark.torch

from archhelp import small_llama  # noqa: E402
from vramplan.hf import build as B  # noqa: E402
from vramplan.hf import interventions  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402
from vramplan.trace import trace_run  # noqa: E402


BASE = dict(seq=64, batch=2, rank=16)
#: (layout fields, device program): each layout once on the CPU program, the packed sdpa mask on both
CASES = {
    "packed-sdpa": (dict(packing="packed"), "cpu"),
    "packed-sdpa-cuda": (dict(packing="packed"), "cuda"),
    "packed-sdpa-gc-off": (dict(packing="packed", grad_checkpointing=False), "cpu"),
    "packed-mask-sdpa": (dict(packing="packed-mask"), "cpu"),
    "packed-mask-eager": (dict(packing="packed-mask", attn="eager"), "cpu"),
    "padding-free-flash2": (dict(packing="padding-free", attn="flash2"), "cuda"),
}


def _runs(sc: Scenario, device: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (trace_run(small_llama(), sc, steps=2, fake=True, device=device),
                trace_run(small_llama(), sc, steps=2, fake=False, device=device))


@pytest.mark.parametrize("case", list(CASES))
def test_fake_peak_equals_real_peak(case):
    kw, device = CASES[case]
    fake, real = _runs(Scenario(**BASE, **kw), device)
    for f, r in zip(fake.steps, real.steps):
        assert r.peak_bytes > 0
        assert abs(f.peak_bytes - r.peak_bytes) / r.peak_bytes <= 0.01, (case, f.peak_bytes, r.peak_bytes)


def test_layout_hint_is_what_transformers_computes():
    """On real position ids, the hint answers exactly what transformers' own function answers: the
    sequence-index tensor for packed and padding-free rows, None for one sequence per row."""
    import transformers.masking_utils as mu

    own = mu.find_packed_sequence_indices
    for kw in (dict(packing="packed"), dict(packing="padding-free", attn="flash2")):
        pos = B.layout_inputs(Scenario(seq=10, batch=3, **kw))["position_ids"]
        with interventions.sequence_layout(True):
            ours = mu.find_packed_sequence_indices(pos)
        assert mu.find_packed_sequence_indices is own
        assert torch.equal(ours, own(pos))
    unpacked = torch.arange(10).unsqueeze(0).repeat(3, 1)
    assert own(unpacked) is None
    with interventions.sequence_layout(False):
        assert mu.find_packed_sequence_indices(unpacked) is None


def test_packed_mask_is_llamafactorys():
    """The packed-mask batch's 4D mask is LLaMA-Factory's ``prepare_4d_attention_mask`` of the same
    segments (its formula restated in a few lines, the package pins its own stack): 0 inside a sample's
    causal triangle, the dtype's minimum elsewhere, (b, 1, s, s) in the compute dtype."""
    sc = Scenario(seq=6, batch=2, packing="packed-mask")
    m = B.layout_inputs(sc)["attention_mask"]
    assert m.shape == (2, 1, 6, 6) and m.dtype == torch.bfloat16
    seg = torch.tensor([[1, 1, 1, 2, 2, 2]] * 2)  # packed_positions(6): two samples of 3
    allowed = (seg.unsqueeze(1).unsqueeze(2) == seg.unsqueeze(1).unsqueeze(3)) & torch.tril(
        torch.ones(6, 6, dtype=torch.bool))
    expect = torch.where(allowed, torch.tensor(0, dtype=torch.bfloat16), torch.finfo(torch.bfloat16).min)
    assert torch.equal(m, expect)
