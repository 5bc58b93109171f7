"""ZeRO-3's gathered parameters, step by step: DeepSpeed's parameter coordinator replayed on the module
order of one training step. No torch.

Which parameters a ZeRO-3 rank holds whole at a moment is decided by
``PartitionedParameterCoordinator`` (deepspeed 0.19.8 ``runtime/zero/partitioned_param_coordinator.py``)
from the order its module hooks fire in. After the first step (which records that order) every module
fetch runs, in this order (``_fetch_sub_module_impl`` L353-490):

1. the module's partitioned parameters are all-gathered (``__all_gather_params``: the gathered count
   ``n_available`` grows by their full element counts);
2. the fetch queue (every module's parameters in trace order, each with the step it is used at) is
   popped past the module's own parameters not already fetched for this step;
3. prefetch: up to ``min(stage3_max_live_parameters − n_available, stage3_prefetch_bucket_size)``
   elements are popped and gathered. A popped parameter that is already gathered costs nothing and
   only records the step it is next used at (``__most_recent_step_id_param_fetched_for``).

And every module release (its forward post-hook; in backward its post-backward hook) frees its
non-persistent parameters except (``release_sub_module`` L500-533, ``__params_to_release`` L634-664)
those whose recorded next use lies ahead (step 3 above) and those reused within
``stage3_max_reuse_distance`` elements of modules ahead; a parameter still used by another active module
stays. Under gradient checkpointing the frozen parameters fetched by a layer's recomputation are
attributed to the backward module that triggered it and freed with it (``update_recompute_parameters``,
L37-40, L391-393, L517-522).

The consequence that decides the peak: once the prefetch front has passed the end of the forward, the
pops in step 3 run through the backward's entries of every parameter still gathered, so the layers
still gathered then are kept from their forward to their backward. How many that is follows from
``stage3_max_live_parameters``, the prefetch rate (one bucket per module fetch) and the module count per
layer: ``simulate`` replays it instead of a closed rule.

The module order (``schedule``) is transformers 5.24's and peft 0.21's for a dense decoder, as DeepSpeed's
hooks see it (module hooks: ``runtime/zero/parameter_offload.py``):
- forward: every called module's pre-hook (a fetch) and post-hook (a release), nested; the rotary
  embedding is a module without parameters; a peft LoRA ``Linear`` fetches its ``lora_A`` weight as an
  external parameter (its forward reads ``lora_A.weight.dtype``), then ``base_layer``, ``lora_dropout``,
  ``lora_A``, ``lora_B``;
- backward: a module's pre-backward fetch fires when its output's gradient arrives; its release (the
  post-backward hook) hangs on its positional inputs, so modules called with keyword arguments only (the
  models, ``self_attn``) or whose input has no gradient (the token embedding) are never released in
  backward; children run in reverse forward order;
- gradient checkpointing (torch's non-reentrant checkpoint): a layer's backward starts at its last
  module (the layer, its last child, ..., ``lora_B`` / the last linear fetched), then its forward is
  recomputed up to that module's fetch and stops there (early stop: no later post-hooks); reentrant
  (``use_reentrant=True``): the layer's fetch, its whole forward recomputed, then its modules' backward.
``tests/parallel/test_zero3_schedule.py`` checks both against DeepSpeed's own coordinator, event by event.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field
from functools import lru_cache

from vramplan.parallel.common import blocks

#: DeepSpeed's ``stage3_max_reuse_distance`` default (``zero/config.py``; the HF templates set the same 1e9).
MAX_REUSE_DISTANCE = 1_000_000_000

SAVED, GRAPH = "saved", "graph"



@dataclass(frozen=True)
class Param:
    numel: int
    nbytes: int
    persist: bool
    """``numel`` ≤ ``stage3_param_persistence_threshold``: never partitioned (``partition_parameters.py`` L1292)."""
    trainable: bool
    pinned: str = ""
    """The autograd graph references the storage its forward ran on, so releasing it frees no bytes:
    ``SAVED`` until its module's backward (a linear's weight saved for the input's gradient, without
    checkpointing: autograd frees saved tensors once their node has run), ``GRAPH`` until the step's
    backward ends (bitsandbytes' packed 4-bit weight: ``MatMul4Bit.forward`` keeps ``ctx.tensors = (None,
    B)``, a ctx attribute that lives as long as the graph, which the checkpoint's saved-tensor hooks do not
    see; ``autograd/_functions.py`` L357-358)."""


@dataclass(frozen=True)
class Event:
    kind: str
    """``F`` a fetch (pre-hook), ``R`` a release (post-hook)."""
    module: int
    forward: bool
    params: tuple[int, ...]
    """The module's own and external parameters (``iter_params``), by id."""


