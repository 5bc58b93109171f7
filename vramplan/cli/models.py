"""``vramplan models``: the offline registry, by name, family, and what fits a card."""

from __future__ import annotations

from typing import Any

import click

from vramplan.cli.common import emit_json, load_calibration
from vramplan.cli.options import pop_scenario, scenario_options


@click.command()
@click.argument("filter", required=False, default="")
@click.option("--family", default=None, metavar="NAME",
              help="Only this family: a registry family or a config model_type (e.g. qwen3, gpt_oss, gemma3).")
@click.option("--fits", "fits_gpu", default=None, metavar="GPU",
              help="Only models whose run (the scenario flags, default QLoRA NF4 r8 1×2048) fits this catalog GPU "
                   "(see `vramplan gpus`), by the same check as `vramplan plan`.")
@click.option("--memory", default=None, help="Like --fits, for any card by its reported memory, e.g. 24GiB.")
@click.option("--point", is_flag=True, help="With --fits: use the point estimate instead of the conservative bound.")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False), default=None,
              help="Calibration JSON (default: the one shipped).")
@scenario_options(model=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(filter: str, **kwargs: Any) -> None:
    """List registry models whose name, hub id or family contains FILTER (case-insensitive).

    With --fits (or --memory) each listed model is priced with the scenario flags and only those that fit
    are shown, with what they need and the headroom left."""
    from vramplan.arch.lookup import registry
    from vramplan.report.catalog import by_family, fitting, matching, model_row, render_models

    scenario = pop_scenario(kwargs)
    entries = matching(registry(), filter, lambda e: f"{e.name} {e.hub_id} {e.family} {' '.join(e.aliases)}")
    if kwargs["family"]:
        entries = by_family(entries, kwargs["family"], registry())
    rows = [model_row(e) for e in entries]
    gpu_name = None
    if kwargs["fits_gpu"] is not None or kwargs["memory"] is not None:
        from vramplan.gpus import resolve_gpu

        cal = load_calibration(kwargs["calibration_file"])
        gpu = resolve_gpu(kwargs["fits_gpu"], kwargs["memory"], cal)
        gpu_name = gpu.name
        rows = fitting(entries, rows, gpu, scenario, cal, "point" if kwargs["point"] else "upper")
    if kwargs["as_json"]:
        emit_json(rows)
    else:
        render_models(rows, filter, gpu_name, scenario)
