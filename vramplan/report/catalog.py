"""The listings of what vramplan knows offline: the GPU catalog and the model registry, filtered by a
word, as rows (for ``--json``) and as rich tables."""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

import click
from rich.console import Console
from rich.table import Table

from vramplan.breakdown import fmt_bytes
from vramplan.report.text import mib

T = TypeVar("T")


def matching(items: Iterable[T], filter: str, text: Callable[[T], str]) -> list[T]:
    """The items whose ``text`` contains ``filter`` (case-insensitive; empty: all)."""
    key = filter.lower().strip()
    return [x for x in items if not key or key in text(x).lower()]


def _table(title: str, columns: tuple[tuple[str, str], ...], no_wrap: bool = False) -> Table:
    t = Table(title=title)
    for col, just in columns:
        t.add_column(col, justify=just, no_wrap=no_wrap)  # type: ignore[arg-type]
    return t


def render_gpus(rows: list[Any], filter: str) -> None:
    """The GPU catalog table, its legend, or a line on stderr when nothing matched."""
    t = _table(f"vramplan GPU catalog ({len(rows)} cards)",
               (("name", "left"), ("reported", "right"), ("usable", "right"), ("kind", "left"),
                ("figure", "left")), no_wrap=True)
    for g in rows:
        t.add_row(g.name, mib(g.memory_bytes), fmt_bytes(g.usable_bytes), g.kind, g.figure)
    Console().print(t)
    if rows:
        click.echo("usable = reported − driver reserve − CUDA context (Apple: Metal working-set limit). --gpu "
                   "matches loosely ('rtx4090', 'NVIDIA GeForce RTX 4090'); `--json` lists aliases and sources.")
    else:
        click.echo(f"no GPU matches '{filter}'", err=True)


def model_row(e: Any) -> dict[str, Any]:
    """One registry entry as the ``vramplan models --json`` row."""
    a = e.arch()
    return dict(name=e.name, hub_id=e.hub_id, family=e.family, model_type=a.model_type,
                params=a.all_params, quantized_params=a.quantized_params,
                layers=a.num_layers, hidden=a.hidden_size, vocab=a.vocab_size,
                moe=a.is_moe, source=e.source)


def render_models(rows: list[dict[str, Any]], filter: str) -> None:
    """The registry table (rows of ``model_row``), or a line on stderr when nothing matched."""
    t = _table(f"vramplan registry ({len(rows)} models)",
               (("name", "left"), ("hub id", "left"), ("type", "left"), ("params", "right"),
                ("in 4-bit linears", "right"), ("layers", "right"), ("hidden", "right"), ("vocab", "right")))
    for r in rows:
        t.add_row(r["name"], r["hub_id"], r["model_type"] + (" (MoE)" if r["moe"] else ""),
                  f"{r['params'] / 1e9:.2f} B", f"{r['quantized_params'] / 1e9:.2f} B",
                  str(r["layers"]), str(r["hidden"]), f"{r['vocab']:,}")
    Console().print(t)
    if not rows:
        click.echo(f"no model matches '{filter}'", err=True)
