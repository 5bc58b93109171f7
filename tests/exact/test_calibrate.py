"""Fitting the runtime constants: recovery on synthetic data, too-little-data errors, the CLI contract."""

import json
from dataclasses import replace

import pytest

from _stub_engine import stub_estimate
from vramplan.arch import resolve
from vramplan.calibrate import CalibrateError, fit, upper_bound_fraction
from vramplan.calibration import Calibration, CalibrationError
from vramplan.scenario import Scenario
from vramplan.validate import Point
from clihelp import one_line_exit2 as _one_line_exit2

MiB = 1024**2
TRUE = Calibration(cuda_context_bytes=700 * MiB, cublas_workspace_bytes=8 * MiB, allocator_reserve_fraction=0.09,
                   allocator_reserve_bytes=100 * MiB, allocator_reserve_loss_factor=0.45, fused_dequant_factor=2.0)
KEYS = {"allocated": "allocated_peak_bytes", "reserved": "reserved_peak_bytes", "process": "total_bytes"}


def _points(kinds=("allocated", "reserved", "process"), device="A10G", n_seq=(256, 1024, 4096)):
    """Figures the stub engine predicts under TRUE: a fit from other constants must find TRUE."""
    arch = resolve("Qwen2.5-0.5B")
    pts = []
    for quant in ("nf4", "none"):
        for seq in n_seq:
            sc = Scenario(quant=quant, seq=seq)
            b = stub_estimate(arch, sc, TRUE, device)
            for kind in kinds:
                pts.append(Point(id=f"{quant}-{seq}-{kind}", origin="profile", model="q", arch=arch, scenario=sc,
                                 device=device, device_kind="cuda", measurement=kind, total_key=KEYS[kind],
                                 measured_bytes=getattr(b, KEYS[kind]), status="in"))
    return pts


def test_fit_recovers_the_constants_that_made_the_data():
    # an unnamed CUDA device: a named card without a fit of its own takes PyTorch's default cuBLAS
    # workspace for its architecture, so only unnamed figures can show the global workspace
    res = fit(_points(device="cuda"), Calibration(), estimator=stub_estimate)
    fitted = [c for c in res.constants if c.fitted]
    assert len(fitted) == 6
    for c in fitted:  # each constant within three of its stated sigmas of the truth
        assert abs(c.after - getattr(TRUE, c.name)) <= 3 * c.sigma, c
    assert res.calibration.cuda_context_bytes == pytest.approx(TRUE.cuda_context_bytes, rel=0.1)
    assert max(abs(r.error_after) for r in res.residuals) < 0.01
    assert max(abs(r.error_before) for r in res.residuals) > 0.1  # the defaults really were off


def test_constant_without_data_keeps_its_prior_and_says_why():
    res = fit(_points(kinds=("allocated",)), Calibration(), estimator=stub_estimate)
    ctx = next(c for c in res.constants if c.name == "cuda_context_bytes")
    assert not ctx.fitted and ctx.after == Calibration().cuda_context_bytes
    assert "process-total" in ctx.note


def test_asking_for_a_constant_without_data_is_an_error():
    with pytest.raises(CalibrateError, match="cuda_context_bytes.*0 sensitive"):
        fit(_points(kinds=("allocated",)), Calibration(), estimator=stub_estimate, only=["cuda_context_bytes"])


def test_no_usable_figures_is_an_error():
    pts = [replace(p, status="verdict") for p in _points()]
    with pytest.raises(CalibrateError, match="no measured figures"):
        fit(pts, Calibration(), estimator=stub_estimate)


def test_unknown_constant():
    with pytest.raises(CalibrateError, match="unknown constant"):
        fit(_points(), Calibration(), estimator=stub_estimate, only=["warp_drive"])


