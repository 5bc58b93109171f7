"""Charts (issue 8): every plotting path writes a real PNG/SVG headless, colours come from the one map,
the drawn numbers are the breakdown's numbers, and bad input to `vramplan plot` is one line, exit 2."""

from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vramplan.breakdown import Breakdown, Component
from vramplan.report import chart
from vramplan.sweep import Curve, Limit, Sweep, SweepError, ValidationPoint
from clihelp import one_line_exit2 as _one_line_exit2

GiB = 1024**3
MiB = 1024**2


def _breakdown(activations: int = int(1.3 * GiB)) -> Breakdown:
    return Breakdown((
        Component("weights/nf4", "weights", int(6.2 * GiB)),
        Component("weights/embed_lm_head", "weights", int(2.9 * GiB)),
        Component("quant_state/absmax", "quant_state", 200 * MiB),
        Component("adapter/lora", "adapter", 245 * MiB),
        Component("gradients/lora", "gradients", 245 * MiB),
        Component("optimizer/adamw", "optimizer", 490 * MiB),
        Component("activations/layers", "activations", activations),
        Component("logits/fp32_upcast", "logits", int(1.2 * GiB)),
        Component("temporary/dequant", "temporary", 300 * MiB),
        Component("runtime/allocator", "allocator", 800 * MiB),
        Component("runtime/cuda_context", "context", 512 * MiB),
    ))


def assert_png(path: Path, min_side: int = 400) -> tuple[int, int]:
    """A valid PNG (signature + IHDR) of reasonable pixel size and byte size."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert min_side <= width <= 4000 and min_side <= height <= 4000, (width, height)
    assert 10_000 < len(data) < 2_000_000, len(data)
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return width, height


def assert_svg(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), root.tag
    assert path.stat().st_size > 5_000
    return root


# ------------------------------------------------------------------------------------ library
def test_one_colour_per_category_everywhere():
    from vramplan.breakdown import CATEGORIES

    assert list(chart.CATEGORY_COLORS) == list(CATEGORIES)
    assert len(set(chart.CATEGORY_COLORS.values())) == len(CATEGORIES), "two categories share a colour"


def test_breakdown_chart_draws_the_breakdown(tmp_path):
    from matplotlib.colors import to_hex

    b = _breakdown()
    fig = chart.breakdown_chart(b, limit=Limit(24 * GiB, "24 GiB card"), title="test")
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_width() == pytest.approx(0.55)]
    # one segment per non-zero component, and the stack reaches the process total
    assert len(bars) == len(b.components)
    assert sum(p.get_height() for p in bars) == pytest.approx(b.total_bytes / GiB)
    assert max(p.get_y() + p.get_height() for p in bars) == pytest.approx(b.total_bytes / GiB)
    # a category with one component gets exactly the map's colour
    by_height = {round(p.get_height(), 6): to_hex(p.get_facecolor()) for p in bars}
    assert by_height[round(b.get("optimizer/adamw") / GiB, 6)] == chart.CATEGORY_COLORS["optimizer"].lower()
    assert by_height[round(b.get("activations/layers") / GiB, 6)] == chart.CATEGORY_COLORS["activations"].lower()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "24 GiB card: 24.00 GiB"  # the limit first, in IEC units
    assert [ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--"] == [24.0]
    assert any(t.startswith("optimizer/adamw") and "490.00 MiB" in t for t in legend)
    out = chart.save(fig, tmp_path / "b.png")
    assert_png(out)


def test_breakdown_chart_several_bars_and_svg(tmp_path):
    a, b = _breakdown(), _breakdown(activations=3 * GiB)
    fig = chart.breakdown_chart([("GC on", a), ("GC off", b)], limit=Limit(16 * GiB, "16 GiB"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["GC on", "GC off"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "activations" in legend and "weights" in legend  # by category when several bars
    # several bars: every segment of a category has exactly the category's colour
    from matplotlib.colors import to_hex

    weights = [to_hex(p.get_facecolor()) for p in ax.patches if p.get_width() == pytest.approx(0.55)
               and abs(p.get_height() - 2.9) < 1e-6]
    assert weights == [chart.CATEGORY_COLORS["weights"].lower()] * 2
    root = assert_svg(chart.save(fig, tmp_path / "b.svg"))
    assert "GC off" in ET.tostring(root, encoding="unicode")


def test_sweep_chart_marks_the_last_fitting_seq(tmp_path):
    xs = (1024, 2048, 4096, 8192)
    on = Curve("GC on", xs, tuple(int((10 + x / 1024) * GiB) for x in xs))      # 11, 12, 14, 18
    off = Curve("GC off", xs, tuple(int((10 + 6 * x / 1024) * GiB) for x in xs))  # 16, 22, 34, 58
    sweep = Sweep((on, off), limit=Limit(20 * GiB, "card"), title="sweep")
    fig = chart.sweep_chart(sweep)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["card: 20.00 GiB", "GC on: fits to 8,192", "GC off: fits to 1,024"]
    assert len(fig.axes[0].collections) == 2  # one ring per curve
    # 58 GiB at 8,192 is beyond 2 × the limit: it runs off the top and is named there
    assert fig.axes[0].get_ylim()[1] == pytest.approx(40.0)
    assert [t.get_text() for t in fig.axes[0].texts] == ["↑ 58.00 GiB at 8,192"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1K", "2K", "4K", "8K"]
    assert_png(chart.save(fig, tmp_path / "s.png"))
    assert_svg(chart.save(fig, tmp_path / "s.svg"))


def test_validation_chart_band_and_counts(tmp_path):
    pts = [ValidationPoint("a", int(10.2 * GiB), 10 * GiB, "allocated"),   # +2 %
           ValidationPoint("b", int(18.0 * GiB), 20 * GiB, "allocated"),   # -10 %
           ValidationPoint("c", int(40.0 * GiB), 40 * GiB, "reserved")]    # 0 %
    fig = chart.validation_chart(pts)
    assert "2/3 runs within ±5%" in fig.get_suptitle()
    err_ax = fig.axes[1]
    assert [t.get_text() for t in err_ax.texts] == ["b"]  # only the run outside the band is named
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "allocated (1/2 within ±5%)" in legend and "reserved (1/1 within ±5%)" in legend
    assert_png(chart.save(fig, tmp_path / "v.png"))


def test_empty_inputs_are_chart_errors():
    with pytest.raises(chart.ChartError):
        chart.breakdown_chart([])
    with pytest.raises(chart.ChartError):
        chart.sweep_chart(Sweep(()))
    with pytest.raises(chart.ChartError):
        chart.validation_chart([])
    with pytest.raises(SweepError):
        Curve("x", (1, 2), (3,))


@pytest.mark.parametrize("name", ["b.pdf", "b", "b.png.txt", "b.jpeg"])
def test_bad_extension(tmp_path, name):
    with pytest.raises(chart.ChartError, match="must end in .png or .svg"):
        chart.check_writable(tmp_path / name)


def test_unwritable_paths(tmp_path):
    with pytest.raises(chart.ChartError, match="does not exist"):
        chart.check_writable(tmp_path / "missing" / "b.png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(chart.ChartError, match="directory"):
        chart.check_writable(tmp_path / "d.png")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(chart.ChartError, match="permission"):
            chart.check_writable(ro / "b.png")


def test_lazy_matplotlib_no_pyplot_no_display(tmp_path):
    """Importing the chart module loads no matplotlib; drawing loads no pyplot and needs no display or
    MPLBACKEND (figures live on the Agg canvas)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import vramplan.report.chart as chart\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module import'\n"
        "from vramplan.breakdown import Breakdown, Component\n"
        "b = Breakdown((Component('weights/nf4', 'weights', 3 << 30),))\n"
        f"chart.save(chart.breakdown_chart(b), {str(tmp_path / 'x.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert_png(tmp_path / "x.png")


