"""Issue 14, feature 1: the fused losses that never build the logits, analytic engine vs trace.

The kernels are Triton; the trace runs stand-ins that allocate what each Python driver allocates
(``vramplan.hf.fused_losses``). Two checks: (1) each stand-in alone on fake tensors, its forward and
backward peak against the analytic term (``vramplan.analytic.logits``), for several dtype mixes and both
paths of Unsloth's loss; (2) the whole training step, trace vs analytic within 1 %, on 2-layer models of
real width (the loss-forward peak under the hf-peft recipe's fp32 lm_head, the layer-backward peak
otherwise, a trainable head under full fine-tuning, label rows under ``label_fraction``).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

pytestmark = [pytest.mark.torch]

from archhelp import grid_module  # noqa: E402

grid_mod = grid_module()

TOL = 0.01

#: (kind, batch, seq, H, V, hidden dtype, weight dtype, autocast)
ALONE = [
    ("liger", 1, 1024, 4096, 128256, "bfloat16", "bfloat16", True),
    ("liger", 2, 512, 3584, 152064, "float32", "float32", True),
    ("liger", 1, 1024, 4096, 128256, "float32", "bfloat16", True),
    ("liger", 2, 2048, 4096, 32000, "bfloat16", "bfloat16", False),
    ("cce", 1, 1024, 4096, 128256, "bfloat16", "bfloat16", True),
    ("cce", 1, 1024, 4096, 128256, "float32", "bfloat16", True),
    ("cce", 1, 8192, 2048, 151936, "bfloat16", "bfloat16", True),
    ("unsloth", 1, 1024, 4096, 128256, "bfloat16", "bfloat16", True),  # chunked path
    ("unsloth", 2, 512, 3584, 152064, "float32", "float32", True),
    ("unsloth", 1, 8192, 2048, 151936, "bfloat16", "bfloat16", True),  # tiled path (K >= 4096)
]


def _alone(kind, b, s, H, V, hdt, wdt, autocast):
    """(forward peak, backward peak) of the stand-in alone, beyond its inputs (hidden states counted as the
    analytic term counts them: held by the model's forward)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vramplan.hf import fused_losses as fl
    from vramplan.hf.tracker import LiveTensorTracker

    hdt, wdt = getattr(torch, hdt), getattr(torch, wdt)
    K = b * (s - 1)
    with FakeTensorMode():
        hidden = torch.empty(b, s, H, dtype=hdt, requires_grad=True)
        w = torch.empty(V, H, dtype=wdt)
        labels = torch.zeros(b, s, dtype=torch.long)
        with LiveTensorTracker() as tr:
            tr.register([w, hidden, labels], "weights")
            base = tr.current_bytes
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
            with ctx:
                if kind == "liger":
                    loss = fl.liger_loss(hidden, w, labels)
                elif kind == "cce":
                    loss = fl.cce_loss(hidden, w, labels, K)
                else:
                    loss = fl.unsloth_loss(hidden, w, labels, K)
            fwd = tr.peak_bytes - base
            tr.reset_peak()
            loss.backward()
            bwd = tr.peak_bytes - base
    hid = b * s * H * hdt.itemsize
    if kind == "cce":  # e is the hidden states when no cast: the tracker counted it among the inputs
        return fwd + hid, bwd + (hid if hdt == wdt else 0)
    return fwd + hid, bwd


@pytest.mark.parametrize("case", ALONE, ids=[f"{c[0]}-{c[1]}x{c[2]}-H{c[3]}-V{c[4]}-{c[5]}-{c[6]}" for c in ALONE])
def test_stand_in_allocates_the_analytic_term(case):
    from vramplan.analytic import logits as lg

    kind, b, s, H, V, hdt, wdt, autocast = case
    fwd, bwd = _alone(*case)
    hb, hw = (4 if hdt == "float32" else 2), (4 if wdt == "float32" else 2)
    c = 2 if autocast else hw
    N, K = b * s, b * (s - 1)
    if kind == "liger":
        want = lg.liger_flce_bytes(N, H, V, hb, hw, c, autocast, False)
    elif kind == "cce":
        want = lg.cce_bytes(N, K, H, V, hb, c, hw, False)
    else:
        want = lg.unsloth_ce_bytes(N, K, H, V, hb, hw, c, False)
    # the tracker rounds each storage to 512 B; the analytic terms count bytes: 0.5 % covers the small tensors
    assert want[0] == pytest.approx(fwd, rel=0.005) and want[1] == pytest.approx(bwd, rel=0.005), (want, fwd, bwd)


#: (model, scenario fields): whole-step cases, both engines within 1 %.
STEPS = [
    ("Qwen3-14B", dict(loss="liger", recipe="hf-peft", seq=1024)),   # loss-forward peak: the fp32 head's casts
    ("Qwen3-14B", dict(loss="liger", recipe="plain", seq=2048, batch=2)),
    ("Llama-3.1-8B", dict(loss="liger", recipe="plain", seq=1024, label_fraction=0.5, batch=2)),
    ("Qwen3-14B", dict(loss="liger", quant="none", full=True, recipe="plain", optimizer="sgd", seq=1024)),
    ("Qwen3-14B", dict(loss="cce", recipe="axolotl", seq=2048, batch=2)),
    ("Llama-3.1-8B", dict(loss="cce", recipe="hf-peft", seq=1024)),
    ("Qwen3-14B", dict(loss="unsloth", recipe="plain", seq=4200)),   # tiled path
    ("Qwen3-14B", dict(loss="unsloth", recipe="hf-peft", seq=1024)),  # loss-forward peak
    ("Qwen2.5-7B", dict(loss="unsloth", recipe="plain", seq=1024, label_fraction=0.3)),
]


@pytest.mark.parametrize("model,fields", STEPS, ids=[f"{m}-" + "-".join(f"{k}{v}" for k, v in f.items())
                                                     for m, f in STEPS])
def test_step_within_1_percent(model, fields):
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = grid_mod.reduced_arch(model, 2)
    sc = Scenario(**fields)
    theirs = trace(arch, sc, extrapolate=False)
    ours = estimate(arch, sc)
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < TOL, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"
    assert any("analytic-only" in n for n in theirs.notes)


def test_lora_on_lm_head_is_refused_by_the_trace():
    from vramplan.hf.build import TraceUnsupported
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = grid_mod.reduced_arch("Qwen3-14B", 2)
    with pytest.raises(TraceUnsupported, match="lm_head"):
        trace(arch, Scenario(loss="liger", recipe="trl", seq=128, targets=("q_proj", "lm_head")), extrapolate=False)
