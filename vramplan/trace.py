"""Trace engine: the real transformers + peft + bitsandbytes training step, run on fake tensors.

``trace(arch, scenario)`` builds the model exactly as ``vramplan.hf.build`` does for a real run, makes
every tensor a ``FakeTensor`` on CPU (shapes and dtypes, no data, no memory), runs one or more full
training steps (forward with labels, backward, optimizer step) and counts live storage bytes with
``LiveTensorTracker`` (512-byte rounding of the CUDA caching allocator). The result is what PyTorch
allocates for the step, split into the shared categories.

Why CPU fake tensors: with fake CUDA tensors the autograd engine aborts the process in backward
(uncatchable), so everything runs as CPU; autocast therefore uses the CPU autocast op lists.

Fast mode: the allocated peak is exactly affine in the number of decoder layers when the layers
repeat (peak(L) = peak(c1) + (L - c1) / p * (peak(c1 + p) - peak(c1)) for a repeating block of ``p``
layers). ``layer_plan`` picks c1 and the period from the layer pattern (sliding/global attention,
dense/MoE MLP); tests hold the extrapolation to the full trace.

What an op-level trace cannot see (CUDA context, cuBLAS workspace, bitsandbytes' fused 4-bit kernel
dequantizing a whole weight inside the op, allocator fragmentation) is added by
``vramplan.analytic.runtime.runtime_components``, shared with the analytic engine.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from vramplan.arch.spec import Arch
from vramplan.breakdown import Breakdown, Component
from vramplan.errors import VramplanError
from vramplan.scenario import Attn, Optim, Scenario

#: What each traced component name means (notes shown in the breakdown).
NOTES: dict[str, str] = {
    "weights/4bit": "bitsandbytes packed 4-bit weights (2 values per byte)",
    "weights/float": "unquantized parameters and buffers (embeddings, norms, lm_head, experts, biases)",
    "quant_state/bnb": "absmax, nested absmax, code tables and offsets of the 4-bit layers",
    "adapter/lora": "trainable parameters (LoRA A/B, or every weight in full fine-tuning)",
    "gradients/trainable": ".grad of the trainable parameters",
    "optimizer/state": "optimizer state (and its step-time buffers)",
    "activations/saved": "tensors alive from the forward pass (saved for backward, inputs)",
    "activations/recompute": "gradient-checkpointing recomputation inside backward",
    "logits/loss": "logits, fp32 upcast, log-softmax and their gradients",
    "temporary/backward": "transient backward buffers (input gradients, dequantized weights)",
    "temporary/fused_dequant": "weight dequantized inside bitsandbytes' CUDA gemm_4bit for inputs > 1536 rows "
                               "(CUDA path, see vramplan.hf.cuda_path)",
}
ORDER = tuple(NOTES)

#: bitsandbytes pages optimizer state only for tensors of at least this many elements
#: (``Optimizer8bit.get_state_buffer``: ``p.numel() < 1e5`` stays on the device).
PAGED_MIN_NUMEL = 100_000


# ----------------------------------------------------------------------------- layer plan
def _layer_keys(arch: Arch) -> list[tuple[Any, ...]]:
    """One hashable key per decoder layer: what makes layers differ in memory (attention type as the
    transformers config class derives it, e.g. Gemma's sliding/global pattern; dense or MoE MLP)."""
    from vramplan.hf.build import hf_config

    types = getattr(hf_config(arch), "layer_types", None) or arch.config.get("layer_types")
    moe = set(arch.moe_layers)
    keys = []
    for i in range(arch.num_layers):
        t = types[i] if isinstance(types, list) and i < len(types) else None
        keys.append((t, i in moe))
    return keys


def layer_plan(arch: Arch) -> tuple[int, int] | None:
    """``(c1, period)``: the smallest layer count to trace first and the repeating block, such that
    ``arch.num_layers = c1 + k * period`` and c1 + 2 * period layers still fit; ``None`` when the
    full model must be traced.

    The layer sequence must be a prefix of q layers followed by a block of p layers repeating to the
    end; then c1 = q + p + ((L - q) mod p). ``trace`` traces c1, c1 + p and c1 + 2p layers and
    extrapolates only when the two increments agree component by component (else it moves one block
    deeper, and finally traces fully)."""
    keys = _layer_keys(arch)
    n = len(keys)
    for q in range(n):
        for p in range(1, (n - q) // 2 + 1):
            if all(keys[i] == keys[q + (i - q) % p] for i in range(q, n)):
                c1 = q + p + (n - q) % p
                # worth it only when the three short traces hold fewer layers than the model
                if c1 + 2 * p < n and 3 * c1 + 3 * p < n:
                    return c1, p
                break  # a longer period only needs more layers; try a longer prefix
    return None


# ------------------------------------------------------------------------------ one trace
@dataclass
class StepFigures:
    """Peak of each phase (forward, backward, optimizer) of one step, with the bytes per component at it."""

    phases: dict[str, tuple[int, dict[str, int]]]

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda ph: self.phases[ph][0])

    @property
    def peak_bytes(self) -> int:
        return self.phases[self.peak_phase][0]

    @property
    def by_name(self) -> dict[str, int]:
        return self.phases[self.peak_phase][1]


@dataclass
class TraceRun:
    """The figures of one fake-tensor run of ``layers`` decoder layers."""

    layers: int
    steps: list[StepFigures] = field(default_factory=list)
    managed_bytes: int = 0
    seconds: float = 0.0


def _patch_paged(optimizer: Any, tracker: Any) -> None:
    """Paged bitsandbytes optimizers put big state tensors in CUDA managed memory, which the caching
    allocator never sees. On CPU bitsandbytes falls back to ordinary tensors; we tag the ones it
    would have paged so they leave the allocated total."""
    orig = optimizer.get_state_buffer

    def get_state_buffer(p: Any, dtype: Any = None) -> Any:
        import torch

        buf = orig(p, dtype=dtype if dtype is not None else torch.float32)
        if p.numel() >= PAGED_MIN_NUMEL:
            tracker.retag(buf, "managed/paged_optimizer")
        return buf

    optimizer.get_state_buffer = get_state_buffer


def trace_run(arch: Arch, scenario: Scenario, layers: int | None = None, steps: int = 2, *,
              fake: bool = True, seed: int = 0, semantics: str = "cuda") -> TraceRun:
    """Build ``layers`` decoder layers (all by default) and trace ``steps`` training steps.

    ``fake=False`` runs the very same code on real CPU tensors (real bitsandbytes quantization, real
    optimizer step): the reference the fake-tensor run is tested against (with ``semantics="cpu"``).
    ``semantics``: ``"cuda"`` emulates the CUDA-only behaviours of ``vramplan.hf.cuda_path`` (bool
    dropout masks, no peft CPU-only fp32 cast of LoRA inputs); ``"cpu"`` runs the CPU program as is."""
    _check_semantics(semantics)
    from vramplan.hf import build as B

    B.require_torch()
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    from vramplan.hf.cuda_path import cuda_semantics, gemm_4bit_transient
    from vramplan.hf.tracker import LiveTensorTracker

    t0 = time.perf_counter()
    n = arch.num_layers if layers is None else layers
    B.warm_bitsandbytes()
    model = B.build_model(arch, scenario, layers=n)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm_head = base.get_output_embeddings()
    decoder_layers = [m for m in base.modules() if type(m).__name__.endswith("DecoderLayer")]
    run = TraceRun(layers=n)

    with (FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()), \
            _non_bf16_grouped_mm_fallback(), cuda_semantics(semantics == "cuda"):
        B.materialize(model, scenario, fake=fake, seed=seed)
        with unset_fake_temporarily() if fake else contextlib.nullcontext():
            optimizer = B.make_optimizer(model, scenario)
        with LiveTensorTracker(label="activations/saved") as tr:
            tr.transient = gemm_4bit_transient
            _register_model(tr, model)
            if scenario.optimizer.paged:
                _patch_paged(optimizer, tr)
            state = {"phase": "forward", "saved": None}
            _install_hooks(model, lm_head, decoder_layers, tr, state)
            if fake:
                batch = {
                    "input_ids": torch.zeros(scenario.batch, scenario.seq, dtype=torch.long),
                    "labels": torch.zeros(scenario.batch, scenario.seq, dtype=torch.long),
                }
            else:
                batch = B.synthetic_batch(arch, scenario, "cpu", seed=seed)
            carry: dict[str, Any] = {}  # the loop's ``outputs`` binding (Scenario.hold_logits)
            for _ in range(steps):
                tr.reset_peak()
                phases: dict[str, tuple[int, dict[str, int]]] = {}

                def on_phase(phase: str, phases: dict = phases) -> None:
                    # the backward is split where the gradient reaches lm_head's input (``loss
                    # backward`` / ``layers backward``): each part's peak is affine in the layer
                    # count, while the whole backward's peak moment can move from the loss to the
                    # layers with depth, which would break the extrapolation
                    key = "layers backward" if (phase == "backward" and "loss backward" in phases) else phase
                    phases[key] = (tr.peak_bytes, dict(tr.peak_by_category))
                    tr.reset_peak()
                    nxt = {"forward": "backward", "backward": "optimizer", "optimizer": "done"}[phase]
                    state["phase"] = nxt
                    tr.label = {"backward": "logits/loss", "optimizer": "optimizer/state",
                                "done": "temporary/backward"}[nxt]

                def mark_loss_backward(phases: dict = phases) -> None:
                    if state["phase"] == "backward" and "loss backward" not in phases:
                        phases["loss backward"] = (tr.peak_bytes, dict(tr.peak_by_category))
                        tr.reset_peak()

                state["phase"] = "forward"
                state["mark"] = mark_loss_backward
                tr.label = "activations/saved"
                try:
                    B.train_step(model, optimizer, batch, scenario, on_phase=on_phase, carry=carry)
                except _data_dependent_errors() as e:
                    raise B.TraceUnsupported(
                        f"{arch.name}: the step reads tensor values ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}), which fake tensors cannot trace; use --method analytic"
                    ) from None
                run.steps.append(StepFigures(phases))
            run.managed_bytes = tr.live_by_category().get("managed/paged_optimizer", 0)
            carry.clear()
    run.seconds = time.perf_counter() - t0
    return run


def _data_dependent_errors() -> tuple[type, ...]:
    """Exceptions by which fake tensors refuse an operator whose output depends on data."""
    from torch._subclasses import fake_tensor as ft

    names = ("DataDependentOutputException", "DynamicOutputShapeException", "UnsupportedOperatorException")
    return tuple(getattr(ft, n) for n in names if hasattr(ft, n))


@contextlib.contextmanager
def _non_bf16_grouped_mm_fallback() -> Iterator[None]:
    """transformers runs fused MoE experts through ``torch.nn.functional.grouped_mm``
    (``integrations/moe.py::_grouped_mm``, input cast to the weights' dtype). Its shape/dtype function
    (which mirrors the CUDA kernel) accepts only bf16, so after hf-peft's fp32 upcast of the experts
    the fake run would stop where real runs go on. For non-bf16 weights we compute with transformers'
    own fallback op (same output) inside ``_GroupedMM``, which saves and differentiates exactly as
    grouped_mm's autograd formula does (``derivatives.yaml``: the input is saved only when the weight
    needs a gradient, the weight only when the input does; only the needed gradients are built). The
    fallback op's own autograd would save both always and build a full E·in·out weight gradient even
    for frozen experts."""
    try:
        import transformers.integrations.moe as moe
    except ImportError:  # pragma: no cover - older transformers
        yield
        return
    orig = moe._grouped_mm

    def grouped_mm(input: Any, weight: Any, offs: Any) -> Any:
        import torch

        if weight.dtype == torch.bfloat16:
            return orig(input, weight, offs)
        return _grouped_mm_function().apply(input.to(weight.dtype), weight, offs)

    moe._grouped_mm = grouped_mm
    try:
        yield
    finally:
        moe._grouped_mm = orig


_GROUPED_MM: Any = None


def _grouped_mm_function() -> Any:
    """``torch.autograd.Function`` with grouped_mm's saving rule over transformers' fallback op (built
    lazily: torch is imported only when tracing)."""
    global _GROUPED_MM
    if _GROUPED_MM is not None:
        return _GROUPED_MM
    import torch

    class _GroupedMM(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, input: Any, weight: Any, offs: Any) -> Any:
            need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            ctx.save_for_backward(input if need_w else None, weight if need_x else None, offs)
            return torch.ops.transformers.grouped_mm_fallback(input, weight, offs)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            x, w, offs = ctx.saved_tensors
            need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            gx = gw = None
            if need_x and need_w:
                gx, gw = torch.ops.transformers.grouped_mm_fallback_backward(x, w, offs, grad)
            elif need_w:
                # weight gradient only (the weight was not saved): the op reads the weight for its
                # shape and for the input gradient, which it also returns; a stride-0 stand-in
                # allocates nothing
                shape = (offs.shape[0], x.shape[1], grad.shape[1])
                stand_in = torch.empty((), dtype=x.dtype).expand(shape)
                gw = torch.ops.transformers.grouped_mm_fallback_backward(x, stand_in, offs, grad)[1]
            elif need_x:
                gx = torch.ops.transformers.grouped_mm_fallback(grad, w.transpose(-2, -1), offs)
            return gx, gw, None

    _GROUPED_MM = _GroupedMM
    return _GROUPED_MM


def _register_model(tr: Any, model: Any) -> None:
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            tr.register(module.weight, "weights/4bit")
            qs = getattr(module.weight, "quant_state", None) or getattr(module, "quant_state", None)
            if qs is not None:
                parts = [qs.absmax, qs.code, getattr(qs, "offset", None)]
                if getattr(qs, "state2", None) is not None:
                    parts += [qs.state2.absmax, qs.state2.code]
                tr.register([t for t in parts if t is not None], "quant_state/bnb")
    for p in model.parameters():
        tr.register(p, "adapter/lora" if p.requires_grad else "weights/float")
    tr.register(list(model.buffers()), "weights/float")


def _install_hooks(model: Any, lm_head: Any, layers: list[Any], tr: Any, state: dict) -> None:
    """Labels for new allocations: lm_head + loss are ``logits``; backward starts in ``logits`` and
    turns ``temporary`` once the gradient reaches lm_head's input; checkpoint recomputation of a
    decoder layer inside backward is ``activations/recompute``; a gradient that lands in ``.grad``
    becomes ``gradients``."""

    def lm_pre(module: Any, args: tuple) -> None:
        if state["phase"] != "forward":
            return
        tr.label = "logits/loss"
        x = args[0] if args else None
        if x is not None and getattr(x, "requires_grad", False):
            x.register_hook(_switch_to_temporary)

    def _switch_to_temporary(grad: Any) -> None:
        mark = state.get("mark")
        if mark is not None:
            mark()
        tr.label = "temporary/backward"

    lm_head.register_forward_pre_hook(lm_pre)

    def layer_pre(module: Any, args: tuple, kwargs: dict | None = None) -> None:
        if state["phase"] == "backward":
            state["saved"] = tr.label
            tr.label = "activations/recompute"

    def layer_post(module: Any, args: tuple, *rest: Any) -> None:
        if state["phase"] == "backward" and state["saved"] is not None:
            tr.label = state["saved"]
            state["saved"] = None

    for layer in layers:
        layer.register_forward_pre_hook(layer_pre)
        layer.register_forward_hook(layer_post)

    def grad_landed(p: Any) -> None:
        if p.grad is not None:
            tr.retag(p.grad, "gradients/trainable")

    for p in model.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(grad_landed)


# ------------------------------------------------------------------------------ the engine
def _extrapolate(a: dict[str, int], b: dict[str, int], c1: int, period: int, n: int) -> dict[str, int]:
    k = (n - c1) // period
    out = {}
    for name in set(a) | set(b):
        v = a.get(name, 0) + k * (b.get(name, 0) - a.get(name, 0))
        out[name] = max(0, v)
    return out


def _affine(runs: list[TraceRun]) -> bool:
    """True when the three runs (c, c + p, c + 2p layers) grow by the same bytes, component by
    component, in every phase of every step: the evidence that extrapolation is exact."""
    a, b, c = runs
    if b.managed_bytes - a.managed_bytes != c.managed_bytes - b.managed_bytes:
        return False
    for sa, sb, sc in zip(a.steps, b.steps, c.steps):
        if not (sa.phases.keys() == sb.phases.keys() == sc.phases.keys()):
            return False
        for ph in sa.phases:
            da, db, dc = sa.phases[ph][1], sb.phases[ph][1], sc.phases[ph][1]
            for name in set(da) | set(db) | set(dc):
                if db.get(name, 0) - da.get(name, 0) != dc.get(name, 0) - db.get(name, 0):
                    return False
    return True


def _extrapolate_step(s1: StepFigures, s2: StepFigures, c1: int, period: int, n: int) -> tuple[dict[str, int], str]:
    """Each phase's peak is affine in the layer count; the step's peak is the largest of them (the
    phase holding the peak can change with depth, e.g. from backward to the first optimizer step)."""
    best: tuple[int, dict[str, int], str] | None = None
    for phase in s1.phases:
        d = _extrapolate(s1.phases[phase][1], s2.phases[phase][1], c1, period, n)
        total = sum(d.values())
        if best is None or total > best[0]:
            best = (total, d, phase)
    assert best is not None
    return best[1], best[2]


def _check_semantics(semantics: str) -> None:
    if semantics not in ("cuda", "cpu"):
        raise VramplanError(f"unknown semantics {semantics!r} (cuda or cpu)")


def trace(arch: Arch, scenario: Scenario, *, layers: int | None = None, steps: int = 2,
          extrapolate: bool = True, calibration: Any = None, device: Any = None) -> Breakdown:
    """Allocated memory of ``scenario``'s training step on ``arch``, traced on fake tensors.

    ``layers``: trace only the first ``layers`` decoder layers and report that truncated model.
    ``steps``: training steps traced (the last is the steady state; optimizer state exists from the
    second step on). ``semantics``: ``"cuda"`` (default, the product: what the step allocates on
    CUDA; the CUDA-only behaviours are emulated, see ``vramplan.hf.cuda_path``) or ``"cpu"`` (the CPU
    program exactly as it runs: CPU profiles, fake-vs-real tests). ``extrapolate``: trace c1, c1 + p,
    c1 + 2p layers and extrapolate exactly when the increments agree (see ``layer_plan``); ``False``
    traces every layer.

    The frameworks' own warnings and log lines are silenced while tracing (they concern the CPU stand-in,
    not the user's run); what matters is reported in ``Breakdown.notes``."""
    if not isinstance(steps, int) or steps < 1:
        raise VramplanError(f"steps must be a positive integer, got {steps!r}")
    from vramplan.analytic import effective_attention
    from vramplan.device import Device
    from vramplan.engine import runtime_calibration

    dev = Device.parse(device)
    semantics = dev.semantics
    calibration = runtime_calibration(calibration, dev)

    attn, attn_note = effective_attention(arch, scenario)  # Gemma 2: sdpa -> eager, as transformers
    run_scenario = scenario.replace(attn=attn) if attn is not scenario.attn else scenario
    with _quiet():
        bd = _trace(arch, run_scenario, layers=layers, steps=steps, extrapolate=extrapolate,
                    calibration=calibration, semantics=semantics)
    if attn_note:
        bd = replace(bd, notes=(attn_note,) + tuple(bd.notes))
    return bd


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("transformers", "peft", "bitsandbytes", "torch")]
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as hf_logging

        hf_level = hf_logging.get_verbosity()
    except ImportError:
        hf_logging = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        if hf_logging is not None:
            hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
            if hf_logging is not None:
                hf_logging.set_verbosity(hf_level)


