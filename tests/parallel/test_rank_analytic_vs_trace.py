"""The analytic engine per rank held to the trace per rank (issue 16): for every strategy the trace
prices (``vramplan.parallel.STRATEGIES``), world sizes 2, 4 and 8, LoRA / QLoRA / full fine-tuning on
real-width models (the trace extrapolates the decoder layers), the allocated peak of rank 0 (and at
N = 8 under FSDP2 the last rank, whose uneven shards are the smallest) within 1 %. Skips a strategy the
trace does not price, or without torch."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from vramplan.analytic import estimate  # noqa: E402
from vramplan.arch.lookup import resolve  # noqa: E402
from vramplan.parallel import STRATEGIES  # noqa: E402
from vramplan.scenario import Scenario, Strategy  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TOL = 0.01
MODELS = ("Qwen3-0.6B", "Llama-3.2-1B", "Llama-2-7b")
MODES = {"qlora": {}, "lora": dict(quant="none"), "full": dict(quant="none", full=True)}
SEQ = 256


#: Cells where the analytic engine is known to be off by more than 1 % (docs/multigpu.md, "Open gaps"):
#: ZeRO-3 full fine-tuning of Llama-3.2-1B (the trace's optimizer step holds a flat 16-bit gradient copy
#: and, at N = 8, more loss-time memory than priced) and ZeRO-2 full of Qwen3-0.6B at N = 8 (layer backward).
KNOWN_GAPS = {"zero3-Llama-3.2-1B-full-2": "-6.0 %", "zero3-Llama-3.2-1B-full-8": "-3.6 %",
              "zero2-Qwen3-0.6B-full-8": "-1.0 %"}


def _cells():
    for strategy in (Strategy.DDP, Strategy.FSDP, Strategy.ZERO2, Strategy.ZERO3):
        for model in MODELS:
            for mode in MODES:
                for n in (2, 4, 8):
                    name = f"{strategy.value}-{model}-{mode}-{n}"
                    marks = [pytest.mark.xfail(strict=True, reason=f"known gap {KNOWN_GAPS[name]}")] \
                        if name in KNOWN_GAPS else []
                    yield pytest.param(strategy, model, mode, n, id=name, marks=marks)


@pytest.mark.parametrize("strategy,model,mode,n", list(_cells()))
def test_rank_peak_within_1_percent(strategy, model, mode, n):
    if not STRATEGIES[strategy][1]:
        pytest.skip(f"the trace does not price {strategy.value} yet")
    if strategy in (Strategy.ZERO2, Strategy.ZERO3):
        pytest.importorskip("deepspeed")  # the optional extra (.ci/deepspeed runs these cells)
    if model == "Llama-2-7b" and (mode == "full" or strategy not in (Strategy.DDP, Strategy.FSDP)):
        pytest.skip("the untied 7B-wide row covers DDP and FSDP2 LoRA/QLoRA (its full step costs minutes here)")
    from vramplan.trace import trace

    a = resolve(model)
    ranks = (0, n - 1) if (n == 8 and strategy is Strategy.FSDP) else (0,)  # uneven shards: the last rank
    for rank in ranks:
        s = Scenario(gpus=n, strategy=strategy, seq=SEQ, process_rank=rank, **MODES[mode])
        t = trace(a, s)
        e = estimate(a, s)
        # the cuBLAS workspace is the same calibration constant in both: the error is on the tensors
        tensors = t.allocated_peak_bytes - t.get("temporary/cublas_workspace")
        err = (e.allocated_peak_bytes - t.allocated_peak_bytes) / tensors
        assert abs(err) < TOL, (rank, e.peak_phase, t.peak_phase, err)
