"""FSDP2 (``fully_shard`` on each decoder layer, then on the root): one rank's shards and working set.

Symbols: N = world size, r = the rank, d0 = a parameter's dim 0, m = its elements per dim-0 row,
w = its bytes per element, c = ceil(d0 / N) (the padded shard's rows), L = decoder layers. Sources
(torch 2.13 ``torch/distributed/fsdp/_fully_shard/``):
- ``_fsdp_param.py`` L298-318 (``_init_sharded_param``): ``_chunk_with_empty`` splits dim 0 in N chunks of
  c rows (the last ranks fewer, or none); every rank stores ``new_zeros`` of the padded chunk 0's size,
  so the shard's storage is c·m·w on every rank, while the parameter (the DTensor's local tensor) is the
  unpadded ``narrow`` of it: what ``zeros_like`` gives AdamW (its state follows the unpadded local rows,
  the probe's N = 3 uneven-shard note);
- ``_fsdp_param_group.py`` L417-489 (``wait_for_unshard``): the all-gather output is N·Σ c·m·w of the
  group (one flat buffer); each parameter's unsharded tensor is a view of its own N·c·m·w output; in the
  forward the group's all-gather result is kept until the next group's copy-out (``AllGatherState``),
  in backward it is freed after the copy-out; at world size 1 there is no all-gather;
- ``_fsdp_param_group.py`` L640-718 (``post_backward``): a group's gradients are reduce-scattered from
  one N·Σ c·m·w input (the trainable parameters only) into its padded shard; the input is held
  (``ReduceScatterState``) until the next group's reduce-scatter (``reduce_scatter_max_input_buffers``
  = 1), and the sharded gradients are views of the reduce-scatter output (padded);
- the root group (embeddings, lm_head, final norm: what no decoder layer holds) is not resharded after
  forward (the HF / accelerate FSDP2 wrapping, ``reshard_after_forward=False`` for the root), so it
  stays unsharded from its forward to the end of backward;
- backward prefetches one group: during layer i's backward layer i − 1's all-gather output exists too.
Checked against the probe (../shared/research/multigpu-simulation.md §1): the peak is C + K/N exactly
for N = 2, 4, 8, K = 6 B/param for full bf16 fine-tuning (shard 2 B + AdamW's two bf16 moments 4 B),
and the 512-B blocks of the tiny norm shards and their state do not shrink with N.
"""

from __future__ import annotations

from fractions import Fraction

from vramplan.analytic import phases as ph
from vramplan.breakdown import Component
from vramplan.parallel.common import blocks, nccl_runtime, rank_inventory, state_bytes
from vramplan.parallel.inventory import Tensor, shardable
from vramplan.parallel.rank import OTHER_PHASES, RankTerms
from vramplan.scenario import StateOffload


