"""``vramplan estimate``: the memory budget of one fine-tuning step (analytic by default)."""

from __future__ import annotations

from typing import Any

import click

from vramplan.cli.common import emit_json, load_calibration
from vramplan.cli.options import pop_scenario, scenario_options


@click.command()
@scenario_options()
@click.option("--gpu", default=None, help="Show headroom on this GPU (see `vramplan gpus`).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--method", type=click.Choice(["analytic", "trace"], case_sensitive=False), default="analytic",
              show_default=True, help="analytic (instant) or trace (fake-tensor dry run; needs torch).")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False), default=None,
              help="Calibration JSON (default: the shipped one).")
def estimate(**kwargs: Any) -> None:
    """Memory budget of one fine-tuning step: components, allocated / reserved / process totals."""
    gpu_name, as_json = kwargs.pop("gpu"), kwargs.pop("as_json")
    method, cal_file = kwargs.pop("method").lower(), kwargs.pop("calibration_file")
    model = kwargs.pop("model")
    scenario = pop_scenario(kwargs)
    from vramplan import estimate as run_engine
    from vramplan.arch import resolve
    from vramplan.calibration import default_calibration
    from vramplan.gpus import find_gpu
    from vramplan.plan import headroom

    arch = resolve(model)
    cal = load_calibration(cal_file) or default_calibration()
    gpu = find_gpu(gpu_name) if gpu_name else None
    # the card's own calibrated constants (per-device entries), as `plan` uses them
    device = None if gpu is None or gpu.kind == "custom" else gpu.name
    bd = run_engine(arch, scenario, method=method, calibration=cal, device=device)
    room = headroom(bd, gpu, cal) if gpu is not None else None
    if as_json:
        from vramplan.report import estimate_json

        emit_json(estimate_json(arch, scenario, bd, room))
        return
    from vramplan.report.table import render
    from vramplan.report.text import estimate_title

    render(bd, estimate_title(arch, scenario, bd.engine), room)
