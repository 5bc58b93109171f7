"""``vramplan calibrate``: fit the runtime constants (thin command over ``vramplan.calibrate``)."""

from __future__ import annotations

from pathlib import Path

import click

from vramplan.cli.common import base_calibration, emit_json
from vramplan.errors import VramplanError


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
@click.option("--force", is_flag=True, help="Replace the --output file if it exists.")
@click.option("--min-points", type=click.IntRange(1), default=2, show_default=True,
              help="Figures a constant must move before it is fitted.")
@click.option("--robust/--least-squares", default=True, show_default=True, help="Huber-weighted fit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def calibrate(profiles: tuple[str, ...], reference: bool, only: str | None, base_path: str | None, output: str,
              force: bool, min_points: int, robust: bool, as_json: bool) -> None:
    """Fit the runtime constants (CUDA context, cuBLAS workspace, allocator reserve, dequant
    temporaries) from PROFILES (files or folders) and the reference rows, and write a calibration
    file for --calibration."""
    from vramplan.calibrate import check_output, fit
    from vramplan.reference import load_reference
    from vramplan.report.validation import calibration_json, render_calibration
    from vramplan.validate import load_profile_paths, profile_points, reference_points

    check_output(output, force)  # before any work: never lose a stored file
    problems: list[str] = []
    base = base_calibration(base_path)
    profs = load_profile_paths(profiles, problems)
    if profiles and not profs:
        _no_profile(profiles, problems)
    points = profile_points(profs) + (reference_points(load_reference()) if reference else [])
    names = None if only is None else [s.strip() for s in only.split(",") if s.strip()]
    result = fit(points, base, only=names, min_points=min_points, robust=robust)
    out = Path(output)
    payload = result.write(out, force=force)
    if as_json:
        emit_json(calibration_json(result, payload, str(out), problems))
        return
    render_calibration(result, base, problems)
    click.echo(f"wrote {out}")


def _no_profile(paths: tuple[str, ...], problems: list[str]) -> None:
    """PROFILES were given but none could be read: say why, with the first file's problem."""
    files = [m for m in problems if "skipped for another schema" not in m]
    why = f": {files[0]}" + (f" (and {len(files) - 1} more)" if len(files) > 1 else "") if files else ""
    if any("unknown schema" in m for m in files):
        why += "; re-record them with `vramplan profile` (no migration exists)"
    raise VramplanError(f"no readable profile in {', '.join(paths)}{why}")
