"""``vramplan profile`` (run real steps, store profiles) and ``vramplan profiles list|show``."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import json
import warnings
from pathlib import Path
from typing import Any

import click

from vramplan.breakdown import fmt_bytes
from vramplan.cli.options import pop_scenario, scenario_options
from vramplan.errors import VramplanError

DEFAULT_DIR = "profiles"


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


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.1f} %"


def _row(p: Any) -> dict[str, Any]:
    m, s = p.measured, p.scenario
    return {
        "file": p.path.name if p.path else None,
        "model": p.model, "device": p.device["name"], "kind": p.device["kind"],
        "seq": s.seq, "batch": s.batch, "rank": s.rank, "quant": s.quant.value,
        "optimizer": s.optimizer.value,
        "allocated_peak_bytes": m.get("allocated_peak_bytes"),
        "reserved_peak_bytes": m.get("reserved_peak_bytes"),
        "trace_error": p.error("trace"), "analytic_error": p.error("analytic"),
        "step_seconds": m.get("step_seconds"), "tokens_per_second": m.get("tokens_per_second"),
        "oom": m.get("oom"), "timestamp": p.timestamp,
    }


def _table(rows: list[dict[str, Any]], title: str, files: bool = True) -> Any:
    """Compact enough for 80 columns: with ``files`` the file name (model, device, point, time)
    leads; without it the title names model and device."""
    from rich.table import Table

    t = Table(title=title)
    if files:
        t.add_column("file", overflow="fold", min_width=16)
    for col in ("seq", "batch", "rank", "peak", "trace", "analytic", "step"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        oom = r["oom"]
        peak = f"OOM {oom['phase']}" if oom else fmt_bytes(r["allocated_peak_bytes"])
        step = "—" if r["step_seconds"] is None else f"{r['step_seconds'] * 1000:.0f} ms"
        cells = [str(r["seq"]), str(r["batch"]), str(r["rank"]), peak,
                 _pct(r["trace_error"]), _pct(r["analytic_error"]), step]
        t.add_row(*([r["file"] or ""] if files else []), *cells)
    if rows:
        t.caption = "trace / analytic: estimate error vs the measured allocated peak"
    return t


@click.command()
@scenario_options(multi=True)
@click.option("--device", default=None, help="cuda, cuda:N or cpu.  [default: cuda if available]")
@click.option("--steps", type=int, default=3, show_default=True,
              help="Training steps per point, the first being the warm-up.")
@click.option("--weights", type=click.Path(), default=None,
              help="Local checkpoint directory (config.json + *.safetensors).")
@click.option("--random-init", is_flag=True,
              help="Real architecture, random weights, quantized by bitsandbytes (default without --weights).")
@click.option("--out", "-o", type=click.Path(), default=DEFAULT_DIR, show_default=True,
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
    and the sweep goes on."""
    from vramplan.arch import Arch, resolve
    from vramplan.profile.runner import RunOptions, preflight, sweep, weights_config
    from vramplan.profile.store import check_writable, save_profile

    grids = {k: parse_list(k, kw.pop(k)) for k in ("seq", "batch", "rank")}
    model, weights, as_json = kw.pop("model"), kw.pop("weights"), kw.pop("as_json")
    if weights and kw.pop("random_init"):
        raise VramplanError("--weights and --random-init exclude each other")
    kw.pop("random_init", None)
    opts = RunOptions(device=kw.pop("device"), steps=kw.pop("steps"), weights=weights, seed=kw.pop("seed"),
                      force=kw.pop("force"), loader=kw.pop("loader"),
                      predict=("analytic",) if kw.pop("no_trace") else ("analytic", "trace"))
    out = kw.pop("out")
    scenarios = []
    for seq, batch, rank in itertools.product(grids["seq"], grids["batch"], grids["rank"]):
        scenarios.append(pop_scenario(dict(kw, seq=seq, batch=batch, rank=rank)))
    arch = Arch.from_config(weights_config(weights), name=model) if weights else resolve(model)
    folder = check_writable(out)
    from vramplan.hf.build import require_torch

    # bitsandbytes' CPU backend warns at import that the optional `kernels` package is missing; the
    # profile records the versions it ran with, so the line is noise here.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    require_torch()
    device = preflight(model, arch, scenarios, opts)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    saved: list[Any] = []
    _quiet_transformers()
    with warnings.catch_warnings(), Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True, disable=as_json) as bar:
        warnings.simplefilter("ignore")
        task = bar.add_task(f"{model} on {device['name'][:30]}", total=len(scenarios))
        for prof in sweep(model, arch, scenarios, opts):
            path = save_profile(prof, folder)
            prof = dataclasses.replace(prof, path=path)
            saved.append(prof)
            r = _row(prof)
            what = (f"OOM in {r['oom']['phase']}" if r["oom"]
                    else f"peak {fmt_bytes(r['allocated_peak_bytes'])}, trace {_pct(r['trace_error'])}, "
                         f"analytic {_pct(r['analytic_error'])}")
            if not as_json:
                console.print(f"seq {r['seq']} batch {r['batch']} rank {r['rank']}: {what} -> {path}",
                              soft_wrap=True, highlight=False)
            bar.advance(task)
    if as_json:
        click.echo(json.dumps([dict(p.to_dict(), path=str(p.path)) for p in saved], indent=2))
        return
    from rich.console import Console as Out

    title = f"{model} on {device['name']}: {len(saved)} profile(s) in {folder}"
    Out().print(_table([_row(p) for p in saved], title, files=False))