def test_sweep_computes_without_a_renderer():
    """``vramplan.sweep`` computes what the charts draw and formats nothing: it loads neither matplotlib nor
    rich, and ``vramplan.report`` runs no engine of its own."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from vramplan import Scenario, resolve\n"
            "from vramplan.sweep import parse_vary, seq_sweep\n"
            "seq_sweep(parse_vary('gc', resolve('Qwen3-8B'), Scenario()), (1024,))\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'rich')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = Path(chart.__file__).parent
    for f in report.glob("*.py"):
        assert "vramplan.analytic" not in f.read_text() and "import estimate" not in f.read_text(), f.name


# ------------------------------------------------------------------------------------ CLI


def test_cli_unknown_chart_kind(cli_run, tmp_path):
    line = _one_line_exit2(cli_run, "plot", "pie", "-o", str(tmp_path / "x.png"))
    assert "pie" in line


@pytest.mark.parametrize("kind", ["breakdown", "seq-sweep", "validation"])
def test_cli_bad_extension_and_unwritable(cli_run, tmp_path, kind):
    model = [] if kind == "validation" else ["-m", "Qwen3-14B"]
    line = _one_line_exit2(cli_run, "plot", kind, *model, "-o", str(tmp_path / "x.jpg"))
    assert ".png or .svg" in line
    line = _one_line_exit2(cli_run, "plot", kind, *model, "-o", str(tmp_path / "nodir" / "x.png"))
    assert "does not exist" in line
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_bad_sweep_arguments(cli_run, tmp_path):
    out = str(tmp_path / "s.png")
    assert "--seqs" in _one_line_exit2(cli_run, "plot", "seq-sweep", "-m", "Qwen3-14B", "--seqs", "1k,2k", "-o", out)
    assert "cannot vary" in _one_line_exit2(cli_run, "plot", "seq-sweep", "-m", "Qwen3-14B", "--vary", "colour=1",
                                            "-o", out)
    assert "unknown model" in _one_line_exit2(cli_run, "plot", "seq-sweep", "-m", "Qwen3-14B",
                                              "--vary", "model=Qwen3-14B,NoSuchModel", "-o", out)


def test_cli_unknown_gpu_and_method(cli_run, tmp_path):
    out = str(tmp_path / "b.png")
    assert "unknown GPU" in _one_line_exit2(cli_run, "plot", "breakdown", "-m", "Qwen3-14B", "--gpu", "rtx9999",
                                            "-o", out)
    assert "unknown method" in _one_line_exit2(cli_run, "plot", "breakdown", "-m", "Qwen3-14B", "--method",
                                               "guess", "-o", out)


def test_sweep_fit_is_judged_on_the_upper_bound():
    xs = (1024, 2048, 4096)
    y = tuple(int(g * GiB) for g in (10, 14, 18))
    up = tuple(int(g * GiB) for g in (11, 15.5, 21))  # 4096 fits on the point (18) but not the bound (21)
    fig = chart.sweep_chart(Sweep((Curve("GC on", xs, y, up),), limit=Limit(20 * GiB, "card")))
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[1] == "GC on: fits to 2,048" and "upper bound" in legend[-1]
    no_fit = Sweep((Curve("big", xs, tuple(30 * GiB for _ in xs)),), limit=Limit(20 * GiB, "card"))
    assert chart.sweep_chart(no_fit).axes[0].get_legend().get_texts()[1].get_text() == "big: does not fit"
    with pytest.raises(SweepError):
        Curve("bad", xs, y, up[:2])


# ------------------------------------------------------------------------------------ CLI, real engines
def test_cli_breakdown_png_matches_the_estimate(cli_run, tmp_path):
    import vramplan

    out = tmp_path / "qwen.png"
    code, stdout, err = cli_run("plot", "breakdown", "-m", "Qwen3-14B", "-r", "8", "-s", "2048", "--gpu", "rtx4090",
                                "-o", str(out))
    assert code == 0, err
    assert stdout.startswith(f"wrote {out} (breakdown chart")
    assert_png(out)
    # the figure the command draws is the library's breakdown: rebuild it and compare the stack height
    from vramplan.sweep import gpu_limit

    b = vramplan.estimate("Qwen3-14B", rank=8, seq=2048)
    fig = chart.breakdown_chart(b, limit=gpu_limit("rtx4090")[0])
    tops = [p.get_y() + p.get_height() for p in fig.axes[0].patches if p.get_width() == pytest.approx(0.55)]
    assert max(tops) == pytest.approx(b.total_bytes / GiB)


def test_cli_seq_sweep_svg(cli_run, tmp_path):
    out = tmp_path / "ranks.svg"
    code, _, err = cli_run("plot", "seq-sweep", "-m", "Qwen3-8B", "--vary", "rank=8,64", "--seqs", "1024,4096",
                           "--memory", "24GiB", "--title", "ranks", "-o", str(out))
    assert code == 0, err
    text = ET.tostring(assert_svg(out), encoding="unicode")
    assert "r=64" in text and "24GiB card" in text and "ranks" in text


def test_cli_seq_sweep_fit_agrees_with_the_planner(tmp_path):
    """The ring on a sweep is the planner's verdict at the drawn points (same total, same bound, same card)."""
    from vramplan import Scenario, resolve
    from vramplan.gpus import find_gpu
    from vramplan.plan import Planner
    from vramplan.sweep import gpu_limit, parse_vary, seq_sweep

    arch, card = resolve("Qwen3-8B"), find_gpu("rtx4090")
    seqs = (512, 1024, 2048, 4096, 8192)
    sweep = seq_sweep(parse_vary("gc", arch, Scenario()), seqs, limit=gpu_limit("rtx4090")[0], device=card.name)
    planner = Planner(arch, card)
    legend = [t.get_text() for t in chart.sweep_chart(sweep).axes[0].get_legend().get_texts()]
    for label, gc in (("GC on", True), ("GC off", False)):
        fitting = [s for s in seqs if planner.fits(Scenario(seq=s, grad_checkpointing=gc))]
        want = f"{label}: fits to {max(fitting):,}" if fitting else f"{label}: does not fit"
        assert want in legend, (want, legend)


def test_cli_validation_png(cli_run, tmp_path):
    out = tmp_path / "v.png"
    code, _, err = cli_run("plot", "validation", "-o", str(out))
    assert code == 0, err
    assert_png(out)


@pytest.mark.slow
@pytest.mark.torch
def test_cli_breakdown_analytic_and_trace(cli_run, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    out = tmp_path / "engines.png"
    code, _, err = cli_run("plot", "breakdown", "-m", "vramplan-debug", "-s", "128", "--method", "analytic,trace",
                           "-o", str(out))
    assert code == 0, err
    assert_png(out)


def test_sweep_of_allocated_peak_gets_no_fit_verdict():
    from vramplan import Scenario, resolve
    from vramplan.sweep import gpu_limit, parse_vary, seq_sweep

    arch = resolve("Qwen3-8B")
    sweep = seq_sweep(parse_vary("gc", arch, Scenario()), (1024, 2048), total="allocated",
                      limit=gpu_limit(memory="24GiB")[0])
    ax = chart.sweep_chart(sweep).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][1:3] == ["GC on", "GC off"]
    assert ax.get_ylabel() == "allocated peak (GiB)"
