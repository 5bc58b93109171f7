"""One traced run: build ``layers`` decoder layers and trace ``steps`` training steps.

The model is built by ``vramplan.hf.build`` exactly as for a real run, every tensor is made a
``FakeTensor`` on CPU (shapes and dtypes, no data, no memory), and each step (forward with labels,
backward, optimizer step) is counted by ``LiveTensorTracker`` (512-byte rounding of the CUDA caching
allocator) with the labels of ``vramplan.trace.labels``.

Why CPU fake tensors: with fake CUDA tensors the autograd engine aborts the process in backward
(uncatchable), so everything runs as CPU; autocast therefore uses the CPU autocast op lists. On a
CUDA device the CUDA-only behaviours are emulated (``vramplan.hf.interventions``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from vramplan.arch.spec import Arch
from vramplan.device import Device
from vramplan.hf import interventions
from vramplan.scenario import Attn, Offload, Scenario
from vramplan.trace.labels import Labeller


@dataclass
class StepFigures:
    """Peak of each phase (forward, backward, optimizer) of one step, with the bytes per component at it."""

    phases: dict[str, tuple[int, dict[str, int]]]
    host: dict[str, int] = field(default_factory=dict)
    """Host memory at the step's host peak, per ``host/`` component (offloaded activations)."""

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
    notes: tuple[str, ...] = ()
    """What the strategy's wrapping assumed (``vramplan.parallel.torch_wrap.Wrapped.notes``)."""


def trace_run(arch: Arch, scenario: Scenario, layers: int | None = None, steps: int = 2, *,
              fake: bool = True, seed: int = 0, device: Any = None, group: str = "fake") -> TraceRun:
    """Build ``layers`` decoder layers (all by default) and trace ``steps`` training steps.

    ``fake=False`` runs the very same code on real CPU tensors (real bitsandbytes quantization, real
    optimizer step): the reference the fake-tensor run is tested against (with ``device="cpu"``).
    ``device`` (anything ``vramplan.device.Device.parse`` takes; None = CUDA) picks the program: on a
    CUDA device the CUDA-only behaviours of ``vramplan.hf.interventions.cuda_semantics`` are
    emulated (bool dropout masks, no peft CPU-only fp32 cast of LoRA inputs); on the CPU the CPU
    program runs as is.

    A distributed scenario (``Scenario.strategy``) runs rank ``process_rank`` of ``world_size``:
    ``group="fake"`` in torch's fake process group (the trace), ``group="torchrun"`` in the real group
    torchrun's environment describes (the reference the fake rank is tested against, on real tensors)."""
    cuda = Device.parse(device).semantics == "cuda"
    from vramplan.hf import build as B

    B.require_torch()
    if scenario.offload is Offload.UNSLOTH:
        raise B.TraceUnsupported(
            f"offload {scenario.offload.value} runs the framework's own CUDA-stream hooks "
            f"({_OFFLOAD_CODE[scenario.offload]}), which need a CUDA device; use --method analytic (priced "
            "from their source)")
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    t0 = time.perf_counter()
    run = TraceRun(layers=arch.num_layers if layers is None else layers)
    interventions.warm_bitsandbytes()
    fake_group = True
    if scenario.distributed:
        from vramplan.parallel.trace_rank import check_traceable
        from vramplan.parallel.torch_wrap import process_group

        check_traceable(arch, scenario)
        if group not in ("fake", "torchrun"):
            raise ValueError(f"group must be 'fake' or 'torchrun', got {group!r}")
        fake_group = group == "fake"
        pg: Any = process_group(scenario, fake=fake_group)
    else:
        pg = contextlib.nullcontext()
    with pg, interventions.flash2_on_sdpa(scenario.attn is Attn.FLASH2), \
            interventions.dora_standins(scenario.dora), _lora_kernels(scenario) as kernels:
        model = B.build_model(arch, scenario, layers=run.layers)
        kernels(model)
        with _cpu_program(fake, cuda):
            B.materialize(model, scenario, fake=fake, seed=seed)
            if scenario.distributed:  # the strategy wraps inside the tracker and builds the optimizer
                _trace_steps(run, arch, model, None, scenario, steps, fake=fake, seed=seed, cuda=cuda,
                             fake_group=fake_group)
            else:
                with unset_fake_temporarily() if fake else contextlib.nullcontext():
                    optimizer = B.make_optimizer(model, scenario)
                _trace_steps(run, arch, model, optimizer, scenario, steps, fake=fake, seed=seed, cuda=cuda)
    run.seconds = time.perf_counter() - t0
    return run


def _lora_kernels(scenario: Scenario) -> Any:
    """The fused LoRA kernels the scenario names, as a context yielding ``apply(model)``
    (``interventions.axolotl_lora_kernels``); Unsloth's cannot run here (importing Unsloth patches
    transformers and peft process-wide), so its scenarios are priced by the analytic engine only."""
    from vramplan.hf.build import TraceUnsupported
    from vramplan.scenario import LoraKernels

    if scenario.lora_kernels is LoraKernels.UNSLOTH:
        raise TraceUnsupported("Unsloth's fused LoRA kernels are priced analytically only (importing Unsloth "
                               "patches transformers and peft for the whole process): use --method analytic")
    if scenario.lora_kernels is LoraKernels.AXOLOTL:
        return interventions.axolotl_lora_kernels(scenario.kernel_groups)
    return contextlib.nullcontext(lambda model: None)


