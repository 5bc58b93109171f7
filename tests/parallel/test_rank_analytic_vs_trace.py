"""The analytic engine per rank held to the trace per rank (issue 16): for every strategy the trace
prices (``vramplan.parallel.STRATEGIES``), world sizes 2, 4 and 8, LoRA / QLoRA / full fine-tuning on
real-width models (the trace extrapolates the decoder layers), the allocated peak of rank 0 (and at
N = 8 under FSDP2 the last rank, whose uneven shards are the smallest) within 1 %. Skips a strategy the
trace does not price, or without torch.

ZeRO-3 is not affine in the depth (its coordinator keeps the layers its prefetch front passes while
``stage3_max_live_parameters`` allows: ``vramplan.parallel.zero3_schedule``), nor is ZeRO-2 (a rank's
gradient partition appears with the first gradient of its range: ``zero._partition_ready``), so the trace
runs every layer there. Its cells use the models' first ``Z3_LAYERS`` layers (the whole-model trace of a 1B model
takes about ten minutes here) with ``stage3_max_live_parameters`` set to keep some layers and release
others (``Z3_MAX_LIVE``: the embedding plus about two and a half bf16 layers); the whole-depth figures
at the default 1e9 are in ``benchmarks/zero3_whole_model.py``."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from vramplan.analytic import estimate  # noqa: E402
from vramplan.arch.lookup import resolve  # noqa: E402
from vramplan.arch.spec import Arch  # noqa: E402
from vramplan.parallel import STRATEGIES  # noqa: E402
from vramplan.scenario import Scenario, Strategy  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TOL = 0.01
MODELS = ("Qwen3-0.6B", "Llama-3.2-1B", "Llama-2-7b")
MODES = {"qlora": {}, "lora": dict(quant="none"), "full": dict(quant="none", full=True)}
SEQ = 256
Z3_LAYERS = 6
#: V·H + about 2.5 bf16 decoder layers, in elements (Qwen3-0.6B: 155.6 M + 2.5 × 15.7 M; Llama-3.2-1B:
#: 262.7 M + 2.5 × 60.8 M). Llama-3.2-1B then keeps 3 of its 6 layers (5 under QLoRA); six Qwen3-0.6B
#: layers are all kept whatever the limit: the whole step is under the 1e9-element reuse distance.
#: Llama-2-7b (untied, 131.1 M + 2.5 × 202.4 M): 2 of 6 kept under LoRA, 5 under QLoRA.
Z3_MAX_LIVE = {"Qwen3-0.6B": 195_000_000, "Llama-3.2-1B": 415_000_000, "Llama-2-7b": 640_000_000}


#: Cells where the analytic engine is known to be off by more than 1 % (docs/multigpu.md, "Open gaps"): ZeRO-2
#: full fine-tuning of the tied models at N = 2 (and Llama-3.2-1B at 4), traced at their whole depth: the trace
#: frees the tied embedding's gradient before the step there, and holds it at N = 8 (and Qwen3-0.6B at 4) and in
#: short models, as the analytic engine prices it; when DeepSpeed keeps it is not derived. ZeRO-2 full of
#: Qwen3-0.6B at N = 8 read −1.0 % until the tied gradient and the partition's first copy were priced per rank
#: (``zero._partition_ready``).
KNOWN_GAPS = {"zero2-Qwen3-0.6B-full-2": "+4.3 %", "zero2-Llama-3.2-1B-full-2": "+3.4 %",
              "zero2-Llama-3.2-1B-full-4": "+2.8 %"}


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
    if model == "Llama-2-7b" and (mode == "full" or strategy not in (Strategy.DDP, Strategy.FSDP, Strategy.ZERO3)):
        pytest.skip("the untied 7B-wide row covers DDP, FSDP2 and ZeRO-3 LoRA/QLoRA (its full step costs minutes "
                    "here)")
    from vramplan.trace import trace

    a = resolve(model)
    extra = {}
    if strategy is Strategy.ZERO3:
        a = Arch.from_config({**a.config, "num_hidden_layers": Z3_LAYERS}, name=a.name)
        extra = dict(stage3_max_live_parameters=Z3_MAX_LIVE[model])
    ranks = (0, n - 1) if (n == 8 and strategy is Strategy.FSDP) else (0,)  # uneven shards: the last rank
    for rank in ranks:
        s = Scenario(gpus=n, strategy=strategy, seq=SEQ, process_rank=rank, **MODES[mode], **extra)
        t = trace(a, s)
        e = estimate(a, s)
        # the cuBLAS workspace is the same calibration constant in both: the error is on the tensors
        tensors = t.allocated_peak_bytes - t.get("temporary/cublas_workspace")
        err = (e.allocated_peak_bytes - t.allocated_peak_bytes) / tensors
        assert abs(err) < TOL, (rank, e.peak_phase, t.peak_phase, err)


#: Reentrant checkpointing under ZeRO-3, where the trace's layer backward holds one MLP linear's weights
#: more than the replay (Llama-2-7b LoRA, the layers DeepSpeed released after their forward: not derived).
Z3_REENTRANT_GAPS = {"Llama-2-7b-lora": "-2.8 %"}


def _reentrant_cells():
    for model in MODELS:
        for mode in ("qlora", "lora"):
            name = f"{model}-{mode}"
            gap = Z3_REENTRANT_GAPS.get(name)
            marks = [pytest.mark.xfail(strict=True, reason=f"known gap {gap}")] if gap else []
            yield pytest.param(model, mode, id=name, marks=marks)


@pytest.mark.parametrize("model,mode", list(_reentrant_cells()))
def test_zero3_reentrant_within_1_percent(model, mode):
    """ZeRO-3 with reentrant checkpointing (peft's k-bit default): no graph in the forward, so nothing is
    pinned and each layer's backward recomputes its whole forward first (``zero3_schedule``); 2 GPUs."""
    pytest.importorskip("deepspeed")
    from vramplan.trace import trace

    a = resolve(model)
    a = Arch.from_config({**a.config, "num_hidden_layers": Z3_LAYERS}, name=a.name)
    s = Scenario(gpus=2, strategy=Strategy.ZERO3, seq=SEQ, reentrant=True,
                 stage3_max_live_parameters=Z3_MAX_LIVE[model], **MODES[mode])
    t = trace(a, s)
    e = estimate(a, s)
    err = (e.allocated_peak_bytes - t.allocated_peak_bytes) / (t.allocated_peak_bytes
                                                               - t.get("temporary/cublas_workspace"))
    assert abs(err) < TOL, (e.peak_phase, t.peak_phase, err)
