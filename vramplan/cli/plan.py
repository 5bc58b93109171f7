"""``vramplan plan``: what fits a GPU.

Exit codes: 0 fits, 1 does not fit, 2 bad input. So ``vramplan plan ... && python train.py`` guards a
run. The library computes (``vramplan.plan``), ``vramplan.report.plan`` renders; this module only parses.
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from vramplan.cli.common import emit_json, load_calibration
from vramplan.cli.options import pop_scenario, scenario_options


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
    from vramplan.gpus import resolve_gpu
    from vramplan.plan import plan as make_plan

    model = kwargs.pop("model")
    scenario = pop_scenario(kwargs)
    cal = load_calibration(kwargs["calibration_file"])
    gpu = resolve_gpu(kwargs["gpu"], kwargs["memory"], cal)
    result = make_plan(model, gpu, scenario, calibration=cal, bound="point" if kwargs["point"] else "upper",
                       lengths=_lengths(kwargs, scenario.seq), percentile=kwargs["percentile"],
                       seq_step=kwargs["seq_step"])
    if kwargs["as_json"]:
        emit_json(result.to_dict())
    else:
        from rich.console import Console

        from vramplan.report.plan import render_plan

        render_plan(result, Console())
    return 0 if result.fits else 1


def _lengths(kwargs: dict[str, Any], seq: int) -> Any:
    """The --lengths file's lengths (truncated to --seq when --seq is given), or None."""
    if not kwargs["lengths_file"]:
        if kwargs["column"] or kwargs["tokenizer"]:
            raise click.UsageError("--column and --tokenizer need --lengths")
        return None
    from vramplan.lengths import load_lengths

    lengths = load_lengths(kwargs["lengths_file"], column=kwargs["column"], tokenizer=kwargs["tokenizer"])
    if click.get_current_context().get_parameter_source("seq") is ParameterSource.COMMANDLINE:
        lengths = lengths.truncate(seq)
    return lengths
