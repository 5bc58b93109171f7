"""What every strategy module shares: the rank's parameter inventory, the NCCL runtime row, 512-B
allocator blocks, and the optimizer state over a rank's share of the trainable elements."""

from __future__ import annotations

from vramplan.analytic import optimizer as opt
from vramplan.analytic.weights import ALLOC_BLOCK
from vramplan.breakdown import Component
from vramplan.parallel.inventory import Tensor, inventory
from vramplan.parallel.nccl import DEFAULT_CHANNELS, nccl_buffer_bytes
from vramplan.scenario import Optim, Scenario


def blocks(n: int) -> int:
    """``n`` bytes in the caching allocator's 512-B blocks (``weights.ALLOC_BLOCK``); 0 stays 0."""
    return -(-n // ALLOC_BLOCK) * ALLOC_BLOCK


def rank_inventory(arch, s: Scenario, st) -> tuple[Tensor, ...]:
    """``inventory.inventory`` with the dtypes the single-GPU terms ``st`` priced."""
    d = st.d
    return inventory(arch, s, st.comps, d.base_w, d.resid0, d.norm_w, d.c if d.quantized else d.base_w)


def state_bytes(optim: Optim, numel: int, nbytes: int) -> int:
    """Optimizer state of one tensor of ``numel`` elements of ``nbytes`` bytes, in allocator blocks:
    torch AdamW's two moments (``optim/adamw.py``: ``zeros_like(p)``, so a sharded parameter's state
    follows its local, unpadded shard), bitsandbytes' 8-bit states, none for SGD
    (``optimizer.optimizer_state_bytes``)."""
    if not numel or optim is Optim.SGD:
        return 0
    raw = opt.optimizer_state_bytes(optim, [(numel, 1)], nbytes)
    if optim.eight_bit:
        return blocks(raw)
    return 2 * blocks(raw // 2)


def nccl_runtime(s: Scenario) -> tuple[Component, ...]:
    """The ``runtime/nccl`` row (``nccl.nccl_buffer_bytes``); none at world size 1."""
    n = nccl_buffer_bytes(s.world_size, s.nodes)
    if not n:
        return ()
    return (Component("runtime/nccl", "context", n,
                      f"NCCL connection buffers outside the caching allocator: {DEFAULT_CHANNELS} channels × peers × "
                      "NCCL_BUFFSIZE 4 MiB (uncalibrated: no multi-GPU profile yet)"),)
