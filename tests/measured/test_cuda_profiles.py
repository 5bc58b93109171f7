"""The analytic engine and the shipped calibration against real CUDA measurements.

profiles/cuda/ holds the profiles `tools/cuda_sweep.sh` wrote on an NVIDIA H200 (torch 2.11 + CUDA 13.0,
transformers 5.24.0, peft 0.21.2, bitsandbytes 0.50.2; each file records its device, driver and
versions): `torch.cuda.max_memory_allocated` / `max_memory_reserved` per step and NVML's per-process
figure. No GPU is needed to run these tests: they compare the engine with those stored measurements.
"""

import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from vramplan.analytic import estimate, loss_workspace_bytes
from vramplan.analytic.runtime import allocator_reserve_bytes
from vramplan.arch import Arch, resolve
from vramplan.calibration import Calibration, default_calibration
from vramplan.profile.store import SCHEMA, load_profiles
from vramplan.scenario import Scenario

FOLDER = Path(__file__).resolve().parents[2] / "profiles" / "cuda"
MiB = 1024**2
GiB = 1024**3


@pytest.fixture(scope="module")
def profiles():
    problems: list[str] = []
    ps = load_profiles(FOLDER, problems)
    assert not problems, problems
    assert len(ps) >= 20
    return ps


def _estimate(p):
    arch = Arch.from_config(p.arch_config, name=p.model)
    return estimate(arch, p.scenario, device=p.device["name"])


def _real(ps):
    """Runs of the size a GPU is rented for (the smoke model's few MiB are segment rounding)."""
    return [p for p in ps if p.measured["allocated_peak_bytes"] >= GiB]


def test_profiles_name_their_device_and_versions(profiles):
    for p in profiles:
        assert p.schema == SCHEMA
        assert p.device["kind"] == "cuda" and "H200" in p.device["name"], p.path
        assert p.device["total_memory_bytes"] > 100 * GiB and p.device["capability"] == "9.0"
        for pkg in ("torch", "transformers", "peft", "bitsandbytes"):
            assert p.versions[pkg], (p.path, pkg)
        m = p.measured
        assert m["oom"] is None
        assert m["allocated_peak_bytes"] <= m["reserved_peak_bytes"] <= m["process_peak_bytes"]


def test_analytic_allocated_peak_within_1_percent_of_max_memory_allocated(profiles):
    """The analytic allocated peak against torch.cuda.max_memory_allocated, every run ≥ 1 GiB:
    dense and MoE, 0.6B to 70B, seq 512 to 8192, GC on and off, three recipes, three optimizers,
    fp4 and nf4, the legacy-loss reference configurations."""
    errs = {}
    for p in _real(profiles):
        b = _estimate(p)
        meas = p.measured["allocated_peak_bytes"]
        errs[p.path.name] = (b.allocated_peak_bytes - meas) / meas
    assert len(errs) >= 20
    worst = max(errs, key=lambda k: abs(errs[k]))
    assert abs(errs[worst]) <= 0.01, (worst, errs[worst])


def test_smoke_model_pins_the_cublas_workspace(profiles):
    """A 2-layer, 64-wide model allocates almost nothing but cuBLAS/cuBLASLt workspaces: its measured
    peak is the workspace constant plus a few MiB of tensors."""
    smoke = [p for p in profiles if p.model == "vramplan-debug"]
    assert smoke
    for p in smoke:
        b = _estimate(p)
        meas = p.measured["allocated_peak_bytes"]
        assert abs(b.allocated_peak_bytes - meas) <= 2 * MiB, (p.path.name, b.allocated_peak_bytes, meas)


def test_cuda_context_is_the_measured_gap_between_nvml_and_reserved(profiles):
    gaps = [p.measured["process_peak_bytes"] - p.measured["reserved_peak_bytes"] for p in profiles]
    gap = statistics.median(gaps)
    ctx = default_calibration().for_device("NVIDIA H200").cuda_context_bytes
    assert 600 * MiB < gap < 900 * MiB
    assert abs(ctx - gap) / gap <= 0.10, (ctx / MiB, gap / MiB)


def test_conservative_bounds_cover_every_real_run(profiles):
    """estimate's upper bounds (point × (1 + upper_bound_fraction)) are at least what the H200 measured:
    reserved against max_memory_reserved, process total against NVML."""
    for p in _real(profiles):
        b = _estimate(p)
        m = p.measured
        assert b.upper.reserved >= m["reserved_peak_bytes"], p.path.name
        assert b.upper.total >= m["process_peak_bytes"], p.path.name


def test_reserved_median_error_on_h200(profiles):
    errs = []
    for p in _real(profiles):
        b = _estimate(p)
        m = p.measured["reserved_peak_bytes"]
        errs.append(abs(b.reserved_peak_bytes - m) / m)
    assert statistics.median(errs) <= 0.05


# -------------------------------------------------------------------- the reserve term by hand
def test_loss_workspace_golden_hf():
    """transformers 5 loss: three fp32 b·s·V buffers (log-softmax output, nll gradient, log-softmax
    gradient) at the loss backward. Qwen3-14B, V = 151,936, 1 × 2048 tokens."""
    assert loss_workspace_bytes(resolve("Qwen3-14B"), Scenario(seq=2048)) == 12 * 151_936 * 2048 == 3_733_979_136


