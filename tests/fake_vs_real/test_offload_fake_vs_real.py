"""Activation offloading, fake against real (issue 14): transformers' ``offload=True`` checkpointing
(``save_on_cpu`` around each checkpoint) and TRL's ``OffloadActivations`` run on fake tensors and on
real CPU tensors.

On a CPU-only torch a real ``save_on_cpu(pin_memory=True)`` cannot pin (no pinned allocator), so both
runs take torch's own unpinned branch of the same pack hook (``vramplan.hf.interventions.host_offload``):
the copy is real, in RAM, and the tracker counts it as host memory. Three checks that could each fail:

1. the fake run's device peak is within 1 % of the real run's, step by step;
2. the fake run's host figure equals the real run's to the byte;
3. the real run's host figure equals the pinned blocks of the real layer inputs, measured
   independently of the tracker: forward pre-hooks on a second real model read each decoder layer's
   input tensor (its ``nbytes``), and each is rounded as PyTorch's pinned allocator rounds it.
"""

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytestmark = pytest.mark.torch

from archhelp import small_llama  # noqa: E402
from vramplan.analytic.offload import pinned_block  # noqa: E402
from vramplan.arch import Arch  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402
from vramplan.trace import trace_run  # noqa: E402


CASES = {"qlora-nonreentrant": dict(), "lora-bf16-reentrant": dict(quant="none", reentrant=True),
         "trl-activations": dict(offload="activations")}


def _layer_input_bytes(arch: Arch, sc: Scenario) -> list[int]:
    """Each decoder layer's input tensor of one real forward (bytes), read by forward pre-hooks."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from vramplan.hf import build as B

    model = B.build_model(arch, sc)
    B.materialize(model, sc, fake=False)
    seen: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].untyped_storage().nbytes()))
             for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    batch = B.synthetic_batch(arch, sc, "cpu")
    with B.autocast_context(sc, "cpu"):
        model(**batch)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_offload_fake_equals_real(case):
    arch, sc = small_llama(), Scenario(**{"seq": 96, "batch": 2, "rank": 16, "offload": "checkpoints", **CASES[case]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fake = trace_run(arch, sc, steps=2, fake=True, device="cpu")
        real = trace_run(arch, sc, steps=2, fake=False, device="cpu")
        # transformers' own save_on_cpu(pin_memory=True) raises on a CPU-only torch, so this forward
        # runs plain checkpointing: the layer inputs are the same tensors
        inputs = _layer_input_bytes(arch, sc.replace(offload="none"))
    for f, r in zip(fake.steps, real.steps):
        assert abs(f.peak_bytes - r.peak_bytes) / r.peak_bytes <= 0.01, (case, f.peak_bytes, r.peak_bytes)
        assert f.host == r.host, (case, f.host, r.host)
    assert len(inputs) == arch.num_layers
    layer_inputs = sum(pinned_block(n) for n in inputs)
    if sc.offload.value == "checkpoints":
        assert real.steps[-1].host == {"host/pinned": layer_inputs}
    else:  # TRL's hooks also copy the final norm's and the loss's saved tensors
        assert real.steps[-1].host["host/pinned"] > layer_inputs
