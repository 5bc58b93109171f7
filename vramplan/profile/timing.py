"""How long a profile run will take, said before it starts (a long sweep must not run silently).

A rough figure, only for the warning: matmul FLOPs of one step over an effective rate, plus a
fixed cost per decoder layer and per point. Per step, with T = b·s tokens and N the linear weights:
1. forward: 2·T·N for the linears (and the k of E fused experts each token runs) + 2·b·s²·(heads·head_dim)·L for the causal scores and their
   product with V (half of the full s × s);
2. backward: about twice the forward; checkpointing re-runs the forward once more.
The rates and fixed costs are read off the stored profiles (``profiles/cpu``: 2-layer models at
tens of ms per step, about 100 GFLOP/s on 2 cores; ``profiles/cuda``, an H200: 0.2 to 0.46 PFLOP/s
on 1.7B-70B models). A CPU profile runs its steps twice (with the tracker, then timed without).
"""

from __future__ import annotations

from typing import Any

#: Effective FLOP/s by device kind (see the module docstring).
RATE = {"cpu": 1e11, "cuda": 2e14}
#: Seconds per decoder layer per step (kernel launches, Python, the CPU tracker).
PER_LAYER = {"cpu": 0.015, "cuda": 0.004}
#: Seconds per point for loading and preparing the model.
PER_POINT = {"cpu": 2.0, "cuda": 10.0}


def step_flops(arch: Any, scenario: Any) -> float:
    """Matmul FLOPs of one training step (module docstring, steps 1-2)."""
    T = scenario.seq * scenario.batch
    linears = sum(lin.count * lin.weight_params for lin in arch.linears())
    if arch.is_moe:  # fused experts: each token runs its top-k of them
        linears += arch.expert_params * arch.experts_per_token // arch.num_experts
    attention = 2 * scenario.batch * scenario.seq ** 2 * arch.num_heads * arch.head_dim * arch.num_layers
    forward = 2 * T * linears + attention
    return forward * (4 if scenario.grad_checkpointing else 3)


def expected_seconds(arch: Any, scenario: Any, opts: Any, device: dict[str, Any]) -> float:
    """Rough wall time of one profile point on ``device`` (``device_info``: kind ``cpu`` or ``cuda``)."""
    kind = "cpu" if device.get("kind") == "cpu" else "cuda"
    step = step_flops(arch, scenario) / RATE[kind] + PER_LAYER[kind] * arch.num_layers
    runs = opts.steps + (max(opts.steps - 1, 0) if kind == "cpu" else 0)
    return PER_POINT[kind] + runs * step
