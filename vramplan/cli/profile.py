"""``vramplan profile``: run real training steps over a grid of points and store one profile per point."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import signal
import warnings
from typing import Any, Callable, Iterator

import click

from vramplan.cli.common import PROFILES_DIR, emit_json
from vramplan.cli.options import pop_scenario, scenario_options
from vramplan.errors import VramplanError


def parse_list(name: str, text: str) -> list[int]:
    """``"512,1024"`` -> [512, 1024]; a bad item is a one-line error."""
    out: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise VramplanError(f"--{name}: '{item}' is not an integer") from None
        if value <= 0:
            raise VramplanError(f"--{name} must be positive, got {value}")
        out.append(value)
    if not out:
        raise VramplanError(f"--{name} needs at least one value")
    return list(dict.fromkeys(out))


@click.command()
@scenario_options(multi=True, config=True)
@click.option("--device", default=None, help="cuda, cuda:N or cpu.  [default: cuda if available]")
@click.option("--steps", type=int, default=3, show_default=True,
              help="Training steps per point, the first being the warm-up.")
@click.option("--weights", type=click.Path(), default=None,
              help="Local checkpoint directory (config.json + *.safetensors).")
@click.option("--random-init", is_flag=True,
              help="Real architecture, random weights, quantized by bitsandbytes (default without --weights).")
@click.option("--out", "-o", type=click.Path(), default=PROFILES_DIR, show_default=True,
              help="Directory the profiles are written to.")
@click.option("--force", is_flag=True, help="Run even if the analytic estimate exceeds the device's memory.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-trace", is_flag=True, help="Store only the analytic prediction (the trace can be slow).")
@click.option("--loader", type=click.Choice(["auto", "pretrained", "materialize"]), default="auto",
              show_default=True,
              help="random-init: save random safetensors + from_pretrained, or build on meta and quantize "
                   "layer by layer (the trace's build); auto picks pretrained when it fits in host memory.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored profiles as JSON.")
def profile(**kw: Any) -> None:
    """Run real QLoRA training steps on MODEL and store one profile per point.

    Comma lists in --seq, --batch and --rank sweep the grid; out-of-memory points are recorded
    and the sweep goes on. With --config (or a launch command after --) the framework's own trainer
    runs a few steps on CPU instead, and the profile names the framework and its version."""
    from vramplan.arch import Arch, resolve
    from vramplan.profile.runner import RunOptions, preflight, weights_config
    from vramplan.profile.store import check_writable

    if kw.get("configs") or kw.get("command"):
        _profile_config(kw)
        return
    for k in ("configs", "command", "framework_name", "framework_version"):
        if kw.pop(k, None):
            raise VramplanError(f"--{k.replace('_name', '').replace('_', '-')} describes a --config")

    grids = {k: parse_list(k, kw.pop(k)) for k in ("seq", "batch", "rank")}
    model, weights, as_json = kw.pop("model"), kw.pop("weights"), kw.pop("as_json")
    if weights and kw.pop("random_init"):
        raise VramplanError("--weights and --random-init exclude each other")
    kw.pop("random_init", None)
    opts = RunOptions(device=kw.pop("device"), steps=kw.pop("steps"), weights=weights, seed=kw.pop("seed"),
                      force=kw.pop("force"), loader=kw.pop("loader"),
                      predict=("analytic",) if kw.pop("no_trace") else ("analytic", "trace"))
    out = kw.pop("out")
    scenarios = [pop_scenario(dict(kw, seq=seq, batch=batch, rank=rank))
                 for seq, batch, rank in itertools.product(grids["seq"], grids["batch"], grids["rank"])]
    arch = Arch.from_config(weights_config(weights), name=model) if weights else resolve(model)
    folder = check_writable(out)
    from vramplan.hf.build import require_torch

    # bitsandbytes' CPU backend warns at import that the optional `kernels` package is missing; the
    # profile records the versions it ran with, so the line is noise here.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    require_torch()
    device = preflight(model, arch, scenarios, opts)
    _warn_if_slow(arch, scenarios, opts, device, as_json)
    if any(sc.distributed for sc in scenarios):  # every rank a torchrun process (vramplan.profile.ranks)
        saved = _run_ranks(model, arch, scenarios, opts, folder, device)
    else:
        with stoppable() as stop:
            saved = _run(model, arch, scenarios, opts, folder, device, as_json, stop)
    if as_json:
        emit_json([dict(p.to_dict(), path=str(p.path)) for p in saved])
        return
    from rich.console import Console

    from vramplan.report.profiles import profile_row, profiles_table

    title = f"{model} on {device['name']}: {len(saved)} profile(s) in {folder}"
    Console().print(profiles_table([profile_row(p) for p in saved], title, files=False))


def _run_ranks(model: str, arch: Any, scenarios: list[Any], opts: Any, folder: Any,
               device: dict[str, Any]) -> list[Any]:
    """Each point on ``world_size`` local processes under torchrun: one profile per rank."""
    from vramplan.profile.ranks import launch
    from vramplan.profile.store import read_profile

    opts = dataclasses.replace(opts, device=opts.device or ("cuda" if device["kind"] == "cuda" else "cpu"))
    saved: list[Any] = []
    for sc in scenarios:
        saved.extend(read_profile(p) for p in launch(model, dict(arch.config), sc, opts, folder))
    return saved


def _profile_config(kw: dict[str, Any]) -> None:
    """``profile --config``: one point, the framework's own trainer (``vramplan.profile.frameworks``)."""
    from vramplan.cli.options import pop_run
    from vramplan.hf.build import require_torch
    from vramplan.profile.frameworks import profile_config
    from vramplan.profile.runner import RunOptions
    from vramplan.profile.store import check_writable, save_profile

    for k in ("seq", "batch", "rank"):
        values = parse_list(k, kw[k])
        if len(values) > 1:
            raise VramplanError(f"--{k}: profile --config runs one point (no comma lists)")
        kw[k] = values[0]
    if kw.pop("weights") or kw.pop("random_init"):
        raise VramplanError("profile --config runs random-init weights of the config's model (no --weights)")
    as_json, out = kw.pop("as_json"), kw.pop("out")
    opts = RunOptions(device=kw.pop("device") or "cpu", steps=kw.pop("steps"), seed=kw.pop("seed"),
                      force=kw.pop("force"), loader=kw.pop("loader"),
                      predict=("analytic",) if kw.pop("no_trace") else ("analytic", "trace"))
    run = pop_run(kw)
    folder = check_writable(out)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    require_torch()
    _quiet_transformers()
    with warnings.catch_warnings(), stoppable():
        warnings.simplefilter("ignore")
        prof = profile_config(run.resolved, run.arch.name, run.arch, run.scenario, opts)
    path = save_profile(prof, folder)
    prof = dataclasses.replace(prof, path=path)
    if as_json:
        emit_json([dict(prof.to_dict(), path=str(path))])
        return
    from rich.console import Console

    from vramplan.report.profiles import profile_row, profiles_table

    fw = run.resolved.framework
    Console().print(profiles_table([profile_row(prof)], f"{fw.title} {run.resolved.version} trainer, "
                                                       f"{run.arch.name} on CPU: {path}", files=False))


