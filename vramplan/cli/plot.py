"""``vramplan plot``: charts of a breakdown, a sequence-length sweep, and predicted vs measured.

Each subcommand checks that ``--out`` can be written (``.png`` or ``.svg``) before computing, calls the
library, and hands the result to ``vramplan.report.chart``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vramplan.cli.common import load_calibration
from vramplan.cli.options import pop_scenario, scenario_options

_OUT = click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
                    help="Chart file to write: .png or .svg.")
_GPU = click.option("--gpu", "-g", default=None,
                    help="Draw this card's memory as a line: a catalog name (see `vramplan gpus`).")
_MEMORY = click.option("--memory", default=None,
                       help="Or a card known only by its memory, as nvidia-smi reports it: 24GiB, 80GB.")
_CAL = click.option("--calibration", type=click.Path(dir_okay=False), default=None,
                    help="Calibration JSON (from `vramplan calibrate`); default: the shipped one.")
_TITLE = click.option("--title", default=None, help="Chart title (default: the model and scenario).")


def _limit(kw: dict[str, Any]) -> tuple[Any, str | None]:
    """(Limit or None, device name for the calibration) from --gpu/--memory."""
    gpu, memory = kw.pop("gpu"), kw.pop("memory")
    if gpu is None and memory is None:
        return None, None
    from vramplan.sweep import gpu_limit

    limit, card = gpu_limit(gpu, memory)
    return limit, (None if card.kind == "custom" else card.name)  # as the planner: no calibration key


def _wrote(path: Path, kind: str) -> None:
    from vramplan.breakdown import fmt_bytes

    click.echo(f"wrote {path} ({kind} chart, {fmt_bytes(path.stat().st_size, 1)})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def plot() -> None:
    """Write a chart as PNG or SVG: breakdown, seq-sweep or validation."""


@plot.command("breakdown")
@scenario_options()
@_GPU
@_MEMORY
@click.option("--method", default="analytic", show_default=True,
              help="Engine(s), comma-separated for bars side by side: analytic, trace or analytic,trace.")
@_CAL
@_TITLE
@_OUT
def breakdown_cmd(**kw: Any) -> None:
    """Stacked bar of the memory budget, one segment per component, coloured by category.

    \b
    Example:
      vramplan plot breakdown -m Qwen3-14B -r 8 -s 2048 --gpu rtx4090 -o qwen3-14b.png
    """
    from vramplan import estimate
    from vramplan.arch import resolve
    from vramplan.report import chart
    from vramplan.report.text import chart_title

    out = chart.check_writable(kw.pop("out"))
    methods = [m.strip().lower() for m in kw.pop("method").split(",") if m.strip()]
    bad = [m for m in methods if m not in ("analytic", "trace")]
    if bad or not methods:
        raise chart.ChartError(f"unknown method '{','.join(bad)}' (choose analytic, trace or analytic,trace)")
    title = kw.pop("title")
    limit, gpu = _limit(kw)
    calibration = load_calibration(kw.pop("calibration"))
    model = kw.pop("model")
    scenario = pop_scenario(kw)
    arch = resolve(model)
    results = [(m, estimate(arch, scenario, method=m, calibration=calibration, device=gpu)) for m in methods]
    if title is None:
        title = f"{chart_title(arch.name, scenario)}, seq {scenario.seq:,}"
    data = results[0][1] if len(results) == 1 else results
    chart.save(chart.breakdown_chart(data, limit=limit, title=title), out)
    _wrote(out, "breakdown")


def _without_seq(cmd: click.Command) -> click.Command:
    """A sweep takes --seqs instead of the scenario's single --seq."""
    cmd.params = [p for p in cmd.params if p.name != "seq"]
    return cmd


@_without_seq
@plot.command("seq-sweep")
@scenario_options()
@click.option("--seqs", default="512,1024,2048,4096,8192,16384,32768", show_default=True,
              help="Sequence lengths, comma-separated.")
