"""Short text forms the renderers share: signed percentages, MiB, and one-line scenario titles."""

from __future__ import annotations

from typing import Any

MiB = 1024**2


def pct(x: float | None) -> str:
    """0.0123 -> '+1.2 %'; None -> '—'."""
    return "—" if x is None else f"{x * 100:+.1f} %"


def pair(p: tuple[str, float] | None) -> str:
    """('pm-24', -0.05) -> '-5.0 % (pm-24)': a worst error and where it is."""
    return "none" if p is None else f"{pct(p[1])} ({p[0]})"


def mib(n: int) -> str:
    """Bytes as whole MiB, as nvidia-smi reports a card."""
    return f"{n / MiB:,.0f} MiB"


def estimate_title(arch: Any, s: Any, engine: str) -> str:
    """The heading of ``vramplan estimate``: model, size and the scenario's main choices."""
    what = "full fine-tuning" if s.full else f"LoRA r={s.rank} on {','.join(s.targets)}"
    return (f"{arch.name} ({arch.all_params / 1e9:.2f} B params) · {s.quant.value} · {what} · "
            f"{s.batch}×{s.seq} · {s.recipe.value} · {s.optimizer.value} · "
            f"GC {'on' if s.grad_checkpointing else 'off'} · {s.attn.value} · {engine}" + parallel_title(s))


def parallel_title(s: Any) -> str:
    """' · rank 0 of 8 GPUs, fsdp + params offload (per GPU)' for a distributed run, else ''."""
    if not getattr(s, "distributed", False):
        return ""
    off = "" if s.state_offload.value == "none" else f" + {s.state_offload.value} offload"
    return f" · rank {s.process_rank} of {s.world_size} GPUs, {s.strategy.value}{off} (per GPU)"


def chart_title(model: str, sc: Any, skip: str | None = None) -> str:
    """'Qwen3-14B: nf4-dq, r=8, batch 1, GC on, sdpa, adamw, hf-peft', leaving out the field ``skip``
    (the one a sweep varies)."""
    parts = {
        "quant": sc.quant.value + ("-dq" if sc.quantized_4bit and sc.double_quant else ""),
        "rank": f"r={sc.rank}", "batch": f"batch {sc.batch}",
        "grad_checkpointing": "GC on" if sc.grad_checkpointing else "GC off",
        "attn": sc.attn.value, "optimizer": sc.optimizer.value, "recipe": sc.recipe.value,
    }
    if skip == "double_quant":
        skip = "quant"
    return f"{model}: " + ", ".join(v for k, v in parts.items() if k != skip) + parallel_title(sc)
