"""Rich rendering of a ``vramplan.plan.Plan``: the verdict, the largest seq / micro-batch / rank, the
dataset's lengths against the card, and what to change. Formats only; every number comes from the Plan."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vramplan.breakdown import fmt_bytes
from vramplan.report.text import mib


def describe(c: Any) -> str:
    """'fits, 1.20 GiB headroom' / 'does not fit: 3.40 GiB short' (a ``vramplan.plan.Check``)."""
    if not c.host_fits:
        return f"does not fit: host memory {fmt_bytes(c.host_bytes - c.host_budget_bytes)} short"
    if c.fits:
        return f"fits, {fmt_bytes(c.headroom_bytes)} headroom"
    return f"does not fit: {fmt_bytes(-c.headroom_bytes)} short"


def render_plan(p: Any, console: Console, framework: Any = None) -> None:
    """The plan's tables and notes; with ``framework`` each change also in that framework's keys."""
    console.print(_head(p))
    if p.lengths is not None:
        console.print(_lengths(p.lengths, p))
    if p.suggestions:
        t = Table(title="To make it fit (largest saving first)", title_justify="left")
        cols = [("change", "left")] + ([(f"in {framework.title}", "left")] if framework is not None else []) + [
            ("saves", "right"), ("then needs", "right"), ("fits", "center")]
        for col, just in cols:
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for x in p.suggestions:
            extra = []
            if framework is not None:
                from vramplan.frameworks import describe_change, framework_changes

                from rich.markup import escape

                extra = [escape("; ".join(describe_change(framework, *c)
                                          for c in framework_changes(framework, x.changes)))]
            t.add_row(x.text, *extra, fmt_bytes(x.saved_bytes), fmt_bytes(x.need_bytes),
                      "[green]yes[/]" if x.fits else "no")
        console.print(t)
    elif not p.fits:
        console.print("No single change prices lower; try a smaller model or a larger card.")
    for n in p.notes:
        console.print(f"note: {n}")


def _two_columns(title: str) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    return t


def _head(p: Any) -> Table:
    """Verdict, need, card, run, and the largest seq / micro-batch / rank."""
    s, c, g = p.scenario, p.check, p.gpu
    verdict = "[bold green]FITS[/]" if p.fits else "[bold red]DOES NOT FIT[/]"
    bound = "conservative bound" if p.bound == "upper" else "point estimate"
    head = _two_columns(f"{p.model} on {g.name}")
    head.add_row("verdict", f"{verdict}  ({describe(c)})")
    head.add_row("needs", f"{fmt_bytes(c.need_bytes)} ({bound}; point {fmt_bytes(c.point_need_bytes)}) "
                          "reserved + managed, beyond the CUDA context")
    usable_how = ("Metal working-set limit" if g.unified else
                  "reported − driver reserve − CUDA context" if g.driver_reserved_bytes else
                  "reported − CUDA context")
    head.add_row("card", f"{fmt_bytes(c.budget_bytes)} usable of {mib(g.memory_bytes)} ({usable_how}; "
                         f"{g.figure} figure)")
    if c.host_bytes or c.host_budget_bytes is not None:
        avail = "not checked (--host-ram)" if c.host_budget_bytes is None else \
            f"of {fmt_bytes(c.host_budget_bytes)} available ({'fits' if c.host_fits else 'does NOT fit'})"
        head.add_row("host memory", f"{fmt_bytes(c.host_bytes)} (offloaded activations or training state) {avail}")
    head.add_row("run", f"seq {s.seq:,} · micro-batch {s.batch} · "
                        + ("full fine-tuning" if s.full else f"rank {s.rank} · {','.join(s.targets)}")
                        + f" · {s.quant.value} · {s.optimizer.value} · attn {s.attn.value}"
                        + (" · grad ckpt" if s.grad_checkpointing else " · no grad ckpt")
                        + (f" · {s.world_size} GPUs, {s.strategy.value}"
                           + ("" if s.state_offload.value == "none" else f" + {s.state_offload.value} offload")
                           + f" (per GPU, rank {s.process_rank})" if s.distributed else ""))
    head.add_row("largest seq", _limit(p.max_seq, p.seq_cap, f"at micro-batch {s.batch}"
                                       + ("" if s.full else f", rank {s.rank}")))
    head.add_row("largest micro-batch", _limit(p.max_batch, p.batch_cap, f"at seq {s.seq:,}"))
    if not s.full:
        head.add_row("largest rank", _limit(p.max_rank, p.rank_cap, f"at seq {s.seq:,}, micro-batch {s.batch}"))
    return head


def _limit(value: int | None, cap: int, where: str) -> str:
    if value is None:
        return f"[red]none fits[/] {where}"
    capped = " (search cap)" if value >= cap else ""
    return f"{value:,}{capped} {where}"


def _lengths(lp: Any, p: Any) -> Table:
    """The dataset's length distribution, and padding against packing, at the planned seq."""
    st = lp.lengths
    t = _two_columns(f"Dataset: {st.source}")
    trunc = f" (truncated to {st.truncated_to:,}: {st.truncated:,} examples cut)" if st.truncated_to else ""
    t.add_row("examples", f"{st.n:,}, {st.total_tokens:,} tokens{trunc}")
    t.add_row("lengths", f"mean {st.mean:,.0f} · p50 {st.percentile(50):,} · p90 {st.percentile(90):,} · "
                         f"p99 {st.percentile(99):,} · max {st.max:,}")
    t.add_row(f"at p{lp.percentile:g} = {lp.planned_seq:,}", describe(lp.planned))
    t.add_row(f"at max = {st.max:,}", describe(lp.longest))
    if p.max_seq is not None:
        t.add_row("within largest seq", f"{lp.covered:.2%} of examples ≤ {p.max_seq:,} tokens")
    k = lp.packing
    t.add_row(f"padded to {k.seq:,}", f"{k.padded_steps:,} steps of {k.batch}; {k.padded_waste:.1%} padding "
                                      f"({k.dynamic_waste:.1%} padding to each batch's longest)")
    t.add_row(f"packed to {k.seq:,}", f"{k.packed_sequences:,} full sequences, {k.packed_steps:,} steps "
                                      f"({k.step_ratio:.0%} of padded); no padding, every step costs the "
                                      f"memory of seq {k.seq:,}: {describe(lp.planned)}")
    return t
