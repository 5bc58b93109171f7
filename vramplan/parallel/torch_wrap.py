"""The torch side of the strategies: one rank's process group and the model wrapped as the strategy wraps it.

Used by the trace (one rank of ``Scenario.world_size``, simulated in this one process under torch's fake
process group) and by the profiler (every rank a real process under torchrun). Imported lazily: importing
``vramplan.parallel`` imports no torch.

The interface a strategy implements (one module, one entry in ``WRAPS``)::

    def wrap(ctx: WrapContext) -> Wrapped

``ctx`` holds the model built by ``vramplan.hf.build`` (materialized: real or fake tensors), the
scenario, whether tensors are fake, the torch device, and two callbacks: ``ctx.register(model)`` counts
the model's existing tensors in the memory reader (call it where the reader should first see them: DDP
before the wrapper exists, so that the Reducer's buckets are new storages; FSDP2 after ``fully_shard``,
so that only the local shards count), and ``ctx.labelled(category)`` is a context in which new storages
get ``category`` (``gradients/ddp_buckets``; a no-op without a CPU tracker, e.g. on CUDA), ``ctx.retag(tensors,
category)`` moves live tensors to a category (FSDP2's sharded gradients), ``ctx.uncounted()`` is a
context whose new tensors are not counted (DTensor's shape propagation), ``ctx.retag_model(model)``
gives the model's tensors their categories again (new storages included: FSDP2's lazy init re-pads
uneven shards). ``ctx.make_optimizer``
builds the scenario's optimizer (``vramplan.hf.build.make_optimizer``) over a module's trainable
parameters. The wrap returns ``Wrapped``:

- ``module``: what the training step calls (``DistributedDataParallel``, the ``fully_shard``-ed model
  itself, a DeepSpeed engine);
- ``inner``: the transformers/peft model inside it (the trace hooks its lm_head and parameters);
- ``optimizer``: the optimizer the step runs (None when ``step`` replaces it);
- ``backward(loss)`` / ``step()``: set by a strategy whose engine replaces ``loss.backward()`` and
  clip + ``optimizer.step()`` + ``zero_grad`` (DeepSpeed: ``engine.backward(loss)``, ``engine.step()``);
  None runs the plain step (``vramplan.hf.build.train_step`` takes both);
- ``patches``: an ``ExitStack`` the wrap entered its patches in (fake-tensor no-ops of data-dependent
  checks...), closed when the run ends;
- ``notes``: lines for the breakdown (what was assumed).

``process_group(scenario, fake=True)`` makes the group the wrap runs in: torch's fake process group
(``torch.testing._internal.distributed.fake_pg``: every collective returns at once, its outputs
allocated by the c10d meta kernels and nothing else) for the trace, or the group torchrun's environment
describes (gloo on CPU, nccl on CUDA) for the profiler. It is destroyed on exit.

Adding ZeRO (say): ``vramplan/parallel/zero_torch.py`` with ``wrap(ctx)`` returning a ``Wrapped`` whose
``module`` is the DeepSpeed engine, ``optimizer`` None and ``backward``/``step`` the engine's; and
``WRAPS[Strategy.ZERO3] = "vramplan.parallel.zero_torch"``; then ``STRATEGIES`` in
``vramplan.parallel`` says the trace prices it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from vramplan.parallel import StrategyUnsupported
from vramplan.scenario import Scenario, Strategy

#: Strategy -> the module whose ``wrap(ctx)`` wraps the model for it.
WRAPS: dict[Strategy, str] = {
    Strategy.DDP: "vramplan.parallel.ddp_torch",
    Strategy.FSDP: "vramplan.parallel.fsdp_torch",
    Strategy.ZERO2: "vramplan.parallel.zero_torch",
    Strategy.ZERO3: "vramplan.parallel.zero_torch",
}


@dataclass
class WrapContext:
    """What a strategy's ``wrap`` gets (see the module docstring)."""

    model: Any
    scenario: Scenario
    fake: bool
    device: str = "cpu"
    fake_group: bool = True
    """Torch's fake process group (the trace); False under torchrun (the profiler)."""
    register: Callable[[Any], None] = lambda model: None
    labelled: Callable[[str], Any] = lambda category: contextlib.nullcontext()
    retag: Callable[[Any, str], None] = lambda tensors, category: None
    uncounted: Callable[[], Any] = contextlib.nullcontext
    retag_model: Callable[[Any], None] = lambda model: None
    make_optimizer: Callable[[Any], Any] | None = None

    @property
    def world_size(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size()

    @property
    def rank(self) -> int:
        import torch.distributed as dist

        return dist.get_rank()


@dataclass
class Wrapped:
    """The wrapped model, the optimizer, and the strategy's own backward/step (see the module docstring)."""

    module: Any
    inner: Any
    optimizer: Any
    backward: Callable[[Any], None] | None = None
    step: Callable[[], None] | None = None
    patches: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    notes: tuple[str, ...] = ()

    def close(self) -> None:
        self.patches.close()


def wrap(ctx: WrapContext) -> Wrapped:
    """The model wrapped for ``ctx.scenario.strategy`` (inside ``process_group``)."""
    name = WRAPS.get(ctx.scenario.strategy)
    if name is None:
        raise StrategyUnsupported(f"strategy {ctx.scenario.strategy.value} has no torch wrapping yet "
                                  "(vramplan.parallel.torch_wrap.WRAPS); nothing is priced as one GPU")
    return importlib.import_module(name).wrap(ctx)


@contextlib.contextmanager
def process_group(scenario: Scenario, fake: bool = True, device: str = "cpu") -> Iterator[Any]:
    """The default process group for one rank: ``fake`` = torch's fake group of ``scenario.world_size``
    as rank ``scenario.process_rank`` (the trace); else the group torchrun's environment describes
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...: the profiler), gloo on CPU and nccl on CUDA.
    Destroyed on exit. Yields ``torch.distributed``."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise StrategyUnsupported("a process group already exists in this process; vramplan makes its own")
    if fake:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=scenario.process_rank,
                                world_size=scenario.world_size)
    else:
        for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise StrategyUnsupported(f"a real {scenario.strategy.value} run needs torchrun's environment "
                                          f"({key} is not set)")
        env = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        if env != (scenario.process_rank, scenario.world_size):
            raise StrategyUnsupported(f"torchrun runs rank {env[0]} of {env[1]}, the scenario describes rank "
                                      f"{scenario.process_rank} of {scenario.world_size}")
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    try:
        from torch.distributed.device_mesh import init_device_mesh

        # made here, before any fake mode or tracker: the mesh reads its rank tensor as data
        _MESH[:] = [init_device_mesh("cuda" if str(device).startswith("cuda") else "cpu", (dist.get_world_size(),))]
        yield dist
    finally:
        _MESH.clear()
        dist.destroy_process_group()


_MESH: list[Any] = []


def device_mesh(device: str = "cpu") -> Any:
    """The 1-D mesh over every rank of the default group (made by ``process_group``)."""
    if not _MESH:
        raise StrategyUnsupported("no device mesh: wrap inside vramplan.parallel.torch_wrap.process_group")
    return _MESH[0]
