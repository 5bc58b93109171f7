"""``vramplan estimate``: the memory budget of one fine-tuning step (analytic by default)."""

from __future__ import annotations

from typing import Any

import click

from vramplan.cli.common import emit_json, load_calibration
from vramplan.cli.options import pop_run, scenario_options


@click.command()
@scenario_options(config=True)
@click.option("--gpu", default=None, help="Show headroom on this GPU (see `vramplan gpus`).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--method", type=click.Choice(["analytic", "trace"], case_sensitive=False), default="analytic",
              show_default=True, help="analytic (instant) or trace (fake-tensor dry run; needs torch).")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False), default=None,
              help="Calibration JSON (default: the shipped one).")
def estimate(**kwargs: Any) -> None:
    """Memory budget of one fine-tuning step: components, allocated / reserved / process totals.

    The run can be given as its framework's own config (--config FILE, or the launch command after
    --, e.g. `vramplan estimate -- swift sft --model Qwen/Qwen3-14B ...`)."""
    gpu_name, as_json = kwargs.pop("gpu"), kwargs.pop("as_json")
    method, cal_file = kwargs.pop("method").lower(), kwargs.pop("calibration_file")
    run = pop_run(kwargs)
    arch, scenario = run.arch, run.scenario
    if method == "trace" and run.resolved is not None and not run.resolved.framework.traceable:
        raise click.UsageError(f"{run.resolved.framework.title}'s kernels need a GPU and cannot be traced here: "
                               "use --method analytic (priced from its source)")
    from vramplan import estimate as run_engine
    from vramplan.calibration import default_calibration
    from vramplan.gpus import find_gpu
    from vramplan.plan import headroom

    cal = load_calibration(cal_file) or default_calibration()
    gpu = find_gpu(gpu_name) if gpu_name else None
    # the card's own calibrated constants (per-device entries), as `plan` uses them
    device = None if gpu is None or gpu.kind == "custom" else gpu.name
    bd = run_engine(arch, scenario, method=method, calibration=cal, device=device)
    room = headroom(bd, gpu, cal) if gpu is not None else None
    if as_json:
        from vramplan.report import estimate_json

        emit_json(estimate_json(arch, scenario, bd, room, run.config_dict()))
        return
    from vramplan.report.table import render
    from vramplan.report.text import estimate_title

    if run.resolved is not None:
        from rich.console import Console

        from vramplan.report.config import render_config

        render_config(run.resolved, run.scenario, run.command_line, Console())
    render(bd, estimate_title(arch, scenario, bd.engine), room)
