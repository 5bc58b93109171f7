"""Analytic vs trace per rank on the grid of tests/parallel/test_rank_analytic_vs_trace.py, as figures.

Prints (analytic − trace) / trace tensors (the allocated peak less the shared cuBLAS constant, rank 0; at
N = 8 under FSDP2 also the last rank) for every strategy × model × LoRA/QLoRA/full × N cell the test runs,
and the reentrant ZeRO-3 cells; asserts nothing (the test holds the 1 % bound).

    python benchmarks/rank_grid.py [--strategies ddp,fsdp,zero2,zero3] [--models Qwen3-0.6B,...] [--modes full]
                                   [--reentrant]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", default="ddp,fsdp,zero2,zero3")
    ap.add_argument("--models", default=None)
    ap.add_argument("--modes", default="qlora,lora,full")
    ap.add_argument("--reentrant", action="store_true", help="the reentrant ZeRO-3 cells only")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "parallel"))
    import test_rank_analytic_vs_trace as grid  # the test's own cells and settings

    from vramplan.analytic import estimate
    from vramplan.arch.lookup import resolve
    from vramplan.arch.spec import Arch
    from vramplan.scenario import Scenario, Strategy
    from vramplan.trace import trace

    models = args.models.split(",") if args.models else grid.MODELS

    def err(a, s) -> float:
        t, e = trace(a, s), estimate(a, s)
        return (e.allocated_peak_bytes - t.allocated_peak_bytes) / (t.allocated_peak_bytes
                                                                   - t.get("temporary/cublas_workspace")) * 100

    if args.reentrant:
        for model in models:
            a = resolve(model)
            a = Arch.from_config({**a.config, "num_hidden_layers": grid.Z3_LAYERS}, name=a.name)
            for mode in ("qlora", "lora"):
                s = Scenario(gpus=2, strategy=Strategy.ZERO3, seq=grid.SEQ, reentrant=True,
                             stage3_max_live_parameters=grid.Z3_MAX_LIVE[model], **grid.MODES[mode])
                print(f"zero3-reentrant {model:14s} {mode:5s} N=2  {err(a, s):+.3f} %", flush=True)
        return
    for strategy in (Strategy(x) for x in args.strategies.split(",")):
        for model in models:
            for mode in args.modes.split(","):
                if model == "Llama-2-7b" and (mode == "full" or strategy not in (Strategy.DDP, Strategy.FSDP,
                                                                                 Strategy.ZERO3)):
                    continue
                a, extra = resolve(model), {}
                if strategy is Strategy.ZERO3:
                    a = Arch.from_config({**a.config, "num_hidden_layers": grid.Z3_LAYERS}, name=a.name)
                    extra = dict(stage3_max_live_parameters=grid.Z3_MAX_LIVE[model])
                cells = []
                t0 = time.perf_counter()
                for n in (2, 4, 8):
                    ranks = (0, n - 1) if (n == 8 and strategy is Strategy.FSDP) else (0,)
                    for rank in ranks:
                        s = Scenario(gpus=n, strategy=strategy, seq=grid.SEQ, process_rank=rank,
                                     **grid.MODES[mode], **extra)
                        cells.append(f"{err(a, s):+.3f}" + (f" (rank {rank})" if rank else ""))
                print(f"{strategy.value:6s} {model:14s} {mode:5s} N=2/4/8  {' / '.join(cells)} %  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
