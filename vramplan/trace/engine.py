"""``trace()``: the trace engine's one entry point (the ``vramplan.engine`` signature)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from vramplan.analytic import effective_attention, loss_workspace_bytes
from vramplan.analytic.runtime import runtime_components
from vramplan.arch.spec import Arch
from vramplan.breakdown import Breakdown, Component
from vramplan.device import Device
from vramplan.engine import runtime_calibration
from vramplan.errors import VramplanError
from vramplan.parallel import require as require_strategy
from vramplan.hf import interventions
from vramplan.analytic.offload import TRL_FWD_STASH
from vramplan.scenario import Offload, Scenario, Strategy
from vramplan.trace.extrapolate import Figures, figures
from vramplan.trace.evaluation import PHASE as EVAL_PHASE
from vramplan.trace.labels import NOTES, ORDER
from vramplan.trace.notes import trace_notes, versions
from vramplan.trace.run import trace_run


def trace(arch: Arch, scenario: Scenario, *, layers: int | None = None, steps: int = 2,
          extrapolate: bool = True, calibration: Any = None, device: Any = None) -> Breakdown:
    """Allocated memory of ``scenario``'s training step on ``arch``, traced on fake tensors.

    ``layers``: trace only the first ``layers`` decoder layers and report that truncated model.
    ``steps``: training steps traced (the last is the steady state; optimizer state exists from the
    second step on). ``device`` (``vramplan.device.Device`` or anything ``Device.parse`` takes; None =
    an unnamed CUDA device) picks the program and the runtime constants: on a CUDA device (the
    product: what the step allocates on CUDA) the CUDA-only behaviours are emulated (see
    ``vramplan.hf.interventions``); on the CPU it is the CPU program exactly as it runs (CPU
    profiles, fake-vs-real tests). ``extrapolate``: trace c1, c1 + p, c1 + 2p layers and extrapolate
    exactly when the increments agree (see ``vramplan.trace.extrapolate``); ``False`` traces every layer.

    The frameworks' own warnings and log lines are silenced while tracing (they concern the CPU stand-in,
    not the user's run); what matters is reported in ``Breakdown.notes``."""
    if not isinstance(steps, int) or steps < 1:
        raise VramplanError(f"steps must be a positive integer, got {steps!r}")
    require_strategy(scenario, "trace")
    dev = Device.parse(device)
    calibration = runtime_calibration(calibration, dev)
    attn, attn_note = effective_attention(arch, scenario)  # Gemma 2: sdpa -> eager, as transformers
    run_scenario = scenario.replace(attn=attn) if attn is not scenario.attn else scenario
    t0 = time.perf_counter()
    with interventions.quiet_frameworks():
        # TRL's forward stash keeps up to 5 offloaded tensors: trace past it before extrapolating
        first = TRL_FWD_STASH + 1 if scenario.offload is Offload.ACTIVATIONS else 0
        # images: the vision path reads tensor values (grid sizes, placeholder positions, per-image
        # attention lengths), which fake tensors cannot: the step runs on real CPU tensors
        fake = not (arch.vision is not None and scenario.images)
        fig = figures(arch, lambda n: trace_run(arch, run_scenario, layers=n, steps=steps, device=dev, fake=fake),
                      layers=layers, extrapolate=extrapolate and not depth_bound(scenario), min_first=first)
        bd = _breakdown(arch, run_scenario, fig, calibration, dev, steps, t0)
    from vramplan.analytic.terms import checkpoint_notes

    extra = ((attn_note,) if attn_note else ()) + checkpoint_notes(arch, scenario)  # gpt-oss's MXFP4 experts
    if extra:
        bd = replace(bd, notes=extra + tuple(bd.notes))
    if not arch.family.record:
        bd = replace(bd, notes=tuple(bd.notes) + (NO_RECORD_NOTE.format(model_type=arch.model_type),))
    return bd


def depth_bound(scenario: Scenario) -> bool:
    """Whether the step's peak is not affine in the layer count, so the trace runs every layer.

    ZeRO-3: its parameter coordinator keeps gathered the layers its prefetch front passes while
    ``stage3_max_live_parameters`` allows (``vramplan.parallel.zero3_schedule``): the kept set grows with
    the depth, then stops. Three short traces agree there and still extrapolate wrong (Llama-3.2-1B LoRA on
    2 GPUs: 4,253,372,414 B extrapolated from 1-3 layers against 3,902,948,350 B traced at its 16).
    ZeRO-2: a rank's gradient partition exists from the first copy of a gradient in its range of the flat
    buffer (``vramplan.parallel.zero._partition_ready``), a range that moves through the layers as the depth
    grows; short traces do not agree, and stepping the depth one period at a time until they do ran past
    30 minutes on Llama-3.1-70B at 8 GPUs, where tracing its 80 layers takes under a minute."""
    return scenario.strategy in (Strategy.ZERO2, Strategy.ZERO3)


