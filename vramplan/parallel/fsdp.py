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

#: FSDP2's own moment: the forward's first groups gathered, before any activation is saved.
FORWARD_START = "forward start"


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


def ignored(t: Tensor) -> bool:
    """A frozen non-floating parameter (bitsandbytes' uint8-stored 4-bit weight, LLM.int8's int8):
    accelerate passes it to ``fully_shard(ignored_params=...)`` (``accelerate/utils/fsdp_utils.py``
    L773-782, L833-846), so every rank keeps it whole and it is never all-gathered."""
    return not t.floating and not t.trainable


def rank_terms(arch, s, st) -> RankTerms:
    """One FSDP2 rank (``process_rank`` of ``world_size``), wrapped as accelerate 1.16 does: each decoder
    layer, the input embedding on its own when untied, the tail (final norm + lm_head, the tied embedding)
    with ``reshard_after_forward=False``, the root."""
    N, r, L = s.world_size, s.process_rank, arch.num_layers
    inv = rank_inventory(arch, s, st)
    sharded = [t for t in inv if not ignored(t)]
    layer = [t for t in sharded if t.layer]
    untied_embed = not arch.tie_embeddings
    embed = [t for t in sharded if not t.layer and untied_embed and t.row.endswith("/embeddings")]
    root = [t for t in sharded if not t.layer and t not in embed]  # tail + root: unsharded until backward's end
    offload = s.state_offload is StateOffload.PARAMS
    # 1. static: each parameter's padded shard (ignored ones whole); replicated rows (quant state, buffers)
    rows: dict[str, int] = {}
    for t in inv:
        rows[t.row] = rows.get(t.row, 0) + (t.total if ignored(t) else t.count * shard_bytes(t, N))
    trainable = [t for t in inv if t.trainable]
    state = sum(t.count * state_bytes(s.optimizer, local_rows(t.dim0, N, r) * t.inner, t.nbytes) for t in trainable)
    comps: list[Component] = []
    host: list[Component] = []
    for c in st.comps:
        if shardable(c.name):
            b = rows.get(c.name, 0)
            whole = any(ignored(t) for t in inv if t.row == c.name)
            note = ("ignored by FSDP2 (frozen, not floating): whole on every rank" if whole else
                    f"FSDP2 dim-0 shard 1/{N} (padded to ceil(dim0/N) rows)")
            if offload and not whole:
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
    E = sum(t.count * unsharded_bytes(t, N) for t in embed)
    U = -(-sum(t.count * unsharded_bytes(t, N) for t in layer) // L) if layer else 0
    AG = gathered_bytes(layer, N, L) if (N > 1 and layer) else 0
    RS = gathered_bytes(layer, N, L, trainable=True)
    if offload and N > 1:  # the shard is copied to the GPU before its all-gather
        AG += -(-sum(t.count * shard_bytes(t, N) for t in layer) // L)
    rows_at = phase_rows(R, E, U, AG, RS, L, s.reshard_after_forward)
    AG_R = gathered_bytes(root, N) if N > 1 else 0
    AG_E = gathered_bytes(embed, N) if N > 1 else 0
    # The forward's last all-gather result stays referenced (torch 2.13 ``_fsdp_param_group.py``
    # ``wait_for_unshard``: ``comm_ctx.all_gather_state``, dropped by the next all-gather or the root's
    # post-forward), and the loss runs inside the model's forward: the tail's when the embedding is untied
    # (the tail runs last), else the last decoder layer's (the tied tail was gathered first).
    last_ag, whose = (AG_R, "the tail's") if untied_embed else (AG, "the last layer's")
    if last_ag:
        rows_at[ph.LOSS_FORWARD] = tuple(
            (n, c, b + (last_ag if n.endswith("all_gather") else 0),
             w + (f"; {whose} all-gather result held until the root's post-forward" if n.endswith("all_gather")
                  else "")) for n, c, b, w in rows_at[OTHER_PHASES])
    first = (R if not untied_embed else E) + U
    own = {FORWARD_START: (
        ("weights/fsdp_unsharded", "weights", first, "the first group (" + ("tail with the tied embedding" if not
         untied_embed else "the input embedding") + ") and layer 0 unsharded"),
        ("temporary/fsdp_all_gather", "temporary", (AG_E if untied_embed else AG_R) + (AG if L > 1 else 0),
         "the first group's all-gather result (kept until the next copy-out) + layer 1's, prefetched"),
        ("gradients/fsdp_reduce_scatter", "gradients", 0, "no backward yet"))} if N > 1 else {}
    whole = any(ignored(t) for t in inv)
    notes = (f"fsdp: rank {r} of {N}; FSDP2 per decoder layer, the untied input embedding, the tail (final norm + "
             f"lm_head, not resharded after forward) and the root (accelerate 1.16's groups; layers "
             f"reshard_after_forward={s.reshard_after_forward}); bitsandbytes quant state and buffers replicated"
             + ("; uint8-stored 4-bit weights kept whole (ignored_params: --quant-storage bf16 shards them)"
                if whole else ""),)
    return RankTerms(comps=tuple(comps), grad_ratio=Fraction(0) if offload else ratio, keep_head=True,
                     phase_rows=rows_at, own_phases=own, host=tuple(host), runtime=nccl_runtime(s), notes=notes)


def phase_rows(R: int, E: int, U: int, AG: int, RS: int, L: int, reshard: bool) -> dict[str, tuple]:
    """The unsharded working set at each phase (bytes: R the tail and root groups unsharded, E the untied
    input embedding's group, U one layer unsharded, AG one layer's all-gather output, RS one layer's
    reduce-scatter input):

    1. forward end / loss (loss forward and backward, lm_head or final norm backward, DoRA's re-run):
       R (+ E and every layer unsharded when the layers are not resharded after forward);
    2. last layer backward: R + that layer unsharded + the previous layer's prefetched all-gather output
       (+ E and the other L − 1 layers without resharding);
    3. first layer backward: R + layer 0 unsharded + the embedding's prefetched all-gather (untied) +
       layer 1's reduce-scatter input, held until the next one (+ E without resharding);
    4. embedding backward: R + E + layer 0's pending reduce-scatter input;
    5. optimizer step: nothing unsharded (every group resharded at the end of backward);
    6. evaluation: R + one all-gather output."""
    keep = 0 if reshard else U
    e_kept = 0 if reshard else E
    un, ag, rs = "weights/fsdp_unsharded", "temporary/fsdp_all_gather", "gradients/fsdp_reduce_scatter"

    def at(u: int, a: int, g: int, what: str) -> tuple:
        return ((un, "weights", u, what), (ag, "temporary", a, "an all-gather output not yet copied out"),
                (rs, "gradients", g, "a reduce-scatter input held until the next one"))
    return {ph.LAST_LAYER: at(R + e_kept + U + (L - 1) * keep, AG if L > 1 else 0, 0,
                              "tail/root + the layer in backward unsharded"),
            ph.FIRST_LAYER: at(R + e_kept + U, E if reshard else 0, RS if L > 1 else 0,
                               "tail/root + layer 0 unsharded"),
            ph.EMBEDDING: at(R + E, 0, RS, "tail/root + the input embedding unsharded"),
            ph.OPTIMIZER: at(0, 0, 0, "every group resharded"),
            ph.EVALUATION: at(R, AG, 0, "tail/root unsharded"),
            OTHER_PHASES: at(R + e_kept + L * keep, 0, 0, "tail/root unsharded" + ("" if reshard else
                                                                                  " + every layer"))}
