"""DDP (``torch.nn.parallel.DistributedDataParallel``): every rank holds the whole model, plus its
gradient buckets.

Symbols: g_i = bytes of trainable tensor i's gradient (its dtype), C = ``bucket_cap_mb`` MiB, F = the
first bucket's cap. Sources (torch 2.13):
- ``torch/nn/parallel/distributed.py`` L31-33 (``_DEFAULT_BUCKET_CAP_MB = 25``, ``_MB_TO_BYTES``), L104-110
  (``first_bucket_bytes_cap``: ``dist._DEFAULT_FIRST_BUCKET_BYTES`` = 1,048,576 B when ``bucket_cap_mb``
  is left at its default, else the cap itself), L150-159 (the first iteration's single bucket when
  ``find_unused_parameters`` is False), L1436-1457 (the Reducer gets both caps and rebuilds its buckets
  after the first iteration in the order the gradients became ready: the step priced, step ≥ 2);
- the Reducer (``torch/csrc/distributed/c10d/reducer.cpp``, ``compute_bucket_assignment_by_size``) fills
  one bucket per dtype until its size reaches the current limit, then moves to the next limit (F, then
  C); each bucket is one flat tensor of its gradients' dtype, alive from construction on;
- ``gradient_as_bucket_view=True`` makes each ``.grad`` a view into its bucket (no separate gradient
  tensor); without it autograd's gradient and the bucket both exist;
- ``reducer.cpp`` ``initialize_local_used_map`` (called from the Reducer's constructor): two int32 maps
  with one entry per trainable tensor, ``local_used_map_`` on the host (deliberately not pinned) and
  ``local_used_map_dev_`` on the parameters' device. On CUDA only the second is device memory; a CPU
  run holds both in the same memory.
Checked by the multi-GPU probe (../shared/research/multigpu-simulation.md §3): the buckets are one copy
of the trainable gradients (13,636,096 B for its 6.8M-parameter bf16 model).
"""

from __future__ import annotations

from fractions import Fraction

from vramplan.analytic.weights import ALLOC_BLOCK
from vramplan.breakdown import Component
from vramplan.parallel.common import nccl_runtime, rank_inventory
from vramplan.parallel.inventory import Tensor
from vramplan.parallel.rank import RankTerms

#: ``dist._DEFAULT_FIRST_BUCKET_BYTES`` (c10d ``kDefaultFirstBucketBytes``): 1 MiB.
FIRST_BUCKET_BYTES = 1 << 20
#: ``_DEFAULT_BUCKET_CAP_MB`` (distributed.py L31).
DEFAULT_BUCKET_CAP_MB = 25


def _round(n: int) -> int:
    return -(-n // ALLOC_BLOCK) * ALLOC_BLOCK


def bucket_sizes(grad_bytes: list[tuple[int, int]], cap: int, first: int) -> list[int]:
    """Byte sizes of the Reducer's buckets over gradients given in ready order as (bytes, dtype key).

    One open bucket per dtype: add the gradient; when the bucket reaches its limit (``first`` for a
    dtype's first bucket, ``cap`` after), close it. Open buckets are closed at the end, in dtype order
    of first appearance (``compute_bucket_assignment_by_size``)."""
    open_: dict[int, int] = {}
    limit: dict[int, int] = {}
    out: list[int] = []
    for nbytes, key in grad_bytes:
        open_[key] = open_.get(key, 0) + nbytes
        if open_[key] >= limit.setdefault(key, first):
            out.append(open_.pop(key))
            limit[key] = cap
    out += [b for b in open_.values() if b]
    return out


def first_bucket_cap(bucket_cap_mb: int) -> int:
    """The first bucket's cap: 1 MiB when ``bucket_cap_mb`` is torch's default (the HF Trainer passes
    ``ddp_bucket_cap_mb`` only when set), else the cap (distributed.py L104-110)."""
    return FIRST_BUCKET_BYTES if bucket_cap_mb == DEFAULT_BUCKET_CAP_MB else bucket_cap_mb << 20


def ready_order(tensors: tuple[Tensor, ...], layers: int) -> list[tuple[int, int]]:
    """The trainable gradients as (bytes, dtype key) in the order backward makes them: the root's
    output side (lm_head, final norm) first, then the decoder layers from the last, the input
    embedding last. (Within a layer the order does not change the buckets' total, only their count.)"""
    L = max(layers, 1)
    root = [t for t in tensors if t.trainable and not t.layer]
    layer = [t for t in tensors if t.trainable and t.layer]
    head = [(t.numel * t.nbytes, t.nbytes) for t in root if not t.row.endswith("embeddings") for _ in range(t.count)]
    per = [(t.numel * t.nbytes, t.nbytes) for t in layer for _ in range(t.count // L)]
    rest = [(t.numel * t.nbytes, t.nbytes) for t in layer for _ in range(t.count % L)]  # not one per layer
    emb = [(t.numel * t.nbytes, t.nbytes) for t in root if t.row.endswith("embeddings") for _ in range(t.count)]
    return head + per * L + rest + emb


def bucket_bytes(tensors: tuple[Tensor, ...], layers: int, bucket_cap_mb: int) -> tuple[int, int]:
    """(allocated bytes of every bucket, bucket count): each bucket rounded to the allocator's 512 B."""
    sizes = bucket_sizes(ready_order(tensors, layers), bucket_cap_mb << 20, first_bucket_cap(bucket_cap_mb))
    return sum(_round(b) for b in sizes), len(sizes)


def used_map_bytes(trainable_tensors: int, cuda: bool) -> int:
    """The Reducer's used-parameter maps: 4 B per trainable tensor, one 512-B-rounded map on the GPU
    (``local_used_map_dev_``), plus the host one (``local_used_map_``) when the run is on CPU."""
    return _round(4 * trainable_tensors) * (1 if cuda else 2) if trainable_tensors else 0


def rank_terms(arch, s, st) -> RankTerms:
    """One DDP rank: the single-GPU rows, the buckets alive all step, the gradients as views into them
    with ``gradient_as_bucket_view``."""
    inv = rank_inventory(arch, s, st)
    buckets, n = bucket_bytes(inv, arch.num_layers, s.bucket_cap_mb)
    maps = used_map_bytes(sum(t.count for t in inv if t.trainable), st.d.cuda)
    view = s.gradient_as_bucket_view
    row = Component("gradients/ddp_buckets", "gradients", buckets + maps,
                    f"DDP Reducer: {n} gradient bucket(s) (first {first_bucket_cap(s.bucket_cap_mb) >> 10} KiB, then "
                    f"{s.bucket_cap_mb} MiB), one copy of the trainable gradients"
                    + ("; .grad are views into them" if view else "") + f"; used-parameter map(s) {maps} B")
    return RankTerms(comps=(*st.comps, row), grad_ratio=Fraction(0) if view else Fraction(1),
                     runtime=nccl_runtime(s), notes=(f"ddp: rank {s.process_rank} of {s.world_size}; every rank holds "
                                                     "the whole model and optimizer state",))
