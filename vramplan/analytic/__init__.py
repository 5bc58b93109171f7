"""The analytic engine: an instant, explainable memory budget of one fine-tuning step.

``estimate(arch, scenario)`` prices every term with the pure functions of this package and picks the
peak among the phases of a training step:

- ``terms.py``: the scenario-shape terms (weights, quantization state, adapters, optimizer state, the
  per-token coefficients of the activations), cached per (arch, scenario less its batch shape);
- ``phases.py``: one function per phase of the step, multiplying those out for the batch;
- ``weights``, ``adapters``, ``optimizer``, ``activations``, ``logits``, ``runtime``: one pure
  function per memory term, each citing its source.

Plain int arithmetic, so a call costs tens of microseconds (the planner sweeps thousands). No torch.
"""

from __future__ import annotations

from vramplan.analytic import phases as ph
from vramplan.analytic.runtime import runtime_components
from vramplan.analytic.terms import (SDPA_FALLBACK_NOTE, StaticTerms, effective_attention, loss_workspace,
                                     static_terms)
from vramplan.arch.families import no_record_reason
from vramplan.arch.spec import Arch, ArchError
from vramplan.breakdown import RUNTIME_CATEGORIES, Breakdown, Component, Totals
from vramplan.calibration import Calibration
from vramplan.device import Device
from vramplan.engine import runtime_calibration
from vramplan.parallel import require as require_strategy
from vramplan.parallel.rank import priced_scenario, rank_terms
from vramplan.scenario import Scenario

__all__ = ["estimate", "runtime_components", "static_terms", "effective_attention",
           "loss_workspace_bytes", "StaticTerms", "SDPA_FALLBACK_NOTE"]


def loss_workspace_bytes(arch: Arch, scenario: Scenario, evaluation: bool = False) -> int:
    """The loss workspace of ``scenario`` (``terms.loss_workspace``): the same on every device, since
    no loss tensor differs between the CPU and CUDA programs. ``evaluation``: the allocated peak is the
    evaluation's, whose eval batches leave their own loss blocks cached (``_eval_workspace``): the
    larger of the two."""
    st = static_terms(arch, scenario)
    ws = st.loss_workspace(scenario.batch, scenario.seq)
    return max(ws, _eval_workspace(st, scenario)) if evaluation else ws


def _eval_workspace(st: StaticTerms, scenario: Scenario) -> int:
    """``evaluation.eval_loss_workspace`` of the scenario's eval batch (0 without evaluation)."""
    from vramplan.analytic.evaluation import eval_loss_workspace

    if not scenario.eval_batch:
        return 0
    return eval_loss_workspace(seq=scenario.seq, k=scenario.kept_positions, batch=scenario.eval_batch, V=st.vocab,
                               ld=st.logits_bytes, legacy=st.legacy, generates=bool(scenario.eval_new_tokens))