#: The note of a trace of a model_type with no family record (``vramplan.arch.families.generic``).
NO_RECORD_NOTE = ("model_type '{model_type}' has no family record: this trace of transformers' own modeling code is "
                  "the only estimate (the analytic engine, plan and the model listings need a record: "
                  "docs/adding-a-model.md); the allocator reserve's loss share reads the config's hidden size and "
                  "vocabulary")


def _breakdown(arch: Arch, scenario: Scenario, fig: Figures, calibration: Any, device: Device, steps: int,
               t0: float) -> Breakdown:
    """The breakdown of the steady step's peak, with the runtime terms and the notes."""
    steady = fig.steady
    components = [Component(name, name.split("/")[0], int(steady[name]), NOTES.get(name, ""))
                  for name in sorted(steady, key=lambda k: (ORDER.index(k) if k in ORDER else 99, k))
                  if steady[name]]
    allocated = sum(c.bytes for c in components)
    notes = trace_notes(arch, scenario, fig, device)
    if fig.managed:
        components.append(Component("managed/paged_optimizer", "managed", int(fig.managed),
                                    "paged optimizer state in CUDA managed memory (tensors >= 1e5 elements)"))
    runtime, runtime_note = _runtime(arch, scenario, allocated, calibration, skip_managed=bool(fig.managed),
                                     evaluation=fig.peak_phase == EVAL_PHASE)
    components.extend(runtime)
    notes.append(runtime_note)
    by_cat: dict[str, int] = {}
    for name, v in steady.items():
        by_cat[name.split("/")[0]] = by_cat.get(name.split("/")[0], 0) + int(v)
    extra = {
        "first_step_peak_bytes": int(sum(fig.first.values())),
        "steady_step_peak_bytes": int(allocated),
        "seconds": round(time.perf_counter() - t0, 3),
        "layers_traced": fig.traced,
        "layers_reported": fig.layers,
        "extrapolated": fig.period is not None,
        "steps": steps,
        "semantics": device.semantics,
        "peak_by_category": by_cat,
        "first_step_by_component": {k: int(v) for k, v in fig.first.items() if v},
        "versions": versions(),
        "phases": dict(fig.phases or {}),
    }
    if scenario.eval_batch and fig.phases and EVAL_PHASE in fig.phases:
        from vramplan.analytic import eval_note

        train = max(v for k, v in fig.phases.items() if k != EVAL_PHASE)
        extra.update(training_peak_bytes=train, eval_peak_bytes=fig.phases[EVAL_PHASE])
        notes.append(eval_note(scenario, train, fig.phases[EVAL_PHASE], "busiest moment"))
    host = tuple(Component(name, "host", int(v), "copies the offload hooks moved to host memory (counted as "
                                                 "host bytes, in PyTorch's pinned-allocator blocks)")
                 for name, v in sorted((fig.host or {}).items()) if v)
    return Breakdown(tuple(components), engine="trace", notes=tuple(notes), peak_phase=fig.peak_phase,
                     extra=extra, host=host)


def _runtime(arch: Arch, scenario: Scenario, allocated: int, calibration: Any,
             skip_managed: bool, evaluation: bool = False) -> tuple[list[Component], str]:
    """The runtime terms an op-level trace cannot see, from the analytic model, and their note
    (``evaluation``: the evaluation is the peak, its loss blocks join the reserve's workspace)."""
    ws = loss_workspace_bytes(arch, scenario, evaluation=True) if evaluation else None
    comps = [c for c in runtime_components(arch, scenario, allocated, calibration, loss_workspace=ws)
             if not (skip_managed and c.category == "managed")]
    return comps, ("runtime terms an op-level trace cannot see (CUDA context, cuBLAS workspace, allocator "
                   "reserve) come from the analytic model's runtime_components; bitsandbytes' in-kernel "
                   "dequantization on CUDA (inputs > 1536 rows) is counted at its op as temporary/fused_dequant")