@click.option("--vary", default="gc", show_default=True,
              help="One curve per value: gc (on and off), FIELD=v1,v2 (rank=8,16,64; recipe=hf-peft,trl,plain;"
                   " optimizer=adamw,paged_adamw8bit; batch=1,2,4) or model=A,B. Empty: one curve.")
@click.option("--total", type=click.Choice(["allocated", "reserved", "total"]), default="total",
              show_default=True, help="Which peak to plot: allocated, reserved, or the process total (the only "
                                         "one judged against the card).")
@click.option("--point", is_flag=True,
              help="Judge the fit on the point estimate alone; by default on the conservative upper bound, "
                   "drawn as a band, as `vramplan plan` does.")
@_GPU
@_MEMORY
@_CAL
@_TITLE
@_OUT
def seq_sweep_cmd(**kw: Any) -> None:
    """Peak memory against sequence length (analytic), with the GPU limit and the longest fitting seq.

    \b
    Examples:
      vramplan plot seq-sweep -m Qwen3-8B --gpu rtx4090 -o sweep.png
      vramplan plot seq-sweep -m Qwen3-8B --vary rank=8,64,256 --seqs 1024,4096,16384 -o ranks.svg
      vramplan plot seq-sweep -m Qwen3-8B --vary model=Qwen3-8B,Llama-3.1-8B --memory 24GiB -o vocab.png
    """
    from vramplan.arch import resolve
    from vramplan.report import chart
    from vramplan.report.text import chart_title
    from vramplan.sweep import parse_seqs, parse_vary, seq_sweep, vary_key

    out = chart.check_writable(kw.pop("out"))
    seqs = parse_seqs(kw.pop("seqs"))
    title, vary, total, point = kw.pop("title"), kw.pop("vary"), kw.pop("total"), kw.pop("point")
    limit, gpu = _limit(kw)
    calibration = load_calibration(kw.pop("calibration"))
    arch = resolve(kw.pop("model"))
    kw["seq"] = seqs[0]
    scenario = pop_scenario(kw)
    variants = parse_vary(vary, arch, scenario)
    if title is None:
        key = vary_key(vary)
        title = chart_title(", ".join(v[1].name for v in variants) if key == "model" else arch.name, scenario, key)
    sweep = seq_sweep(variants, seqs, total=total, calibration=calibration, device=gpu, limit=limit, title=title,
                      upper=not point)
    chart.save(chart.sweep_chart(sweep), out)
    _wrote(out, "seq-sweep")


@plot.command("validation")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Reference measurements CSV (default: the shipped vramplan/data/reference.csv).")
@click.option("--profiles", "profiles_dir", type=click.Path(file_okay=False), default=None,
              help="Also plot the stored profiles under this folder (from `vramplan profile`).")
@_CAL
@click.option("--group-by", type=click.Choice(["measurement", "origin", "device", "model"]),
              default="measurement", show_default=True, help="Colour points by this field of the rows.")
@click.option("--band", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.05, show_default=True,
              help="Half-width of the shaded band, as a fraction (0.05 = ±5 %).")
@click.option("--title", default=None, help="Chart title (default: how many runs fall within the band).")
@_OUT
def validation_cmd(**kw: Any) -> None:
    """Predicted against measured on the reference data (from `vramplan validate`), with y = x and ±5 %.

    \b
    Example:
      vramplan plot validation -o validation.png
    """
    from vramplan.report import chart
    from vramplan.sweep import validation_points, validation_rows

    out = chart.check_writable(kw.pop("out"))
    rows = validation_rows(data=kw.pop("data"), calibration=load_calibration(kw.pop("calibration")),
                           profiles=kw.pop("profiles_dir"))
    pts = validation_points(rows, group_by=kw.pop("group_by"))
    fig = chart.validation_chart(pts, band=kw.pop("band"), title=kw.pop("title") or "")
    chart.save(fig, out)
    _wrote(out, "validation")