#: The code behind each offload kind the trace cannot run on CPU.
_OFFLOAD_CODE = {Offload.UNSLOTH: "unsloth_zoo UnslothCheckpointFunction",
                 Offload.ACTIVATIONS: "TRL/torchtune OffloadActivations"}


@contextlib.contextmanager
def _cpu_program(fake: bool, cuda: bool) -> Iterator[None]:
    """Fake tensors (when ``fake``), the MoE grouped-mm stand-in and, for the CUDA program (``cuda``),
    its emulation."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with (FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()), \
            interventions.non_bf16_grouped_mm(), interventions.cuda_semantics(cuda):
        yield


def _trace_steps(run: TraceRun, arch: Arch, model: Any, optimizer: Any, scenario: Scenario, steps: int, *,
                 fake: bool, seed: int, cuda: bool, fake_group: bool = True) -> None:
    """Count ``steps`` training steps into ``run`` (one ``StepFigures`` each, then the managed bytes).
    Only the CUDA program counts the bytes CUDA kernels allocate inside an op (``cuda_transients``:
    bitsandbytes' in-kernel dequantization, the softmax backward's temporary): the CPU kernels have none."""
    from vramplan.hf import build as B
    from vramplan.hf.tracker import LiveTensorTracker

    with LiveTensorTracker(label="activations/saved") as tr, contextlib.ExitStack() as wrapped_run:
        tr.transient = interventions.cuda_transients if cuda else None
        step_model, step_kw = model, {}
        if scenario.distributed:  # one rank: the strategy's wrapper (vramplan.parallel.torch_wrap)
            from vramplan.parallel.trace_rank import wrap_rank

            wrapped = wrap_rank(tr, model, scenario, fake, lambda m: _register_model(tr, m), fake_group,
                                lambda m: _retag_model(tr, m))
            wrapped_run.callback(wrapped.close)
            run.notes = wrapped.notes
            model, optimizer, step_model = wrapped.inner, wrapped.optimizer, wrapped.module
            step_kw = dict(backward=wrapped.backward, step=wrapped.step)
        else:
            _register_model(tr, model)
        paged = interventions.paged_as_managed(optimizer, tr.retag) if scenario.optimizer.paged \
            else contextlib.nullcontext()
        offload: Any = contextlib.nullcontext()
        if scenario.offload is Offload.CHECKPOINTS:
            offload = interventions.host_offload(tr, cuda)
        elif scenario.offload is Offload.ACTIVATIONS:
            offload = interventions.trl_offload(model, tr, cuda, pin=fake)
        with paged, offload as offload_step, Labeller(tr).attached(model) as labeller:
            offload_step = offload_step or contextlib.nullcontext  # the per-step hooks (TRL's), if any
            batch = _batch(arch, scenario, fake, seed)
            carry: dict[str, Any] = {}  # the loop's ``outputs`` binding (Scenario.hold_logits)
            for _ in range(steps):
                labeller.start_step()
                try:
                    with offload_step():
                        B.train_step(step_model, optimizer, batch, scenario, on_phase=labeller.end_phase,
                                     carry=carry, **step_kw)
                except _data_dependent_errors() as e:
                    raise B.TraceUnsupported(
                        f"{arch.name}: the step reads tensor values ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}), which fake tensors cannot trace; use --method analytic"
                    ) from None
                run.steps.append(StepFigures(labeller.phases, dict(tr.host_peak_by_category)))
            if scenario.eval_batch:  # the evaluation loop between steps: a phase of the last step
                from vramplan.trace.evaluation import PHASE, trace_evaluation

                run.steps[-1].phases[PHASE] = trace_evaluation(tr, model, arch, scenario, fake, seed)
            run.managed_bytes = tr.live_by_category().get("managed/paged_optimizer", 0)
            carry.clear()


def _batch(arch: Arch, scenario: Scenario, fake: bool, seed: int) -> dict[str, Any]:
    """The training batch: zero ids under fake tensors (values never matter), else ``synthetic_batch``;
    the layout's position ids and mask (``build.layout_inputs``) either way."""
    import torch

    from vramplan.hf import build as B

    if not fake:
        return B.synthetic_batch(arch, scenario, "cpu", seed=seed)
    shape = B.batch_shape(scenario)
    ids = torch.zeros(shape, dtype=torch.long)
    images = B.vision_inputs(arch, scenario, ids)
    return {
        "input_ids": ids,
        "labels": ids.clone() if images else torch.zeros(shape, dtype=torch.long),
        **images,
        **B.layout_inputs(scenario, "cpu"),
    }


def _data_dependent_errors() -> tuple[type, ...]:
    """Exceptions by which fake tensors refuse an operator whose output depends on data."""
    from torch._subclasses import fake_tensor as ft

    names = ("DataDependentOutputException", "DynamicOutputShapeException", "UnsupportedOperatorException")
    return tuple(getattr(ft, n) for n in names if hasattr(ft, n))


def _retag_model(tr: Any, model: Any) -> None:
    """``_register_model``'s categories given again to the model's tensors (new storages included)."""
    import bitsandbytes as bnb

    four = set()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            four.add(id(module.weight))
            tr.retag(module.weight, "weights/4bit")
    for p in model.parameters():
        if id(p) not in four:
            tr.retag(p, "adapter/lora" if p.requires_grad else "weights/float")


def _register_model(tr: Any, model: Any) -> None:
    """Count the model's existing tensors: packed 4-bit weights, their quantization state, trainable
    parameters (``adapter``), frozen parameters and buffers (``weights/float``)."""
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
