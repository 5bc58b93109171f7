"""The HF Trainer's evaluation loop on one rank (issue 16): the analytic engine's evaluation peak per
rank held to the trace's for every strategy the trace prices, QLoRA and LoRA, keeping the logits; and
under DeepSpeed the predictions stay in the compute dtype (accelerate runs no native AMP there, so no
``convert_to_fp32``: accelerate 1.16 ``accelerator.py`` L535-566), in fp32 under DDP/FSDP2."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from vramplan.analytic import estimate  # noqa: E402
from vramplan.arch.lookup import resolve  # noqa: E402
from vramplan.hf import interventions  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODES = {"qlora": dict(eval_batch=8), "lora": dict(quant="none", eval_batch=4)}

#: ZeRO-3 LoRA: the analytic engine prices the evaluation's gathered parameters as the training forward's
#: (1,197,932,544 B on Qwen3-0.6B); DeepSpeed's coordinator holds 1,077,575,680 B at the second eval batch's
#: logits (its recorded order no longer matches there: not replayed yet), +3.2 % on the evaluation peak.
KNOWN_GAPS = {("zero3", "lora"): "+3.2 %"}


def _cells():
    for strategy in ("ddp", "fsdp", "zero2", "zero3"):
        for mode in MODES:
            gap = KNOWN_GAPS.get((strategy, mode))
            marks = [pytest.mark.xfail(strict=True, reason=f"known gap {gap}")] if gap else []
            yield pytest.param(strategy, mode, id=f"{strategy}-{mode}", marks=marks)


@pytest.mark.parametrize("strategy,mode", list(_cells()))
def test_rank_eval_peak_within_1_percent(strategy, mode):
    if strategy.startswith("zero"):
        pytest.importorskip("deepspeed")
    from vramplan.trace import trace

    a = resolve("Qwen3-0.6B")
    fields = MODES[mode]
    s = Scenario(gpus=2, strategy=strategy, seq=256, eval_keep="logits", eval_samples=2 * fields["eval_batch"],
                 **fields)
    with interventions.quiet_frameworks():
        t = trace(a, s).extra["eval_peak_bytes"]
    e = estimate(a, s).extra["eval_peak_bytes"]
    assert abs(e - t) / t < 0.01, (e, t)


def _kept(strategy: str) -> int:
    from vramplan.trace.evaluation import PHASE
    from vramplan.trace.run import trace_run

    s = Scenario(gpus=2, strategy=strategy, seq=64, batch=2, quant="none", eval_batch=2, eval_keep="logits",
                 eval_samples=16)
    with interventions.quiet_frameworks():
        run = trace_run(resolve("vramplan-debug"), s, steps=1, fake=True, device="cpu")
    return run.steps[-1].phases[PHASE][1]["logits/eval_predictions"]


def test_kept_logits_are_fp32_under_ddp_and_bf16_under_zero():
    """vramplan-debug, eval batch 2 x seq 64 x vocab 512, eight batches kept: the evaluation peak is the
    last concatenation (``EvalLoopContainer.add``): the seven kept batches and their concatenation with
    the new one (15 batches of kept logits; the new batch itself is still the forward's component)
    beside the same labels either way, each batch 2 x 64 x 512 elements: 4 B each under DDP
    (accelerate's convert_to_fp32), 2 B under ZeRO-2 (no native AMP), 15 x 65,536 x 2 B = 1,966,080 B
    apart."""
    pytest.importorskip("deepspeed")
    assert _kept("ddp") - _kept("zero2") == 15 * 2 * 64 * 512 * (4 - 2)
