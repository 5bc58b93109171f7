"""ZeRO-3 per rank at the models' whole depth: the analytic engine vs the trace of every layer.

Usage: python benchmarks/zero3_whole_model.py [--only SUBSTR]

ZeRO-3's peak is not affine in the depth (``vramplan.parallel.zero3_schedule``: the coordinator keeps
the layers its prefetch front passes while ``stage3_max_live_parameters`` allows), so the trace runs
every layer (``vramplan.trace.engine.depth_bound``) and ``tests/parallel/test_rank_analytic_vs_trace.py``
checks six-layer models. This prints the whole-depth cells at DeepSpeed's defaults (1e9 live, 1e9
reuse distance), seq 256, rank 0: each trace takes minutes on a CPU (about ten for Llama-3.2-1B LoRA).
"""

from __future__ import annotations

import argparse
import time

CELLS = [  # model, world size, scenario fields
    ("meta-llama/Llama-3.2-1B", 2, dict(quant="none")),
    ("meta-llama/Llama-3.2-1B", 2, dict()),
    ("meta-llama/Llama-3.2-1B", 8, dict(quant="none", full=True)),
    ("Qwen/Qwen3-0.6B", 2, dict(quant="none", full=True)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run the cells whose label contains this")
    args = ap.parse_args()
    from vramplan.analytic import estimate
    from vramplan.arch.lookup import resolve
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    print(f"{'cell':52s} {'analytic B':>15s} {'trace B':>15s} {'error':>8s} {'trace s':>8s}  kept")
    for model, n, fields in CELLS:
        mode = "full" if fields.get("full") else ("lora" if fields.get("quant") == "none" else "qlora")
        label = f"{model} {mode} N={n}"
        if args.only not in label:
            continue
        a = resolve(model)
        s = Scenario(gpus=n, strategy="zero3", seq=256, **fields)
        e = estimate(a, s)
        t0 = time.perf_counter()
        t = trace(a, s)
        dt = time.perf_counter() - t0
        tensors = t.allocated_peak_bytes - t.get("temporary/cublas_workspace")
        err = (e.allocated_peak_bytes - t.allocated_peak_bytes) / tensors
        kept = next((p.split(" decoder")[0] for x in e.notes for p in x.split("; ") if "kept gathered" in p), "?")
        print(f"{label:52s} {e.allocated_peak_bytes:>15,} {t.allocated_peak_bytes:>15,} {err:>+8.2%} {dt:>8.0f}  {kept}",
              flush=True)


if __name__ == "__main__":
    main()