def _trace(arch: Arch, scenario: Scenario, *, layers: int | None, steps: int, extrapolate: bool,
           calibration: Any, semantics: str) -> Breakdown:
    t0 = time.perf_counter()
    plan = layer_plan(arch) if (extrapolate and layers is None) else None
    runs: list[TraceRun] = []
    if plan is not None:
        c1, period = plan
        n = arch.num_layers
        runs = [trace_run(arch, scenario, layers=c, steps=steps, semantics=semantics)
                for c in (c1, c1 + period, c1 + 2 * period)]
        tried = [r.layers for r in runs]
        while not _affine(runs) and runs[-1].layers + period < n:
            runs = runs[1:] + [trace_run(arch, scenario, layers=runs[-1].layers + period, steps=steps,
                                         semantics=semantics)]
            tried.append(runs[-1].layers)
        if not _affine(runs):
            plan = None
    if plan is None:
        run = trace_run(arch, scenario, layers=layers, steps=steps, semantics=semantics)
        first, steady = run.steps[0].by_name, run.steps[-1].by_name
        peak_phase = run.steps[-1].peak_phase
        managed = run.managed_bytes
        traced = [run.layers]
        reported_layers = run.layers
        if runs:  # extrapolation was tried and refused
            traced = [r for r in tried] + traced
    else:
        r1, r2 = runs[0], runs[1]
        c1 = r1.layers
        first, _ = _extrapolate_step(r1.steps[0], r2.steps[0], c1, period, n)
        steady, peak_phase = _extrapolate_step(r1.steps[-1], r2.steps[-1], c1, period, n)
        managed = r1.managed_bytes + (n - c1) // period * (r2.managed_bytes - r1.managed_bytes)
        traced = tried
        reported_layers = n

    components = [Component(name, name.split("/")[0], int(steady[name]), NOTES.get(name, ""))
                  for name in sorted(steady, key=lambda k: (ORDER.index(k) if k in ORDER else 99, k))
                  if steady[name]]
    allocated = sum(c.bytes for c in components)
    notes = _notes(arch, scenario, plan, traced, semantics)
    if plan is None and runs:
        notes.append("short traces did not grow by equal increments, so the full model was traced")
    if managed:
        components.append(Component("managed/paged_optimizer", "managed", int(managed),
                                    "paged optimizer state in CUDA managed memory (tensors >= 1e5 elements)"))
    runtime, runtime_note = _runtime(arch, scenario, allocated, calibration, skip_managed=bool(managed))
    components.extend(runtime)
    notes.append(runtime_note)
    by_cat: dict[str, int] = {}
    for name, v in steady.items():
        by_cat[name.split("/")[0]] = by_cat.get(name.split("/")[0], 0) + int(v)
    extra = {
        "first_step_peak_bytes": int(sum(first.values())),
        "steady_step_peak_bytes": int(allocated),
        "seconds": round(time.perf_counter() - t0, 3),
        "layers_traced": traced,
        "layers_reported": reported_layers,
        "extrapolated": plan is not None,
        "steps": steps,
        "semantics": semantics,
        "peak_by_category": by_cat,
        "first_step_by_component": {k: int(v) for k, v in first.items() if v},
        "versions": _versions(),
    }
    return Breakdown(tuple(components), engine="trace", notes=tuple(notes), peak_phase=peak_phase, extra=extra)


