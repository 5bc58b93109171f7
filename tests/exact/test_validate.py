"""Predicted vs measured: like with like, honest summaries, and the accuracy of the shipped engine +
calibration on the published reference rows (vramplan/data/reference.csv, each row citing its source)."""

import csv
import json

import pytest
from _stub_engine import stub_estimate

from vramplan.arch.lookup import find_entry
from vramplan.arch.spec import Arch
from vramplan.calibration import Calibration, default_calibration
from vramplan.profile.store import SCHEMA, Profile
from vramplan.scenario import Scenario
from vramplan.validate import Row, profile_points, summarize, validate, validate_points

MiB = 1024**2
GiB = 1024**3


def _row(id, measured, predicted, status="in", gpu=None, total=None, fit=True):
    return Row(id=id, origin="reference", model="m", device="d", measurement="allocated", status=status,
               reason="", measured_bytes=measured, predicted_bytes=predicted, upper_bytes=None,
               gpu_memory_bytes=gpu, predicted_total_bytes=total, upper_total_bytes=total, fit_actual=fit,
               scope=status)


def test_summary_by_hand():
    rows = [_row("a", 100, 110), _row("b", 100, 96), _row("c", 100, 102), _row("x", 100, 500, status="out"),
            _row("g1", 100, 100, gpu=24 * GiB, total=20 * GiB), _row("g2", 100, 100, gpu=24 * GiB, total=30 * GiB)]
    s = summarize(rows)
    assert s.rows == 5                      # 'out' rows never enter the figures
    assert s.median_abs_error == pytest.approx(0.02)   # |errors| 0.10, 0.04, 0.02, 0, 0
    assert s.worst_under == ("b", pytest.approx(-0.04))
    assert s.worst_over == ("a", pytest.approx(0.10))
    assert (s.verdict_rows, s.verdict_agree) == (2, 1)  # g2 predicts 30 GiB on a 24 GiB GPU that fit


def _profile(kind="cuda", oom=None, seq=256):
    cfg = find_entry("vramplan-debug").config
    sc = Scenario(seq=seq, batch=2, rank=8)
    cuda = kind == "cuda"
    d = {
        "schema": SCHEMA, "model": "vramplan-debug", "arch_config": cfg, "scenario": sc.to_dict(),
        "device": {"kind": kind, "name": "NVIDIA A10G" if cuda else "cpu",
                   "total_memory_bytes": 24 * GiB if cuda else None},
        "versions": {}, "timestamp": "2026-11-25T03:00:00Z", "run": {},
        "measured": {"allocated_peak_bytes": None if oom else 50 * MiB,
                     "reserved_peak_bytes": None if oom else 64 * MiB, "active_peak_bytes": None,
                     "process_peak_bytes": (600 * MiB if cuda else None) if not oom else None, "managed_bytes": 0,
                     "phases": {k: None for k in ("load", "adapters", "forward", "backward", "optimizer",
                                                   "steady_step")},
                     "step_seconds": None, "tokens_per_second": None, "oom": oom},
        "predictions": {"analytic": None, "trace": None},
    }
    return Profile.from_dict(d)


def test_like_with_like_on_a_cuda_profile():
    p = _profile()
    rows = validate_points(profile_points([p]), Calibration(), estimator=stub_estimate)
    by = {r.measurement: r for r in rows}
    b = stub_estimate(Arch.from_config(p.arch_config), p.scenario, Calibration(), "NVIDIA A10G")
    assert set(by) == {"allocated", "reserved", "process"}
    assert by["allocated"].predicted_bytes == b.allocated_peak_bytes and by["allocated"].measured_bytes == 50 * MiB
    assert by["reserved"].predicted_bytes == b.reserved_peak_bytes and by["reserved"].measured_bytes == 64 * MiB
    assert by["process"].predicted_bytes == b.total_bytes and by["process"].measured_bytes == 600 * MiB
    # one verdict per run, not one per figure
    assert sum(r.fit_predicted is not None for r in rows) == 1


