"""Issue 13: `vramplan profile --config` runs each pip-installable framework's *own* trainer on CPU
(ms-swift's SwiftSft, LLaMA-Factory's run_exp, axolotl's train, torchtune's recipe), on the fixture
config of tests/data/frameworks/ with a tiny random model of a real family, and both engines are held
to the measured steady-step peak.

The measurement is the CPU tracker's live bytes over real steps of the framework's program (its
argument parsing of the user's config, its loading of a random-init checkpoint, its preparation, its
loop, on synthetic rows of exactly ``seq`` tokens). Tolerance 1 % for both engines: the tiny models
here (hidden 256, vocab 32768, 2 layers) are the size at which `benchmarks/analytic_vs_trace.py`
shows the analytic CPU terms within 1 % of the trace. Each run is its own process, as a user's is:
the frameworks patch transformers and torch globally (ms-swift replaces ``torch.utils.checkpoint``
and adds its own trainer state), which would leak into the next framework's run. Runs in the
framework venv of .ci/frameworks; skips elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = [pytest.mark.torch, pytest.mark.slow]
DATA = Path(__file__).resolve().parents[1] / "data" / "frameworks"
REASON = "installed only in the framework venv of .ci/frameworks (its pins would replace vramplan's test stack)"

ROWS = [
    ("ms-swift", "swift_qlora.sh", "profile_qwen3", ["--label-fraction", "0.5"]),
    ("llamafactory", "llamafactory_qlora.yaml", "profile_qwen3", []),
    ("axolotl", "axolotl_qlora.yml", "profile_qwen3", []),
    ("torchtune", "torchtune_qlora.yaml", "profile_llama", []),
]


@pytest.mark.parametrize("name,config,model,extra", ROWS, ids=[r[0] for r in ROWS])
def test_profile_config_runs_the_frameworks_own_trainer(cli_run, tmp_path, name, config, model, extra):
    from vramplan.profile.frameworks import installed

    if not installed(name):
        pytest.skip(REASON)
    run = subprocess.run([sys.executable, "-m", "vramplan", "profile", "--config", str(DATA / config), "--model",
                          str(DATA / model), "--seq", "128", "--steps", "3", "--out", str(tmp_path), "--json", *extra],
                         capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    (prof,) = json.loads(run.stdout)
    fw = prof["run"]["framework"]
    assert fw["name"] == name and fw["version"] and prof["run"]["loader"] == "framework"
    assert prof["scenario"]["seq"] == 128 and len(prof["measured"]["step_seconds_all"]) == 2
    measured = prof["measured"]["allocated_peak_bytes"]
    errors = {e: prof["predictions"][e]["allocated_peak_bytes"] / measured - 1 for e in ("trace", "analytic")}
    assert all(abs(v) < 0.01 for v in errors.values()), (name, measured, errors)
    code, out, err = cli_run("validate", "--profiles", str(tmp_path), "--json")
    assert code == 0, err
    assert name in json.dumps(json.loads(out))


def test_profile_config_refuses_a_change_the_framework_has_no_key_for(tmp_path):
    """A command-line change the framework's config cannot express (ms-swift has no recipe key) is refused
    in one line, exit 2: its trainer would run another program than the one priced."""
    from vramplan.profile.frameworks import installed

    if not installed("ms-swift"):
        pytest.skip(REASON)
    run = subprocess.run([sys.executable, "-m", "vramplan", "profile", "--config", str(DATA / "swift_qlora.sh"),
                          "--model", str(DATA / "profile_qwen3"), "--seq", "128", "--recipe", "hf-peft",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1"})
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert run.returncode == 2 and len(lines) == 1 and "no key for it" in lines[0], run.stderr[-2000:]
    assert not list(tmp_path.iterdir())
