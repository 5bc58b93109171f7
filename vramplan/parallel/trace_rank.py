"""The trace of one rank: what a distributed trace can run, and the wrap inside the trace's tracker.

``vramplan.trace.run.trace_run`` runs rank ``Scenario.process_rank`` of ``Scenario.world_size`` inside
torch's fake process group (``torch_wrap.process_group``), with the strategy's wrap
(``torch_wrap.wrap``) made inside the live-tensor tracker, so that the buffers the wrapper allocates
(DDP's gradient buckets) are counted.
"""

from __future__ import annotations

from typing import Any, Callable

from vramplan.arch.spec import Arch
from vramplan.scenario import Loss, Offload, Optim, Scenario, Strategy


def check_traceable(arch: Arch | None, scenario: Scenario) -> None:
    """Refuse, in one line, what the distributed trace has not been made to run (never priced as one GPU)."""
    from vramplan.hf.build import TraceUnsupported

    why = None
    if arch is not None and arch.vision is not None and scenario.images:
        why = "images (the vision path runs on real tensors)"
    elif scenario.offload is not Offload.NONE:
        why = f"offload {scenario.offload.value}"
    elif scenario.loss not in (Loss.HF, Loss.LEGACY):
        why = f"loss {scenario.loss.value} (it calls the decoder past the wrapper's forward)"
    elif scenario.strategy is Strategy.FSDP and scenario.optimizer not in (Optim.ADAMW, Optim.SGD):
        why = f"optimizer {scenario.optimizer.value} on sharded (DTensor) parameters"
    elif scenario.strategy is Strategy.FSDP and scenario.state_offload.value != "none":
        why = (f"state_offload {scenario.state_offload.value} (CPUOffloadPolicy: on the CPU the host and device "
               "copies are one memory)")
    if why:
        raise TraceUnsupported(f"the {scenario.strategy.value} trace does not run {why} yet: use --method analytic "
                               "or strategy single")


def wrap_rank(tracker: Any, model: Any, scenario: Scenario, fake: bool, register: Callable[[Any], None],
              fake_group: bool = True, retag_model: Callable[[Any], None] = lambda m: None) -> Any:
    """The strategy's ``Wrapped`` for this rank, its buffers counted by ``tracker``; the optimizer is
    built outside fake mode, as the single-GPU trace builds it."""
    import contextlib

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from vramplan.hf import build as B
    from vramplan.parallel.torch_wrap import WrapContext, wrap

    def make_optimizer(m: Any) -> Any:
        with unset_fake_temporarily() if fake else contextlib.nullcontext():
            return B.make_optimizer(m, scenario)

    ctx = WrapContext(model=model, scenario=scenario, fake=fake, device="cpu", fake_group=fake_group, register=register,
                      labelled=tracker.allocating, retag=tracker.retag, uncounted=tracker.paused,
                      retag_model=retag_model, make_optimizer=make_optimizer)
    return wrap(ctx)
