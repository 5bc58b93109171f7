"""``vramplan models``: the offline registry."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from vramplan.arch.lookup import registry


@click.command()
@click.argument("filter", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(filter: str, as_json: bool) -> None:
    """List registry models whose name, hub id or family contains FILTER (case-insensitive)."""
    key = filter.lower()
    rows = []
    for e in registry():
        if key and key not in f"{e.name} {e.hub_id} {e.family} {' '.join(e.aliases)}".lower():
            continue
        a = e.arch()
        rows.append(dict(name=e.name, hub_id=e.hub_id, family=e.family, model_type=a.model_type,
                         params=a.total_params, quantized_params=a.quantized_params,
                         layers=a.num_layers, hidden=a.hidden_size, vocab=a.vocab_size,
                         moe=a.is_moe, source=e.source))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"vramplan registry ({len(rows)} models)")
    for col, just in (("name", "left"), ("hub id", "left"), ("type", "left"), ("params", "right"),
                      ("in 4-bit linears", "right"), ("layers", "right"), ("hidden", "right"),
                      ("vocab", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["name"], r["hub_id"], r["model_type"] + (" (MoE)" if r["moe"] else ""),
                      f"{r['params'] / 1e9:.2f} B", f"{r['quantized_params'] / 1e9:.2f} B",
                      str(r["layers"]), str(r["hidden"]), f"{r['vocab']:,}")
    Console().print(table)
    if not rows:
        click.echo(f"no model matches '{filter}'", err=True)
