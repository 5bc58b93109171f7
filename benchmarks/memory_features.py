"""Issue 14's closing figure: Qwen3-14B, LoRA r8 on every linear, 1 × 4096, NF4, the HF stack
(transformers Trainer + peft, hf-peft recipe, bf16 autocast, sdpa, non-reentrant checkpointing), with
each memory feature off (the first row) and on, priced by both engines on an H200.

    python benchmarks/memory_features.py [--analytic-only] [--seq 4096]

The trace runs the real transformers + peft + bitsandbytes step on fake tensors (extrapolated from
short depths); a feature whose code cannot run here (Unsloth's kernels, axolotl's without axolotl
installed) prints its analytic figure and says why the trace is missing. Figures in GiB (2^30 B) of
the allocated peak; host memory (activation offloading) apart.
"""

from __future__ import annotations

import argparse
import time

from vramplan.analytic import estimate
from vramplan.arch import resolve
from vramplan.errors import VramplanError
from vramplan.scenario import Scenario

GiB = 1024**3
#: (label, Scenario changes); the first row is the baseline.
FEATURES: list[tuple[str, dict]] = [
    ("baseline (hf loss, sdpa, checkpointing)", {}),
    ("Liger fused linear CE (--loss liger)", dict(loss="liger")),
    ("Unsloth fused CE (--loss unsloth)", dict(loss="unsloth")),
    ("Cut Cross-Entropy, axolotl recipe (--loss cce)", dict(loss="cce", recipe="axolotl")),
    ("  its baseline: axolotl recipe, hf loss", dict(recipe="axolotl")),
    ("offloaded checkpoints (--offload checkpoints)", dict(offload="checkpoints")),
    ("TRL activation offload (--offload activations)", dict(offload="activations")),
    ("Unsloth offloaded checkpoints (--offload unsloth --reentrant)", dict(offload="unsloth", reentrant=True)),
    ("packed rows, sdpa (--packing packed)", dict(packing="packed")),
    ("collator 4D mask (--packing packed-mask)", dict(packing="packed-mask")),
    ("padding-free, flash2 (--packing padding-free --attn flash2)", dict(packing="padding-free", attn="flash2")),
    ("  its baseline: flash2", dict(attn="flash2")),
    ("axolotl fused LoRA kernels, axolotl recipe (--lora-kernels axolotl)", dict(lora_kernels="axolotl",
                                                                                 recipe="axolotl")),
    ("DoRA (--dora)", dict(dora=True)),
    ("modules_to_save lm_head", dict(modules_to_save=("lm_head",))),
    ("modules_to_save embed_tokens", dict(modules_to_save=("embed_tokens",))),
    ("LoRA-FA (--lora-fa)", dict(lora_fa=True)),
    ("evaluation, batch 8, loss only (--eval-batch 8)", dict(eval_batch=8)),
    ("evaluation, batch 1, logits of 16 samples kept", dict(eval_batch=1, eval_keep="logits", eval_samples=16)),
    ("eager attention (softmax-backward temporary, float mask)", dict(attn="eager")),
]


def _trace(arch, sc):
    try:
        from vramplan.trace import trace
    except ImportError:
        return None, "torch extra not installed"
    try:
        return trace(arch, sc, device="NVIDIA H200"), ""
    except VramplanError as e:
        return None, str(e).splitlines()[0][:100]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analytic-only", action="store_true")
    ap.add_argument("--seq", type=int, default=4096)
    args = ap.parse_args(argv)
    arch = resolve("Qwen3-14B")
    print(f"Qwen3-14B r8 all-linear 1×{args.seq}, nf4, hf-peft, bf16 autocast, on an H200 (allocated peak, GiB)")
    print(f"{'feature':70s} {'analytic':>9s} {'trace':>9s} {'err':>8s} {'Δ vs base':>10s} {'host':>7s}  phase")
    base = None
    for label, kw in FEATURES:
        sc = Scenario(seq=args.seq, **kw)
        t0 = time.perf_counter()
        a = estimate(arch, sc, device="NVIDIA H200")
        t, why = (None, "skipped") if args.analytic_only else _trace(arch, sc)
        dt = time.perf_counter() - t0
        base = a.allocated_peak_bytes if base is None else base
        tr = f"{t.allocated_peak_bytes / GiB:9.3f}" if t else f"{'—':>9s}"
        err = f"{a.allocated_peak_bytes / t.allocated_peak_bytes - 1:+8.3%}" if t else f"{'':>8s}"
        host = f"{a.host_bytes / GiB:7.2f}" if a.host_bytes else f"{'':>7s}"
        print(f"{label:70s} {a.allocated_peak_bytes / GiB:9.3f} {tr} {err} "
              f"{(a.allocated_peak_bytes - base) / GiB:+10.3f} {host}  {a.peak_phase}"
              + (f"  [trace: {why}]" if not t and not args.analytic_only else "") + f"  ({dt:.0f} s)")


if __name__ == "__main__":
    main()