def _runtime(arch: Arch, scenario: Scenario, allocated: int, calibration: Any,
             skip_managed: bool) -> tuple[list[Component], str]:
    try:
        from vramplan.analytic.runtime import runtime_components
    except ImportError:
        return [], ("runtime terms (CUDA context, cuBLAS workspace, fused 4-bit dequantization, allocator "
                    "reserve) are not included: vramplan.analytic.runtime is unavailable")
    from vramplan.calibration import default_calibration

    cal = calibration if calibration is not None else default_calibration()
    comps = [c for c in runtime_components(arch, scenario, allocated, cal)
             if not (skip_managed and c.category == "managed")]
    return comps, ("runtime terms an op-level trace cannot see (CUDA context, cuBLAS workspace, allocator "
                   "reserve) come from the analytic model's runtime_components; bitsandbytes' in-kernel "
                   "dequantization on CUDA (inputs > 1536 rows) is counted at its op as temporary/fused_dequant")


def _notes(arch: Arch, scenario: Scenario, plan: tuple[int, int] | None, traced: list[int],
           semantics: str = "cuda") -> list[str]:
    notes = ["fake-tensor trace of the real transformers + peft + bitsandbytes step on CPU (autocast uses "
             "the CPU op lists); allocations rounded to 512 B like the CUDA caching allocator"]
    if semantics == "cuda":
        notes.append("CUDA semantics: dropout saves a bool mask (fused native_dropout) and peft skips its "
                     "CPU-only fp32 cast of LoRA inputs under autocast (see vramplan.hf.cuda_path)")
    else:
        notes.append("CPU semantics: the CPU program as it runs (dropout masks in the input dtype, peft's "
                     "fp32 cast of LoRA inputs under CPU autocast)")
    if plan is not None:
        p = plan[1]
        notes.append(f"traced {', '.join(map(str, traced))} decoder layers; the last three grow by equal "
                     f"increments, so extrapolated exactly to {arch.num_layers} (repeating block of {p} "
                     f"layer{'s' if p > 1 else ''})")
    elif traced and traced[-1] != arch.num_layers:
        notes.append(f"truncated model: only the first {traced[0]} of {arch.num_layers} decoder layers")
    if scenario.attn is Attn.FLASH2:
        notes.append("flash2 traced as sdpa plus flash-attention-2's own casts of fp32 q/k/v to the compute "
                     "dtype (flash-attn cannot run on CPU)")
    if scenario.optimizer.paged:
        notes.append("paged optimizer: state tensors >= 1e5 elements are counted as CUDA managed memory, "
                     "outside the allocated peak")
    if scenario.optimizer in (Optim.ADAMW,):
        notes.append("torch AdamW traced as the fused kernel (HF Trainer default adamw_torch_fused)")
    if arch.is_moe:
        notes.append("MoE experts are fused 3-D parameters: bitsandbytes leaves them unquantized, the recipe's "
                     "casts apply to them (hf-peft/trl: fp32), and peft maps all-linear onto them and the router")
        if scenario.recipe.value != "plain" and scenario.quant.value != "none":
            notes.append("fp32 experts: torch grouped_mm's dtype check (mirroring the CUDA kernel) accepts bf16 "
                         "only; traced through transformers' fallback op (same allocations); whether the CUDA "
                         "run accepts fp32 experts is unverified")
    return notes


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - versions are informational
            pass
    return out
