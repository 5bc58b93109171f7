"""Charts of memory budgets: matplotlib, headless (Agg), imported only when a chart is drawn.

This module only *formats*. Its inputs are dataclasses the library already computed (a ``Breakdown``;
a ``Sweep`` of totals and ``ValidationPoint`` rows from ``vramplan.sweep``); it adds no memory term of
its own. Bytes come in; GiB labels (IEC) go out.

Three charts:

- ``breakdown_chart``: one stacked bar per breakdown, one segment per component, coloured by its
  category, with the GPU's memory as a horizontal line;
- ``sweep_chart``: peak memory against sequence length, one curve per variant (GC on/off, ranks,
  recipes...), with the GPU limit marked and the last fitting point of each curve ringed;
- ``validation_chart``: predicted against measured, the y = x line and a ±5 % band.

``CATEGORY_COLORS`` is the single colour map: every chart, the notebooks and the README image take
their category colours from it.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot, so no global state and no
display are involved; ``save`` writes PNG or SVG, ``png_bytes`` renders for notebooks.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from vramplan.breakdown import CATEGORIES, Breakdown, Component, fmt_bytes
from vramplan.errors import VramplanError
from vramplan.sweep import Curve, Limit, Sweep, ValidationPoint

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GiB = 1024**3

#: The one colour map: category -> hex colour. Allocated categories first, then runtime items
#: (greys: memory the allocated peak does not show).
CATEGORY_COLORS: dict[str, str] = {
    "weights": "#4C72B0",      # blue: frozen base weights
    "quant_state": "#8C9FD9",  # pale blue: their quantization constants
    "adapter": "#2CA02C",      # green: what is trained
    "gradients": "#98DF8A",    # pale green: its gradients
    "optimizer": "#FF7F0E",    # orange: optimizer state
    "activations": "#D62728",  # red: saved for backward
    "logits": "#E377C2",       # pink: logits and their fp32 copies
    "temporary": "#8C564B",    # brown: transient buffers at the peak
    "allocator": "#B0B0B0",    # grey: caching-allocator reserve
    "context": "#6E6E6E",      # dark grey: CUDA context, outside the allocator
    "managed": "#D9D9D9",      # light grey: managed (paged) memory
    "host": "#9467BD",         # purple: host memory (offloaded activations), never on the GPU bars
}
assert set(CATEGORY_COLORS) == set(CATEGORIES), "every category needs exactly one colour"

#: Colours for curves that are not categories (sweep variants, validation groups).
SERIES_COLORS: tuple[str, ...] = ("#1F77B4", "#D62728", "#2CA02C", "#9467BD", "#FF7F0E", "#17BECF",
                                  "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22")
LIMIT_COLOR = "#222222"
#: A sweep with a limit shows memory up to this multiple of the limit; higher points run off the top.
CLIP_FACTOR = 2.0
FORMATS = ("png", "svg")


class ChartError(VramplanError):
    """A chart that cannot be drawn or written (bad path, bad extension, empty data)."""


# ------------------------------------------------------------------------------------ helpers
def _gib(n: float) -> float:
    return n / GiB


def _new_figure(width: float, height: float) -> "Figure":
    """A Figure on the Agg canvas, independent of pyplot and of any display."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is a core dependency
        raise ChartError("charts need matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _shades(hex_color: str, n: int) -> list[tuple[float, float, float]]:
    """``n`` shades of one colour, from the colour itself towards white, to tell components of one
    category apart while keeping the category's hue."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(hex_color)
    if n == 1:
        return [(r, g, b)]
    out = []
    for i in range(n):
        t = 0.45 * i / (n - 1)  # at most 45 % of the way to white
        out.append((r + (1 - r) * t, g + (1 - g) * t, b + (1 - b) * t))
    return out


def _draw_limit(ax: "Axes", limit: Limit | None) -> tuple[list[object], list[str]]:
    """The limit as a dashed line; returns its legend entry (the label lives in the legend, where it
    cannot collide with bars, totals or curves)."""
    if limit is None:
        return [], []
    y = _gib(limit.bytes)
    line = ax.axhline(y, color=LIMIT_COLOR, linestyle="--", linewidth=1.6, zorder=5)
    text = f"{limit.label}: {fmt_bytes(limit.bytes)}" + (f"\n{limit.detail}" if limit.detail else "")
    return [line], [text]


def _ordered_components(b: Breakdown) -> list[Component]:
    """Allocated components in category order, then the runtime items; zero-byte ones dropped."""
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    comps = [c for c in b.components if c.bytes > 0]
    return sorted(comps, key=lambda c: (rank[c.category], b.components.index(c)))


# ------------------------------------------------------------------------------------ breakdown
def breakdown_chart(breakdowns: "Breakdown | Sequence[tuple[str, Breakdown]]", *, limit: Limit | None = None,
                    title: str = "") -> "Figure":
    """Stacked bars of one or more breakdowns, a segment per component, coloured by category.

    ``breakdowns`` is a ``Breakdown`` or a sequence of ``(label, Breakdown)`` (e.g. analytic vs
    trace, GC on vs off). Segments big enough to read carry their size in GiB; the legend names
    every component with its size (for a single bar) or its category (for several). Markers at the
    right of each bar show the allocated peak, reserved peak and process total.
    """
    bars = [("", breakdowns)] if isinstance(breakdowns, Breakdown) else list(breakdowns)
    if not bars:
        raise ChartError("nothing to plot: no breakdowns given")
    single = len(bars) == 1
    fig = _new_figure(10.5 if single else max(9.0, 2.4 * len(bars) + 5), 6.4)
    ax = fig.add_subplot()
    names, order, colors = _component_colors(bars, single)
    top = max(b.total_bytes for _, b in bars)
    ymax = _gib(max(top, limit.bytes if limit else 0)) * 1.12 or 1.0
    legend_handles: dict[str, object] = {}
    for i, (_, b) in enumerate(bars):
        _draw_bar(ax, i, b, order, names, colors, ymax, legend_handles, single)
    limit_handles, limit_labels = _draw_limit(ax, limit)
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=10)
    ax.set_xlim(-0.7, len(bars) - 0.3 + (0.55 if single else 0.0))
    ax.set_ylim(0, ymax)
    ax.set_ylabel("GiB", fontsize=11)
    ax.grid(axis="y", color="0.9", zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=12, loc="left")

    if single:
        sizes = {c.name: c.bytes for c in bars[0][1].components}
        labels = [f"{n}  {fmt_bytes(sizes[n])}" for n in reversed(order)]
        handles = [legend_handles[n] for n in reversed(order)]
    else:
        cats = [c for c in reversed(CATEGORIES) if c in legend_handles]
        labels, handles = cats, [legend_handles[c] for c in cats]
    handles, labels = limit_handles + handles, limit_labels + labels
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False,
              title="component" if single else "category", title_fontsize=9, alignment="left")
    return fig


_BAR_WIDTH = 0.55


def _component_colors(bars: list[tuple[str, Breakdown]], single: bool
                      ) -> tuple[dict[str, str], list[str], dict[str, tuple[float, float, float]]]:
    """(component -> category, component order, component -> colour), shared by all bars so one name has
    one colour in every bar."""
    names: dict[str, str] = {}
    for _, b in bars:
        for c in _ordered_components(b):
            names.setdefault(c.name, c.category)
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    order = sorted(names, key=lambda n: (rank[names[n]], list(names).index(n)))
    # One bar: shades of the category's colour tell its components apart (the legend names each).
    # Several bars: exactly the category's colour, so a category looks the same in every bar even when
    # the engines name their components differently (the legend names categories).
    colors: dict[str, tuple[float, float, float]] = {}
    for cat in CATEGORIES:
        members = [n for n in order if names[n] == cat]
        colors.update(zip(members, _shades(CATEGORY_COLORS[cat], len(members) if single else 1) * len(members)))
    return names, order, colors


def _draw_bar(ax: "Axes", i: int, b: Breakdown, order: list[str], names: dict[str, str],
              colors: dict[str, tuple[float, float, float]], ymax: float, legend_handles: dict[str, object],
              single: bool) -> None:
    """Bar ``i``: its stacked segments (first handle of each legend key kept), total ticks and labels."""
    bottom = 0.0
    sizes = {c.name: c.bytes for c in b.components}
    for name in order:
        if sizes.get(name, 0) <= 0:
            continue
        h = _gib(sizes[name])
        hatch = "//" if names[name] == "managed" else None
        patch = ax.bar(i, h, _BAR_WIDTH, bottom=bottom, color=colors[name], edgecolor="white", linewidth=0.8,
                       hatch=hatch, zorder=3)
        legend_handles.setdefault(name if single else names[name], patch)
        if h >= ymax * 0.035:
            ax.text(i, bottom + h / 2, f"{h:.2f}", ha="center", va="center", fontsize=8.5, zorder=4,
                    color="white" if names[name] not in ("managed", "allocator", "gradients") else "black")
        bottom += h
    # Totals: ticks at the right edge of the bar (named beside it when there is one bar).
    right = i + _BAR_WIDTH / 2
    for value in (b.allocated_peak_bytes, b.reserved_peak_bytes, b.total_bytes):
        y = _gib(value)
        ax.plot([right, right + 0.06], [y, y], color="black", linewidth=1.2, zorder=4)
    if not single and b.allocated_peak_bytes != b.total_bytes:
        ax.text(right + 0.08, _gib(b.allocated_peak_bytes), f"allocated\n{fmt_bytes(b.allocated_peak_bytes)}",
                fontsize=7.5, va="center", ha="left", color="0.25")
    ax.text(i, _gib(b.total_bytes) + ymax * 0.01, fmt_bytes(b.total_bytes), ha="center", va="bottom",
            fontsize=10, fontweight="bold", zorder=4)
    if single:
        _name_totals(ax, right, b, ymax)


def _name_totals(ax: "Axes", right: float, b: Breakdown, ymax: float) -> None:
    """Name the three totals beside the one bar (whose right edge is at ``right``), never overlapping."""
    marks = [(b.allocated_peak_bytes, "allocated peak"), (b.reserved_peak_bytes, "reserved peak"),
             (b.total_bytes, "process total")]
    last_y = -1e9
    for value, text in marks:
        y = _gib(value)
        y_text = max(y, last_y + ymax * 0.035)
        ax.annotate(f"{text} {fmt_bytes(value)}", xy=(right + 0.06, y), xytext=(right + 0.1, y_text), fontsize=8.5,
                    va="center", arrowprops=dict(arrowstyle="-", color="0.4", linewidth=0.6))
        last_y = y_text


# ------------------------------------------------------------------------------------ sweep
def _pow2_label(x: float) -> str:
    if x >= 1024 and x % 1024 == 0:
        return f"{int(x) // 1024}K"
    return f"{int(x)}"


def sweep_chart(sweep: Sweep) -> "Figure":
    """Peak memory (GiB) against x, one line per curve (with a band up to its upper bound, if any), the
    limit, and each curve's last fitting point (the largest x whose judged value is under the limit)
    ringed, with the verdict in the legend ("fits to 8,192" / "does not fit")."""
    curves = [c for c in sweep.curves if c.x]
    if not curves:
        raise ChartError("nothing to plot: the sweep has no points")
    fig = _new_figure(11.0, 6.0)
    ax = fig.add_subplot()
    xs_all = sorted({x for c in curves for x in c.x})
    bands = False
    for k, c in enumerate(curves):
        bands = _draw_curve(ax, c, SERIES_COLORS[k % len(SERIES_COLORS)], sweep) or bands
    top = max(max(c.judged) for c in curves)
    ymax = _gib(max(top, sweep.limit.bytes if sweep.limit else 0)) * 1.1
    limit_handles, limit_labels = [], []
    if sweep.limit is not None:
        # Keep the limit readable: show up to CLIP_FACTOR × the limit and name what runs off the top.
        ymax = min(ymax, _gib(sweep.limit.bytes) * CLIP_FACTOR)
        limit_handles, limit_labels = _draw_limit(ax, sweep.limit)
        ax.axhspan(_gib(sweep.limit.bytes), ymax * 10, color="#F4CCCC", alpha=0.35, zorder=0)
        _mark_off_top(ax, curves, ymax, xs_all[-1])
    ax.set_ylim(0, ymax)
    if sweep.log2_x and min(xs_all) > 0:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [_pow2_label(x) for x in xs_all])
        ax.minorticks_off()
    ax.set_xlabel(sweep.xlabel, fontsize=11)
    ax.set_ylabel(f"{sweep.ylabel} (GiB)", fontsize=11)
    ax.grid(color="0.9", zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    # Outside the axes, on the right: curves and bands are never hidden behind it.
    legend_kw = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    handles, labels = ax.get_legend_handles_labels()
    if bands:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="0.5", alpha=0.3))
        labels.append("point estimate to\nupper bound\n(fit judged on the bound)")
    ax.legend(limit_handles + handles, limit_labels + labels, **legend_kw)
    if sweep.title:
        ax.set_title(sweep.title, fontsize=12, loc="left")
    return fig


def _draw_curve(ax: "Axes", c: Curve, color: str, sweep: Sweep) -> bool:
    """One curve, its verdict in its legend label and its last fitting point ringed; its upper bound as a
    band (returns whether it drew one)."""
    pts = sorted(zip(c.x, c.y, c.judged))
    label = c.label
    if sweep.limit is not None and sweep.judge_fit:
        # The verdict goes in the legend (no labels to collide on the plot); the point is ringed.
        fitting = [p for p in pts if p[2] <= sweep.limit.bytes]
        if fitting:
            x, y, _ = fitting[-1]
            ax.scatter([x], [_gib(y)], s=110, facecolors="none", edgecolors=color, linewidths=2, zorder=4)
            label = f"{c.label}: fits to {x:,}"
        else:
            label = f"{c.label}: does not fit"
    ax.plot([p[0] for p in pts], [_gib(p[1]) for p in pts], marker="o", markersize=4, linewidth=2,
            color=color, label=label, zorder=3)
    if c.upper is None:
        return False
    ax.fill_between([p[0] for p in pts], [_gib(p[1]) for p in pts], [_gib(p[2]) for p in pts],
                    color=color, alpha=0.18, linewidth=0, zorder=2)
    return True


def _mark_off_top(ax: "Axes", curves: list[Curve], ymax: float, x_last: int) -> None:
    """Name, at the top edge, the first point of each curve that runs above ``ymax``."""
    for k, c in enumerate(curves):
        off = [(x, y) for x, y in sorted(zip(c.x, c.y)) if _gib(y) > ymax]
        if off:
            x, y = off[0]
            ax.annotate(f"↑ {fmt_bytes(y)} at {x:,}", xy=(x, ymax), xytext=(0, -4 - 13 * k),
                        textcoords="offset points", ha="right" if x == x_last else "center",
                        va="top", fontsize=8.5, color=SERIES_COLORS[k % len(SERIES_COLORS)], zorder=6,
                        bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85))


# ------------------------------------------------------------------------------------ validation
def validation_chart(points: Iterable[ValidationPoint], *, band: float = 0.05, title: str = "",
                     max_labels: int = 8) -> "Figure":
    """Left: predicted against measured in GiB (log-log), the y = x line and a ±``band`` band.
    Right: the relative error of each run against measured, the same band, and the ``max_labels``
    worst runs outside it named."""
    pts = [p for p in points if p.measured_bytes > 0 and p.predicted_bytes > 0]
    if not pts:
        raise ChartError("nothing to plot: no predicted/measured pairs")
    fig = _new_figure(13.0, 6.2)
    ax, ax_err = fig.subplots(1, 2, width_ratios=[1.0, 1.15])
    lo = min(min(p.predicted_bytes, p.measured_bytes) for p in pts) / GiB / 1.25
    hi = max(max(p.predicted_bytes, p.measured_bytes) for p in pts) / GiB * 1.25
    line = [lo, hi]
    ax.fill_between(line, [v * (1 - band) for v in line], [v * (1 + band) for v in line], color="#2CA02C",
                    alpha=0.18, zorder=1, label=f"±{band:.0%}")
    ax.plot(line, line, color=LIMIT_COLOR, linewidth=1.2, zorder=2, label="y = x")
    ax_err.axhspan(-band * 100, band * 100, color="#2CA02C", alpha=0.18, zorder=1)
    ax_err.axhline(0, color=LIMIT_COLOR, linewidth=1.2, zorder=2)
    groups = list(dict.fromkeys(p.group for p in pts))
    for k, g in enumerate(groups):
        gp = [p for p in pts if p.group == g]
        inside = sum(abs(p.error) <= band for p in gp)
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        style = dict(s=38, color=color, edgecolors="white", linewidths=0.6, zorder=3)
        ax.scatter([_gib(p.measured_bytes) for p in gp], [_gib(p.predicted_bytes) for p in gp],
                   label=f"{g or 'runs'} ({inside}/{len(gp)} within ±{band:.0%})", **style)
        ax_err.scatter([_gib(p.measured_bytes) for p in gp], [100 * p.error for p in gp], **style)
    worst = sorted((p for p in pts if abs(p.error) > band), key=lambda p: -abs(p.error))[:max_labels]
    for p in worst:
        ax_err.annotate(p.label, xy=(_gib(p.measured_bytes), 100 * p.error), xytext=(5, 0),
                        textcoords="offset points", fontsize=7, color="0.25", va="center", zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _gib_ticks(ax, lo, hi, y=True)
    ax.set_xlabel("measured peak (GiB)", fontsize=11)
    ax.set_ylabel("predicted peak (GiB)", fontsize=11)
    ax.grid(color="0.9", zorder=0)
    ax.legend(loc="upper left", fontsize=8.5, frameon=False)
    ax_err.set_xscale("log")
    ax_err.set_xlim(lo, hi)
    _gib_ticks(ax_err, lo, hi, y=False)
    span = max(2 * band * 100, max(abs(100 * p.error) for p in pts) * 1.15)
    ax_err.set_ylim(-span, span)
    ax_err.yaxis.set_major_formatter(lambda v, _pos: f"{v:+.0f} %" if v else "0 %")
    ax_err.set_xlabel("measured peak (GiB)", fontsize=11)
    ax_err.set_ylabel("(predicted − measured) / measured", fontsize=11)
    ax_err.grid(color="0.9", zorder=0)
    for a in (ax, ax_err):
        a.spines[["top", "right"]].set_visible(False)
    within = sum(abs(p.error) <= band for p in pts)
    fig.suptitle(title or f"predicted vs measured: {within}/{len(pts)} runs within ±{band:.0%}", fontsize=12,
                 x=0.01, ha="left")
    return fig


def _gib_ticks(ax: "Axes", lo: float, hi: float, y: bool = True) -> None:
    """Plain GiB numbers (1, 2, 5, 10, 20...) on log axes instead of powers of ten."""
    ticks = []
    mantissas = (1, 2, 5) if hi / lo >= 8 else (1, 1.5, 2, 3, 4, 5, 6, 8)
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in mantissas:
            v = m * 10.0**e
            if lo <= v <= hi:
                ticks.append(v)
    labels = [f"{v:g}" for v in ticks]
    ax.set_xticks(ticks, labels)
    if y:
        ax.set_yticks(ticks, labels)
    ax.minorticks_off()


# ------------------------------------------------------------------------------------ output
def chart_format(path: "str | os.PathLike[str]") -> str:
    """'png' or 'svg' from the file name; anything else is a ChartError."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ChartError(f"cannot write '{path}': chart files must end in .png or .svg, not "
                         f"'{'.' + suffix if suffix else '(no extension)'}'")
    return suffix


def check_writable(path: "str | os.PathLike[str]") -> Path:
    """Fail early, before any computing, if ``path`` cannot be written as a chart."""
    p = Path(path)
    chart_format(p)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ChartError(f"cannot write '{p}': it is a directory")
    if not parent.is_dir():
        raise ChartError(f"cannot write '{p}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ChartError(f"cannot write '{p}': permission denied")
    return p


def save(fig: "Figure", path: "str | os.PathLike[str]") -> Path:
    """Write ``fig`` as PNG or SVG (by extension) and return the path."""
    p = check_writable(path)
    fmt = chart_format(p)
    from matplotlib import rc_context

    try:
        # SVG keeps its text as text (searchable, smaller) rather than glyph paths.
        with rc_context({"svg.fonttype": "none"}):
            fig.savefig(p, format=fmt, dpi=110 if fmt == "png" else None, facecolor="white")
    except OSError as e:
        raise ChartError(f"cannot write '{p}': {e.strerror or e}") from None
    return p


def png_bytes(fig: "Figure") -> bytes:
    """The figure as PNG bytes (for ``IPython.display.Image`` in notebooks)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    return buf.getvalue()
