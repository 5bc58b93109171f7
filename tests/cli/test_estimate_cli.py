"""`vramplan estimate`: table, --json contract, --gpu headroom, errors (exit 2), no torch import."""

from __future__ import annotations

import json

import pytest


def test_table(cli_run):
    code, out, err = cli_run("estimate", "-m", "Qwen3-14B")
    assert code == 0, err
    for word in ("weights/nf4", "logits/loss", "allocated peak", "reserved peak", "process total",
                 "runtime/cuda_context", "%"):
        assert word in out


def test_json_contract(cli_run):
    code, out, _ = cli_run("estimate", "-m", "Qwen3-14B", "--json", "--rank", "16", "--seq", "1024")
    assert code == 0
    d = json.loads(out)
    assert d["model"] == {"name": "Qwen3-14B", "params": 14_768_307_200, "quantized_params": 13_212_057_600}
    assert d["config"]["rank"] == 16 and d["config"]["seq"] == 1024 and d["config"]["targets"] == ["all-linear"]
    assert sum(c["bytes"] for c in d["components"]) == d["allocated_peak_bytes"]
    assert set(d["components"][0]) == {"name", "category", "bytes"}
    reserved = d["allocated_peak_bytes"] + sum(c["bytes"] for c in d["runtime"] if c["category"] == "allocator")
    assert d["reserved_peak_bytes"] == reserved
    assert d["total_bytes"] == reserved + sum(c["bytes"] for c in d["runtime"] if c["category"] != "allocator")
    assert d["upper_bound_total_bytes"] >= d["total_bytes"]


def test_json_equals_api(cli_run):
    import vramplan

    code, out, _ = cli_run("estimate", "-m", "Llama-2-7b", "--json", "--recipe", "trl", "--optimizer", "adamw8bit")
    b = vramplan.estimate("Llama-2-7b", recipe="trl", optimizer="adamw8bit")
    assert json.loads(out)["allocated_peak_bytes"] == b.allocated_peak_bytes


def test_gpu_headroom(cli_run):
    pytest.importorskip("vramplan.gpus")
    code, out, _ = cli_run("estimate", "-m", "Qwen3-14B", "--gpu", "RTX 4090", "--json")
    assert code == 0
    g = json.loads(out)["gpu"]
    assert g["headroom_bytes"] == g["usable_bytes"] - g["needed_bytes"]
    code, out, _ = cli_run("estimate", "-m", "Qwen3-14B", "--gpu", "RTX 4090")
    assert "headroom" in out


@pytest.mark.parametrize("args,msg", [
    (["--rank", "0"], "rank must be a positive integer"),
    (["--seq", "0"], "seq must be a positive integer"),
    (["--batch", "-1"], "batch must be a positive integer"),
    (["--targets", "q_proj,nope"], "unknown target module 'nope'"),
    (["--full"], "--full fine-tunes every weight"),
    (["--optimizer", "lion"], "lion"),
    (["--gpu", "Voodoo 5"], "unknown GPU"),
    (["--seq", "10000001"], "exceeds the supported"),
    (["--calibration", "/nonexistent.json"], "calibration"),
])
def test_bad_input_one_line_exit_2(cli_run, args, msg):
    code, out, err = cli_run("estimate", "-m", "Qwen3-14B", *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert msg in err


def test_rank_beyond_a_dimension_is_priced_with_a_note(cli_run):
    """peft trains any rank as given; the estimate prices it and says the update cannot reach it."""
    code, out, err = cli_run("estimate", "-m", "Qwen3-14B", "--rank", "99999")
    assert code == 0, err
    assert "note: rank 99999 exceeds the smaller dimension" in out


def _config(cli_run, *args: str) -> dict:
    code, out, err = cli_run("estimate", "-m", "Qwen3-14B", "--json", *args)
    assert code == 0, err
    return json.loads(out)["config"]


def test_preset_applies_its_fields(cli_run):
    from vramplan.recipes import preset

    cfg = _config(cli_run, "--preset", "torchtune-2024")
    assert preset("torchtune-2024").resolve("bf16", True) == {k: cfg[k] for k in preset("torchtune-2024").fields}
    assert cfg["adapter_dtype"] == "bf16" and cfg["hold_logits"] == "loop" and cfg["loss"] == "legacy"
    # the preset's "the compute dtype" follows --dtype; 4-bit-only fields drop for an unquantized base
    assert _config(cli_run, "--preset", "fsdp-qlora-2024", "--dtype", "fp16")["adapter_dtype"] == "fp16"
    assert _config(cli_run, "--preset", "fsdp-qlora-2024", "--quant", "none")["bnb_keeps_input"] is False
    assert _config(cli_run, "--preset", "fsdp-qlora-2024")["bnb_keeps_input"] is True


def test_explicit_flag_overrides_a_preset_field(cli_run):
    cfg = _config(cli_run, "--preset", "fsdp-qlora-2024", "--hold-logits", "none", "--autocast")
    assert cfg["hold_logits"] == "none" and cfg["autocast"] is True  # given on the command line: kept
    assert cfg["loss"] == "legacy" and cfg["recipe"] == "plain"      # the rest of the preset still applies
    # a flag left at its default is not "given": the preset wins over the default
    assert _config(cli_run, "--preset", "transformers-4.44")["loss"] == "legacy"
    assert _config(cli_run, "--preset", "transformers-4.44", "--loss", "hf")["loss"] == "hf"


def test_unknown_preset_one_line_exit_2(cli_run):
    from clihelp import one_line_exit2

    line = one_line_exit2(cli_run, "estimate", "-m", "Qwen3-14B", "--preset", "axolotl-2022")
    assert "unknown preset 'axolotl-2022'" in line and "fsdp-qlora-2024" in line and "axolotl-0.19" in line


def test_unknown_model_exit_2(cli_run):
    code, _, err = cli_run("estimate", "-m", "NoSuchModel-7B")
    assert code == 2 and err.startswith("error: ")
