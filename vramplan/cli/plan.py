"""``vramplan plan``: what fits a GPU.

Exit codes: 0 fits, 1 does not fit, 2 bad input. So ``vramplan plan ... && python train.py`` guards a
run. The library computes (``vramplan.plan``), ``vramplan.report.plan`` renders; this module only parses.
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from vramplan.cli.common import emit_json, load_calibration
from vramplan.cli.options import pop_run, scenario_options


@click.command()
@scenario_options(config=True)
@click.option("--gpu", "-g", default=None, help="Catalog GPU (see `vramplan gpus`), e.g. 'RTX 4090', h100.")
@click.option("--memory", default=None, help="Any card by its reported memory, e.g. 24GiB or 24564MiB.")
@click.option("--lengths", "lengths_file", type=click.Path(dir_okay=False), default=None,
              help="Token lengths of the dataset: JSONL/JSON/CSV, one example per row.")
@click.option("--column", default=None, help="Column of --lengths holding the length (or text).")
@click.option("--tokenizer", default=None, help="Local tokenizer directory to count a text column.")
@click.option("--percentile", type=float, default=99.0, show_default=True,
              help="Percentile of --lengths to plan the seq for (the maximum is always checked).")
@click.option("--host-ram", "host_ram", default=None, metavar="SIZE",
              help="Host memory available for offloaded activations, e.g. 64GiB: a run whose host memory "
                   "exceeds it does not fit.")
@click.option("--max-gpus", type=int, default=None, metavar="N",
              help="Find the fewest of these GPUs (1..N, one node) and the strategy that fit: every GPU count "
                   "under single, ddp, fsdp, zero2, zero3 and their state offloads, per GPU; then plan that run.")
@click.option("--point", is_flag=True, help="Use the point estimate instead of the conservative bound.")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False), default=None,
              help="Calibration JSON (default: the one shipped).")
@click.option("--seq-step", type=int, default=1, show_default=True, help="Granularity of the largest-seq search.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--write", "write_to", type=click.Path(dir_okay=False), default=None, metavar="OUT",
              help="With --config: write a copy of the config (or script) with the best fitting change applied; "
                   "the original is never modified.")
def plan(**kwargs: Any) -> int:
    """Does the run fit, and what is the largest seq, micro-batch and rank that does?

    With --lengths the run is checked at the fullest micro-batch its --packing layout draws: the longest
    example's (after truncation to --seq when --seq is given; the whole seq when the config's collator
    pads to it), the batch longest examples in one padding-free row, or full packed rows of --seq. Exit code: 0 fits, 1 does not fit, 2 error.
    """
    from vramplan.gpus import resolve_gpu
    from vramplan.plan import plan as make_plan

    run = pop_run(kwargs)
    scenario = run.scenario
    write_to = kwargs["write_to"]
    if write_to and run.resolved is None:
        raise click.UsageError("--write patches the run's --config: give one")
    cal = load_calibration(kwargs["calibration_file"])
    gpu = resolve_gpu(kwargs["gpu"], kwargs["memory"], cal)
    step = kwargs["seq_step"]
    if run.resolved is not None and run.resolved.framework.seq_multiple is not None and \
            click.get_current_context().get_parameter_source("seq_step") is not ParameterSource.COMMANDLINE:
        step = run.resolved.framework.seq_multiple(run.resolved.source.data)  # the lengths it runs at
    fw = run.resolved.framework if run.resolved is not None else None
    pad = bool(fw and fw.pads_to_seq and fw.pads_to_seq(run.resolved.source.data))  # type: ignore[union-attr]
    gpu_plan = None
    if kwargs["max_gpus"] is not None:
        from vramplan.plan_gpus import plan_gpus

        gpu_plan = plan_gpus(run.arch, gpu, scenario, max_gpus=kwargs["max_gpus"], calibration=cal,
                             bound="point" if kwargs["point"] else "upper", host_ram=_host_ram(kwargs["host_ram"]))
        scenario = gpu_plan.best_scenario or scenario
    result = make_plan(run.arch, gpu, scenario, calibration=cal, bound="point" if kwargs["point"] else "upper",
                       lengths=_lengths(kwargs, scenario.seq), percentile=kwargs["percentile"],
                       seq_step=step, pad_to_seq=pad, host_ram=_host_ram(kwargs["host_ram"]))
    written = _write(run, result, write_to) if write_to else None
    if kwargs["as_json"]:
        out = result.to_dict()
        if run.resolved is not None:
            from vramplan.frameworks import describe_change, framework_changes

            fw = run.resolved.framework
            out["scenario"] = scenario.to_dict()
            out["config"] = run.config_dict()
            for sug, d in zip(result.suggestions, out["suggestions"]):
                d["framework_changes"] = [describe_change(fw, *c) for c in framework_changes(fw, sug.changes)]
            out["written"] = written
        if gpu_plan is not None:
            out["gpus"] = gpu_plan.to_dict()
        emit_json(out)
    else:
        from rich.console import Console

        from vramplan.report.plan import render_plan

        console = Console()
        if run.resolved is not None:
            from vramplan.report.config import render_config

            render_config(run.resolved, scenario, run.command_line, console)
        if gpu_plan is not None:
            from vramplan.report.plan_gpus import render_gpu_plan

            render_gpu_plan(gpu_plan, console)
        render_plan(result, console, run.resolved.framework if run.resolved is not None else None)
        if written:
            console.print(f"wrote {written['path']}" + (f" with {'; '.join(written['changes'])}"
                                                       if written["changes"] else f" (unchanged: {written['reason']})"),
                          markup=False)
            if written["not_written"]:
                console.print(f"not written (set them by hand): {'; '.join(written['not_written'])}", markup=False)
    return 0 if result.fits and (gpu_plan is None or gpu_plan.fits) else 1


def _host_ram(text: str | None) -> int | None:
    """``--host-ram`` in bytes (IEC units as ``--memory``), or None."""
    if text is None:
        return None
    from vramplan.breakdown import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--host-ram") from None


def _write(run: Any, result: Any, out: str) -> dict[str, Any]:
    """Write the patched copy of the run's config: the largest-saving suggestion that fits and that the
    framework's keys can express (none when the run fits as configured, or when no such change fits:
    then the copy is unchanged, and ``reason`` says which)."""
    from pathlib import Path

    from vramplan.fileio import write_text_atomic
    from vramplan.frameworks import ConfigError, describe_change, framework_changes, patched_text

    fw = run.resolved.framework
    pick, reason = None, "the run fits as configured"
    if not result.fits:
        keyed = [s for s in result.suggestions
                 if s.fits and all(c[0] is not None for c in framework_changes(fw, s.changes))]
        pick = keyed[0] if keyed else None
        reason = "" if pick else f"no change that fits can be written in {fw.title}'s keys"
    changes = framework_changes(fw, pick.changes) if pick is not None else []
    source, text, written = patched_text(run.resolved, changes)
    target = Path(out).expanduser()
    try:
        same = any(target.resolve() == p.resolve() for p in [source, *run.resolved.source.files])
    except OSError:
        same = False
    if same:
        raise ConfigError(f"--write {out} would overwrite the config it patches; name a new file")
    try:
        write_text_atomic(target, text)
    except OSError as e:
        raise ConfigError(f"cannot write {target}: {e.strerror or e}") from None
    return dict(path=str(target), source=str(source), suggestion=pick.key if pick else None,
                changes=[describe_change(fw, *c) for c in written],
                not_written=[describe_change(fw, *c) for c in changes if c not in written], reason=reason)


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
