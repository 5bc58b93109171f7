"""`vramplan plan` and `vramplan gpus` as users run them: outputs, exit codes 0/1/2, one-line errors."""

import json
import subprocess
import sys

import pytest

from vramplan.gpus import find_gpu
from clihelp import one_line_exit2

FITS = ("plan", "--model", "Qwen3-4B", "--gpu", "RTX 4090", "--seq", "2048")  # ~6 GiB of 23 GiB
NO_FIT = ("plan", "--model", "Qwen3-14B", "--gpu", "rtx4090", "--seq", "16384", "--no-grad-checkpointing")




def test_fits_exit_0_table(cli_run):
    code, out, err = cli_run(*FITS)
    assert code == 0, err
    assert "FITS" in out and "RTX 4090" in out and "largest seq" in out and "largest rank" in out


def test_does_not_fit_exit_1_with_suggestions(cli_run):
    code, out, err = cli_run(*NO_FIT)
    assert code == 1, err
    assert "DOES NOT FIT" in out and "To make it fit" in out and "gradient checkpointing" in out


def test_json_output(cli_run):
    code, out, _ = cli_run(*NO_FIT, "--json")
    d = json.loads(out)
    assert code == 1 and d["fits"] is False
    for key in ("fits", "max_seq", "max_batch", "max_rank", "headroom_bytes", "suggestions", "need_bytes",
                "budget_bytes", "bound"):
        assert key in d
    assert d["bound"] == "upper" and d["headroom_bytes"] < 0
    assert d["budget_bytes"] == find_gpu("RTX 4090").usable_bytes
    saved = [s["saved_bytes"] for s in d["suggestions"] if s["key"] != "combined"]
    assert saved == sorted(saved, reverse=True)
    code, out, _ = cli_run(*FITS, "--json")
    d = json.loads(out)
    assert code == 0 and d["fits"] is True and d["suggestions"] == [] and d["headroom_bytes"] >= 0
    assert d["max_seq"] >= 2048


def test_point_flag_uses_point_estimate(cli_run):
    _, out, _ = cli_run(*FITS, "--json")
    _, out_point, _ = cli_run(*FITS, "--json", "--point")
    up, pt = json.loads(out), json.loads(out_point)
    assert up["bound"] == "upper" and pt["bound"] == "point"
    assert pt["need_bytes"] == up["point_need_bytes"] < up["need_bytes"]
    assert pt["max_seq"] >= up["max_seq"]


def test_memory_instead_of_gpu(cli_run):
    code, out, _ = cli_run("plan", "--model", "Qwen3-8B", "--memory", "24GiB", "--json")
    d = json.loads(out)
    assert code in (0, 1) and d["gpu"]["memory_bytes"] == 24 * 1024**3 and d["gpu"]["kind"] == "custom"


def test_seq_step(cli_run):
    code, out, _ = cli_run(*FITS, "--json", "--seq-step", "64")
    assert json.loads(out)["max_seq"] % 64 == 0


@pytest.mark.parametrize("args,needle", [
    (("--gpu", "rtx 4091"), "RTX 4090"),
    (("--gpu", "RTX 4090", "--memory", "24GiB"), "not both"),
    (("--memory", "0"), "positive"),
    (("--memory", "-3GiB"), "positive"),
    (("--memory", "lots"), "memory"),
    ((), "--gpu"),
    (("--gpu", "h100", "--seq-step", "0"), "seq step"),
    (("--gpu", "h100", "--percentile", "0"), "percentile"),
])
def test_bad_gpu_input_exit_2(cli_run, args, needle):
    line = one_line_exit2(cli_run, "plan", "--model", "Qwen3-8B", *args)
    assert needle in line


def test_unknown_model_exit_2(cli_run):
    assert "unknown model" in one_line_exit2(cli_run, "plan", "--model", "Qwen3-14", "--gpu", "h100")


@pytest.mark.parametrize("text,needle", [
    ("", "empty"),
    ("100\n-5\n", "negative length"),
    ("100\n{oops\n", "not valid JSON"),
    ('{"text": "hi"}\n', "--tokenizer"),
])
def test_bad_lengths_file_exit_2(cli_run, tmp_path, text, needle):
    f = tmp_path / "lengths.jsonl"
    f.write_text(text)
    line = one_line_exit2(cli_run, "plan", "--model", "Qwen3-8B", "--gpu", "h100", "--lengths", str(f))
    assert needle in line


