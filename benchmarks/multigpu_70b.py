"""Per-GPU peak of Llama-3.1-70B QLoRA r16 at 2048 tokens under each strategy, analytic and trace.

Issue 16's closing table. Prints GiB allocated per GPU (rank 0) and, with ``--trace``, the fake-rank trace
of the same cell and the difference; asserts nothing. The trace of a ZeRO-3 cell runs all 80 layers (minutes
each on a CPU); the others extrapolate from short models.

    python benchmarks/multigpu_70b.py [--trace] [--only fsdp-bf16,zero2] [--gpus 2,4,8]
"""

from __future__ import annotations

import argparse
import time

#: row name -> Scenario fields (hf-peft recipe, gradient checkpointing, AdamW: the defaults)
ROWS = {
    "single": dict(),
    "ddp": dict(strategy="ddp"),
    "fsdp-uint8": dict(strategy="fsdp"),
    "fsdp-bf16": dict(strategy="fsdp", quant_storage="bf16"),
    "zero2": dict(strategy="zero2"),
    "zero3": dict(strategy="zero3"),
    "zero3-reentrant": dict(strategy="zero3", reentrant=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Llama-3.1-70B")
    ap.add_argument("--trace", action="store_true", help="also run the fake-rank trace of every cell")
    ap.add_argument("--only", default=",".join(ROWS), help="comma-separated rows")
    ap.add_argument("--gpus", default="2,4,8")
    args = ap.parse_args()

    import vramplan
    from vramplan.arch import resolve

    arch = resolve(args.model)
    gib = 2 ** 30
    for row in args.only.split(","):
        fields = ROWS[row]
        worlds = [1] if row == "single" else [int(n) for n in args.gpus.split(",")]
        for n in worlds:
            kw = dict(rank=16, seq=2048, **fields)
            if n > 1:
                kw["gpus"] = n
            t0 = time.perf_counter()
            an = vramplan.estimate(arch, method="analytic", **kw)
            t_an = time.perf_counter() - t0
            line = (f"{row:16s} N={n}  analytic {an.allocated_peak_bytes / gib:7.2f} GiB "
                    f"({an.allocated_peak_bytes:,} B, {an.peak_phase}, {t_an * 1e3:.1f} ms)")
            if args.trace:
                t0 = time.perf_counter()
                tr = vramplan.estimate(arch, method="trace", **kw)
                t_tr = time.perf_counter() - t0
                err = (an.allocated_peak_bytes - tr.allocated_peak_bytes) / tr.allocated_peak_bytes * 100
                line += (f"  trace {tr.allocated_peak_bytes / gib:7.2f} GiB ({tr.allocated_peak_bytes:,} B, "
                         f"{tr.peak_phase}, {t_tr:.0f} s)  {err:+.2f} %")
            print(line, flush=True)


if __name__ == "__main__":
    main()
