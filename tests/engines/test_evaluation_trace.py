"""Feature 6 of issue 14: the evaluation loop traced on fake tensors (after the last training step,
``model.eval()``, ``torch.no_grad()``, the Trainer's own ``EvalLoopContainer``) held to the analytic
engine within 1 %, on 2-layer Qwen3-0.6B / Llama-3.2-1B (real widths and vocabularies)."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.torch
warnings.filterwarnings("ignore", category=UserWarning)

from archhelp import grid_module  # noqa: E402

grid_mod = grid_module()

CASES = [
    # logits of 7 samples in batches 2, 2, 2, 1: the concatenation of the last batch is the peak
    ("Qwen3-0.6B", dict(seq=128, eval_batch=2, eval_keep="logits", eval_samples=7), "cuda", "concatenation"),
    # argmax ids of 5 samples; a loss-only evaluation larger than the step (no autocast, bf16 logits)
    ("Llama-3.2-1B", dict(seq=128, eval_batch=2, eval_keep="ids", eval_samples=5), "cpu", "forward"),
    ("Llama-3.2-1B", dict(seq=64, eval_batch=3, eval_keep="logits", eval_samples=9, recipe="plain",
                          autocast=False), "cuda", "forward"),
    ("Qwen3-0.6B", dict(seq=64, eval_batch=2, loss="legacy", eval_keep="logits", eval_samples=4), "cuda", "forward"),
]


@pytest.mark.parametrize("model,kw,device,moment", CASES, ids=[f"{m}-{i}" for i, (m, *_ ) in enumerate(CASES)])
def test_eval_peak_trace_vs_analytic_within_1_percent(model, kw, device, moment):
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = grid_mod.reduced_arch(model, 2)
    sc = Scenario(**kw)
    theirs = trace(arch, sc, extrapolate=False, device=device)
    ours = estimate(arch, sc, device=device)
    assert ours.extra["eval_moment"] == moment
    err = ours.extra["eval_peak_bytes"] / theirs.extra["eval_peak_bytes"] - 1
    assert abs(err) < 0.01, f"{err:+.3%}"
    # both say which peak is larger, and report the larger one
    for bd in (ours, theirs):
        larger = max(bd.extra["eval_peak_bytes"], bd.extra["training_peak_bytes"])
        assert (bd.peak_phase == "evaluation") == (bd.extra["eval_peak_bytes"] > bd.extra["training_peak_bytes"])
        assert any(n.startswith("evaluation (eval batch") for n in bd.notes)
        assert larger == bd.extra["phases"][bd.peak_phase]
    assert abs(ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1) < 0.01


def test_cpu_4bit_repack_is_not_counted(monkeypatch):
    """A CPU with AVX512-BF16 would make every bitsandbytes Linear4bit repack its weight in place in the
    eval forward (bitsandbytes 0.50.2 ``Linear4bit.forward``): the trace keeps the weights as they are
    (interventions item 19), so the evaluation's figures do not change and the repack never runs."""
    import bitsandbytes.nn.modules as bnb_modules

    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = grid_mod.reduced_arch("Qwen3-0.6B", 1)
    sc = Scenario(seq=64, eval_batch=2)
    plain = trace(arch, sc, extrapolate=False)
    calls = []
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", lambda *a, **k: calls.append(1) or a[:2])
    repacking = trace(arch, sc, extrapolate=False)
    assert calls == []
    assert repacking.extra["phases"] == plain.extra["phases"]
    assert repacking.allocated_peak_bytes == plain.allocated_peak_bytes
