"""Analytic and trace against the CUDA profiles in profiles/cuda (an NVIDIA H200; see tools/cuda_sweep.sh).

Usage: python benchmarks/cuda_profiles_accuracy.py [--folder profiles/cuda] [--no-trace] [--json FILE]

For every stored CUDA profile prints the measured allocated / reserved / process peaks
(``torch.cuda.max_memory_allocated``, ``max_memory_reserved``, NVML) next to the analytic estimate
(shipped calibration, per-device constants) and the fake-tensor trace (CUDA semantics, allocated only;
its reserved and process totals come from the same runtime terms), with the relative errors, the
trace's wall time and the measured step time. A summary follows: median |error| and the worst under-
and over-prediction per figure, over runs of at least 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

GiB = 1024**3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(Path(__file__).resolve().parent.parent / "profiles" / "cuda"))
    ap.add_argument("--no-trace", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    from vramplan.analytic import estimate
    from vramplan.arch import Arch
    from vramplan.profile.store import load_profiles

    problems: list[str] = []
    profiles = sorted(load_profiles(args.folder, problems), key=lambda p: (p.model, p.timestamp))
    for msg in problems:
        print("skipped:", msg, file=sys.stderr)
    rows = []
    head = (f"{'profile':48s} {'alloc':>8s} {'analytic':>8s} {'trace':>8s} {'resv':>8s} {'analytic':>8s} "
            f"{'process':>8s} {'analytic':>8s} {'trace s':>7s} {'step s':>6s}")
    print(head)
    for p in profiles:
        arch = Arch.from_config(p.arch_config, name=p.model)
        m = p.measured
        b = estimate(arch, p.scenario, device=p.device["name"])
        tr, tr_s = None, None
        if not args.no_trace:
            from vramplan.trace import trace

            t0 = time.perf_counter()
            try:
                tr = trace(arch, p.scenario, device="cuda").allocated_peak_bytes
            except Exception as e:  # noqa: BLE001 - a configuration the trace cannot run is a row, not a crash
                print(f"  trace failed for {p.path.name}: {e}", file=sys.stderr)
            tr_s = time.perf_counter() - t0

        def err(pred: int | None, meas: int | None) -> float | None:
            return None if pred is None or not meas else (pred - meas) / meas

        row = dict(profile=p.path.name, model=p.model, seq=p.scenario.seq, batch=p.scenario.batch,
                   allocated=m["allocated_peak_bytes"], reserved=m["reserved_peak_bytes"],
                   process=m["process_peak_bytes"], analytic_allocated=b.allocated_peak_bytes,
                   analytic_reserved=b.reserved_peak_bytes, analytic_total=b.total_bytes, trace_allocated=tr,
                   err_allocated=err(b.allocated_peak_bytes, m["allocated_peak_bytes"]),
                   err_trace=err(tr, m["allocated_peak_bytes"]),
                   err_reserved=err(b.reserved_peak_bytes, m["reserved_peak_bytes"]),
                   err_process=err(b.total_bytes, m["process_peak_bytes"]),
                   trace_seconds=tr_s, step_seconds=m.get("step_seconds"))
        rows.append(row)

        def pct(x: float | None) -> str:
            return "—" if x is None else f"{x * 100:+.2f}%"

        print(f"{p.path.name[:48]:48s} {m['allocated_peak_bytes'] / GiB:8.2f} {pct(row['err_allocated']):>8s} "
              f"{pct(row['err_trace']):>8s} {m['reserved_peak_bytes'] / GiB:8.2f} {pct(row['err_reserved']):>8s} "
              f"{(m['process_peak_bytes'] or 0) / GiB:8.2f} {pct(row['err_process']):>8s} "
              f"{'—' if tr_s is None else f'{tr_s:.1f}':>7s} {row['step_seconds'] or 0:6.2f}")
    real = [r for r in rows if r["allocated"] >= GiB]
    print(f"\nsummary over {len(real)} runs of at least 1 GiB (GiB = 2^30 bytes):")
    for key, what in (("err_allocated", "analytic allocated vs max_memory_allocated"),
                      ("err_trace", "trace allocated vs max_memory_allocated"),
                      ("err_reserved", "analytic reserved vs max_memory_reserved"),
                      ("err_process", "analytic total vs NVML process")):
        errs = [r[key] for r in real if r[key] is not None]
        if not errs:
            continue
        print(f"  {what:45s} median |e| {statistics.median(abs(e) for e in errs) * 100:5.2f} %, "
              f"worst under {min(errs) * 100:+6.2f} %, worst over {max(errs) * 100:+6.2f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
