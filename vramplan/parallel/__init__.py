"""Multi-GPU strategies: one rank of a data-parallel run (``Scenario.strategy``).

Every engine prices one process (``Scenario.process_rank`` of ``Scenario.world_size``): its GPU's
allocated peak, what it keeps in host memory (state offload), and the communication buffers its
strategy allocates. The strategies are the growth axis of this package, one module each:

- ``single``: no process group (the whole model on one GPU; every other module of vramplan);
- ``ddp``: ``DistributedDataParallel``;
- ``fsdp``: FSDP2 ``fully_shard``;
- ``zero2`` / ``zero3``: DeepSpeed ZeRO.

Adding a strategy: a ``Strategy`` member (``vramplan.scenario``), its state-offload modes
(``scenario._OFFLOADS``), a module here with the analytic terms and the trace's wrapping, an entry in
``STRATEGIES``, its framework keys (``vramplan.frameworks``), and its derivation in docs/multigpu.md.

The torch side (the trace of one rank, the multi-process profiler) is ``torch_wrap``: its ``WRAPS``
table names, per strategy, the module whose ``wrap(ctx) -> Wrapped`` wraps the model (``ddp_torch``,
``fsdp_torch``); ``Wrapped.backward`` / ``Wrapped.step`` let an engine such as DeepSpeed's replace the
backward and the optimizer step. Those modules import torch; this one does not.
"""

from __future__ import annotations

from vramplan.errors import VramplanError
from vramplan.scenario import Scenario, Strategy


class StrategyUnsupported(VramplanError):
    """An engine that cannot price this strategy (yet): said in one line, never priced as one GPU."""


#: Strategy -> (analytic support, trace support): filled in as each module lands.
STRATEGIES: dict[Strategy, tuple[bool, bool]] = {
    Strategy.SINGLE: (True, True),
    Strategy.DDP: (True, True),
    Strategy.FSDP: (True, True),
    Strategy.ZERO2: (True, True),
    Strategy.ZERO3: (True, True),
}


def require(scenario: Scenario, engine: str) -> None:
    """Refuse a strategy ``engine`` (``analytic`` or ``trace``) does not price, in one line."""
    analytic, trace = STRATEGIES[scenario.strategy]
    if not (analytic if engine == "analytic" else trace):
        raise StrategyUnsupported(
            f"strategy {scenario.strategy.value} (world size {scenario.world_size}) is not priced by the {engine} "
            "engine yet; nothing is priced as one GPU holding the whole model")
