"""Predicted against measured, as text: the ``vramplan validate`` table and summaries (and its CSV), and
the fitted constants and residuals of ``vramplan calibrate``. Formats only."""

from __future__ import annotations

import csv
import io
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from vramplan.breakdown import fmt_bytes
from vramplan.report.text import pair, pct


# ------------------------------------------------------------------------------- validate
def csv_text(report: Any) -> str:
    """Every row of a ``ValidationReport`` as CSV text."""
    rows = [r.to_dict() for r in report.rows]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def render_validation(report: Any, show_all: bool) -> None:
    """Warnings on stderr, then the per-row table (rows out of scope only with ``show_all``) and the
    summaries of a ``ValidationReport``."""
    for m in report.problems:
        click.echo(f"warning: {m}", err=True)
    click.echo(f"calibration: {report.calibration}")
    t = Table(title="predicted vs measured")
    for col in ("row", "model", "device", "kind", "scope", "measured", "predicted", "error", "fits?"):
        t.add_column(col, justify="right" if col in ("measured", "predicted", "error") else "left")
    hidden = 0
    for r in report.rows:
        if r.status == "out" and not show_all:
            hidden += 1
            continue
        t.add_row(*_cells(r))
        if r.status != "in" and show_all:
            t.add_row("", f"[dim]{r.reason}[/dim]", "", "", "", "", "", "", "")
    Console().print(t)
    if hidden:
        click.echo(f"({hidden} rows out of scope not shown; --all lists them with the reason)")
    _summaries(report)


def _cells(r: Any) -> tuple[str, ...]:
    fit = "" if r.fit_predicted is None else ("agree" if r.fit_predicted == r.fit_actual else "DISAGREE")
    pred = r.predicted_bytes if r.predicted_bytes is not None else r.predicted_total_bytes
    return (r.id, r.model, r.device, r.measurement, r.status,
            fmt_bytes(r.measured_bytes) if r.measured_bytes else "—",
            "—" if pred is None else fmt_bytes(pred) + ("" if r.predicted_bytes is not None else " (total)"),
            pct(r.error), fit)


def _summaries(report: Any) -> None:
    for name, s in (("reference rows in scope", report.reference), ("profiles", report.profiles)):
        if not s.rows and not s.verdict_rows:
            continue
        click.echo(f"{name}: {s.rows} figures, median |error| {pct(s.median_abs_error).lstrip('+')}, "
                   f"worst under-prediction {pair(s.worst_under)}, worst over-prediction {pair(s.worst_over)}; "
                   f"fit verdict agrees {s.verdict_agree}/{s.verdict_rows} "
                   f"(conservative bound: {s.verdict_agree_conservative}/{s.verdict_rows})")
        if s.unpriced:
            click.echo(f"  in scope but not priced by the engine: {', '.join(s.unpriced)} (see --all)")
    a = report.approximate
    if a is not None and a.rows:
        click.echo(f"out of scope, approximated (not a target): {a.rows} figures, median |error| "
                   f"{pct(a.median_abs_error).lstrip('+')}, worst under {pair(a.worst_under)}, "
                   f"worst over {pair(a.worst_over)}")


# ------------------------------------------------------------------------------ calibrate
def calibration_json(result: Any, payload: dict[str, Any], output: str, problems: list[str]) -> dict[str, Any]:
    """The ``vramplan calibrate --json`` object: the file written, plus where and each constant's fit."""
    return {"output": output, "problems": problems, "constants": [c.__dict__ for c in result.constants],
            **payload}


def render_calibration(result: Any, base: Any, problems: list[str]) -> None:
    """Warnings on stderr, then the fitted constants (with why a constant was kept) and the residuals
    before and after of a ``CalibrationResult`` fitted from ``base``."""
    for m in problems + [f"left out, {x}" for x in result.skipped]:
        click.echo(f"warning: {m}", err=True)
    click.echo(f"fitted on: {result.calibration.fitted_on}")
    con = Console()
    table, notes = _constants(result, base)
    con.print(table)
    for n in notes:
        click.echo(f"  {n}")
    for dev, fitted in result.per_device.items():
        click.echo(f"{dev}: " + ", ".join(f"{c.name}={c.after:.4g}" for c in fitted))
    r = Table(title="residuals (predicted − measured) / measured")
    for col in ("figure", "device", "kind", "measured", "before", "after"):
        r.add_column(col, justify="left" if col in ("figure", "device", "kind") else "right")
    for x in result.residuals:
        r.add_row(x.id, x.device, x.measurement, fmt_bytes(x.measured_bytes), pct(x.error_before),
                  pct(x.error_after))
    con.print(r)


def _constants(result: Any, base: Any) -> tuple[Table, list[str]]:
    """The fitted-constants table, and a note for each constant fitted weakly or kept."""
    t = Table(title="fitted constants")
    for col in ("constant", "before", "after", "± 1σ", "figures", "status"):
        t.add_column(col, justify="left" if col in ("constant", "status") else "right", no_wrap=True)
    notes = []
    for c in result.constants:
        fmt = fmt_bytes if c.name.endswith("_bytes") else (lambda v: f"{v:.4g}")
        status = "fitted" if c.fitted else ("at bound" if c.note == "at its lower bound" else "kept")
        if c.weak:
            status = "fitted, weak"
            notes.append(f"{c.name}: ± 1σ is no narrower than the prior's ({fmt(c.prior_sigma)})")
        if not c.fitted:
            notes.append(f"{c.name}: {c.note}")
        t.add_row(c.name, fmt(c.before), fmt(c.after), "—" if c.sigma is None else fmt(c.sigma), str(c.points),
                  status)
    t.add_row("upper_bound_fraction", f"{base.upper_bound_fraction:.3f}",
              f"{result.calibration.upper_bound_fraction:.3f}", "—", str(len(result.residuals)), "covers worst under")
    return t, notes
