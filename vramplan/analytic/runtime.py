"""Runtime memory outside the tensors: cuBLAS workspace, allocator reserve, CUDA context, managed memory.

These are what a CPU trace cannot see. Their constants come from ``Calibration`` (fitted by
``vramplan calibrate`` from CUDA profiles and ../shared/reference measurements); the paged
optimizer's state is priced exactly (same tensors as the unpaged optimizer, in CUDA managed memory).
Sources: PyTorch 2.x ``c10/cuda/CUDACachingAllocator.cpp`` (reserved = segments the allocator holds;
cuBLAS workspaces come from the allocator since torch 2.1, ``CUDABlas.cpp``), bitsandbytes 0.50.2
``functional.py::get_paged`` (``cudaMallocManaged``).
"""

from __future__ import annotations

from vramplan.analytic.logits import slice_gradient_segment_bytes
from vramplan.analytic.terms import static_terms
from vramplan.arch.spec import Arch
from vramplan.breakdown import Component
from vramplan.calibration import Calibration
from vramplan.scenario import Loss, Scenario


def cublas_workspace_bytes(cal: Calibration) -> int:
    """cuBLAS workspace taken from the caching allocator (counts as allocated)."""
    return cal.cublas_workspace_bytes


def allocator_reserve_bytes(allocated_peak_bytes: int, cal: Calibration, loss_workspace_bytes: int = 0) -> int:
    """Caching-allocator reserve over the allocated peak:
    fraction · allocated + fixed bytes + loss factor · loss workspace.

    Block rounding (512 B small / 2 MiB large segments) and fragmentation between the forward's and
    the backward's allocation patterns. The loss workspace (b·s·V logits, fp32 upcast,
    log-softmax output, gradients) is the step's largest family of transient blocks: once freed
    they stay cached and only partly serve the smaller requests that follow, so the reserve tracks
    them (see ``Calibration.allocator_reserve_loss_factor``). Fitted, not derived.
    """
    return (int(allocated_peak_bytes * cal.allocator_reserve_fraction) + cal.allocator_reserve_bytes
            + int(loss_workspace_bytes * cal.allocator_reserve_loss_factor))


def cuda_context_bytes(cal: Calibration) -> int:
    """CUDA context, module images and library handles: outside the allocator, seen by nvidia-smi."""
    return cal.cuda_context_bytes


def runtime_components(arch: Arch, scenario: Scenario, allocated_peak_bytes: int,
                       calibration: Calibration, loss_workspace: int | None = None) -> list[Component]:
    """Runtime items to append to a breakdown whose tensors sum to ``allocated_peak_bytes``.

    Returns, in order: ``temporary/cublas_workspace`` (allocated: it joins the allocated peak),
    ``runtime/allocator_reserve`` (joins reserved), ``runtime/cuda_context`` (joins the process total)
    and, for paged optimizers, ``runtime/paged_optimizer`` (managed memory, process total only).
    Engines must not count a paged optimizer's state as allocated themselves. ``loss_workspace``:
    ``terms.loss_workspace`` when the caller has it at hand (the analytic engine), else it is computed
    here (the trace).
    """
    ws = cublas_workspace_bytes(calibration)
    loss_ws = 0
    if calibration.allocator_reserve_loss_factor:
        if loss_workspace is None:
            loss_workspace = static_terms(arch, scenario).loss_workspace(scenario.batch, scenario.seq)
        loss_ws = loss_workspace
    segment = 0
    if calibration.allocator_reserve_fraction or calibration.allocator_reserve_loss_factor:  # a caching allocator
        segment = slice_gradient_segment_bytes(arch.vocab_size, scenario.seq * scenario.batch,
                                               scenario.loss is Loss.LEGACY)
    out = [
        Component("temporary/cublas_workspace", "temporary", ws,
                  "cuBLAS workspace from the caching allocator (calibration)"),
        Component("runtime/allocator_reserve", "allocator",
                  allocator_reserve_bytes(allocated_peak_bytes + ws, calibration, loss_ws) + segment,
                  "caching-allocator reserve over allocated: a fraction of it plus a share of the "
                  "b·s·V loss workspace (calibration)"),
        Component("runtime/cuda_context", "context", cuda_context_bytes(calibration),
                  "CUDA context + kernel images + handles (calibration)"),
    ]
    if scenario.optimizer.paged:
        out.append(Component("runtime/paged_optimizer", "managed", static_terms(arch, scenario).paged,
                             "paged optimizer state in CUDA managed memory (not in max_memory_allocated)"))
    return out
