"""Shrunk family rows at 1 × 1024: terms that grow with the sequence faster than the seq-256 rows show.

At seq 256 a per token·s term (GLM-5's DSA indexer scores) or a per-token moment of a MoE layer's backward
(DeepSeek's routed-expert output gradients) hides under the layer's saved tensors; at 1024 it becomes the
peak. Each row builds the harness's shrunk model (``test_family_records.shrunk_arch``) and holds the
analytic allocated peak within 1 % of the trace's, with and without gradient checkpointing.
"""

from __future__ import annotations

import pytest

from test_family_records import _both

#: model_type -> why it has a 1 × 1024 row.
LONG_ROWS = {
    "glm_moe_dsa": "the DSA indexer's b·heads·s·s scores in the recomputed layer (mixers.dsa_recompute_moment)",
    "deepseek_v3": "the routed experts' output gradients (activations.moe_output_backward)",
    "glm4_moe_lite": "DeepSeek's MoE block (activations.moe_output_backward)",
}


#: model_type -> why it has an eager-attention row at 1 × 1024 (eager's b·heads·s·s scores and its
#: b·s·s masks are the peak there; Gemma 2 runs eager by default, Gemma 3 and 4 on request).
EAGER_ROWS = {
    "gemma2": "full and sliding-window layers: two eager masks kept by checkpointing (terms' eager_mask × kinds)",
    "gemma3_text": "two eager masks, and the two rotary modules' cos/sin rows (StaticTerms.rope_row)",
    "gemma4_text": "the whole-layer kinds' softmax backward (mixers.EAGER_MOMENTS)",
}
#: (model_type, attention) of every 1 × 1024 row.
ROWS = [(t, "sdpa") for t in sorted(LONG_ROWS)] + [(t, "eager") for t in sorted(EAGER_ROWS)]


@pytest.mark.torch
@pytest.mark.parametrize("gc", [True, False], ids=["gc", "no-gc"])
@pytest.mark.parametrize("model_type,attn", ROWS, ids=[f"{t}-{a}" for t, a in ROWS])
def test_1x1024_within_1_percent_of_trace(model_type, attn, gc):
    arch, ours, theirs = _both(model_type, seq=1024, attn=attn, grad_checkpointing=gc)
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"


@pytest.mark.torch
@pytest.mark.parametrize("gc", [True, False], ids=["gc", "no-gc"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma4_kv_shared_1x1024_within_1_percent_of_trace(attn, gc, monkeypatch):
    """Gemma 4's kv-shared layers (E2B / E4B: the last ``num_kv_shared_layers`` read the keys and values of
    the last unshared layer of their type, with the double-wide MLP): a 4-layer shrunk model, one layer of
    each kind. Their key/value gradients wait at the producer until its backward (``StaticTerms.grad_hold``,
    ``mixers.gemma4_kv_grad_hold``; under eager at 1 × 1024 −2.0 % without it)."""
    import test_family_records as R

    name, over = R.SHRUNK["gemma4_text"]
    monkeypatch.setitem(R.SHRUNK, "gemma4_text", (name, dict(
        over, _layers=4, num_kv_shared_layers=2, use_double_wide_mlp=True,
        layer_types=["sliding_attention", "full_attention"] * 2)))
    arch, ours, theirs = _both("gemma4_text", seq=1024, attn=attn, grad_checkpointing=gc)
    assert [arch.mixer(i) for i in range(4)] == ["gemma4_sliding", "gemma4_full", "gemma4_sliding_kv_shared",
                                                  "gemma4_full_kv_shared"]
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"