def test_loss_workspace_golden_legacy_held():
    """transformers ≤ 4.44 loss on Llama-2-7b (V = 32,000), 8 × 2048, output held through the step:
    the loss forward's cross-entropy moment (fp32 logits 4·V·T + shifted copy and log-softmax output
    2 × 4·V·(T − b)) exceeds the backward's 12·V·(T − b); plus the held fp32 logits 4·V·T."""
    sc = Scenario(seq=2048, batch=8, rank=64, lora_dropout=0.1, recipe="plain", autocast=False,
                  adapter_dtype="bf16", loss="legacy", hold_logits="step", bnb_keeps_input=True)
    V, T, T1 = 32_000, 16_384, 16_376
    want = (4 * V * T + 8 * V * T1) + 4 * V * T
    assert want == 8_386_560_000
    assert loss_workspace_bytes(resolve("Llama-2-7b-hf"), sc) == want


def test_reserve_is_fraction_plus_fixed_plus_loss_share():
    cal = Calibration(allocator_reserve_fraction=0.02, allocator_reserve_bytes=3 * MiB,
                      allocator_reserve_loss_factor=0.25)
    assert allocator_reserve_bytes(10 * GiB, cal, 4 * GiB) == int(10 * GiB * 0.02) + 3 * MiB + GiB


def test_reserve_component_uses_the_loss_workspace():
    arch, sc = resolve("Llama-3.1-8B"), Scenario(seq=4096)
    on = Calibration(allocator_reserve_fraction=0.0, allocator_reserve_loss_factor=0.5)
    off = Calibration(allocator_reserve_fraction=0.0, allocator_reserve_loss_factor=0.0)
    b_on, b_off = estimate(arch, sc, calibration=on), estimate(arch, sc, calibration=off)
    assert b_on.allocated_peak_bytes == b_off.allocated_peak_bytes
    assert b_on.reserved_peak_bytes - b_off.reserved_peak_bytes == int(0.5 * loss_workspace_bytes(arch, sc))


def test_cpu_has_no_reserve_even_with_a_loss_factor():
    cal = Calibration(allocator_reserve_loss_factor=0.5)
    b = estimate(resolve("Qwen3-0.6B"), Scenario(seq=1024), calibration=cal, device="cpu")
    assert b.reserved_peak_bytes == b.allocated_peak_bytes


def test_estimate_gpu_flag_takes_that_cards_constants(cli_run):
    """`estimate --gpu H200` prices with the H200's fitted constants (as `plan --gpu` does); a card
    with no entry of its own gets the global ones, but for the cuBLAS workspace, which is PyTorch's
    default for its architecture (RTX 4090, sm_89: two handles × 8,519,680 B, not Hopper's 32 MiB)."""
    import json

    cal = default_calibration()
    assert "H200" in cal.per_device
    arch, sc = resolve("Qwen3-14B"), Scenario()
    code, out, err = cli_run("estimate", "-m", "Qwen3-14B", "--gpu", "H200", "--json")
    assert code == 0, err
    h200 = json.loads(out)
    assert h200["reserved_peak_bytes"] == estimate(arch, sc, calibration=cal, device="H200").reserved_peak_bytes
    code, out, err = cli_run("estimate", "-m", "Qwen3-14B", "--gpu", "rtx4090", "--json")
    assert code == 0, err
    other = json.loads(out)
    ada = replace(cal, cublas_workspace_bytes=2 * (2 * 4096 * 1024 + 8 * 16 * 1024))
    assert other["reserved_peak_bytes"] == estimate(arch, sc, calibration=ada).reserved_peak_bytes
    assert other["reserved_peak_bytes"] != estimate(arch, sc, calibration=cal).reserved_peak_bytes
    assert other["reserved_peak_bytes"] != h200["reserved_peak_bytes"]


def test_legacy_loss_maps_one_full_shape_segment():
    """The legacy loss's slice backward needs a fresh 4·V·b·s segment (no cached block of b·(s−1) rows
    can hold it): Llama-2-7b, V = 32,000, 8 × 2048 tokens -> 2,097,152,000 bytes more reserve than
    the same factor-priced reserve alone; nothing for the transformers-5 loss, nothing on CPU."""
    from vramplan.analytic.logits import slice_gradient_segment_bytes

    arch = resolve("Llama-2-7b-hf")
    legacy = Scenario(seq=2048, batch=8, recipe="plain", autocast=False, adapter_dtype="bf16", loss="legacy")
    assert slice_gradient_segment_bytes(32_000, 16_384, True) == 4 * 32_000 * 16_384 == 2_097_152_000
    assert slice_gradient_segment_bytes(32_000, 16_384, False) == 0
    cal = Calibration(allocator_reserve_fraction=0.01, allocator_reserve_loss_factor=0.0, allocator_reserve_bytes=0)
    b = estimate(arch, legacy, calibration=cal)
    reserve = next(c.bytes for c in b.components if c.name == "runtime/allocator_reserve")
    ws = next(c.bytes for c in b.components if c.name == "temporary/cublas_workspace")
    assert reserve == int((b.allocated_peak_bytes) * 0.01) + 2_097_152_000
    assert ws == cal.cublas_workspace_bytes
    hf = estimate(arch, legacy.replace(loss="hf"), calibration=cal)
    assert next(c.bytes for c in hf.components if c.name == "runtime/allocator_reserve") == int(
        hf.allocated_peak_bytes * 0.01)
    cpu = estimate(arch, legacy, calibration=cal, device="cpu")
    assert cpu.reserved_peak_bytes == cpu.allocated_peak_bytes