def test_per_device_constants_with_global_fallback():
    a = _points(device="A10G")
    b = [replace(p, id="h-" + p.id, device="H100",
                 measured_bytes=int(p.measured_bytes + (300 * MiB if p.measurement == "process" else 0)))
         for p in _points(device="H100")]
    res = fit(a + b, Calibration(), estimator=stub_estimate)
    per = res.calibration.per_device
    assert set(per) == {"A10G", "H100"}
    assert per["H100"]["cuda_context_bytes"] - per["A10G"]["cuda_context_bytes"] == pytest.approx(300 * MiB, rel=0.1)
    assert res.calibration.for_device("NVIDIA H100 80GB HBM3").cuda_context_bytes == per["H100"]["cuda_context_bytes"]
    assert res.calibration.for_device("MI300X") == res.calibration  # unknown device: global constants


def test_calibration_key_drops_the_vendor_word():
    from vramplan.device import Device, strip_vendor

    assert Device.parse("NVIDIA H200").calibration_key == "H200" and Device.parse("cpu").calibration_key == "cpu"
    assert Device.parse("cuda:0").calibration_key is None
    assert strip_vendor("NVIDIA H200") == "H200"
    assert strip_vendor("NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"
    assert strip_vendor("RTX 3090") == "RTX 3090" and strip_vendor("NVIDIA") == "NVIDIA"


def test_per_device_key_found_by_catalog_and_driver_names():
    pts = [replace(p, device="NVIDIA H200") for p in _points(device="NVIDIA H200")]
    res = fit(pts, Calibration(), estimator=stub_estimate)
    assert set(res.calibration.per_device) == {"H200"}
    for name in ("H200", "NVIDIA H200"):  # `--gpu H200` and torch.cuda.get_device_name()
        assert res.calibration.for_device(name).device == "H200"


def test_small_figures_do_not_set_the_upper_bound():
    """A smoke-test model under 1 GiB, badly under-predicted, must not widen everyone's bound."""
    big = _points()
    base = fit(big, Calibration(), estimator=stub_estimate).calibration
    sc = Scenario(quant="nf4", seq=64)
    pred = stub_estimate(big[0].arch, sc, base, "A10G").allocated_peak_bytes
    toy = replace(big[0], id="toy", scenario=sc, measured_bytes=2 * pred)  # under-predicted by half
    assert toy.measured_bytes < 1024**3
    res = fit(big + [toy], Calibration(), estimator=stub_estimate)
    assert min(r.error_after for r in res.residuals) < -0.4  # the toy figure really is under-predicted
    assert res.calibration.upper_bound_fraction == pytest.approx(base.upper_bound_fraction, abs=0.01)
    # the same miss on a figure of a real run's size does set the bound
    largest = max(big, key=lambda p: p.measured_bytes)
    grown = [replace(largest, measured_bytes=2 * largest.measured_bytes, id="x")]
    assert grown[0].measured_bytes >= 1024**3
    assert fit(big + grown, Calibration(), estimator=stub_estimate).calibration.upper_bound_fraction > 0.3


def test_calibration_file_without_the_loss_factor_still_loads(tmp_path):
    """Files written before allocator_reserve_loss_factor existed load with it at 0 (the old model)."""
    p = tmp_path / "old.json"
    p.write_text('{"schema": "vramplan.calibration/1", "allocator_reserve_fraction": 0.11}')
    cal = Calibration.load(p)
    assert cal.allocator_reserve_loss_factor == 0.0 and cal.allocator_reserve_fraction == 0.11


def test_upper_bound_covers_the_worst_under_prediction():
    # -9 % error means measured = predicted / 0.91: the bound needs +9.9 %.
    assert upper_bound_fraction([0.02, -0.09, -0.01]) == pytest.approx(0.1)
    assert upper_bound_fraction([0.05, 0.01]) == pytest.approx(0.02)  # floor
    for errs in ([-0.3], [-0.0449], [0.2, -0.12]):
        f = upper_bound_fraction(errs)
        assert all((1 + e) * (1 + f) >= 1 for e in errs)


# ----------------------------------------------------------------------------------- files
def test_calibration_file_roundtrip(tmp_path):
    res = fit(_points(), Calibration(), estimator=stub_estimate)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"schema": "vramplan.calibration/1", **res.to_dict()}))
    back = Calibration.load(path)
    assert back == res.calibration and back.uncertainty == res.calibration.uncertainty


