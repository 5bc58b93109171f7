"""One device, one meaning, whichever engine runs (issue 12): before the Device value,
``vramplan.estimate(..., method="trace", device="cpu")`` zeroed the CUDA runtime terms but priced the
CUDA program, while the analytic engine priced the CPU program."""

from __future__ import annotations

import pytest

import vramplan
from vramplan.arch import resolve
from vramplan.device import Device
from vramplan.scenario import Scenario

pytestmark = pytest.mark.torch
pytest.importorskip("torch")

#: CPU and CUDA differ here: LoRA dropout > 0 without checkpointing (bool vs input-dtype masks, peft's
#: CPU-only fp32 cast of the LoRA input).
SC = Scenario(seq=128, grad_checkpointing=False, lora_dropout=0.1)


@pytest.fixture(scope="module")
def priced():
    a = resolve("vramplan-debug")
    return {(m, d): vramplan.estimate(a, SC, method=m, device=d)
            for m in ("analytic", "trace") for d in ("cpu", None, "NVIDIA H200")}


def test_cpu_device_prices_the_cpu_program_in_both_engines(priced):
    trace_cpu, trace_cuda = priced[("trace", "cpu")], priced[("trace", None)]
    assert trace_cpu.extra["semantics"] == "cpu" and trace_cuda.extra["semantics"] == "cuda"
    assert trace_cpu.allocated_peak_bytes > trace_cuda.allocated_peak_bytes - trace_cuda.get("temporary/cublas_workspace")
    for engine in ("analytic", "trace"):
        b = priced[(engine, "cpu")]
        assert not b.get("runtime/cuda_context") and not b.get("temporary/cublas_workspace")
        assert b.total_bytes == b.allocated_peak_bytes


@pytest.mark.parametrize("device", ["cpu", None, "NVIDIA H200"])
def test_engines_agree_on_every_device(priced, device):
    ours, theirs = priced[("analytic", device)], priced[("trace", device)]
    assert abs(ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1) < 0.03
    runtime = lambda b: {c.name for c in b.runtime}  # noqa: E731
    assert runtime(ours) == runtime(theirs)
    assert ours.get("runtime/cuda_context") == theirs.get("runtime/cuda_context")


def test_a_device_value_and_its_name_are_the_same(priced):
    a = resolve("vramplan-debug")
    by_value = vramplan.estimate(a, SC, method="trace", device=Device.cpu())
    assert by_value.allocated_peak_bytes == priced[("trace", "cpu")].allocated_peak_bytes
