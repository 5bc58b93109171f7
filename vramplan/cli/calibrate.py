"""``vramplan calibrate`` and ``vramplan validate``: thin commands over vramplan.calibrate / .validate."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from vramplan.breakdown import fmt_bytes
from vramplan.errors import VramplanError

DEFAULT_PROFILES = "profiles"


def _load_calibration(path: str | None) -> Any:
    """A calibration file; none = the shipped default; 'defaults' = the dataclass's stated priors."""
    from vramplan.calibration import Calibration, default_calibration

    if path == "defaults":
        return Calibration()
    return Calibration.load(path) if path else default_calibration()


def _profiles(paths: tuple[str, ...], problems: list[str]) -> list[Any]:
    """Profiles from files and folders. An explicitly named file that fails is an error (exit 2)."""
    from vramplan.profile.store import READABLE, ProfileError, load_profiles, read_profile

    out: list[Any] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            out.extend(load_profiles(p, problems=problems))
        elif p.is_file():
            try:
                out.append(read_profile(p))
            except ProfileError as e:
                msg = str(e)
                if "unknown schema" in msg:
                    msg += (f"; no migration exists to {', '.join(READABLE)}: re-record it with "
                            "`vramplan profile`")
                raise VramplanError(msg) from None
        else:
            raise VramplanError(f"no such profile file or folder: {raw}")
    schema_skips = [m for m in problems if "unknown schema" in m]
    if schema_skips:
        problems.append(f"{len(schema_skips)} profile(s) skipped for another schema version: re-record them "
                        "with `vramplan profile` (no migration exists)")
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.1f} %"


# ------------------------------------------------------------------------------ calibrate
@click.command()
@click.argument("profiles", nargs=-1)
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Also fit on the shipped reference rows in scope.")
@click.option("--fit", "only", default=None,
              help="Comma list of constants to fit (default: every constant with enough data).")
@click.option("--base", "base_path", type=click.Path(), default=None,
              help="Calibration to start from and keep for unfitted constants (default: the shipped one; "
                   "'defaults': the built-in priors, as the shipped file was made).")
@click.option("--output", "-o", default="calibration.json", show_default=True, help="Where to write it.")
@click.option("--min-points", type=click.IntRange(1), default=2, show_default=True,
              help="Figures a constant must move before it is fitted.")
@click.option("--robust/--least-squares", default=True, show_default=True, help="Huber-weighted fit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def calibrate(profiles: tuple[str, ...], reference: bool, only: str | None, base_path: str | None, output: str,
              min_points: int, robust: bool, as_json: bool) -> None:
    """Fit the runtime constants (CUDA context, cuBLAS workspace, allocator reserve, dequant
    temporaries) from PROFILES (files or folders) and the reference rows, and write a calibration
    file for --calibration."""
    from vramplan.calibrate import PRIORS, fit
    from vramplan.reference import load_reference
    from vramplan.validate import profile_points, reference_points

    problems: list[str] = []
    base = _load_calibration(base_path)
    profs = _profiles(profiles, problems)
    if profiles and not profs:
        files = [m for m in problems if "skipped for another schema" not in m]
        why = f": {files[0]}" + (f" (and {len(files) - 1} more)" if len(files) > 1 else "") if files else ""
        if any("unknown schema" in m for m in files):
            why += "; re-record them with `vramplan profile` (no migration exists)"
        raise VramplanError(f"no readable profile in {', '.join(profiles)}{why}")
    points = profile_points(profs) + (reference_points(load_reference()) if reference else [])
    names = None if only is None else [s.strip() for s in only.split(",") if s.strip()]
    result = fit(points, base, only=names, min_points=min_points, robust=robust)
    out_path = Path(output)
    payload = {"schema": "vramplan.calibration/1", **result.to_dict()}
    try:
        out_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise VramplanError(f"cannot write calibration to {out_path}: {e.strerror}") from None
    if as_json:
        click.echo(json.dumps({"output": str(out_path), "problems": problems,
                               "constants": [c.__dict__ for c in result.constants], **payload}, indent=2))
        return
    con = Console()
    for m in problems + [f"left out, {x}" for x in result.skipped]:
        click.echo(f"warning: {m}", err=True)
    click.echo(f"fitted on: {result.calibration.fitted_on}")
    t = Table(title="fitted constants")
    for col in ("constant", "before", "after", "± 1σ", "figures", "status"):
        t.add_column(col, justify="left" if col in ("constant", "status") else "right", no_wrap=True)
    notes = []
    for c in result.constants:
        fmt = fmt_bytes if c.name.endswith("_bytes") else (lambda v: f"{v:.4g}")
        status = "fitted" if c.fitted else ("at bound" if c.note == "at its lower bound" else "kept")
        if c.fitted and c.sigma is not None and c.sigma >= PRIORS[c.name][1]:
            status = "fitted, weak"  # the data narrowed it no further than its prior
            notes.append(f"{c.name}: ± 1σ is no narrower than the prior's ({fmt(PRIORS[c.name][1])})")
        if not c.fitted:
            notes.append(f"{c.name}: {c.note}")
        t.add_row(c.name, fmt(c.before), fmt(c.after), "—" if c.sigma is None else fmt(c.sigma), str(c.points),
                  status)
    t.add_row("upper_bound_fraction", f"{base.upper_bound_fraction:.3f}",
              f"{result.calibration.upper_bound_fraction:.3f}", "—", str(len(result.residuals)), "covers worst under")
    con.print(t)
    for n in notes:
        click.echo(f"  {n}")
    for dev, fitted in result.per_device.items():
        click.echo(f"{dev}: " + ", ".join(f"{c.name}={c.after:.4g}" for c in fitted))
    r = Table(title="residuals (predicted − measured) / measured")
    for col in ("figure", "device", "kind", "measured", "before", "after"):
        r.add_column(col, justify="left" if col in ("figure", "device", "kind") else "right")
    for x in result.residuals:
        r.add_row(x.id, x.device, x.measurement, fmt_bytes(x.measured_bytes), _pct(x.error_before),
                  _pct(x.error_after))
    con.print(r)
    click.echo(f"wrote {out_path}")