def _run(model: str, arch: Any, scenarios: list[Any], opts: Any, folder: Any, device: dict[str, Any],
         quiet: bool, stop: Callable[[], None] = lambda: None) -> list[Any]:
    """Sweep the points, store each profile as it comes, and show progress on stderr (unless ``quiet``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vramplan.profile.runner import sweep
    from vramplan.profile.store import save_profile
    from vramplan.report.profiles import point_line, profile_row

    console = Console(stderr=True)
    saved: list[Any] = []
    _quiet_transformers()
    with warnings.catch_warnings(), Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True, disable=quiet) as bar:
        warnings.simplefilter("ignore")
        task = bar.add_task(f"{model} on {device['name'][:30]}", total=len(scenarios))
        for prof in sweep(model, arch, scenarios, opts):
            stop()  # a signal some library swallowed still ends the sweep, before the next point
            path = save_profile(prof, folder)
            saved.append(dataclasses.replace(prof, path=path))
            if not quiet:
                console.print(point_line(profile_row(saved[-1]), path), soft_wrap=True, highlight=False)
            bar.advance(task)
    return saved


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM during a sweep: a KeyboardInterrupt, so that no ``except Exception`` on the
    way up swallows it and every ``finally`` (temporary checkpoints) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def stoppable() -> Iterator[Callable[[], None]]:
    """Turn SIGINT and SIGTERM into ``Stopped`` while the sweep runs (profiles already written are
    complete files: each is renamed into place whole), then restore the previous handlers. A second
    signal while the first unwinds is ignored, so cleanup finishes. Yields a check that raises
    ``Stopped`` if a signal came but was swallowed on its way up (a library's broad ``except``)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if fired:
            return
        fired.append(signum)
        raise Stopped(signum)

    def check() -> None:
        if fired:
            raise Stopped(fired[0])

    for s in previous:
        signal.signal(s, handler)
    try:
        yield check
    except Exception as e:  # an exception the interrupt caused on its way up (in a library's cleanup)
        if fired:
            raise Stopped(fired[0]) from e
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


#: Above this many seconds for the whole sweep, the expected time is said before it starts.
SLOW_SWEEP_SECONDS = 60.0


def _warn_if_slow(arch: Any, scenarios: list[Any], opts: Any, device: dict[str, Any], quiet: bool) -> None:
    """Estimate the sweep's time before running it (``profile.timing.expected_seconds``) and warn on stderr
    when it will take minutes."""
    from vramplan.profile.timing import expected_seconds

    total = sum(expected_seconds(arch, sc, opts, device) for sc in scenarios)
    if total > SLOW_SWEEP_SECONDS and not quiet:
        click.echo(f"warning: this sweep will take about {total / 60:.0f} min ({len(scenarios)} point(s), "
                   f"{opts.steps} step(s) each on {device['name']}); Ctrl-C stops it and keeps what is stored",
                   err=True)


def _quiet_transformers() -> None:
    """transformers' per-load progress bars and info lines would drown the sweep's own progress."""
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
