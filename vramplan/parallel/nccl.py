"""NCCL's own device memory: communicator and channel buffers outside PyTorch's caching allocator.

ProcessGroupNCCL's communicator allocates its connection buffers with ``cudaMalloc`` (or cuMem) at
the first collective, outside ``torch.cuda.max_memory_allocated``; nvidia-smi sees them. NCCL documents
the size of each: ``NCCL_BUFFSIZE`` (default 4 MiB, 4194304 B: "the size of the buffer used by NCCL when
communicating data between pairs of GPUs", NCCL user guide, Environment Variables) per connection of
the Simple protocol, and the channels ``NCCL_MIN_NCHANNELS`` / ``NCCL_MAX_NCHANNELS`` bound (the count
NCCL picks follows the topology). A ring channel connects each rank to two peers (previous and next);
a run over several nodes also builds tree channels (a parent and up to two children).

Uncalibrated: no multi-GPU profile yet. The default (16 channels) is an assumption of this module,
not a measurement; the LL / LL128 protocol buffers are left out.
"""

from __future__ import annotations

#: ``NCCL_BUFFSIZE`` default: 4 MiB per connection (NCCL user guide, Environment Variables).
NCCL_BUFFSIZE = 4 << 20
#: Channels assumed (NCCL picks them from the topology; an NVLink node commonly runs 16 to 32).
DEFAULT_CHANNELS = 16
#: Ring peers per channel (previous and next rank).
RING_PEERS = 2
#: Extra tree peers per channel over several nodes (a parent and two children).
TREE_PEERS = 3


def nccl_buffer_bytes(world: int, nodes: int, channels: int = DEFAULT_CHANNELS,
                      buffsize: int = NCCL_BUFFSIZE) -> int:
    """Device bytes of one rank's NCCL connection buffers: channels × peers × NCCL_BUFFSIZE.

    1. no process group to talk to (world 1): 0;
    2. peers per channel: 2 on a ring, + 3 tree peers when the run spans several nodes;
    3. e.g. 8 GPUs on one node: 16 × 2 × 4 MiB = 128 MiB."""
    if world <= 1:
        return 0
    peers = RING_PEERS + (TREE_PEERS if nodes > 1 else 0)
    return channels * peers * buffsize