@pytest.mark.parametrize("text, msg", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                       ('{"cuda_context_bytes": -5}', "non-negative"),
                                       ('{"warp": 1}', "unknown calibration field"),
                                       ('{"per_device": {"A100": {"warp": 1}}}', "unknown constant"),
                                       ('{"per_device": {"A100": {"allocator_reserve_fraction": -1}}}',
                                        "number in"),
                                       ('{"per_device": [1]}', "must be an object"),
                                       ('{"allocator_reserve_loss_factor": "big"}', "number in"),
                                       ('{"per_device": {"H200": {"allocator_reserve_loss_factor": 12}}}',
                                        "number in")])
def test_bad_calibration_file(tmp_path, text, msg):
    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(CalibrationError, match=msg):
        Calibration.load(p)


def test_shipped_default_states_what_it_was_fitted_on():
    from vramplan.calibration import default_calibration

    cal = default_calibration()
    assert "reference" in cal.fitted_on and cal.uncertainty
    assert 0 < cal.upper_bound_fraction < 0.5


# ------------------------------------------------------------------------------------- CLI


def test_cli_bad_calibration_file_exits_2(cli_run, tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{oops")
    line = _one_line_exit2(cli_run, "validate", "--calibration", str(p), "--no-reference")
    assert "not valid JSON" in line


def test_cli_nothing_to_fit_exits_2(cli_run, tmp_path):
    line = _one_line_exit2(cli_run, "calibrate", "--no-reference", "-o", str(tmp_path / "c.json"))
    assert "no measured figures" in line


def test_cli_other_schema_profile_exits_2_with_explanation(cli_run, tmp_path):
    p = tmp_path / "old.json"
    p.write_text(json.dumps({"schema": "vramplan.profile/0", "model": "x"}))
    line = _one_line_exit2(cli_run, "calibrate", str(p), "-o", str(tmp_path / "c.json"))
    assert "vramplan.profile/0" in line and "re-record" in line


def test_cli_missing_profile_path_exits_2(cli_run, tmp_path):
    line = _one_line_exit2(cli_run, "calibrate", str(tmp_path / "nope"), "-o", str(tmp_path / "c.json"))
    assert "no such profile" in line


def test_cli_too_few_for_requested_constant_exits_2(cli_run, tmp_path):
    line = _one_line_exit2(cli_run, "calibrate", "--fit", "cuda_context_bytes", "-o", str(tmp_path / "c.json"))
    assert "cuda_context_bytes" in line and "process-total" in line


def test_cpu_device_has_no_cuda_runtime():
    cal = Calibration(cuda_context_bytes=700 * MiB, cublas_workspace_bytes=32 * MiB, allocator_reserve_fraction=0.1,
                      fused_dequant_factor=2.0)
    cpu = cal.for_device("cpu")
    assert (cpu.cuda_context_bytes, cpu.cublas_workspace_bytes, cpu.allocator_reserve_fraction,
            cpu.allocator_reserve_bytes) == (0, 0, 0.0, 0)
    assert cpu.fused_dequant_factor == 2.0  # a kernel property, not a CUDA-runtime one


def test_cpu_figures_only_inform_device_independent_constants():
    pts = [replace(p, device="cpu", device_kind="cpu") for p in _points(kinds=("allocated",))]
    res = fit(pts, Calibration(), estimator=stub_estimate)
    by = {c.name: c for c in res.constants}
    assert not by["cublas_workspace_bytes"].fitted and by["cublas_workspace_bytes"].points == 0
    assert by["fused_dequant_factor"].fitted


def test_cli_calibrate_writes_a_loadable_file(cli_run, tmp_path):
    out = tmp_path / "c.json"
    code, stdout, err = cli_run("calibrate", "--base", "defaults", "-o", str(out))
    assert code == 0, err
    cal = Calibration.load(out)
    assert "pm-24" in cal.fitted_on and cal.allocator_reserve_fraction > 0
    assert "residuals" in stdout and "before" in stdout and "after" in stdout
    assert "cuda_context_bytes" in stdout and "process-total" in stdout  # kept, and why


def test_cli_folder_of_other_schema_profiles_exits_2(cli_run, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"schema": "vramplan.profile/0", "model": "x"}))
    line = _one_line_exit2(cli_run, "calibrate", str(tmp_path), "-o", str(tmp_path / "c.json"))
    assert "no readable profile" in line and "vramplan.profile/0" in line


