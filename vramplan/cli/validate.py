"""``vramplan validate``: predicted against measured (thin command over ``vramplan.validate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vramplan.cli.common import PROFILES_DIR, base_calibration, emit_json
from vramplan.errors import VramplanError


@click.command()
@click.option("--profiles", "profiles_dir", default=PROFILES_DIR, show_default=True,
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
    from vramplan.report.validation import csv_text, render_validation
    from vramplan.validate import load_profile_paths
    from vramplan.validate import validate as run

    problems: list[str] = []
    cal = base_calibration(calibration_path)
    if profiles_dir == PROFILES_DIR and not Path(profiles_dir).exists():
        profs: list[Any] = []
    else:
        profs = load_profile_paths((profiles_dir,), problems)
    report = run(profs, None if reference else [], cal, problems=problems)
    if csv_path:
        _write_csv(csv_text(report), csv_path)
    if as_json:
        emit_json(report.to_dict())
    else:
        render_validation(report, show_all)


def _write_csv(text: str, path: str) -> None:
    """Write the CSV atomically; a stored profile is never the target (``calibrate.check_output``)."""
    from vramplan.calibrate import check_output
    from vramplan.fileio import write_text_atomic

    check_output(path, force=True)
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise VramplanError(f"cannot write {path}: {e.strerror or e}") from None
