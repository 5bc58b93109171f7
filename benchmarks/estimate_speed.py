"""Speed of the analytic engine: per-call API time and end-to-end `vramplan estimate` wall time.

Targets (issue 3): ≤ 50 µs per ``vramplan.analytic.estimate`` call (the planner sweeps 10,000
scenarios in ≤ 1 s) and ≤ 0.25 s for one ``vramplan estimate`` process, without importing torch.

Usage: python benchmarks/estimate_speed.py [--model Qwen3-14B] [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def api_per_call(model: str, n_sweep: int = 10_000) -> tuple[float, float]:
    """(µs per call over a varied sweep, seconds for the sweep) after one warm-up call per shape."""
    from vramplan.analytic import estimate
    from vramplan.arch import resolve
    from vramplan.scenario import Scenario

    arch = resolve(model)
    shapes = [Scenario(rank=r, seq=s, batch=b, grad_checkpointing=gc)
              for r in (8, 16, 32, 64) for s in (512, 1024, 2048, 4096, 8192) for b in (1, 2, 4)
              for gc in (True, False)]
    for sc in shapes:
        estimate(arch, sc)
    t0 = time.perf_counter()
    for i in range(n_sweep):
        estimate(arch, shapes[i % len(shapes)])
    dt = time.perf_counter() - t0
    return 1e6 * dt / n_sweep, dt


def cli_wall(model: str, runs: int, as_json: bool = True) -> tuple[float, float, bool]:
    """(median s, min s, torch imported?) of `vramplan estimate -m MODEL [--json]` processes."""
    argv = ["estimate", "-m", model] + (["--json"] if as_json else [])
    code = (f"import sys\nimport vramplan.cli as c\ntry:\n    c.main({argv!r})\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('TORCH=%s' % ('torch' in sys.modules))")
    times, torch_seen = [], False
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        torch_seen |= "TORCH=True" in r.stderr
    return statistics.median(times), min(times), torch_seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen3-14B")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    us, sweep = api_per_call(args.model)
    print(f"analytic estimate(): {us:.1f} µs per call; 10,000-scenario sweep {sweep:.3f} s "
          f"(target ≤ 50 µs, ≤ 1 s)")
    for as_json in (True, False):
        med, best, torch_seen = cli_wall(args.model, args.runs, as_json)
        what = "--json" if as_json else "(rich table)"
        print(f"`vramplan estimate -m {args.model} {what}` end to end: median {med:.3f} s, best {best:.3f} s "
              f"over {args.runs} runs (target ≤ 0.25 s); torch imported: {torch_seen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