def padded_rows(dim0: int, world: int) -> int:
    """c = ceil(d0 / N): the rows of every rank's (padded) shard storage."""
    return -(-dim0 // world)


def local_rows(dim0: int, world: int, rank: int) -> int:
    """Rows of rank r's unpadded shard: min(c, max(0, d0 − r·c)) (``torch.chunk`` semantics: the last
    ranks get fewer rows, or none)."""
    c = padded_rows(dim0, world)
    return max(0, min(c, dim0 - rank * c))


def shard_bytes(t: Tensor, world: int) -> int:
    """One parameter's sharded storage on any rank: c·m·w in allocator blocks."""
    return blocks(padded_rows(t.dim0, world) * t.inner * t.nbytes)


def unsharded_bytes(t: Tensor, world: int) -> int:
    """One parameter's unsharded tensor (its all-gather output, N·c·m·w, padded), in allocator blocks."""
    return blocks(world * padded_rows(t.dim0, world) * t.inner * t.nbytes)


def gathered_bytes(ts: list[Tensor], world: int, layers: int = 1, trainable: bool = False) -> int:
    """One group's flat all-gather output (or reduce-scatter input, ``trainable``): N·Σ c·m·w over its
    parameters, one buffer in allocator blocks. ``layers``: the tensors' counts cover that many groups
    (the per-layer average of a model whose layers differ)."""
    n = sum(t.count * world * padded_rows(t.dim0, world) * t.inner * t.nbytes for t in ts
            if t.trainable or not trainable)
    return blocks(-(-n // layers))


def rank_terms(arch, s, st) -> RankTerms:
    """One FSDP2 rank (``process_rank`` of ``world_size``)."""
    N, r, L = s.world_size, s.process_rank, arch.num_layers
    inv = rank_inventory(arch, s, st)
    layer = [t for t in inv if t.layer]
    root = [t for t in inv if not t.layer]
    offload = s.state_offload is StateOffload.PARAMS
    # 1. static: each parameter's padded shard; replicated rows (quant state, buffers) as they are
    rows: dict[str, int] = {}
    for t in inv:
        rows[t.row] = rows.get(t.row, 0) + t.count * shard_bytes(t, N)
    trainable = [t for t in inv if t.trainable]
    state = sum(t.count * state_bytes(s.optimizer, local_rows(t.dim0, N, r) * t.inner, t.nbytes) for t in trainable)
    comps: list[Component] = []
    host: list[Component] = []
    for c in st.comps:
        if shardable(c.name):
            b = rows.get(c.name, 0)
            note = f"FSDP2 dim-0 shard 1/{N} (padded to ceil(dim0/N) rows)"
            if offload:
                host.append(Component("host/" + c.name.replace("/", "_"), "host", b, note + ", CPUOffloadPolicy"))
                b = 0
            comps.append(Component(c.name, c.category, b, note))
        elif c.category == "optimizer":
            note = f"optimizer state on rank {r}'s unpadded local shards"
            if offload:
                host.append(Component("host/optimizer", "host", state, note + ", CPUOffloadPolicy"))
            comps.append(Component(c.name, c.category, 0 if offload else state, note))
        else:
            comps.append(c)
    # 2. gradients: the padded reduce-scatter outputs (one per group), as a share of the single-GPU bytes
    grad_rank = sum(t.count * padded_rows(t.dim0, N) * t.inner * t.nbytes for t in trainable)
    ratio = Fraction(grad_rank, st.grad_total) if st.grad_total else Fraction(0)
    if offload:
        host.append(Component("host/gradients", "host", grad_rank, "sharded gradients, CPUOffloadPolicy"))
    # 3. the working set, per phase
    R = sum(t.count * unsharded_bytes(t, N) for t in root)
    U = -(-sum(t.count * unsharded_bytes(t, N) for t in layer) // L) if layer else 0
    AG = gathered_bytes(layer, N, L) if N > 1 else 0
    RS = gathered_bytes(layer, N, L, trainable=True)
    shard_in = -(-sum(t.count * shard_bytes(t, N) for t in layer) // L) if offload else 0
    AG += shard_in if N > 1 else 0  # with CPU offload the shard is copied to the GPU before its all-gather
    rows_at = phase_rows(R, U, AG, RS, L, s.reshard_after_forward)
    notes = (f"fsdp: rank {r} of {N}; FSDP2 per decoder layer + root (root not resharded after forward, layers "
             f"reshard_after_forward={s.reshard_after_forward}); bitsandbytes quant state and buffers replicated",)
    return RankTerms(comps=tuple(comps), grad_ratio=Fraction(0) if offload else ratio, keep_head=True,
                     phase_rows=rows_at, host=tuple(host), runtime=nccl_runtime(s), notes=notes)


def phase_rows(R: int, U: int, AG: int, RS: int, L: int, reshard: bool) -> dict[str, tuple]:
    """The unsharded working set at each phase (bytes: R the root group unsharded, U one layer
    unsharded, AG one layer's all-gather output, RS one layer's reduce-scatter input):

    1. forward end / loss (loss forward and backward, lm_head or final norm backward, DoRA's re-run):
       R + the last layer's all-gather result kept by ``AllGatherState`` (+ every layer unsharded when
       the layers are not resharded after forward);
    2. last layer backward: R + that layer unsharded + the previous layer's prefetched all-gather output
       (+ the other L − 1 layers without resharding);
    3. first layer backward: R + layer 0 unsharded + layer 1's pending reduce-scatter input;
    4. embedding backward: R + layer 0's pending reduce-scatter input;
    5. optimizer step: nothing unsharded (the root resharded at the end of backward);
    6. evaluation: R + one all-gather output."""
    keep = 0 if reshard else U
    un = "weights/fsdp_unsharded"
    ag = "temporary/fsdp_all_gather"
    rs = "gradients/fsdp_reduce_scatter"
    loss = ((un, "weights", R + L * keep, "FSDP2 root group unsharded" + ("" if reshard else " + every layer")),
            (ag, "temporary", AG, "the last layer's all-gather output, kept until the next all-gather"),
            (rs, "gradients", 0, "no reduce-scatter pending"))
    last = ((un, "weights", R + U + (L - 1) * keep, "root + the layer in backward unsharded"),
            (ag, "temporary", AG if L > 1 else 0, "the previous layer's prefetched all-gather output"),
            (rs, "gradients", 0, "no reduce-scatter pending"))
    first = ((un, "weights", R + U, "root + layer 0 unsharded"),
             (ag, "temporary", 0, "nothing left to prefetch"),
             (rs, "gradients", RS if L > 1 else 0, "layer 1's reduce-scatter input, held until the next one"))
    emb = ((un, "weights", R, "root unsharded"), (ag, "temporary", 0, "no all-gather"),
           (rs, "gradients", RS, "layer 0's reduce-scatter input, held until the root's"))
    none = ((un, "weights", 0, "every group resharded"), (ag, "temporary", 0, "no all-gather"),
            (rs, "gradients", 0, "no reduce-scatter pending"))
    ev = ((un, "weights", R, "root unsharded"), (ag, "temporary", AG, "one layer's all-gather output"),
          (rs, "gradients", 0, "no backward"))
    return {ph.LAST_LAYER: last, ph.FIRST_LAYER: first, ph.EMBEDDING: emb, ph.OPTIMIZER: none,
            ph.EVALUATION: ev, OTHER_PHASES: loss}
