"""Feature 6 of issue 14, generation: the trace's generating evaluation (transformers 5.24's greedy loop
driven step by step with its DynamicCache, interventions item 26) held to the analytic engine within
1 %, on 2-layer Qwen3-0.6B / Llama-3.2-1B (real widths and vocabularies), each moment."""

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
    # hf-peft QLoRA (fp32 K/V), generated ids of 5 samples in batches 2, 2, 1: the prefill
    ("Qwen3-0.6B", dict(seq=32, eval_batch=2, eval_new_tokens=3, eval_keep="ids", eval_samples=5), "prefill"),
    # LLaMA-Factory's dtypes (bf16 K/V, fp32 LoRA), a long generation: the last decode step's update
    ("Qwen3-0.6B", dict(seq=32, eval_batch=2, recipe="plain", eval_new_tokens=600), "decode"),
    ("Llama-3.2-1B", dict(seq=32, eval_batch=2, recipe="plain", eval_new_tokens=1200), "decode"),
    # full fine-tuning generates under autocast with convert_to_fp32: the last decode step's head
    ("Qwen3-0.6B", dict(seq=32, eval_batch=2, quant="none", full=True, eval_new_tokens=40), "decode head"),
]


@pytest.mark.parametrize("model,kw,moment", CASES, ids=[f"{m}-{i}" for i, (m, *_ ) in enumerate(CASES)])
def test_generation_trace_vs_analytic_within_1_percent(model, kw, moment):
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = grid_mod.reduced_arch(model, 2)
    sc = Scenario(**kw)
    theirs = trace(arch, sc, extrapolate=False, device="cuda")
    ours = estimate(arch, sc, device="cuda")
    assert ours.extra["eval_moment"] == moment
    err = ours.extra["eval_peak_bytes"] / theirs.extra["eval_peak_bytes"] - 1
    assert abs(err) < 0.01, f"{err:+.3%}"
    assert any("with a DynamicCache" in n for n in theirs.notes)
