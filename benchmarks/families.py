"""Issue 15's closing table: each family's representative full-size model (``FULL`` of
tests/families/test_family_records.py), QLoRA NF4, LoRA r16 on every linear, 1 × 2048, the HF stack
(hf-peft recipe, bf16 autocast, sdpa, non-reentrant checkpointing), lora_dropout 0 where peft wraps fused
experts (its ``ParamWrapper`` refuses dropout) and named targets where peft's all-linear fails, on an H200,
priced by both engines.

    python benchmarks/families.py [--analytic-only] [--only TYPE,TYPE]

The trace runs the real transformers + peft + bitsandbytes step on fake tensors, extrapolated exactly
from short depths (``vramplan.trace``). Figures in GiB (2^30 B) of the allocated peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from vramplan.analytic import estimate
from vramplan.arch import resolve
from vramplan.arch.families import FAMILIES
from vramplan.errors import VramplanError
from vramplan.scenario import Scenario

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]


def _harness():
    """tests/families/test_family_records.py, loaded once (its ``FULL`` and ``row_scenario``)."""
    path = ROOT / "tests" / "families" / "test_family_records.py"
    spec = importlib.util.spec_from_file_location("family_records", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


HARNESS = _harness()


def representatives() -> dict[str, str]:
    """model_type -> its full-size registry entry (the harness's ``FULL``)."""
    return dict(HARNESS.FULL)


def scenario(model_type: str) -> Scenario:
    """The harness's full-size scenario: r16 1×2048, dropout 0 where peft wraps fused experts, and the
    targets a family's row names where all-linear fails in peft (Nemotron-H's out_proj, Llama 4's router)."""
    drop = {"lora_dropout": 0.0} if FAMILIES[model_type].expert_lora_targets else {}
    return Scenario(seq=2048, rank=16, **drop, **HARNESS.row_scenario(model_type))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analytic-only", action="store_true")
    ap.add_argument("--only", default="", help="comma list of model_types")
    args = ap.parse_args()
    only = {t for t in args.only.split(",") if t}
    print(f"{'model_type':<14} {'model':<34} {'params':>9} {'analytic':>9} {'trace':>9} {'err':>8} "
          f"{'trace s':>8}  peak phase (analytic / trace)")
    for mt, name in sorted(representatives().items()):
        if only and mt not in only:
            continue
        arch, sc = HARNESS.full_arch(mt), scenario(mt)
        a = estimate(arch, sc, device="h200")
        row = f"{mt:<14} {name:<34} {arch.total_params / 1e9:>8.2f}B {a.allocated_peak_bytes / GiB:>9.3f}"
        if args.analytic_only:
            print(row)
            continue
        from vramplan.trace import trace

        t0 = time.perf_counter()
        try:
            t = trace(arch, sc, device="h200")
        except VramplanError as e:
            print(f"{row} {'-':>9} {'-':>8} {'-':>8}  trace: {e}")
            continue
        err = a.allocated_peak_bytes / t.allocated_peak_bytes - 1
        print(f"{row} {t.allocated_peak_bytes / GiB:>9.3f} {err:>+8.3%} {time.perf_counter() - t0:>8.1f}  "
              f"{a.peak_phase} / {t.peak_phase}")


if __name__ == "__main__":
    main()