def test_figures_no_constant_moves_do_not_change_the_fit():
    a = _points()
    noise = [replace(p, id="cpu-" + p.id, device="cpu", device_kind="cpu", measured_bytes=int(p.measured_bytes * 0.7))
             for p in _points(kinds=("allocated",)) if p.scenario.quant.value == "none"]
    r1 = fit(a, Calibration(), estimator=stub_estimate).calibration
    r2 = fit(a + noise, Calibration(), estimator=stub_estimate).calibration
    for name in ("cuda_context_bytes", "allocator_reserve_fraction", "cublas_workspace_bytes"):
        assert getattr(r2, name) == pytest.approx(getattr(r1, name), rel=1e-6), name


def test_for_device_matches_whole_words():
    """Per-device constants go to the right card: 'A10' must not take A100's, and the most specific
    kind wins."""
    cal = Calibration(per_device={"A100": {"cuda_context_bytes": 1}, "A10": {"cuda_context_bytes": 2},
                                  "A100 80GB": {"cuda_context_bytes": 3}})
    assert cal.for_device("NVIDIA A10").cuda_context_bytes == 2
    assert cal.for_device("NVIDIA A100-SXM4-40GB").cuda_context_bytes == 1
    assert cal.for_device("A100 80GB").cuda_context_bytes == 3
    assert cal.for_device("H100").cuda_context_bytes == Calibration().cuda_context_bytes


def test_cublas_workspace_of_a_card_without_a_fit_is_pytorchs_default_for_its_architecture():
    """Two handles (the Python thread and autograd's device thread) × ``parseChosenWorkspaceSize``'s
    default: 4096 KiB × 8 = 32 MiB on sm_90, ``:4096:2:16:8`` = 8,519,680 B elsewhere (T4 sm_75,
    A100 sm_80, RTX 4090 sm_89, RTX 5090 sm_120). A card with its own fit keeps the fitted value; an
    unnamed CUDA device keeps the global constant."""
    from vramplan.calibration import default_calibration, default_cublas_workspace_bytes

    other = 2 * (2 * 4096 * 1024 + 8 * 16 * 1024)
    assert other == 17_039_360
    cal = Calibration(cublas_workspace_bytes=5 * MiB)
    for card in ("Tesla T4", "NVIDIA A100-SXM4-80GB", "rtx 4090", "RTX 5090", "V100"):
        assert cal.for_device(card).cublas_workspace_bytes == other, card
    for card in ("H100", "NVIDIA H100 80GB HBM3", "H200"):
        assert cal.for_device(card).cublas_workspace_bytes == 64 * MiB, card
    assert cal.for_device("cuda").cublas_workspace_bytes == 5 * MiB
    assert cal.for_device("MI300X").cublas_workspace_bytes == 5 * MiB  # no CUDA compute capability
    assert cal.for_device("cpu").cublas_workspace_bytes == 0
    shipped = default_calibration()
    assert shipped.for_device("NVIDIA H200").cublas_workspace_bytes == shipped.per_device["H200"]["cublas_workspace_bytes"]
    # the H200 fit agrees with the derivation to 0.2 %
    assert abs(shipped.per_device["H200"]["cublas_workspace_bytes"] / default_cublas_workspace_bytes("9.0") - 1) < 0.002