def test_cpu_profile_compares_allocated_only():
    rows = validate_points(profile_points([_profile("cpu")]), Calibration(), estimator=stub_estimate)
    assert [r.measurement for r in rows] == ["allocated"] and rows[0].device == "cpu"
    assert rows[0].fit_predicted is None


def test_oom_profile_is_a_verdict_row():
    oom = {"phase": "forward", "allocated_bytes": 20 * GiB, "message": "CUDA out of memory"}
    (row,) = validate_points(profile_points([_profile(oom=oom)]), Calibration(), estimator=stub_estimate)
    assert row.status == "verdict" and row.fit_actual is False and row.error is None


def test_rows_the_engine_cannot_price_are_reported_not_dropped():
    rep = validate(reference=None, calibration=default_calibration())
    assert len(rep.rows) == 61
    for r in rep.rows:
        if r.status == "out":
            assert r.reason, r.id


# --------------------------------------------------------------- accuracy on reference rows
@pytest.fixture(scope="module")
def shipped():
    return validate(calibration=default_calibration())


def test_conservative_bound_covers_every_in_scope_row(shipped):
    """upper_bound_fraction was fitted so that point × (1 + f) ≥ measured on every priced row in
    scope; if the engine changed since, rerun `vramplan calibrate` (docs/accuracy.md)."""
    rows = [r for r in shipped.rows if r.status == "in" and r.measured_bytes and r.origin == "reference"]
    assert rows
    for r in rows:
        assert r.upper_bytes >= r.measured_bytes, (r.id, r.upper_bytes / r.measured_bytes)


def test_issue6_median_target_on_reference_rows(shipped):
    assert shipped.reference.median_abs_error <= 0.05


def test_torchtune_lora_row_within_tolerance(shipped):
    # pm-24: torchtune lora_finetune.rst, Llama-2-7B LoRA q,v r8, bs2, seq<=512: 15.57 GB reserved.
    r = next(r for r in shipped.rows if r.id == "pm-24")
    assert abs(r.error) <= 0.10, r.error


@pytest.mark.xfail(strict=True, reason="issue-6 under-prediction target missed by 0.4 points: pm-25 (torchtune, "
                                       "unpacked variable-length batches) is -5.4 % reserved; see docs/accuracy.md")
def test_issue6_targets_on_reference_rows(shipped):
    s = shipped.reference
    assert s.median_abs_error <= 0.05
    assert s.worst_under is None or s.worst_under[1] >= -0.05


# ------------------------------------------------------------------------------------- CLI
def test_cli_validate_json_and_csv(cli_run, tmp_path):
    out_csv = tmp_path / "rows.csv"
    code, out, err = cli_run("validate", "--profiles", str(tmp_path), "--json", "--csv", str(out_csv))
    assert code == 0, err
    data = json.loads(out)
    assert data["reference"]["rows"] >= 1 and len(data["rows"]) == 61
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 61 and {"id", "measured_bytes", "predicted_bytes", "error", "status"} <= set(rows[0])


def test_cli_validate_table(cli_run, tmp_path):
    code, out, err = cli_run("validate", "--profiles", str(tmp_path))
    assert code == 0, err
    assert "pm-24" in out and "median |error|" in out and "worst under-prediction" in out
    assert "pm-07" not in out  # out of scope: hidden unless --all
    code, out, _ = cli_run("validate", "--profiles", str(tmp_path), "--all")
    assert "pm-07" in out and "litgpt" in out


def test_cli_validate_missing_profiles_folder_exits_2(cli_run, tmp_path):
    code, _, err = cli_run("validate", "--profiles", str(tmp_path / "nope"))
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err


def test_cli_validate_nothing_exits_2(cli_run, tmp_path):
    code, _, err = cli_run("validate", "--profiles", str(tmp_path), "--no-reference")
    assert code == 2 and "nothing to validate" in err and "Traceback" not in err