# ------------------------------------------------------------------------------- validate
@click.command()
@click.option("--profiles", "profiles_dir", default=DEFAULT_PROFILES, show_default=True,
              help="Folder (or file) of stored profiles.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Include the shipped reference rows.")
@click.option("--calibration", "calibration_path", type=click.Path(), default=None,
              help="Calibration file (default: the shipped one).")
@click.option("--all", "show_all", is_flag=True, help="Also list rows out of scope, with the reason.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--csv", "csv_path", type=click.Path(), default=None, help="Also write every row to this CSV.")
def validate(profiles_dir: str, reference: bool, calibration_path: str | None, show_all: bool, as_json: bool,
             csv_path: str | None) -> None:
    """Predicted against measured, per row, with error %, and a summary: median |error|, worst
    under- and over-prediction, and fit / no-fit verdict agreement."""
    from vramplan.validate import validate as run

    problems: list[str] = []
    cal = _load_calibration(calibration_path)
    if profiles_dir == DEFAULT_PROFILES and not Path(profiles_dir).exists():
        profs: list[Any] = []
    else:
        profs = _profiles((profiles_dir,), problems)
    report = run(profs, None if reference else [], cal, problems=problems)
    if csv_path:
        _write_csv(report, csv_path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for m in problems:
        click.echo(f"warning: {m}", err=True)
    _render(report, show_all)


def _write_csv(report: Any, path: str) -> None:
    rows = [r.to_dict() for r in report.rows]
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    except OSError as e:
        raise VramplanError(f"cannot write {path}: {e.strerror}") from None


def _render(report: Any, show_all: bool) -> None:
    con = Console()
    click.echo(f"calibration: {report.calibration}")
    t = Table(title="predicted vs measured")
    for col in ("row", "model", "device", "kind", "scope", "measured", "predicted", "error", "fits?"):
        t.add_column(col, justify="right" if col in ("measured", "predicted", "error") else "left")
    hidden = 0
    for r in report.rows:
        if r.status == "out" and not show_all:
            hidden += 1
            continue
        fit = "" if r.fit_predicted is None else ("agree" if r.fit_predicted == r.fit_actual else "DISAGREE")
        pred = r.predicted_bytes if r.predicted_bytes is not None else r.predicted_total_bytes
        t.add_row(r.id, r.model, r.device, r.measurement, r.status,
                  fmt_bytes(r.measured_bytes) if r.measured_bytes else "—",
                  "—" if pred is None else fmt_bytes(pred) + ("" if r.predicted_bytes is not None else " (total)"),
                  _pct(r.error), fit)
        if r.status != "in" and show_all:
            t.add_row("", f"[dim]{r.reason}[/dim]", "", "", "", "", "", "", "")
    con.print(t)
    if hidden:
        click.echo(f"({hidden} rows out of scope not shown; --all lists them with the reason)")
    for name, s in (("reference rows in scope", report.reference), ("profiles", report.profiles)):
        if not s.rows and not s.verdict_rows:
            continue
        click.echo(f"{name}: {s.rows} figures, median |error| {_pct(s.median_abs_error).lstrip('+')}, "
                   f"worst under-prediction {_pair(s.worst_under)}, worst over-prediction {_pair(s.worst_over)}; "
                   f"fit verdict agrees {s.verdict_agree}/{s.verdict_rows} "
                   f"(conservative bound: {s.verdict_agree_conservative}/{s.verdict_rows})")
        if s.unpriced:
            click.echo(f"  in scope but not priced by the engine: {', '.join(s.unpriced)} (see --all)")
    a = report.approximate
    if a is not None and a.rows:
        click.echo(f"out of scope, approximated (not a target): {a.rows} figures, median |error| "
                   f"{_pct(a.median_abs_error).lstrip('+')}, worst under {_pair(a.worst_under)}, "
                   f"worst over {_pair(a.worst_over)}")


def _pair(p: tuple[str, float] | None) -> str:
    return "none" if p is None else f"{_pct(p[1])} ({p[0]})"
