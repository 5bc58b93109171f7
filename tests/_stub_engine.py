"""A small stand-in for the analytic engine, used to test calibrate / validate mechanics.

Its tensor terms are crude on purpose; its runtime terms follow the same rules as
``vramplan.analytic.runtime`` (workspace allocated, reserve on reserved, context and paged state on
the process total), so that a fit against data it generated must recover the constants it used.
"""

from dataclasses import replace

from vramplan.breakdown import Breakdown, Component, Totals


def loss_workspace(arch, scenario):
    """Crude b·s·V loss workspace: three fp32 b·s·V buffers."""
    return 12 * scenario.seq * scenario.batch * arch.vocab_size


def stub_estimate(arch, scenario, calibration=None, device=None):
    from vramplan.calibration import default_calibration

    cal = (calibration or default_calibration()).for_device(device)
    params = arch.total_params
    weights = params // 2 if scenario.quantized_4bit else params * 2
    acts = scenario.seq * scenario.batch * arch.hidden_size * arch.num_layers * 4
    largest = max(lin.in_features * lin.out_features for lin in arch.quantizable_linears()) * 2
    comps = [Component("weights/base", "weights", weights), Component("activations/layers", "activations", acts)]
    if scenario.quantized_4bit:
        comps.append(Component("temporary/dequant", "temporary", int(largest * cal.fused_dequant_factor)))
    comps.append(Component("temporary/cublas_workspace", "temporary", cal.cublas_workspace_bytes))
    alloc = sum(c.bytes for c in comps)
    comps.append(Component("runtime/allocator_reserve", "allocator",
                           int(alloc * cal.allocator_reserve_fraction) + cal.allocator_reserve_bytes
                           + int(loss_workspace(arch, scenario) * cal.allocator_reserve_loss_factor)))
    comps.append(Component("runtime/cuda_context", "context", cal.cuda_context_bytes))
    b = Breakdown(tuple(comps), engine="stub")
    f = 1 + cal.upper_bound_fraction
    return replace(b, upper=Totals(int(b.allocated_peak_bytes * f), int(b.reserved_peak_bytes * f),
                                   int(b.total_bytes * f)))
