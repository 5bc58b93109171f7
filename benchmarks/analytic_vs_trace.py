"""Analytic allocated peak vs the fake-tensor trace, over the issue-4 grid.

Usage: python benchmarks/analytic_vs_trace.py [--device cuda|cpu] [--cache FILE] [--only SUBSTR]
       [--limit N] [--refresh]

Each row builds a real-shaped architecture with a reduced decoder-layer count (hidden sizes, heads,
vocabularies and expert counts are the published ones), traces two training steps on fake tensors
(``vramplan.trace.trace(..., extrapolate=False, device=...)``), prices the same scenario with
``vramplan.analytic.estimate(..., device=...)`` and prints the relative error of the allocated
peak. ``--device cuda`` (default) runs ``grid()``, both engines emulating the CUDA program (the
product); ``--device cpu`` runs the smaller ``cpu_grid()``, both engines pricing the CPU program
as it runs (what CPU profiles measure). Traces are cached (JSON) so the table can be
re-printed instantly after an analytic change (``--cache FILE``; ``--refresh`` re-traces).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: (registry model, decoder layers kept, scenario fields). Families: qwen3 (Qwen3-14B), llama
#: (Llama-2-7b, untied, V=32000), tied embeddings (Llama-3.2-1B), MoE (Qwen3-30B-A3B, 128 experts).
_BASE: list[tuple[str, int]] = [("Qwen3-14B", 2), ("Llama-2-7b", 2), ("Llama-3.2-1B", 2), ("Qwen3-30B-A3B", 2)]
#: More families, default-ish scenarios: Qwen2-MoE (shared expert + sigmoid gate), Mixtral (8 experts),
#: Gemma 3 (6 layers: five sliding + one global, per-layer-type rotary, 4 norms, qk-norm, tied, V=262k)
#: and Gemma 2 (soft-capped attention and logits: eager only).
_EXTRA: list[tuple[str, int, dict[str, Any]]] = [
    *[(m, 2, dict(seq=1024, lora_dropout=0.0, **kw)) for m in ("Qwen1.5-MoE-A2.7B", "Mixtral-8x7B-v0.1")
      for kw in ({}, {"grad_checkpointing": False}, {"recipe": "trl"}, {"quant": "none"})],
    ("Mixtral-8x7B-v0.1", 2, dict(seq=4096, lora_dropout=0.0)),  # the expert backward's working set grows with T
    *[("gemma-3-1b-pt", 6, {"seq": 1024, **kw}) for kw in
      ({}, {"grad_checkpointing": False}, {"recipe": "trl", "grad_checkpointing": False},
       {"quant": "none"}, {"quant": "none", "full": True, "seq": 512})],
    *[("gemma-2-2b", 2, dict(seq=1024, attn="eager", **kw)) for kw in
      ({}, {"grad_checkpointing": False}, {"recipe": "plain"}, {"quant": "none"})],
    # unquantized bases (no k-bit preparation: every parameter stays bf16) without checkpointing,
    # where each layer's saved tensors show, LoRA and full fine-tuning
    *[(m, 2, dict(seq=1024, quant="none", grad_checkpointing=False, **kw)) for m in ("Qwen3-14B", "Llama-3.2-1B")
      for kw in ({}, {"recipe": "plain", "lora_dropout": 0.0})],
    ("Llama-2-7b", 2, dict(seq=512, quant="none", full=True, grad_checkpointing=False)),
    # pure 16-bit loops without autocast (torchtune, AnswerDotAI fsdp_qlora): adapters in fp32 (peft's
    # default) or bf16, the transformers <= 4.44 loss, logits held by the loop, bitsandbytes < 0.43.2
    *[(m, 2, {**dict(seq=1024, batch=2, recipe="plain", autocast=False, lora_dropout=0.1, rank=64), **kw})
      for m in ("Llama-2-7b", "Qwen3-14B") for kw in (
          {}, {"grad_checkpointing": False}, {"adapter_dtype": "bf16"}, {"lora_dropout": 0.0},
          {"adapter_dtype": "bf16", "loss": "legacy", "hold_logits": "step"},
          {"adapter_dtype": "bf16", "loss": "legacy", "hold_logits": "step", "bnb_keeps_input": True},
          {"adapter_dtype": "bf16", "bnb_keeps_input": True, "grad_checkpointing": False},
          {"adapter_dtype": "bf16", "bnb_keeps_input": True, "lora_dropout": 0.0},
          {"quant": "none", "adapter_dtype": "bf16", "loss": "legacy", "hold_logits": "loop"},
          {"quant": "none", "adapter_dtype": "bf16", "targets": ("q_proj", "v_proj")},
      )],
    *[("Llama-3.2-1B", 2, dict(seq=1024, **kw)) for kw in (
        {"hold_logits": "loop"}, {"loss": "legacy"}, {"loss": "legacy", "hold_logits": "step"},
        {"recipe": "trl", "bnb_keeps_input": True}, {"bnb_keeps_input": True, "lora_dropout": 0.0},
        {"optimizer": "adamw8bit", "recipe": "plain", "autocast": False, "adapter_dtype": "bf16"})],
    ("gemma-2-2b", 2, dict(seq=1024, attn="eager", loss="legacy", hold_logits="loop")),
]


def grid() -> list[tuple[str, int, dict[str, Any]]]:
    rows: list[tuple[str, int, dict[str, Any]]] = []
    for model, layers in _BASE:
        moe = "A3B" in model
        drop = {"lora_dropout": 0.0} if moe else {}
        seqs = [(256, 1), (1024, 2), (2048, 1), (4096, 1), (8192, 1), (512, 4)]
        if moe:
            seqs = [(256, 1), (1024, 2), (2048, 1), (512, 4)]
        for seq, batch in seqs:
            rows.append((model, layers, dict(seq=seq, batch=batch, **drop)))
        for recipe in ("plain", "trl"):
            for gc in (True, False):
                rows.append((model, layers, dict(seq=1024, recipe=recipe, grad_checkpointing=gc, **drop)))
        rows.append((model, layers, dict(seq=1024, grad_checkpointing=False, **drop)))
        rows.append((model, layers, dict(seq=1024, rank=64, **drop)))
        rows.append((model, layers, dict(seq=1024, rank=64, targets=("q_proj", "v_proj"), grad_checkpointing=False)))
        rows.append((model, layers, dict(seq=2048, targets=("q_proj", "v_proj"), **drop)))
        rows.append((model, layers, dict(seq=1024, optimizer="adamw8bit", **drop)))
        rows.append((model, layers, dict(seq=1024, optimizer="adamw8bit", rank=64, recipe="trl", **drop)))
        if not moe:
            rows.append((model, layers, dict(seq=1024, attn="eager", grad_checkpointing=False)))
            rows.append((model, layers, dict(seq=1024, targets=("q_proj", "v_proj", "lm_head"))))
            rows.append((model, layers, dict(seq=1024, quant="none")))
            rows.append((model, layers, dict(seq=512, quant="none", full=True)))
            rows.append((model, layers, dict(seq=1024, lora_dropout=0.0)))
    rows.extend(_EXTRA)
    return rows


def cpu_grid() -> list[tuple[str, int, dict[str, Any]]]:
    """The CPU-semantics grid: the rows where CPU and CUDA differ (dropout > 0, autocast LoRA on 4-bit
    bases) over every family, recipe and checkpointing mode, plus unquantized and full runs."""
    rows = []
    for model, layers, kw in grid():
        seq, batch = kw.get("seq"), kw.get("batch", 1)
        if (seq == 1024 and batch == 1 and kw.get("rank", 8) == 8 and "targets" not in kw
                and kw.get("optimizer", "adamw") == "adamw" and kw.get("attn", "sdpa") != "eager"
                or model == "gemma-2-2b" and kw.get("grad_checkpointing", True)):
            rows.append((model, layers, kw))
    return rows


def key(model: str, layers: int, kw: dict[str, Any], device: str = "cuda") -> str:
    k = [model, layers, sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in kw.items())]
    return json.dumps(k if device == "cuda" else k + [device])


def reduced_arch(model: str, layers: int) -> Any:
    from vramplan.arch import resolve
    from vramplan.arch.spec import Arch

    a = resolve(model)
    cfg = dict(a.config)
    cfg["num_hidden_layers"] = layers
    for k in ("layer_types", "mlp_only_layers"):
        if isinstance(cfg.get(k), list):
            cfg[k] = cfg[k][:layers] if k == "layer_types" else [i for i in cfg[k] if i < layers]
    return Arch.from_config(cfg, name=f"{model}[{layers}L]")


def run_trace(model: str, layers: int, kw: dict[str, Any], device: str = "cuda") -> dict[str, Any]:
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    t0 = time.perf_counter()
    tb = trace(reduced_arch(model, layers), Scenario(**kw), extrapolate=False, device=device)
    return {"allocated": tb.allocated_peak_bytes, "by_category": tb.by_category(),
            "phase": tb.peak_phase, "seconds": round(time.perf_counter() - t0, 2)}


def compare(model: str, layers: int, kw: dict[str, Any], traced: dict[str, Any],
            device: str = "cuda") -> dict[str, Any]:
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario

    eb = estimate(reduced_arch(model, layers), Scenario(**kw), device=device)
    ours = eb.allocated_peak_bytes
    return {"ours": ours, "theirs": traced["allocated"], "error": ours / traced["allocated"] - 1,
            "phase": eb.peak_phase, "trace_phase": traced["phase"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help="JSON file caching traces between runs (off by default)")
    ap.add_argument("--only", default="")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--refresh", action="store_true", help="re-trace even if cached")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="the program both engines price (an unnamed GPU, or the CPU)")
    args = ap.parse_args(argv)
    dev = args.device
    cache_path = Path(args.cache) if args.cache else None
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    rows = [r for r in (grid() if dev == "cuda" else cpu_grid()) if args.only in key(*r)]
    if args.limit:
        rows = rows[: args.limit]
    errs = []
    print(f"{'model':18s} {'L':>2s} {'scenario':62s} {'trace GiB':>10s} {'analytic':>9s} {'error':>8s}  phase")
    for model, layers, kw in rows:
        k = key(model, layers, kw, dev)
        if k not in cache or args.refresh:
            cache[k] = run_trace(model, layers, kw, dev)
            if cache_path:
                cache_path.write_text(json.dumps(cache, indent=1))
        r = compare(model, layers, kw, cache[k], dev)
        errs.append(abs(r["error"]))
        desc = ",".join(f"{a}={b if not isinstance(b, tuple) else '+'.join(b)}" for a, b in kw.items())
        print(f"{model:18s} {layers:2d} {desc:62s} {r['theirs'] / 2**30:10.3f} {r['ours'] / 2**30:9.3f} "
              f"{100 * r['error']:+7.2f}%  {r['phase']}")
        sys.stdout.flush()
    if errs:
        print(f"\n{len(errs)} configurations ({dev} program): max |error| {100 * max(errs):.2f} %, "
              f"median {100 * statistics.median(errs):.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
