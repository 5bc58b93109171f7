"""Planner speed: 10,000 fit checks through the Python API, and one full `plan` call.

Target (issue 7): the 10,000-scenario sweep in ≤ 1 s. Prints figures; asserts nothing.

    python benchmarks/plan_sweep.py [--model Qwen3-14B] [--gpu "RTX 4090"] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen3-14B")
    ap.add_argument("--gpu", default="RTX 4090")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from vramplan.analytic import estimate
    from vramplan.arch import resolve
    from vramplan.gpus import find_gpu
    from vramplan.plan import plan, sweep
    from vramplan.scenario import Optim, Scenario

    arch, gpu = resolve(args.model), find_gpu(args.gpu)
    estimate(arch, Scenario())  # warm the lazy loads (calibration, imports)

    # 40 seqs x 5 batches x 5 ranks x 2 checkpointing x 5 optimizers = 10,000 distinct scenarios
    seqs = [128 * i for i in range(1, 41)]
    grid = itertools.product(seqs, (1, 2, 4, 8, 16), (4, 8, 16, 32, 64), (True, False), list(Optim))
    t0 = time.perf_counter()
    scenarios = [Scenario(seq=s, batch=b, rank=r, grad_checkpointing=g, optimizer=o) for s, b, r, g, o in grid]
    t_build = time.perf_counter() - t0
    assert len(scenarios) == 10_000

    sweeps, raw = [], []
    for _ in range(args.repeat):  # interleaved, so machine load hits both alike
        t0 = time.perf_counter()
        checks = sweep(arch, gpu, scenarios)
        sweeps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for s in scenarios:
            estimate(arch, s, device=gpu.name)
        raw.append(time.perf_counter() - t0)
    fits = sum(c.fits for c in checks)
    per_estimate = min(raw) / len(scenarios)

    plans = []
    for seq, gc in ((2048, True), (16384, False)):  # one that fits, one that needs suggestions
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            p = plan(arch, gpu, Scenario(seq=seq, grad_checkpointing=gc))
            times.append(time.perf_counter() - t0)
        plans.append((seq, gc, p, min(times)))

    print(f"model {args.model} on {gpu.name}")
    print(f"sweep of 10,000 scenarios: best {min(sweeps):.3f} s, median {statistics.median(sweeps):.3f} s "
          f"({min(sweeps) / 10_000 * 1e6:.1f} µs per check; {fits:,} fit)  target ≤ 1 s")
    print(f"  + building the 10,000 Scenario objects: {t_build:.3f} s")
    print(f"analytic estimate alone, same 10,000: best {min(raw):.3f} s ({per_estimate * 1e6:.1f} µs per call); "
          f"planner overhead {(min(sweeps) - min(raw)) / 10_000 * 1e6:.1f} µs per check")
    for seq, gc, p, t in plans:
        print(f"full plan seq={seq} gc={gc}: {t * 1e3:.2f} ms, {p.estimate_calls} estimates, fits={p.fits}, "
              f"max_seq={p.max_seq} max_batch={p.max_batch} max_rank={p.max_rank}, "
              f"{len(p.suggestions)} suggestions")


if __name__ == "__main__":
    main()
