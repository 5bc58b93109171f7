"""The listings of what vramplan knows offline: the GPU catalog and the model registry, filtered by a
word, as rows (for ``--json``) and as rich tables."""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

import click
from rich.console import Console
from rich.table import Table

from vramplan.breakdown import fmt_bytes
from vramplan.errors import VramplanError
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
                moe=a.has_experts, source=e.source)


def by_family(entries: list[Any], family: str, everything: Iterable[Any]) -> list[Any]:
    """The entries of ``family``: a registry family name or a config model_type (case-insensitive);
    an unknown one is a ``VramplanError`` naming the known ones."""
    key = family.strip().lower()

    def names(e: Any) -> set[str]:
        return {e.family.lower(), e.arch().model_type.lower(), str(e.config.get("model_type", "")).lower()}

    known = sorted(set().union(*(names(e) for e in everything)) - {""})
    if key not in known:
        raise VramplanError(f"unknown family '{family}' (known: {', '.join(known)})")
    return [e for e in entries if key in names(e)]


def fitting(entries: list[Any], rows: list[dict[str, Any]], gpu: Any, scenario: Any, calibration: Any,
            bound: str) -> list[dict[str, Any]]:
    """The rows whose model fits ``gpu`` under ``scenario`` (``vramplan.plan.Planner.check``), each with
    ``need_bytes``, ``budget_bytes`` and ``headroom_bytes`` added; largest model first. The synthetic test
    entries are left out, and so is a model the analytic engine refuses (a note on stderr names it)."""
    from vramplan.plan import Planner

    out = []
    for e, row in zip(entries, rows):
        if e.source.startswith("synthetic"):  # the test models are no answer to "what fits my card"
            continue
        try:
            check = Planner(e.arch(), gpu, calibration=calibration, bound=bound).check(scenario)
        except VramplanError as err:  # a model the analytic engine refuses (a layer kind it does not price yet)
            click.echo(f"note: {e.name} left out: {err}", err=True)
            continue
        if check.fits:
            out.append({**row, "need_bytes": check.need_bytes, "budget_bytes": check.budget_bytes,
                        "headroom_bytes": check.headroom_bytes, "bound": check.bound})
    return sorted(out, key=lambda r: -r["params"])


def _columns_that_fit(cols: tuple[tuple[str, str], ...], table: list[list[str]], width: int) -> list[int]:
    """The indices of the columns to show in ``width`` characters: all of them when their widest cells
    fit (rich's borders: 3 characters per column + 1), else without the hub id, then without the
    trailing columns, so that a model's name (what ``--model`` takes) is never cut short."""
    widest = [max([max(len(w) for w in cols[i][0].split())] + [len(row[i]) for row in table])
              for i in range(len(cols))]
    keep = list(range(len(cols)))
    order = [1] + list(range(len(cols) - 1, 2, -1))  # hub id first, then from the right; name and type stay
    while sum(widest[i] + 3 for i in keep) + 1 > width and order:
        keep.remove(order.pop(0))
    return keep


def render_models(rows: list[dict[str, Any]], filter: str, gpu: str | None = None, scenario: Any = None) -> None:
    """The registry table (rows of ``model_row``), or a line on stderr when nothing matched; with
    ``gpu`` (``vramplan models --fits``) the rows that fit, with need and headroom."""
    title = f"vramplan registry ({len(rows)} models)"
    cols: tuple[tuple[str, str], ...] = (("name", "left"), ("hub id", "left"), ("type", "left"), ("params", "right"),
                                         ("in 4-bit linears", "right"), ("layers", "right"), ("hidden", "right"),
                                         ("vocab", "right"))
    if gpu is not None:
        title = (f"fits {gpu} ({len(rows)} models): {scenario.quant.value} r{scenario.rank} "
                 f"{scenario.batch}×{scenario.seq}")
        cols = cols[:5] + (("needs", "right"), ("headroom", "right"))
    table = []
    for r in rows:
        cells = [r["name"], r["hub_id"], r["model_type"] + (" (MoE)" if r["moe"] else ""),
                 f"{r['params'] / 1e9:.2f} B", f"{r['quantized_params'] / 1e9:.2f} B"]
        if gpu is not None:
            cells += [fmt_bytes(r["need_bytes"]), fmt_bytes(r["headroom_bytes"])]
        else:
            cells += [str(r["layers"]), str(r["hidden"]), f"{r['vocab']:,}"]
        table.append(cells)
    console = Console()
    keep = _columns_that_fit(cols, table, console.width)
    t = Table(title=title)
    for i in keep:
        # the name never wraps nor is cut; a hub id folds onto a second line rather than losing its end
        t.add_column(cols[i][0], justify=cols[i][1], no_wrap=i == 0,  # type: ignore[arg-type]
                     overflow="fold" if i == 1 else "ellipsis")
    for cells in table:
        t.add_row(*(cells[i] for i in keep))
    console.print(t)
    if len(keep) < len(cols):
        click.echo(f"(narrow terminal: {', '.join(cols[i][0] for i in range(len(cols)) if i not in keep)} left out; "
                   "`--json` has every field)", err=True)
    if not rows:
        what = f"fits {gpu}" if gpu is not None else f"matches '{filter}'"
        click.echo(f"no model {what}", err=True)
