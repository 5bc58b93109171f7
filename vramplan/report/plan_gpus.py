"""Rich rendering of a ``vramplan.plan_gpus.GpuPlan``: every GPU count and strategy against the card, and
the pick. Formats only; every number comes from the GpuPlan."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vramplan.breakdown import fmt_bytes


def render_gpu_plan(g: Any, console: Console) -> None:
    """The table of candidates (fewest GPUs first, up to the pick's count; the JSON has every count) and
    the verdict line; candidates the engine does not price are named once, with the reason, below it."""
    last = max(c.gpus for c in (g.best, g.best_on_gpu) if c is not None) if g.best is not None else g.max_gpus
    shown = [c for c in g.candidates if c.gpus <= last]
    t = Table(title=f"{g.model} on up to {g.max_gpus} × {g.gpu.name} (per GPU, most demanding rank)",
              title_justify="left")
    for col, just in (("GPUs", "right"), ("strategy", "left"), ("needs per GPU", "right"),
                      ("headroom", "right"), ("host RAM", "right"), ("fits", "center")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    unpriced: dict[str, list[str]] = {}
    for c in shown:
        if c.check is None:
            unpriced.setdefault(re.sub(r" \(world size \d+\)", "", c.reason), []).append(f"{c.gpus} × {c.label}")
            continue
        k = c.check
        pick = " ←" if c is g.best else " ◦" if c is g.best_on_gpu else ""
        t.add_row(str(c.gpus), c.label + pick, fmt_bytes(k.need_bytes), fmt_bytes(k.headroom_bytes),
                  fmt_bytes(k.host_bytes) if k.host_bytes else "",
                  "[green]yes[/]" if c.fits else ("no (host)" if not k.host_fits else "no"))
    if t.row_count:
        console.print(t)
    for reason, which in unpriced.items():
        console.print(f"not priced: {escape(', '.join(which))}: {escape(reason)}", markup=True)
    if g.best is None:
        console.print(f"[bold red]Nothing up to {g.max_gpus} × {escape(g.gpu.name)} fits[/]: try a larger card, "
                      "more GPUs (--max-gpus) or the suggestions below.")
    else:
        b = g.best
        host = f", {fmt_bytes(b.check.host_bytes)} host RAM per GPU's process" if b.check.host_bytes else ""
        console.print(f"[bold green]Fewest GPUs: {b.gpus} × {escape(g.gpu.name)} with {escape(b.label)}[/] "
                      f"({fmt_bytes(b.check.headroom_bytes)} headroom per GPU{host}); the plan below is that run's.")
        if g.best_on_gpu is not None:
            o = g.best_on_gpu
            console.print(f"Without state offload (no CPU optimizer step, no host RAM): {o.gpus} × "
                          f"{escape(g.gpu.name)} with {escape(o.label)} ◦ ({fmt_bytes(o.check.headroom_bytes)} "
                          "headroom per GPU).")
        elif g.best.offload.value != "none":
            console.print(f"Nothing up to {g.max_gpus} GPUs fits without state offload.")

