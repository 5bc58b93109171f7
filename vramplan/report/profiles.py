"""Stored profiles as text: one row per profile (``vramplan profiles list``, the table after a
``vramplan profile`` sweep, its progress lines) and one profile in full (``vramplan profiles show``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vramplan.breakdown import fmt_bytes
from vramplan.report.text import pct

#: The measured figures ``profiles show`` lists, in order.
MEASURED = ("allocated_peak_bytes", "reserved_peak_bytes", "active_peak_bytes", "process_peak_bytes",
            "managed_bytes", "first_step_peak_bytes")
TOTALS = ("allocated", "reserved", "total")


def profile_row(p: Any) -> dict[str, Any]:
    """A profile as one flat row (the ``profiles list --json`` record)."""
    m, s = p.measured, p.scenario
    return {
        "file": p.path.name if p.path else None,
        "model": p.model, "device": p.device["name"], "kind": p.device["kind"],
        "seq": s.seq, "batch": s.batch, "rank": s.rank, "quant": s.quant.value,
        "optimizer": s.optimizer.value,
        "strategy": s.strategy.value, "world_size": s.world_size, "process_rank": s.process_rank,
        "allocated_peak_bytes": m.get("allocated_peak_bytes"),
        "reserved_peak_bytes": m.get("reserved_peak_bytes"),
        "trace_error": p.error("trace"), "analytic_error": p.error("analytic"),
        "step_seconds": m.get("step_seconds"), "tokens_per_second": m.get("tokens_per_second"),
        "oom": m.get("oom"), "timestamp": p.timestamp,
    }


def point_line(r: dict[str, Any], path: Any) -> str:
    """The progress line of one swept point (a ``profile_row``), stored at ``path``."""
    what = (f"OOM in {r['oom']['phase']}" if r["oom"]
            else f"peak {fmt_bytes(r['allocated_peak_bytes'])}, trace {pct(r['trace_error'])}, "
                 f"analytic {pct(r['analytic_error'])}")
    return f"seq {r['seq']} batch {r['batch']} rank {r['rank']}: {what} -> {path}"


def profiles_table(rows: list[dict[str, Any]], title: str, files: bool = True) -> Table:
    """Compact enough for 80 columns: with ``files`` the file name (model, device, point, time)
    leads; without it the title names model and device. When any row is one rank of a multi-process
    run, a ``process`` column says which (``ddp 0/2``: strategy, rank, world size)."""
    t = Table(title=title)
    if files:
        t.add_column("file", overflow="fold", min_width=16)
    ranks = any(r.get("world_size", 1) > 1 for r in rows)
    if ranks:
        t.add_column("process", no_wrap=True)
    for col in ("seq", "batch", "rank", "peak", "trace", "analytic", "step"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        oom = r["oom"]
        peak = f"OOM {oom['phase']}" if oom else fmt_bytes(r["allocated_peak_bytes"])
        step = "—" if r["step_seconds"] is None else f"{r['step_seconds'] * 1000:.0f} ms"
        cells = [str(r["seq"]), str(r["batch"]), str(r["rank"]), peak,
                 pct(r["trace_error"]), pct(r["analytic_error"]), step]
        where = ([f"{r['strategy']} {r['process_rank']}/{r['world_size']}" if r["world_size"] > 1 else "single"]
                 if ranks else [])
        t.add_row(*([r["file"] or ""] if files else []), *where, *cells)
    if rows:
        t.caption = "trace / analytic: estimate error vs the measured allocated peak"
    return t


def render_profile(p: Any) -> None:
    """One profile: header lines, the measured figures and phases, and estimate ÷ measured."""
    c = Console()
    s, m = p.scenario, p.measured
    c.print(f"[bold]{p.model}[/bold] on {p.device['name']} ({p.device['kind']}), {p.timestamp}")
    c.print("scenario: " + ", ".join(f"{k}={v}" for k, v in s.to_dict().items()))
    c.print("versions: " + ", ".join(f"{k} {v}" for k, v in p.versions.items() if v))
    if m.get("oom"):
        o = m["oom"]
        alloc = "?" if o.get("allocated_bytes") is None else fmt_bytes(o["allocated_bytes"])
        c.print(f"[red]out of memory in {o['phase']}[/red] at {alloc} allocated: {o['message']}")
    c.print(_measured(m))
    t = Table(title="estimate ÷ measured")
    t.add_column("engine")
    for total in TOTALS:
        t.add_column(total, justify="right")
    for engine in ("analytic", "trace"):
        ratios = (p.ratio(engine, total) for total in TOTALS)
        t.add_row(engine, *("—" if r is None else f"{r:.3f}" for r in ratios))
    c.print(t)


def _measured(m: dict[str, Any]) -> Table:
    t = Table(title="measured")
    t.add_column("figure")
    t.add_column("bytes", justify="right")
    for k in MEASURED:
        v = m.get(k)
        t.add_row(k.removesuffix("_bytes"), "—" if v is None else fmt_bytes(v))
    for k, v in m.get("phases", {}).items():
        t.add_row(f"phase {k}", "—" if v is None else fmt_bytes(v))
    if m.get("step_seconds") is not None:
        t.add_row("step time", f"{m['step_seconds'] * 1000:.1f} ms")
        t.add_row("tokens/s", f"{m['tokens_per_second']:,.0f}")
    return t
