"""Each framework's own trainer under `vramplan profile --config`, against both engines.

Runs the fixture config of every framework whose trainer is installed here (tests/data/frameworks/, on
the 2-layer Qwen3 / Llama configs beside them, 128 tokens, 3 steps) in its own process, and prints the
measured steady-step peak, each engine's error and the seconds. ms-swift, LLaMA-Factory, axolotl and
torchtune need the framework venv of .ci/frameworks:

    .fwvenv/bin/python benchmarks/framework_profiles.py
    .venv/bin/python benchmarks/framework_profiles.py --seq 256 --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "frameworks"
RUNS = [
    ("trl", ["trl_qlora.yaml"], "profile_qwen3", []),
    ("hf", ["training_args.json", "adapter_config.json"], "profile_qwen3", ["--quant", "nf4"]),
    ("ms-swift", ["swift_qlora.sh"], "profile_qwen3", ["--label-fraction", "0.5"]),
    ("llamafactory", ["llamafactory_qlora.yaml"], "profile_qwen3", []),
    ("axolotl", ["axolotl_qlora.yml"], "profile_qwen3", []),
    ("torchtune", ["torchtune_qlora.yaml"], "profile_llama", []),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    from vramplan.profile.frameworks import installed

    print(f"{'framework':<14}{'version':<10}{'measured B':>14}{'analytic':>10}{'trace':>10}{'train s':>9}{'run s':>8}")
    for name, configs, model, extra in RUNS:
        if not installed(name):
            print(f"{name:<14}not installed here")
            continue
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "vramplan", "profile", "--model", str(DATA / model), "--seq", str(args.seq),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--out", out, "--json", *extra]
            for c in configs:
                cmd += ["--config", str(DATA / c)]
            t0 = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1"})
            wall = time.perf_counter() - t0
        if run.returncode != 0:
            lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
            print(f"{name:<14}failed: {(lines or [run.stderr[-300:]])[-1]}")
            continue
        (prof,) = json.loads(run.stdout)
        m = prof["measured"]["allocated_peak_bytes"]
        err = {e: 100 * (prof["predictions"][e]["allocated_peak_bytes"] / m - 1) for e in ("analytic", "trace")}
        print(f"{name:<14}{prof['run']['framework']['version']:<10}{m:>14,}{err['analytic']:>+9.3f}%"
              f"{err['trace']:>+9.3f}%{prof['measured']['train_seconds_traced']:>9.1f}{wall:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
