"""``vramplan estimate``: the memory budget of one fine-tuning step (analytic by default)."""

from __future__ import annotations

import json
from typing import Any

import click

from vramplan.cli.options import pop_scenario, scenario_options


def headroom(bd: Any, gpu_name: str, cal: Any) -> dict[str, Any]:
    """What is left on ``gpu_name`` after the point estimate's reserved + managed memory, the
    planner's own comparison (``vramplan.plan.need_bytes``) against memory less driver reserve and
    CUDA context."""
    from vramplan.gpus import find_gpu
    from vramplan.plan import need_bytes

    gpu = find_gpu(gpu_name)
    usable = gpu.usable(cal)
    need, _ = need_bytes(bd, "point")
    return {"gpu": gpu.name, "memory_bytes": gpu.memory_bytes, "usable_bytes": usable,
            "needed_bytes": need, "headroom_bytes": usable - need, "fits": usable >= need}


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
    from vramplan.arch import resolve
    from vramplan.calibration import Calibration, default_calibration

    arch = resolve(model)
    cal = Calibration.load(cal_file) if cal_file else default_calibration()
    from vramplan import estimate as run_engine

    device = None
    if gpu_name:  # the card's own calibrated constants (per-device entries), as `plan` uses them
        from vramplan.gpus import find_gpu

        gpu = find_gpu(gpu_name)
        device = None if gpu.kind == "custom" else gpu.name
    bd = run_engine(arch, scenario, method=method, calibration=cal, device=device)
    room = headroom(bd, gpu_name, cal) if gpu_name else None
    if as_json:
        from vramplan.report import estimate_json

        click.echo(json.dumps(estimate_json(arch, scenario, bd, room), indent=2))
        return
    from vramplan.report.table import render

    s = scenario
    what = "full fine-tuning" if s.full else f"LoRA r={s.rank} on {','.join(s.targets)}"
    title = (f"{arch.name} ({arch.total_params / 1e9:.2f} B params) · {s.quant.value} · {what} · "
             f"{s.batch}×{s.seq} · {s.recipe.value} · {s.optimizer.value} · "
             f"GC {'on' if s.grad_checkpointing else 'off'} · {s.attn.value} · {bd.engine}")
    render(bd, title, room)