@dataclass
class _Node:
    params: tuple[int, ...] = ()
    children: list["_Node"] = field(default_factory=list)
    grad: bool = True
    """Its output gets a gradient (a pre-backward fetch)."""
    released: bool = True
    """Released in backward (its positional input gets a gradient)."""
    id: int = -1


def _forward(node: _Node, out: list[Event]) -> None:
    out.append(Event("F", node.id, True, node.params))
    for ch in node.children:
        _forward(ch, out)
    out.append(Event("R", node.id, True, node.params))


def _backward(node: _Node, out: list[Event]) -> None:
    if not node.grad:
        return
    out.append(Event("F", node.id, False, node.params))
    for ch in reversed(node.children):
        _backward(ch, out)
    if node.released:
        out.append(Event("R", node.id, False, node.params))


def _last_chain(node: _Node) -> list[_Node]:
    """The layer and its last module with a gradient, down to a leaf."""
    chain = [node]
    while True:
        kids = [c for c in node.children if c.grad]
        if not kids:
            return chain
        node = kids[-1]
        chain.append(node)


def _checkpointed_backward(layer: _Node, out: list[Event]) -> None:
    chain = _last_chain(layer)
    for n in chain:
        out.append(Event("F", n.id, False, n.params))
    body: list[Event] = []
    for ch in layer.children:
        _forward(ch, body)
    leaf = chain[-1]
    stop = next(i for i, e in enumerate(body) if e.kind == "F" and e.module == leaf.id)
    out.extend(body[:stop + 1])
    for depth in range(len(chain) - 1, -1, -1):
        n = chain[depth]
        below = chain[depth + 1] if depth + 1 < len(chain) else None
        kids = [c for c in n.children if c.grad]
        for ch in reversed(kids):
            if ch is not below:
                _backward(ch, out)
        if n.released:
            out.append(Event("R", n.id, False, n.params))


def _reentrant_backward(layer: _Node, out: list[Event]) -> None:
    """torch's reentrant checkpoint: the layer's pre-backward fetch, its whole forward recomputed (every
    post-hook runs), then the usual backward of its modules."""
    out.append(Event("F", layer.id, False, layer.params))
    for ch in layer.children:
        _forward(ch, out)
    for ch in reversed(layer.children):
        _backward(ch, out)
    if layer.released:
        out.append(Event("R", layer.id, False, layer.params))


@dataclass(frozen=True)
class LinearSpec:
    name: str
    weight: tuple[int, int]
    """(numel, bytes per element) of the weight as DeepSpeed holds it."""
    bias: tuple[int, int] | None
    lora: tuple[tuple[int, int], tuple[int, int]] | None
    """(A, B) as (numel, bytes), or None when not adapted."""
    four_bit: bool = False
    """bitsandbytes' packed 4-bit weight (``Param.pinned``)."""


