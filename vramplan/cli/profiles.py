"""``vramplan profiles list|show``: browse stored profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vramplan.cli.common import PROFILES_DIR, emit_json
from vramplan.errors import VramplanError


@click.group()
def profiles() -> None:
    """Browse stored profiles."""


def _load(folder: str) -> list[Any]:
    """The profiles under ``folder``; each file skipped is a warning on stderr."""
    from vramplan.profile.store import load_profiles

    problems: list[str] = []
    found = load_profiles(folder, problems)
    for msg in problems:
        click.echo(f"warning: skipped {msg}", err=True)
    return found


@profiles.command("list")
@click.argument("folder", required=False, default=PROFILES_DIR)
@click.option("--model", "-m", default=None, help="Only models whose name contains this.")
@click.option("--device", default=None, help="Only devices whose kind or name contains this.")
@click.option("--json", "as_json", is_flag=True)
def list_(folder: str, model: str | None, device: str | None, as_json: bool) -> None:
    """Profiles under FOLDER (default: ./profiles), oldest first; corrupt files are skipped."""
    from vramplan.profile.store import select
    from vramplan.report.profiles import profile_row, profiles_table

    chosen = select(_load(folder), model, device)
    rows = [profile_row(p) for p in chosen]
    if as_json:
        emit_json([dict(r, path=str(p.path)) for r, p in zip(rows, chosen)])
        return
    from rich.console import Console

    Console().print(profiles_table(rows, f"{len(rows)} profile(s) in {folder}"))


@profiles.command("show")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="The stored record, verbatim.")
def show(path: str, as_json: bool) -> None:
    """One profile: scenario, device, measured phases, and predictions vs measured."""
    from vramplan.profile.store import read_profile
    from vramplan.report.profiles import render_profile

    p = read_profile(_find(path))
    if as_json:
        emit_json(dict(p.to_dict(), path=str(p.path)))
    else:
        render_profile(p)


def _find(path: str) -> Path:
    """A profile path, or a bare file name looked up under ./profiles."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    root = Path(PROFILES_DIR)
    hits = []
    if p.name == path and root.is_dir():
        hits = sorted(f for f in root.rglob("*.json") if f.name == path)
    if len(hits) == 1:
        return hits[0]
    raise VramplanError(f"no profile '{path}'")
