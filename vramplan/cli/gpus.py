"""``vramplan gpus``: the GPU catalog."""

from __future__ import annotations


import click

from vramplan.cli.common import emit_json


@click.command()
@click.argument("filter", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(filter: str, as_json: bool) -> None:
    """List catalog GPUs whose name, alias, vendor or kind contains FILTER (case-insensitive)."""
    from vramplan.gpus import catalog
    from vramplan.report.catalog import matching, render_gpus

    rows = matching(catalog(), filter, lambda g: f"{g.name} {' '.join(g.aliases)} {g.vendor} {g.kind}")
    if as_json:
        emit_json([g.to_dict() for g in rows])
    else:
        render_gpus(rows, filter)