@dataclass(frozen=True)
class ModelSpec:
    """What the schedule needs of a dense decoder, hashable (``gathered`` caches on it)."""
    embedding: tuple[int, int]
    lm_head: tuple[int, int] | None
    """None when tied to the embedding (the same parameter)."""
    layers: int
    attention: tuple[LinearSpec, ...]
    qk_norm: tuple[int, int] | None
    """(numel, bytes) of q_norm and of k_norm, applied after q_proj / k_proj."""
    mlp: tuple[LinearSpec, ...]
    """In call order, the activation after the first."""
    norms: tuple[int, int]
    """(numel, bytes) of one decoder-layer norm (and of the final norm)."""
    norms_per_layer: int
    peft: bool
    full: bool
    checkpointing: bool
    persistence: int
    reentrant: bool = False
    """Reentrant checkpointing: the forward runs without a graph (nothing pinned), each layer's backward
    recomputes all of its forward first."""


def _walk(nd: _Node):
    yield nd
    for ch in nd.children:
        yield from _walk(ch)


def _no_input_grad(lin: _Node) -> None:
    """A linear of layer 0 on an input without a gradient: a frozen linear gets no backward; a LoRA one only
    through its adapter (``lora_A`` from its weight, ``lora_B``), and neither it nor ``lora_A`` is released
    in backward (their inputs need no gradient)."""
    if not lin.children:
        lin.grad = False
        return
    base, dropout, a, _ = lin.children
    base.grad = dropout.grad = False
    lin.released = a.released = False


def _layer_children(norms: list[_Node], attn: _Node, mlp: _Node) -> list[_Node]:
    """A decoder layer's modules in call order: one norm before each block; a third and fourth norm
    (Gemma 2/3: ``post_attention_layernorm``, ``pre_feedforward_layernorm``, ``post_feedforward_layernorm``)
    after the attention and after the MLP."""
    if len(norms) >= 4:
        return [norms[0], attn, norms[1], norms[2], mlp, *norms[3:]]
    if len(norms) == 3:
        return [norms[0], attn, norms[1], mlp, norms[2]]
    return [norms[0], attn, *norms[1:], mlp]


