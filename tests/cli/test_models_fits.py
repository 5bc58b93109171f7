"""``vramplan models --family`` and ``--fits``: the registry by family and by what fits a card, each row
the same check ``vramplan plan`` makes."""

from __future__ import annotations

import json

from clihelp import one_line_exit2
from vramplan.arch.lookup import registry
from vramplan.errors import VramplanError
from vramplan.gpus import resolve_gpu
from vramplan.plan import Planner
from vramplan.scenario import Scenario


def _rows(cli_run, *args):
    code, out, err = cli_run("models", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_family_filter_is_the_model_type(cli_run):
    rows = _rows(cli_run, "--family", "qwen3")
    want = {e.name for e in registry() if e.arch().model_type == "qwen3"}
    assert {r["name"] for r in rows} == want and len(want) >= 5
    assert {r["model_type"] for r in _rows(cli_run, "--family", "QWEN3_MOE")} == {"qwen3_moe"}


def test_unknown_family_one_line(cli_run):
    line = one_line_exit2(cli_run, "models", "--family", "nope")
    assert "unknown family 'nope'" in line and "qwen3" in line


def test_fits_is_the_planner_check(cli_run):
    rows = _rows(cli_run, "--fits", "rtx4090", "--seq", "2048")
    names = {r["name"] for r in rows}
    gpu = resolve_gpu("rtx4090")
    sc = Scenario(seq=2048)
    for e in registry():
        if e.source.startswith("synthetic"):
            assert e.name not in names
            continue
        try:
            check = Planner(e.arch(), gpu).check(sc)
        except VramplanError:  # refused by the analytic engine (named on stderr): not listed
            assert e.name not in names
            continue
        assert (e.name in names) == check.fits, e.name
    for r in rows:
        assert r["need_bytes"] <= r["budget_bytes"] and r["headroom_bytes"] == r["budget_bytes"] - r["need_bytes"]
    assert "Qwen3-8B" in names and "Llama-3.1-70B" not in names
    assert [r["params"] for r in rows] == sorted((r["params"] for r in rows), reverse=True)


def test_fits_follows_the_scenario(cli_run):
    short = {r["name"] for r in _rows(cli_run, "--fits", "rtx4090", "--seq", "512")}
    long = {r["name"] for r in _rows(cli_run, "--fits", "rtx4090", "--seq", "32768")}
    assert long < short


def test_fits_table_and_empty(cli_run):
    code, out, err = cli_run("models", "--fits", "rtx4090", "--family", "llama", "--seq", "2048")
    assert code == 0 and "fits RTX 4090" in out and "headroom" in out
    code, out, err = cli_run("models", "Llama-3.1-70B", "--memory", "8GiB")
    assert code == 0 and "no model fits" in err


def test_narrow_terminal_keeps_whole_names(cli_run, monkeypatch):
    """At 60 columns the table leaves columns out (and says which on stderr) rather than cut a name,
    which is what ``--model`` takes; at 160 every column shows. The ``(MoE)`` mark follows the fused
    expert parameters, Gemma 4's in-mixer experts too."""
    import contextlib
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from vramplan.cli import main

    def run(width):
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setenv("COLUMNS", str(width))
        with redirect_stdout(out), redirect_stderr(err), contextlib.suppress(SystemExit):
            main(["models", "--family", "gemma4"])
        return out.getvalue(), err.getvalue()

    names = [e.name for e in registry() if e.arch().model_type == "gemma4"]
    narrow, note = run(60)
    assert all(n in narrow for n in names) and max(map(len, narrow.splitlines())) <= 60
    assert "hub id" not in narrow and "left out" in note and "hub id" in note
    wide, note = run(160)
    assert "hub id" in wide and not note
    moe = [r for r in _rows(cli_run, "--family", "gemma4") if r["moe"]]
    assert [r["name"] for r in moe] == ["gemma-4-26B-A4B-it"]
