"""Trace speed: Qwen3-14B, r 8, all-linear, 1 x 2048, GC on, hf-peft, AdamW (target: <= 15 s wall).

Prints wall time, peak RSS and the allocated peak with its categories, for the extrapolated fast mode
and the full 40-layer trace. Run: python benchmarks/trace_speed.py [MODEL] [SEQ]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="Qwen3-14B", help="registry model (default Qwen3-14B)")
    ap.add_argument("seq", nargs="?", type=int, default=2048, help="sequence length (default 2048)")
    args = ap.parse_args(argv)
    model, seq = args.model, args.seq
    warnings.filterwarnings("ignore")

    t = time.perf_counter()
    import vramplan
    from vramplan.breakdown import fmt_bytes
    from vramplan.hf.interventions import warm_bitsandbytes
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    warm_bitsandbytes()
    print(f"imports + bitsandbytes warm-up: {time.perf_counter() - t:.2f} s")
    arch = vramplan.resolve(model)
    sc = Scenario(rank=8, seq=seq, batch=1, grad_checkpointing=True, recipe="hf-peft", optimizer="adamw")
    for extrapolate in (True, False):
        t = time.perf_counter()
        b = trace(arch, sc, extrapolate=extrapolate)
        wall = time.perf_counter() - t
        mode = "extrapolated" if extrapolate else "full"
        print(f"\n{model} 1x{seq} {mode}: {wall:.2f} s wall, layers traced {b.extra['layers_traced']}")
        print(f"  traced allocated peak (steady step): {b.extra['steady_step_peak_bytes']:,} B "
              f"= {fmt_bytes(b.extra['steady_step_peak_bytes'])}  (first step "
              f"{fmt_bytes(b.extra['first_step_peak_bytes'])}, peak in {b.peak_phase})")
        for c in b.components:
            print(f"  {c.name:32s} {c.category:12s} {c.bytes:>16,d}  {fmt_bytes(c.bytes)}")
        print(f"  allocated {fmt_bytes(b.allocated_peak_bytes)}  reserved {fmt_bytes(b.reserved_peak_bytes)}  "
              f"total {fmt_bytes(b.total_bytes)}")
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
