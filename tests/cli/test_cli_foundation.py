"""The CLI as a new user meets it: registry listing, and one-line errors with exit 2 on bad models."""

import json
import subprocess
import sys
from clihelp import one_line_exit2 as _one_line_exit2


def test_models_lists_registry(cli_run):
    code, out, _ = cli_run("models", "--json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) >= 40
    q = next(r for r in rows if r["name"] == "Qwen3-14B")
    assert q["params"] == 14_768_307_200 and q["quantized_params"] == 13_212_057_600


def test_models_filter(cli_run):
    code, out, _ = cli_run("models", "gemma", "--json")
    names = [r["name"] for r in json.loads(out)]
    assert code == 0 and names and all("gemma" in n.lower() for n in names)


def test_models_table(cli_run):
    code, out, _ = cli_run("models", "qwen3")
    assert code == 0 and "Qwen3-14B" in out and "14.77 B" in out


def test_each_command_lives_in_the_module_of_its_name():
    from vramplan.cli import COMMANDS

    for name, (module, attr, _) in COMMANDS.items():
        assert module == f"vramplan.cli.{name}" and attr == name, (name, module, attr)


def test_scenario_flags_come_from_the_scenario_fields():
    """One flag per Scenario field, its default the field's, so a new field cannot miss the CLI."""
    from dataclasses import fields

    from vramplan.cli.estimate import estimate
    from vramplan.scenario import Scenario

    params = {p.name: p for p in estimate.params}
    for f in fields(Scenario):
        default = f.default.value if hasattr(f.default, "value") else f.default
        default = ",".join(default) if isinstance(default, tuple) else default
        assert params[f.name].default == default, f.name
    assert {"model", "preset"} <= set(params)


def test_unknown_model(cli_run):
    line = _one_line_exit2(cli_run, "estimate", "--model", "Qwen3-14")
    assert "unknown model" in line and "Qwen3-14B" in line


def test_missing_config(cli_run, tmp_path):
    line = _one_line_exit2(cli_run, "estimate", "--model", str(tmp_path / "nope" / "config.json"))
    assert "not found" in line
    line = _one_line_exit2(cli_run, "estimate", "--model", str(tmp_path))
    assert "no config.json" in line


def test_malformed_config(cli_run, tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    assert "malformed" in _one_line_exit2(cli_run, "estimate", "--model", str(p))


def test_config_missing_field(cli_run, tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                             "intermediate_size": 128, "vocab_size": 100}))
    assert "num_hidden_layers" in _one_line_exit2(cli_run, "estimate", "--model", str(p))


def test_unsupported_architecture(cli_run, tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "rwkv", "hidden_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "vocab_size": 100}))
    line = _one_line_exit2(cli_run, "estimate", "--model", str(p))
    assert "'rwkv' is not priced by the analytic engine (RWKV is not modelled" in line and "--method trace" in line


def test_usage_error_is_one_line(cli_run):
    _one_line_exit2(cli_run, "estimate")  # --model missing
    _one_line_exit2(cli_run, "estimate", "--model", "Qwen3-14B", "--quant", "int3")


def test_python_m_runs_the_cli():
    """``python -m vramplan`` is the console entry point (no torch: tests/exact/test_import_boundaries.py)."""
    code = ("import sys, runpy; sys.argv=['vramplan','models','qwen3','--json'];"
            "\ntry:\n    runpy.run_module('vramplan', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code in (0, None), e.code")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Qwen3-14B" in r.stdout
