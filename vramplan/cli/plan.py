"""``vramplan plan`` (what fits a GPU) and ``vramplan gpus`` (the catalog).

Exit codes of ``plan``: 0 fits, 1 does not fit, 2 bad input. So ``vramplan plan ... && python train.py``
guards a run. The library computes (``vramplan.plan``); this module only parses and renders.
"""

from __future__ import annotations

import json
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from vramplan.breakdown import fmt_bytes
from vramplan.cli.options import pop_scenario, scenario_options

MiB = 1024**2


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


@click.command()
@scenario_options()
@click.option("--gpu", "-g", default=None, help="Catalog GPU (see `vramplan gpus`), e.g. 'RTX 4090', h100.")
@click.option("--memory", default=None, help="Any card by its reported memory, e.g. 24GiB or 24564MiB.")
@click.option("--lengths", "lengths_file", type=click.Path(dir_okay=False), default=None,
              help="Token lengths of the dataset: JSONL/JSON/CSV, one example per row.")
@click.option("--column", default=None, help="Column of --lengths holding the length (or text).")
@click.option("--tokenizer", default=None, help="Local tokenizer directory to count a text column.")
@click.option("--percentile", type=float, default=99.0, show_default=True,
              help="Percentile of --lengths to plan the seq for (the maximum is always checked).")
@click.option("--point", is_flag=True, help="Use the point estimate instead of the conservative bound.")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False), default=None,
              help="Calibration JSON (default: the one shipped).")
@click.option("--seq-step", type=int, default=1, show_default=True, help="Granularity of the largest-seq search.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(**kwargs: Any) -> int:
    """Does the run fit, and what is the largest seq, micro-batch and rank that does?

    With --lengths the run is checked at the dataset's longest example (after truncation to --seq when
    --seq is given). Exit code: 0 fits, 1 does not fit, 2 error.
    """
    from vramplan.calibration import Calibration
    from vramplan.gpus import resolve_gpu
    from vramplan.lengths import load_lengths
    from vramplan.plan import plan as make_plan

    ctx = click.get_current_context()
    seq_given = ctx.get_parameter_source("seq") is ParameterSource.COMMANDLINE
    model = kwargs.pop("model")
    scenario = pop_scenario(kwargs)
    cal = Calibration.load(kwargs["calibration_file"]) if kwargs["calibration_file"] else None
    gpu = resolve_gpu(kwargs["gpu"], kwargs["memory"], cal)
    lengths = None
    if kwargs["lengths_file"]:
        lengths = load_lengths(kwargs["lengths_file"], column=kwargs["column"], tokenizer=kwargs["tokenizer"])
        if seq_given:
            lengths = lengths.truncate(scenario.seq)
    elif kwargs["column"] or kwargs["tokenizer"]:
        raise click.UsageError("--column and --tokenizer need --lengths")
    result = make_plan(model, gpu, scenario, calibration=cal, bound="point" if kwargs["point"] else "upper",
                       lengths=lengths, percentile=kwargs["percentile"], seq_step=kwargs["seq_step"])
    if kwargs["as_json"]:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        render_plan(result, Console())
    return 0 if result.fits else 1


def render_plan(p: Any, console: Console) -> None:
    """Rich rendering of a ``vramplan.plan.Plan``."""
    from vramplan.plan import describe

    s, c, g = p.scenario, p.check, p.gpu
    verdict = "[bold green]FITS[/]" if p.fits else "[bold red]DOES NOT FIT[/]"
    bound = "conservative bound" if p.bound == "upper" else "point estimate"
    head = Table(title=f"{p.model} on {g.name}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("verdict", f"{verdict}  ({describe(c)})")
    head.add_row("needs", f"{fmt_bytes(c.need_bytes)} ({bound}; point {fmt_bytes(c.point_need_bytes)}) "
                          "reserved + managed, beyond the CUDA context")
    usable_how = ("Metal working-set limit" if g.unified else
                  "reported − driver reserve − CUDA context" if g.driver_reserved_bytes else
                  "reported − CUDA context")
    head.add_row("card", f"{fmt_bytes(c.budget_bytes)} usable of {_mib(g.memory_bytes)} ({usable_how}; "
                         f"{g.figure} figure)")
    head.add_row("run", f"seq {s.seq:,} · micro-batch {s.batch} · "
                        + ("full fine-tuning" if s.full else f"rank {s.rank} · {','.join(s.targets)}")
                        + f" · {s.quant.value} · {s.optimizer.value} · attn {s.attn.value}"
                        + (" · grad ckpt" if s.grad_checkpointing else " · no grad ckpt"))
    head.add_row("largest seq", _limit(p.max_seq, p.seq_cap, f"at micro-batch {s.batch}"
                                       + ("" if s.full else f", rank {s.rank}")))
    head.add_row("largest micro-batch", _limit(p.max_batch, p.batch_cap, f"at seq {s.seq:,}"))
    if not s.full:
        head.add_row("largest rank", _limit(p.max_rank, p.rank_cap, f"at seq {s.seq:,}, micro-batch {s.batch}"))
    console.print(head)
    if p.lengths is not None:
        _render_lengths(p.lengths, p, console)
    if p.suggestions:
        t = Table(title="To make it fit (largest saving first)", title_justify="left")
        for col, just in (("change", "left"), ("saves", "right"), ("then needs", "right"), ("fits", "center")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for x in p.suggestions:
            t.add_row(x.text, fmt_bytes(x.saved_bytes), fmt_bytes(x.need_bytes),
                      "[green]yes[/]" if x.fits else "no")
        console.print(t)
    elif not p.fits:
        console.print("No single change prices lower; try a smaller model or a larger card.")
    for n in p.notes:
        console.print(f"note: {n}")


def _limit(value: int | None, cap: int, where: str) -> str:
    if value is None:
        return f"[red]none fits[/] {where}"
    capped = " (search cap)" if value >= cap else ""
    return f"{value:,}{capped} {where}"


def _render_lengths(lp: Any, p: Any, console: Console) -> None:
    from vramplan.plan import describe

    st = lp.lengths
    t = Table(title=f"Dataset: {st.source}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
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
    console.print(t)


@click.command()
@click.argument("filter", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(filter: str, as_json: bool) -> None:
    """List catalog GPUs whose name, alias, vendor or kind contains FILTER (case-insensitive)."""
    from vramplan.gpus import catalog

    key = filter.lower().strip()
    rows = [g for g in catalog()
            if not key or key in f"{g.name} {' '.join(g.aliases)} {g.vendor} {g.kind}".lower()]
    if as_json:
        click.echo(json.dumps([g.to_dict() for g in rows], indent=2))
        return
    t = Table(title=f"vramplan GPU catalog ({len(rows)} cards)")
    for col, just in (("name", "left"), ("reported", "right"), ("usable", "right"), ("kind", "left"),
                      ("figure", "left")):
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for g in rows:
        t.add_row(g.name, _mib(g.memory_bytes), fmt_bytes(g.usable_bytes), g.kind, g.figure)
    Console().print(t)
    if rows:
        click.echo("usable = reported − driver reserve − CUDA context (Apple: Metal working-set limit). --gpu "
                   "matches loosely ('rtx4090', 'NVIDIA GeForce RTX 4090'); `--json` lists aliases and sources.")
    if not rows:
        click.echo(f"no GPU matches '{filter}'", err=True)
