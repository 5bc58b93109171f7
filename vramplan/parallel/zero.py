"""DeepSpeed ZeRO stage 2 and 3 (the HF Trainer's DeepSpeed integration): one rank's partitions,
buckets and gathered parameters.

Symbols: N = world size, P_t = trainable elements, c = the compute dtype's bytes, n = one parameter's
elements, B_r = ``reduce_bucket_size``, B_p = ``stage3_prefetch_bucket_size``, T_p =
``stage3_param_persistence_threshold`` (elements). Sources (deepspeed 0.19.8, transformers 5.24):
- ``"auto"`` (0 in the Scenario) as transformers fills it: ``integrations/deepspeed.py`` L202-241:
  B_r = H², B_p = int(0.9·H²), T_p = 10·H (H = ``config.hidden_size``);
- ``runtime/engine.py`` L2079-2090 (``_configure_distributed_model``): with bf16/fp16 enabled every
  floating parameter is cast to that dtype (buffers keep theirs): LoRA adapters and the recipe's fp32
  norms become c bytes; bitsandbytes' packed storage is not floating and stays;
- ``runtime/zero/stage_1_and_2.py`` (ZeRO-2): the trainable parameters are flattened into one c-byte
  buffer (the model's own tensors become views of it), each rank keeps an fp32 copy of its 1/N partition
  (``single_partition_of_fp32_groups``) and the optimizer state on it, a c-byte gradient partition
  (``grads_in_partition``, contiguous_gradients) and the reduction bucket ``ipg_buffer`` of B_r
  elements, two with ``overlap_comm``; the step casts the gradient partition to fp32;
- ``runtime/zero/partition_parameters.py`` L1292 (persistence: n ≤ T_p stays whole on every rank),
  L1690-1697 and L1816-1817 (ZeRO-3: each parameter padded to a multiple of N and split, ⌈n/N⌉ elements
  per rank, one ``ds_tensor`` each); ``stage3.py``: fp32 partitions and their optimizer state, a c-byte
  gradient partition buffer, the same reduction bucket; a module's parameters are gathered for its
  forward and backward, with up to B_p elements prefetched ahead;
- DeepSpeed's own model-state estimators (``estimate_zero2_model_states_mem_needs`` = 2·P + 18·P/N,
  ``estimate_zero3_model_states_mem_needs`` = 4·largest layer + 18·P/N, fp16 params, fp32 master and
  Adam): tests/parallel compares the rows they correspond to.
ZeRO-3's gathered parameters at each phase come from DeepSpeed's parameter coordinator replayed on the
step's module order (``vramplan.parallel.zero3_schedule``: prefetch, ``stage3_max_live_parameters``,
``stage3_max_reuse_distance``, the layers kept from their forward to their backward); a layout other than
a dense decoder falls back to a one-pass rule (``reuse_kept_layers``, unverified). Not priced: DeepSpeed's
CUDA-only fused kernels' workspaces.
"""

from __future__ import annotations

from fractions import Fraction

from vramplan.analytic import phases as ph
from vramplan.breakdown import Component
from vramplan.parallel.common import blocks, nccl_runtime, rank_inventory, state_bytes
from vramplan.parallel import zero3_schedule as zs
from vramplan.parallel.zero3_schedule import MAX_REUSE_DISTANCE
from vramplan.parallel.inventory import Tensor, shardable
from vramplan.parallel.rank import OTHER_PHASES, RankTerms
from vramplan.scenario import Dtype, StateOffload, Strategy


def auto_buckets(hidden: int, reduce_bucket_size: int, prefetch: int, persistence: int) -> tuple[int, int, int]:
    """(B_r, B_p, T_p) with ``"auto"`` (0) filled as transformers 5.24 does (deepspeed.py L232-241):
    H², int(0.9·H²), 10·H."""
    return (reduce_bucket_size or hidden * hidden, prefetch or int(0.9 * hidden * hidden),
            persistence or 10 * hidden)