def schedule(m: ModelSpec) -> tuple[list[Param], list[Event], dict[str, tuple[int, int]], list[set[int]]]:
    """The parameters, the step's events and, per place of the step, the (first, last) event index of
    it: ``forward`` (its end: the loss), ``loss_backward`` (the outer models' backward fetches, which the
    loss's gradient reaches first), ``lm_head`` (its backward fetch), ``last_layer`` /
    ``first_layer`` (the backward of layer L−1 / 0), ``forward i`` / ``backward i`` (layer i's), ``embeddings``
    (its backward fetch)."""
    params: list[Param] = []
    nodes: list[_Node] = []

    def param(numel_bytes: tuple[int, int], trainable: bool, pinned: str = "") -> int:
        n, b = numel_bytes
        params.append(Param(n, b, n <= m.persistence, trainable, pinned))
        return len(params) - 1

    def node(ps: tuple[int, ...] = (), children: list[_Node] | None = None, **kw) -> _Node:
        nd = _Node(ps, children or [], **kw)
        nd.id = len(nodes)
        nodes.append(nd)
        return nd

    def linear(spec: LinearSpec) -> _Node:
        saved = "" if m.checkpointing else SAVED  # F.linear saves its weight for the input's gradient
        graph = "" if m.checkpointing and m.reentrant else GRAPH  # no graph in a reentrant forward
        own = (param(spec.weight, m.full, graph if spec.four_bit else saved),) + \
            ((param(spec.bias, m.full),) if spec.bias else ())
        if spec.lora is None:
            return node(own)
        a, b = param(spec.lora[0], True, saved), param(spec.lora[1], True, saved)
        return node((a,), [node(own), node(), node((a,)), node((b,))])

    # PeftModelForCausalLM, LoraModel (peft), the ForCausalLM model, the decoder model: called with keywords
    top = [node(grad=True, released=False) for _ in range(4 if m.peft else 2)]
    emb = param(m.embedding, m.full)
    embedding = node((emb,), released=False, grad=m.full or m.checkpointing)
    rotary = node(grad=False)
    layers: list[_Node] = []
    layer_params: list[set[int]] = []
    # without checkpointing peft leaves the embedding output without a gradient (enable_input_require_grads
    # comes with gradient checkpointing): layer 0's input then needs none
    input_grad = m.full or m.checkpointing
    for i in range(m.layers):
        attn_kids = []
        for spec in m.attention:
            lin = linear(spec)
            attn_kids.append(lin)
            if i == 0 and not input_grad and spec.name != "o_proj":
                _no_input_grad(lin)
            if m.qk_norm and spec.name in ("q_proj", "k_proj"):
                attn_kids.append(node((param(m.qk_norm, m.full),)))
        attn = node((), attn_kids, released=False)  # called with keyword arguments
        mlp_kids = [linear(spec) for spec in m.mlp]
        mlp_kids.insert(1, node())  # act_fn
        mlp = node((), mlp_kids)
        norms = [node((param(m.norms, m.full),)) for _ in range(m.norms_per_layer)]
        layers.append(node((), _layer_children(norms, attn, mlp)))
        if i == 0 and not input_grad:
            norms[0].grad = layers[0].released = False
        layer_params.append({p for nd in _walk(layers[-1]) for p in nd.params if not params[p].persist})
    final = node((param(m.norms, m.full),))
    head = node((param(m.lm_head, m.full) if m.lm_head else emb,))

    ev: list[Event] = []
    marks: dict[str, tuple[int, int]] = {}
    for t in top:
        ev.append(Event("F", t.id, True, ()))
    _forward(embedding, ev)
    _forward(rotary, ev)
    for i, ly in enumerate(layers):
        first = len(ev)
        _forward(ly, ev)
        marks[f"forward {i}"] = (first, len(ev) - 1)
    _forward(final, ev)
    ev.append(Event("R", top[-1].id, True, ()))  # the decoder model returns
    _forward(head, ev)
    for t in reversed(top[:-1]):
        ev.append(Event("R", t.id, True, ()))
    marks["forward"] = (len(ev) - 1, len(ev) - 1)
    for t in top[:-1]:  # their outputs include the loss: fetched as its backward starts
        ev.append(Event("F", t.id, False, ()))
    marks["loss_backward"] = (len(ev) - 1, len(ev) - 1)
    ev.append(Event("F", head.id, False, head.params))
    marks["lm_head"] = (len(ev) - 1, len(ev) - 1)
    ev.append(Event("R", head.id, False, head.params))
    ev.append(Event("F", top[-1].id, False, ()))
    _backward(final, ev)
    for i in range(m.layers - 1, -1, -1):
        first = len(ev)
        (_backward if not m.checkpointing else _reentrant_backward if m.reentrant else _checkpointed_backward)(
            layers[i], ev)
        marks[f"backward {i}"] = (first, len(ev) - 1)
        if i == m.layers - 1:
            marks["last_layer"] = (first, len(ev) - 1)
        if i == 0:
            marks["first_layer"] = (first, len(ev) - 1)
    if embedding.grad:
        ev.append(Event("F", embedding.id, False, embedding.params))
    marks["embeddings"] = (len(ev) - 1, len(ev) - 1)
    return params, ev, marks, layer_params


