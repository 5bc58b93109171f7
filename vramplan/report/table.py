"""Rich rendering of a Breakdown: components grouped by category, bytes (IEC) and % share, totals,
headroom. Formats only; every number comes from the Breakdown."""

from __future__ import annotations

from typing import Any

from vramplan.breakdown import ALLOCATED_CATEGORIES, RUNTIME_CATEGORIES, Breakdown, fmt_bytes


def breakdown_table(bd: Breakdown, title: str = "", headroom: dict[str, Any] | None = None) -> Any:
    """A ``rich.table.Table``: allocated components by category with their share of the allocated
    peak, the three labelled totals, runtime items between them, and the GPU headroom if given."""
    from rich.table import Table

    alloc = bd.allocated_peak_bytes or 1
    t = Table(title=title or None, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("component", style="bold", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("share", justify="right", no_wrap=True)
    t.add_column("what", style="dim", overflow="fold")
    for cat in ALLOCATED_CATEGORIES:
        items = [c for c in bd.allocated if c.category == cat]
        if not items:
            continue
        for c in items:
            t.add_row(c.name, fmt_bytes(c.bytes), f"{100 * c.bytes / alloc:.1f} %", c.note)
    t.add_section()
    t.add_row("allocated peak", fmt_bytes(bd.allocated_peak_bytes), "100.0 %",
              "≈ torch.cuda.max_memory_allocated", style="bold cyan")
    for c in bd.runtime:
        if RUNTIME_CATEGORIES[c.category] == "reserved":
            t.add_row(c.name, fmt_bytes(c.bytes), f"{100 * c.bytes / alloc:.1f} %", c.note)
    t.add_row("reserved peak", fmt_bytes(bd.reserved_peak_bytes), "", "≈ torch.cuda.max_memory_reserved",
              style="bold cyan")
    for c in bd.runtime:
        if RUNTIME_CATEGORIES[c.category] == "total":
            t.add_row(c.name, fmt_bytes(c.bytes), f"{100 * c.bytes / alloc:.1f} %", c.note)
    t.add_row("process total", fmt_bytes(bd.total_bytes), "", "≈ nvidia-smi per-process", style="bold cyan")
    if bd.host:
        t.add_section()
        for c in bd.host:
            t.add_row(c.name, fmt_bytes(c.bytes), "", c.note)
        t.add_row("host memory", fmt_bytes(bd.host_bytes), "", "pinned + pageable host RAM, not GPU memory",
                  style="bold magenta")
    if headroom:
        t.add_section()
        left = headroom["headroom_bytes"]
        style = "bold green" if left >= 0 else "bold red"
        verdict = "fits" if left >= 0 else "does NOT fit"
        t.add_row(f"{headroom['gpu']} usable", fmt_bytes(headroom["usable_bytes"]), "", "")
        t.add_row("headroom", fmt_bytes(left), "", verdict, style=style)
    return t


def render(bd: Breakdown, title: str = "", headroom: dict[str, Any] | None = None) -> None:
    """Print the table (and the breakdown's notes) to stdout."""
    from rich.console import Console

    con = Console()
    con.print(breakdown_table(bd, title, headroom))
    if bd.upper is not None:
        con.print(f"[dim]peak phase: {bd.peak_phase or '?'}; conservative upper bound "
                  f"(process total): {fmt_bytes(bd.upper.total)}[/dim]")
    for n in bd.notes:
        con.print(f"[dim]note: {n}[/dim]")