def partition_numel(n: int, world: int) -> int:
    """ZeRO-3's per-rank partition of an n-element parameter: ⌈n/N⌉ (padded to a multiple of N,
    ``_aligned_size`` / ``_padding_size``, then divided)."""
    return -(-n // world)


def flat_partition(p_t: int, world: int) -> int:
    """ZeRO-2's per-rank partition of the flat trainable buffer: ⌈P_t/N⌉ elements."""
    return -(-p_t // world)


def ipg_bucket_bytes(reduce_bucket_size: int, c: int, overlap_comm: bool) -> int:
    """The reduction bucket(s): B_r elements of c bytes, two with ``overlap_comm`` (double buffer)."""
    return (2 if overlap_comm else 1) * blocks(reduce_bucket_size * c)


def reuse_kept_layers(layer_numel: int, layers: int, head_numel: int, max_reuse: int = MAX_REUSE_DISTANCE,
                      max_live: int = 1_000_000_000) -> int:
    """ZeRO-3, a layout ``zero3_schedule`` does not derive (MoE, non-attention mixers, vision towers,
    DoRA): how many decoder layers stay gathered from their forward to their backward, by a one-pass rule:
    the last layer first, layer L − 1 − j kept while j·n_layer < ``max_reuse`` and the kept elements stay
    within ``max_live``; ``head_numel`` is not counted. Unverified: on the dense decoders the replay
    replaces it for, it keeps every layer where DeepSpeed keeps 12 of 16 (Llama-3.2-1B LoRA, 2 GPUs)."""
    k = 0
    for j in range(layers):  # j = L − 1 − i: the last layer first
        if j * layer_numel >= max_reuse or (k + 1) * layer_numel > max_live:
            break
        k += 1
    return k


def _cast(t: Tensor, c: int) -> Tensor:
    """A floating parameter in DeepSpeed's mixed-precision dtype (engine.py L2085)."""
    if not t.floating or t.row in ("weights/nf4", "weights/fp4"):  # packed 4-bit storage keeps its bytes
        return t
    return Tensor(t.row, t.dim0, t.inner, c, t.count, t.layer, t.trainable, True)


def priced_scenario(s):
    """The single-GPU step DeepSpeed actually runs: with bf16/fp16 every floating parameter cast to that
    dtype (engine.py L2079-2090: the recipe's fp32 upcast undone, peft's fp32 adapters in the compute
    dtype) and no ``torch.autocast`` (accelerate 1.15 ``accelerator.py`` L536-566 turns native AMP off
    under DeepSpeed). fp32 runs are left as they are."""
    if s.dtype is Dtype.FP32:
        return s
    return s.replace(autocast=False, recipe="plain", **({} if s.full else {"adapter_dtype": s.dtype.value}))


def rank_terms(arch, s, st) -> RankTerms:
    """One ZeRO-2 or ZeRO-3 rank."""
    N, H = s.world_size, arch.hidden_size
    three = s.strategy is Strategy.ZERO3
    c = s.dtype.nbytes
    mixed = s.dtype is not Dtype.FP32
    B_r, B_p, T_p = auto_buckets(H, s.reduce_bucket_size, s.stage3_prefetch_bucket_size,
                                 s.stage3_param_persistence_threshold)
    inv = [(_cast(t, c) if mixed else t) for t in rank_inventory(arch, s, st)]

    def persist(t: Tensor) -> bool:
        return three and t.numel <= T_p

    def part(t: Tensor) -> int:  # elements of one tensor on this rank
        return t.numel if (persist(t) or not three) else partition_numel(t.numel, N)

    rows: dict[str, int] = {}
    for t in inv:
        if not three:
            b = t.count * t.numel * t.nbytes
        elif t.trainable:  # the trainable 16-bit partition is one flat buffer (fp16_partitioned_groups_flat)
            b = -(-t.count * t.numel * t.nbytes // N)
        else:
            b = t.count * blocks(part(t) * t.nbytes)
        rows[t.row] = rows.get(t.row, 0) + b
    trainable = [t for t in inv if t.trainable]
    p_t = sum(t.count * t.numel for t in trainable)
    local = flat_partition(p_t, N)  # the fp32 master, optimizer state and gradient partition: ⌈P_t/N⌉
    opt_offload = s.state_offload in (StateOffload.OPTIMIZER, StateOffload.PARAMS)
    par_offload = s.state_offload is StateOffload.PARAMS
    master = blocks(4 * local)
    state = state_bytes(s.optimizer, local, 4)
    gpart = blocks(local * c)
    comps: list[Component] = []
    host: list[Component] = []
    tag = "ZeRO-3 partition" if three else "ZeRO-2: replicated"
    for comp in st.comps:
        if shardable(comp.name):
            b = rows.get(comp.name, 0)
            flat = any(t.trainable for t in inv if t.row == comp.name)
            note = ((f"{tag} 1/{N}: the flat trainable 16-bit partition" if flat else
                     f"{tag} 1/{N} per parameter (⌈n/N⌉; n ≤ {T_p:,} kept whole)") if three else
                    f"{tag} on every rank") + (f", {c} B floating (DeepSpeed's cast)" if mixed else "")
            if par_offload:
                host.append(Component("host/" + comp.name.replace("/", "_"), "host", b, note + ", offload_param"))
                b = 0
            comps.append(Component(comp.name, comp.category, b, note))
        elif comp.category == "optimizer":
            comps.append(Component(comp.name, "optimizer", 0 if opt_offload else state,
                                   f"optimizer state on the fp32 partition ({local:,} elements)"))
        else:
            comps.append(comp)
    if opt_offload:
        host += [Component("host/fp32_master", "host", master, "fp32 master partition, offload_optimizer"),
                 Component("host/optimizer", "host", state, "optimizer state, offload_optimizer"),
                 Component("host/fp32_gradients", "host", blocks(4 * local), "fp32 gradient partition for the CPU "
                           "step, offload_optimizer")]
    else:
        comps.append(Component("optimizer/fp32_master", "optimizer", master,
                               f"fp32 copy of the rank's trainable partition ({local:,} elements)"))
    grad_static = three and not opt_offload  # ZeRO-3 allocates its gradient partition buffer at init
    if grad_static:
        comps.append(Component("gradients/zero_partition", "gradients", gpart, f"gradient partition, {c} B"))
    ipg = ipg_bucket_bytes(B_r, c, s.overlap_comm)
    step_tmp = 0 if opt_offload else blocks(4 * local)
    if three and s.contiguous_gradients:
        # stage3.py L779-783: one bucket buffer of B_r elements per communication dtype, allocated when the
        # optimizer state is (the first step) and kept: every phase of a steady step
        comps.append(Component("gradients/zero_ipg_bucket", "gradients", blocks(B_r * c),
                               f"ZeRO-3 reduction bucket of {B_r:,} elements, kept from the first step"))
        back_rows = []
    else:
        back_rows = [("gradients/zero_ipg_bucket", "gradients", ipg,
                      f"reduction bucket(s) of {B_r:,} elements" + (" ×2 (overlap_comm)" if s.overlap_comm else ""))]
    part_ready = _partition_ready(inv, arch.num_layers, local, s.process_rank) if not three and not opt_offload \
        else None
    if arch.tie_embeddings and s.full:  # made by the lm_head's backward, held to the embedding's (ZeRO-2: the step)
        back_rows.append(("gradients/tied_embedding", "gradients", blocks(arch.vocab_size * H * c),
                          "the tied embedding's whole 16-bit gradient, held from the lm_head backward (trace)"))
    step_rows = [("temporary/zero_fp32_gradients", "temporary", step_tmp, "the gradient partition cast to fp32")]
    if not opt_offload:
        # stage_1_and_2.py ``step``: ``self.flatten(self.averaged_gradients[i]).to(fp32)``; stage3.py
        # ``_prepare_fp32_grad_for_sub_group`` L2683-2693 the same per sub group (one sub group up to
        # sub_group_size = 1e9 partition elements): a flat 16-bit copy of the partition's gradients exists
        # beside its fp32 cast
        step_rows.append(("temporary/zero_flat_gradients", "temporary", gpart,
                          "the flattened 16-bit gradient partition, cast from"))
    if not three and arch.tie_embeddings and s.full:
        step_rows.append(("gradients/tied_embedding", "gradients", blocks(arch.vocab_size * H * c),
                          "the tied embedding's whole 16-bit gradient, still held at the step (trace)"))
    if not three and not opt_offload:
        step_rows.append(("gradients/zero_partition", "gradients", gpart, f"gradient partition, {c} B"))
    # one layer's checkpoint: its input, b·s·H in the compute dtype (none subtracted without checkpointing)
    ckpt = s.batch * s.seq * arch.hidden_size * c if s.grad_checkpointing else 0
    sim = _simulated(arch, s, inv, B_p, ckpt) if three else None
    kept = _fallback_kept(arch, s, inv) if three and sim is None else 0
    rows_at = _phase_rows(arch, s, inv, three, B_p, c, back_rows, step_rows, sim, kept)
    if part_ready is not None:  # ZeRO-2's gradient partition, from its first copy on (``_partition_ready``)
        for phase in (ph.LM_HEAD, ph.LAST_LAYER, ph.DORA_FORWARD, ph.FIRST_LAYER, ph.EMBEDDING):
            on = _BACKWARD_ORDER[phase] >= _BACKWARD_ORDER[part_ready]
            row = ("gradients/zero_partition", "gradients", gpart if on else 0, f"gradient partition, {c} B" if on
                   else "gradient partition: not allocated yet (no gradient of this rank's range reduced)")
            rows_at[phase] = tuple(r for r in rows_at[phase] if r[0] != row[0]) + (row,)
    notes = (f"{s.strategy.value}: rank {s.process_rank} of {N}; reduce_bucket_size {B_r:,}"
             + (f", stage3_prefetch_bucket_size {B_p:,}, param persistence threshold {T_p:,}" if three else "")
             + " ('auto' filled as transformers' DeepSpeed integration: H², 0.9·H², 10·H)"
             + (f"; {kept_note(arch, sim, kept)}" if three else "") + "; priced as DeepSpeed runs the step: parameters "
             "cast to the compute dtype, no autocast",)
    return RankTerms(comps=tuple(comps), grad_ratio=Fraction(0), phase_rows=rows_at, host=tuple(host),
                     runtime=nccl_runtime(s), notes=notes)


#: Backward phases in the order they run (``_partition_ready``); the step comes after every one.
_BACKWARD_ORDER = {ph.LM_HEAD: 0, ph.LAST_LAYER: 1, ph.DORA_FORWARD: 1, ph.FIRST_LAYER: 2, ph.EMBEDDING: 3,
                   ph.OPTIMIZER: 4}


def _partition_ready(inv: list[Tensor], layers: int, local: int, rank: int) -> str:
    """The first backward phase at which ZeRO-2's gradient partition exists on ``rank``.

    deepspeed 0.19.8 ``stage_1_and_2.py`` ``copy_grads_in_partition`` L2184-2194 allocates
    ``grads_in_partition`` (⌈P_t/N⌉ elements) when the first gradient of a parameter in the rank's range of
    the flat buffer is copied out of a reduced bucket, and ``_release_ipg_buffers`` drops it at the end of
    the step. The flat buffer follows ``model.parameters()``: a trainable embedding, the decoder layers, then
    the final norm and an untied lm_head; gradients arrive in the reverse order. So the rank's highest flat
    index decides: in the tail, the partition exists from the last layer's backward on; in layer j ≥ 1, from
    the first layer's; in layer 0, from the embedding's; inside the embedding (a rank whose ⌈P_t/N⌉ elements
    are all embedding rows), only at the step."""
    trainable = [t for t in inv if t.trainable]
    embed = sum(t.count * t.numel for t in trainable if not t.layer and t.row.endswith("/embeddings"))
    in_layers = sum(t.count * t.numel for t in trainable if t.layer)
    total = sum(t.count * t.numel for t in trainable)
    hi = min((rank + 1) * local, total) - 1
    if hi < embed:
        return ph.OPTIMIZER
    if hi < embed + in_layers:
        return ph.FIRST_LAYER if (hi - embed) * layers // in_layers >= 1 else ph.EMBEDDING
    return ph.LAST_LAYER


def _layer_numel(inv: list[Tensor], layers: int) -> int:
    return -(-sum(t.count * t.numel for t in inv if t.layer) // layers)


def _head_numel(inv: list[Tensor]) -> int:
    return max((t.numel for t in inv if t.row.endswith(("lm_head", "embeddings"))), default=0)


def _widths(inv: list[Tensor], c: int) -> dict[str, int]:
    """Bytes per element of each kind of parameter as the rank holds it (after DeepSpeed's cast)."""
    def w(*rows: str) -> int:
        return next((t.nbytes for t in inv if t.row.split("/", 1)[1] in rows), c)
    return {"linear": w("linears", "full_weights"), "embeddings": w("embeddings", "lm_head"), "norms": w("norms"),
            "lora": w("lora"), "bias": w("biases")}


def _simulated(arch, s, inv: list[Tensor], B_p: int, ckpt: int = 0) -> dict[str, int] | None:
    """``zero3_schedule.gathered`` for a dense decoder (None for another layout), with ``layers``: the most
    gathered in any decoder layer's forward or backward less ``ckpt`` bytes (one layer's checkpoint) for
    each checkpoint that moment does not hold against the last layer's backward (the layer phase's
    activations): layer i's forward holds i of the L, its backward i + 1."""
    m = zs.model_spec(arch, s, _widths(inv, s.dtype.nbytes))
    if m is None:
        return None
    g = dict(zs.gathered(m, s.world_size, s.stage3_max_live_parameters, B_p, s.stage3_max_reuse_distance))
    L = arch.num_layers
    g["layers"] = max(max(g[f"forward {i}"] - (L - i) * ckpt, g[f"backward {i}"] - (L - 1 - i) * ckpt)
                      for i in range(L))
    return g


def _fallback_kept(arch, s, inv: list[Tensor]) -> int:
    """``reuse_kept_layers`` for a layout ``zero3_schedule`` does not derive."""
    return reuse_kept_layers(_layer_numel(inv, arch.num_layers), arch.num_layers, _head_numel(inv),
                             max_live=s.stage3_max_live_parameters, max_reuse=s.stage3_max_reuse_distance)


def kept_note(arch, sim: dict[str, int] | None, kept: int) -> str:
    """The note on the layers ZeRO-3 keeps gathered from their forward to their backward: the replay's
    count (``sim``), else the one-pass rule's (``kept``)."""
    if sim is not None:
        return (f"{sim['kept']} of {arch.num_layers} decoder layers kept gathered from their forward to their backward "
                "(DeepSpeed's parameter coordinator replayed on the step's module order: zero3_schedule)")
    return (f"{kept} of {arch.num_layers} decoder layers kept gathered after their forward (one-pass rule: this "
            "architecture's module order is not derived, unverified)")


def gathered_module_bytes(inv: list[Tensor], which: str, arch) -> int:
    """ZeRO-3: the largest module's parameters gathered whole (bytes): ``lm_head`` / ``embeddings`` for
    the root's, else the largest single tensor of a decoder layer (one linear with its adapters)."""
    if which in ("lm_head", "embeddings"):
        ts = [t for t in inv if t.row.endswith(which)] or [t for t in inv if t.row.endswith("embeddings")]
        return max((t.numel * t.nbytes for t in ts), default=0)
    return max((t.numel * t.nbytes for t in inv if t.layer), default=0)


def _phase_rows(arch, s, inv: list[Tensor], three: bool, B_p: int, c: int, back: list, step: list,
                sim: dict[str, int] | None, kept: int) -> dict:
    """Per phase: the reduction buckets (and ZeRO-2's gradient partition) from the first reduction (the
    lm_head's or a layer's backward; the loss backward, before any weight gradient, has none) to the step;
    ZeRO-3 also the parameters gathered there (``sim``, the replay; else the module being run + the prefetch
    bucket + ``kept`` layers), and in backward the module's whole gradient (full fine-tuning)."""

    def z3(which: str, backward: bool, at: str) -> list:
        if not three:
            return []
        g = gathered_module_bytes(inv, which, arch)
        if sim is not None:
            out = [("weights/zero3_gathered", "weights", sim[at],
                    f"ZeRO-3: the parameters gathered here as DeepSpeed's coordinator runs the step "
                    f"({sim['kept']} of {arch.num_layers} decoder layers kept from their forward to their backward; "
                    "zero3_schedule)")]
        else:
            b_layer = -(-sum(t.count * blocks(t.numel * t.nbytes) for t in inv if t.layer) // arch.num_layers)
            pre = min(B_p, s.stage3_max_live_parameters) * c
            held = kept * b_layer if which != "embeddings" else 0
            out = [("weights/zero3_gathered", "weights", blocks(g) + blocks(pre) + held,
                    f"ZeRO-3: the {which} module gathered whole + the {B_p:,}-element prefetch bucket"
                    + (f" + {kept} decoder layer(s) kept gathered (one-pass rule, unverified)" if kept else ""))]
        if backward and s.full:
            out.append(("gradients/zero3_module_grad", "gradients", blocks(g), "the gathered module's whole gradient"))
        return out

    def pad(rows: list, z: list) -> tuple:
        have = {r[0] for r in rows}
        return tuple(rows + [(n, cat, 0, "not allocated at this phase") for n, cat in
                             dict.fromkeys((r[0], r[1]) for r in back + step) if n not in have] + z)
    last_b = pad(back, z3("layer", True, "layers"))
    first_b = pad(back, z3("layer", True, "first_layer"))
    loss_b = pad(back, z3("lm_head", True, "lm_head"))  # the lm_head backward: its weight gradient, the first reduction
    fwd = pad([], z3("lm_head", False, "forward"))
    loss_back = pad([], z3("lm_head", False, "loss_backward"))
    if three and not s.full and "lm_head" not in s.modules_to_save:
        # the frozen lm_head's input: ZeRO-3's pre-forward hook passes it through PostBackwardFunctionModule
        # (deepspeed 0.19.8 ``parameter_offload.py`` L497-523, ``output.detach()``), and that alias keeps the
        # final hidden state alive into the loss backward (the trace, equal to a gloo rank's to the byte)
        loss_back += (("activations/zero3_head_input", "activations", s.batch * s.seq * arch.hidden_size * c,
                       "the final hidden state, held by ZeRO-3's hook on the lm_head input"),)
    # the embedding backward: the single-GPU phase prices the tied embedding's second gradient and its sum; the
    # lm_head's (the first) is held by ZeRO-2 until the parameter's last gradient hook (the trace), under ZeRO-3
    # the single-GPU phase's own rows hold it
    emb = pad([r for r in back if r[0] != "gradients/tied_embedding" or not three], z3("embeddings", True, "embeddings"))
    opt = pad(step, [])
    return {ph.LAST_LAYER: last_b, ph.FIRST_LAYER: first_b, ph.DORA_FORWARD: last_b, ph.EMBEDDING: emb,
            ph.LOSS_BACKWARD: loss_back, ph.LM_HEAD: loss_b, ph.FINAL_NORM: fwd, ph.OPTIMIZER: opt,
            ph.LOSS_FORWARD: fwd, ph.EVALUATION: fwd, OTHER_PHASES: fwd}