def test_missing_lengths_file_exit_2(cli_run, tmp_path):
    line = one_line_exit2(cli_run, "plan", "--model", "Qwen3-8B", "--gpu", "h100", "--lengths",
                          str(tmp_path / "none.jsonl"))
    assert "not found" in line


def test_lengths_plan(cli_run, tmp_path):
    f = tmp_path / "lengths.csv"
    f.write_text("length\n" + "\n".join(["300"] * 97 + ["900", "2000", "40000"]) + "\n")
    code, out, _ = cli_run("plan", "--model", "Qwen3-8B", "--gpu", "RTX 4090", "--lengths", str(f), "--json")
    d = json.loads(out)
    lp = d["lengths"]
    assert d["scenario"]["seq"] == 40000 and lp["stats"]["max"] == 40000
    assert lp["planned_seq"] == 2000 and lp["percentile"] == 99
    assert code == (0 if d["fits"] else 1) and d["fits"] == lp["longest"]["fits"]
    assert lp["planned"]["need_bytes"] < lp["longest"]["need_bytes"]
    assert lp["packing"]["packed_sequences"] == -(-(97 * 300 + 900 + 2000 + 2000) // 2000)
    # an explicit --seq truncates the dataset to it
    code, out, _ = cli_run("plan", "--model", "Qwen3-8B", "--gpu", "RTX 4090", "--lengths", str(f),
                           "--seq", "1024", "--json")
    d = json.loads(out)
    assert d["scenario"]["seq"] == 1024 and d["lengths"]["stats"]["truncated"] == 2
    code, out, _ = cli_run("plan", "--model", "Qwen3-8B", "--gpu", "RTX 4090", "--lengths", str(f))
    assert "Dataset" in out and "packed to 2,000" in out


def test_gpus_command(cli_run):
    code, out, _ = cli_run("gpus", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) >= 25
    r = next(r for r in rows if r["name"] == "RTX 4090")
    assert r["memory_bytes"] == 24564 * 1024**2 and r["usable_bytes"] < r["memory_bytes"]
    code, out, _ = cli_run("gpus", "apple")
    assert code == 0 and "Apple M-series 192GB" in out and "RTX 3090" not in out and "(9 cards)" in out
    code, out, _ = cli_run("gpus")
    assert "24,564 MiB" in out and "H100 80GB SXM" in out


def test_shell_guard():
    """`vramplan plan ... && train` : the real entry point exits 1 when it does not fit."""
    code = ("import sys, runpy; sys.argv=['vramplan', *sys.argv[1:]]\n"
            "runpy.run_module('vramplan', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code, *NO_FIT], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    r = subprocess.run([sys.executable, "-c", code, *FITS], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_calibration_file_sets_context_and_bound(cli_run, tmp_path):
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"cuda_context_bytes": 2 * 1024**3, "upper_bound_fraction": 0.0}))
    code, out, _ = cli_run(*FITS, "--json", "--calibration", str(f))
    d = json.loads(out)
    g = find_gpu("RTX 4090")
    assert d["budget_bytes"] == g.memory_bytes - g.driver_reserved_bytes - 2 * 1024**3
    assert d["need_bytes"] == d["point_need_bytes"]  # a zero-width bound equals the point estimate
    f.write_text("{broken")
    assert "not valid JSON" in one_line_exit2(cli_run, *FITS, "--calibration", str(f))


def test_full_finetuning_has_no_rank(cli_run):
    code, out, _ = cli_run("plan", "--model", "Qwen3-0.6B", "--gpu", "h100", "--full", "--quant", "none", "--json")
    d = json.loads(out)
    assert code == 0 and d["max_rank"] is None and d["fits"]


def test_text_column_with_hub_tokenizer_fails_clearly_offline(cli_run, tmp_path):
    pytest.importorskip("transformers")
    f = tmp_path / "data.jsonl"
    f.write_text('{"text": "hello"}\n')
    line = one_line_exit2(cli_run, "plan", "--model", "Qwen3-8B", "--gpu", "h100", "--lengths", str(f),
                          "--tokenizer", "Qwen/Qwen3-8B")
    assert "offline" in line and "local tokenizer directory" in line
    assert "--lengths" in one_line_exit2(cli_run, "plan", "--model", "Qwen3-8B", "--gpu", "h100",
                                         "--tokenizer", "x")