def estimate(arch: Arch, scenario: Scenario, calibration: Calibration | None = None,
             device: "Device | str | None" = None) -> Breakdown:
    """Analytic memory budget of one training step (engine ``analytic``, ``vramplan.engine.Engine``).

    Allocated components sum to the allocated peak (the largest phase, ``Breakdown.peak_phase``);
    runtime components follow; ``Breakdown.upper`` is point × (1 + upper_bound_fraction). The
    ``device`` decides the program priced (``Device.semantics``: on CPU, what the same program
    allocates there, two documented differences, see ``activations.Dtypes.cuda``) and the runtime
    constants (``vramplan.engine.runtime_calibration``).
    """
    if not arch.family.record:  # no family record: only the trace can price it
        raise ArchError(no_record_reason(arch))
    require_strategy(scenario, "analytic")
    dev = Device.parse(device)
    cal = runtime_calibration(calibration, device)
    st = static_terms(arch, priced_scenario(scenario), dev.semantics)  # the step the strategy runs
    x = ph.batch(st, scenario.seq, scenario.batch, scenario.grad_checkpointing, scenario.full,
                 cal.fused_dequant_factor)
    rk = rank_terms(arch, scenario, st)  # the strategy's seam (vramplan.parallel.rank); identity for single
    totals = rk.totals(st, x, ph.totals(st, x, scenario.full))
    phase = max(totals, key=totals.__getitem__)
    grads, rows = rk.components(phase, st, x)
    comps = [*rk.static_comps(st), Component(st.grad_name, "gradients", grads,
                                             "gradients alive at the peak (set to None after each step)")]
    comps += [Component(*r) for r in rows]
    allocated = rk.static(st) + grads + sum(r[2] for r in rows)
    loss_ws = loss_workspace(x.loss_b, x.loss_f, x.held)
    if phase == ph.EVALUATION:  # the evaluation is the peak: its own loss blocks are cached too
        loss_ws = max(loss_ws, _eval_workspace(st, scenario))
    runtime = runtime_components(arch, scenario, allocated, cal, loss_workspace=loss_ws)
    runtime += rk.runtime if dev.semantics == "cuda" else ()  # NCCL: CUDA only (a CPU run talks gloo)
    comps.extend(runtime)
    upper = _upper(allocated, runtime, 1.0 + cal.upper_bound_fraction)
    extra = dict(phases={k: v + st.static for k, v in totals.items()}, trainable_params=st.n_train,
                 calibration=cal.fitted_on)
    notes = st.notes + rk.notes
    if x.eval is not None:
        train = max(v for k, v in totals.items() if k != ph.EVALUATION) + st.static
        evaluation = totals[ph.EVALUATION] + st.static  # the strategy's (the rank's) evaluation phase
        extra.update(training_peak_bytes=train, eval_peak_bytes=evaluation, eval_moment=x.eval.moment)
        notes += (eval_note(scenario, train, evaluation, x.eval.moment),)
    return Breakdown(tuple(comps), engine="analytic", notes=notes, peak_phase=phase, upper=upper,
                     host=host_components(scenario, x.host) + rk.host, extra=extra)


def eval_note(scenario: Scenario, train: int, evaluation: int, moment: str) -> str:
    """The breakdown note saying which peak is larger, the training step's or the evaluation's."""
    from vramplan.breakdown import fmt_bytes

    kept = ("nothing kept" if scenario.eval_keep.value == "none"
            else f"{scenario.eval_keep.value} of {scenario.eval_samples} samples kept on the device")
    larger = "the evaluation's is larger and is the reported peak" if evaluation > train else \
        "the training step's is larger"
    if scenario.eval_new_tokens:
        how = (f"generating {scenario.eval_new_tokens} token(s) per sequence with a DynamicCache (prefill + decode "
               "steps, no loss forward)")
    else:
        how = ("the loss forward builds no KV cache (the Trainer sets model.config.use_cache from "
               "TrainingArguments.use_cache, False by default)")
    return (f"evaluation (eval batch {scenario.eval_batch} × {scenario.seq}, {kept}): peak "
            f"{fmt_bytes(evaluation)} at its {moment}, training step {fmt_bytes(train)}: {larger}; {how}")


def host_components(scenario: Scenario, host: int) -> tuple[Component, ...]:
    """The host rows of a breakdown: the pinned copies of activation offloading (none without it)."""
    if not host:
        return ()
    return (Component("host/pinned", "host", host,
                      f"offload {scenario.offload.value}: page-locked host copies of saved activations "
                      "(power-of-two blocks of PyTorch's pinned allocator)"),)


def _upper(allocated: int, runtime: list[Component], f: float) -> Totals:
    """The three totals × f, summed by the Breakdown rules without re-walking every component."""
    alloc = res = tot = allocated
    for c in runtime:
        joins = RUNTIME_CATEGORIES.get(c.category)
        if joins is None:  # an allocated item (the cuBLAS workspace)
            alloc += c.bytes
        if joins != "total":
            res += c.bytes
        tot += c.bytes
    return Totals(int(alloc * f), int(res * f), int(tot * f))