def simulate(params: list[Param], events: list[Event], *, world: int, max_live: int, bucket: int,
             max_reuse: int = MAX_REUSE_DISTANCE, probe: int = -1) -> tuple[list[int], list[int], list[bool]]:
    """Replay the coordinator on a steady step (the module order recorded, nothing gathered at its
    start): per event, ``n_available`` (DeepSpeed's count) and the bytes of the gathered parameters
    after it (with the bytes of released parameters the autograd graph still holds, ``Param.pinned``),
    and which parameters are gathered after event ``probe``. A parameter gathered alone lives in its padded
    buffer, ⌈n/N⌉·N elements (``_all_gather_sequential``, ``partition_parameters.py`` L1376-1402); one of a
    coalesced gather is copied out to its own n elements (``AllGatherCoalescedHandle.wait`` L795); each in
    the caching allocator's 512 B blocks (``vramplan.parallel.common.blocks``)."""
    order = [e for e in events if e.kind == "F"]
    queue = collections.deque((p, s) for s, e in enumerate(order) for p in sorted(set(e.params)))
    # the reuse walk (``__params_to_release``): the modules ahead, until max_reuse elements are passed
    cum = [0]
    for e in order:
        cum.append(cum[-1] + sum(params[p].numel for p in e.params))
    uses: dict[int, list[int]] = collections.defaultdict(list)
    for s, e in enumerate(order):
        for p in set(e.params):
            uses[p].append(s)

    def reused(p: int, step: int) -> bool:
        # modules order[step:j] are walked, j the first whose start is at or past max_reuse elements
        j = bisect.bisect_left(cum, cum[step] + max_reuse, lo=step)
        k = bisect.bisect_left(uses[p], step)
        return k < len(uses[p]) and uses[p][k] < j

    avail = [p.persist for p in params]
    held = [0] * len(params)  # bytes of a gathered parameter
    active: dict[int, set[int]] = collections.defaultdict(set)
    recompute: dict[int, set[int]] = collections.defaultdict(set)
    backward: dict[int, bool] = {}  # active backward modules, in insertion order
    recent: dict[int, int] = collections.defaultdict(lambda: -10 ** 10)
    n = nbytes = step = 0
    pinned: dict[int, int] = {}  # released, bytes the autograd graph still references (``Param.pinned``)
    forward_storage: set[int] = set()  # gathered in the forward, that storage not released yet
    pinned_bytes = 0
    in_backward = False
    out_n, out_b = [], []

    def gather(ps: set[int]) -> None:
        nonlocal n, nbytes
        todo = [p for p in ps if not avail[p]]
        for p in todo:
            q = params[p]
            avail[p] = True
            n += q.numel
            raw = q.nbytes * (-(-q.numel // world) * world if len(todo) == 1 else q.numel)
            held[p] = blocks(raw)
            nbytes += held[p]
            if not in_backward and params[p].pinned:
                forward_storage.add(p)

    for e in events:
        if e.kind == "F":
            if not e.forward:
                in_backward = True
                backward.setdefault(e.module, True)
            mine = set(e.params)
            gather(mine)
            for p in mine:
                active[p].add(e.module)
                if e.forward and in_backward and backward and not params[p].trainable:
                    owner = next(reversed(backward))
                    recompute[owner].add(p)
                    active[p].add(owner)
            need = {p for p in mine if recent[p] < step}
            seen: set[int] = set()
            while queue and len(seen) < len(need):
                p, s = queue.popleft()
                recent[p] = s
                seen.add(p)
            if seen != need:
                raise AssertionError(f"schedule out of trace order at step {step}")
            limit = min(max_live - n, bucket)
            pre: set[int] = set()
            k = 0
            while queue and k < limit:
                p, s = queue.popleft()
                recent[p] = max(recent[p], s)
                if not avail[p] and p not in pre:
                    pre.add(p)
                    k += params[p].numel
            gather(pre)
            step += 1
        else:
            free = {p for p in e.params if not params[p].persist and recent[p] <= step and not reused(p, step)}
            mine = set(e.params)
            if not e.forward:
                free |= {p for p in recompute[e.module] if not params[p].persist}
                mine |= recompute.pop(e.module, set())
                backward.pop(e.module, None)
            for p in mine:
                active[p].discard(e.module)
                if p in free and avail[p] and not active[p]:
                    avail[p] = False
                    n -= params[p].numel
                    nbytes -= held[p]
                    if p in forward_storage:  # the autograd graph still references it
                        forward_storage.discard(p)
                        pinned[p] = held[p]
                        pinned_bytes += held[p]
            if not e.forward:  # its backward ran: the graph's saved tensors of it are let go
                for p in e.params:
                    if params[p].pinned == SAVED:
                        pinned_bytes -= pinned.pop(p, 0)
        out_n.append(n)
        out_b.append(nbytes + pinned_bytes)
        if len(out_n) - 1 == probe % len(events):
            snapshot = list(avail)
    return out_n, out_b, snapshot


@lru_cache(maxsize=256)
def gathered(m: ModelSpec, world: int, max_live: int, bucket: int,
             max_reuse: int = MAX_REUSE_DISTANCE) -> dict[str, int]:
    """Bytes of the parameters gathered (whole, on this rank) at each place of the step ``schedule``
    marks: the most within it (``forward``: at its end, the loss). Also ``kept``: the decoder layers still gathered when the last layer's
    backward starts (for the breakdown's note)."""
    params, events, marks, layers = schedule(m)
    _, b, at_loss = simulate(params, events, world=world, max_live=max_live, bucket=bucket, max_reuse=max_reuse,
                             probe=marks["forward"][1])
    out = {name: max(b[i:j + 1]) for name, (i, j) in marks.items()}
    out["kept"] = sum(all(at_loss[p] for p in ps) for ps in layers if ps)
    return out


def model_spec(arch, s, widths: dict[str, int]) -> ModelSpec | None:
    """``arch`` under scenario ``s`` as the schedule's ``ModelSpec``; None where the layers are not a
    dense decoder's (MoE, non-attention mixers, a vision tower, DoRA, adapted lm_head / embeddings),
    whose module order is not derived here. ``widths``: bytes per element of the ``linear`` weights,
    ``embeddings``, ``norms``, ``lora`` and ``bias`` rows as DeepSpeed holds them (16-bit after its cast)."""
    from vramplan.analytic import adapters as ad
    from vramplan.parallel.inventory import _linear_tensors

    if (arch.is_moe or arch.vision is not None or any(k != "attention" for k in arch.mixers) or s.dora
            or (arch.qk_norm and arch.family.qk_norm_full)):
        return None
    lins = arch.layer_linears(0)
    if any(lin.group not in ("attention", "mlp") for lin in lins):
        return None
    targets = set() if s.full else {lin.name for lin in ad.target_linears(arch, s.targets, s.rank)}
    if targets - {lin.name for lin in lins}:
        return None
    r = s.rank

    def spec(lin) -> LinearSpec:
        (w,) = _linear_tensors(lin, s, widths["linear"], True)
        wb = w.nbytes if not w.floating else widths["linear"]
        lora = (((r * lin.in_features, widths["lora"]), (lin.out_features * r, widths["lora"]))
                if lin.name in targets else None)
        return LinearSpec(lin.name, (w.numel, wb), (lin.out_features, widths["bias"]) if lin.bias else None, lora,
                          w.row in ("weights/nf4", "weights/fp4"))

    attn = tuple(spec(lin) for lin in lins if lin.group == "attention")
    mlp = tuple(spec(lin) for lin in lins if lin.group == "mlp")
    H = arch.hidden_size
    qk = None
    if arch.qk_norm:
        qk = (arch.head_dim, widths["norms"])
    return ModelSpec(embedding=(arch.vocab_size * H, widths["embeddings"]),
                     lm_head=None if arch.tie_embeddings else (arch.vocab_size * H, widths["embeddings"]),
                     layers=arch.num_layers, attention=attn, qk_norm=qk, mlp=mlp, norms=(H, widths["norms"]),
                     norms_per_layer=arch.norms_per_layer, peft=not s.full, full=s.full,
                     checkpointing=s.grad_checkpointing, persistence=s.stage3_param_persistence_threshold or 10 * H,
                     reentrant=s.reentrant)
