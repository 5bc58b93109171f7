"""``vramplan models``: the offline registry."""

from __future__ import annotations


import click

from vramplan.cli.common import emit_json

from vramplan.arch.lookup import registry


@click.command()
@click.argument("filter", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(filter: str, as_json: bool) -> None:
    """List registry models whose name, hub id or family contains FILTER (case-insensitive)."""
    from vramplan.report.catalog import matching, model_row, render_models

    entries = matching(registry(), filter, lambda e: f"{e.name} {e.hub_id} {e.family} {' '.join(e.aliases)}")
    rows = [model_row(e) for e in entries]
    if as_json:
        emit_json(rows)
    else:
        render_models(rows, filter)