def _quiet_transformers() -> None:
    """transformers' per-load progress bars and info lines would drown the sweep's own progress."""
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


@click.group()
def profiles() -> None:
    """Browse stored profiles."""


def _load(folder: str) -> tuple[list[Any], list[str]]:
    from vramplan.profile.store import load_profiles

    problems: list[str] = []
    found = load_profiles(folder, problems)
    for msg in problems:
        click.echo(f"warning: skipped {msg}", err=True)
    return found, problems


@profiles.command("list")
@click.argument("folder", required=False, default=DEFAULT_DIR)
@click.option("--model", "-m", default=None, help="Only models whose name contains this.")
@click.option("--device", default=None, help="Only devices whose kind or name contains this.")
@click.option("--json", "as_json", is_flag=True)
def list_(folder: str, model: str | None, device: str | None, as_json: bool) -> None:
    """Profiles under FOLDER (default: ./profiles), oldest first; corrupt files are skipped."""
    from rich.console import Console

    from vramplan.profile.store import select

    found, _ = _load(folder)
    rows = [_row(p) for p in select(found, model, device)]
    if as_json:
        for r, p in zip(rows, select(found, model, device)):
            r["path"] = str(p.path)
        click.echo(json.dumps(rows, indent=2))
        return
    Console().print(_table(rows, f"{len(rows)} profile(s) in {folder}"))


@profiles.command("show")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="The stored record, verbatim.")
def show(path: str, as_json: bool) -> None:
    """One profile: scenario, device, measured phases, and predictions vs measured."""
    from rich.console import Console
    from rich.table import Table

    from vramplan.profile.store import read_profile

    p = read_profile(_find(path))
    if as_json:
        click.echo(json.dumps(dict(p.to_dict(), path=str(p.path)), indent=2))
        return
    c = Console()
    s, m = p.scenario, p.measured
    c.print(f"[bold]{p.model}[/bold] on {p.device['name']} ({p.device['kind']}), {p.timestamp}")
    c.print("scenario: " + ", ".join(f"{k}={v}" for k, v in s.to_dict().items()))
    c.print("versions: " + ", ".join(f"{k} {v}" for k, v in p.versions.items() if v))
    if m.get("oom"):
        o = m["oom"]
        alloc = "?" if o.get("allocated_bytes") is None else fmt_bytes(o["allocated_bytes"])
        c.print(f"[red]out of memory in {o['phase']}[/red] at {alloc} allocated: {o['message']}")
    t = Table(title="measured")
    t.add_column("figure")
    t.add_column("bytes", justify="right")
    for k in ("allocated_peak_bytes", "reserved_peak_bytes", "active_peak_bytes", "process_peak_bytes",
              "managed_bytes", "first_step_peak_bytes"):
        v = m.get(k)
        t.add_row(k.removesuffix("_bytes"), "—" if v is None else fmt_bytes(v))
    for k, v in m.get("phases", {}).items():
        t.add_row(f"phase {k}", "—" if v is None else fmt_bytes(v))
    if m.get("step_seconds") is not None:
        t.add_row("step time", f"{m['step_seconds'] * 1000:.1f} ms")
        t.add_row("tokens/s", f"{m['tokens_per_second']:,.0f}")
    c.print(t)
    t = Table(title="estimate ÷ measured")
    t.add_column("engine")
    for total in ("allocated", "reserved", "total"):
        t.add_column(total, justify="right")
    for engine in ("analytic", "trace"):
        cells = []
        for total in ("allocated", "reserved", "total"):
            r = p.ratio(engine, total)
            cells.append("—" if r is None else f"{r:.3f}")
        t.add_row(engine, *cells)
    c.print(t)


def _find(path: str) -> Path:
    """A profile path, or a bare file name looked up under ./profiles."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    root = Path(DEFAULT_DIR)
    hits = []
    if p.name == path and root.is_dir():
        hits = sorted(f for f in root.rglob("*.json") if f.name == path)
    if len(hits) == 1:
        return hits[0]
    raise VramplanError(f"no profile '{path}'")
