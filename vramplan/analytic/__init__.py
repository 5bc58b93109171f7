"""The analytic engine: an instant, explainable memory budget of one fine-tuning step.

``estimate(arch, scenario)`` prices every term with the pure functions of this package (weights,
adapters, optimizer, activations, logits, runtime) and picks the peak among the phases of a
training step. Plain int arithmetic; per-architecture and per-scenario-shape quantities are cached
so a call costs tens of microseconds (the planner sweeps thousands). No torch import.

Peak phases considered (step ≥ 2, so optimizer state exists; HF Trainer sets grads to None):
- ``loss backward``: all checkpoints (or all saved activations) + the log-softmax backward;
- ``loss forward``: the same with the loss forward's logits copies;
- ``last layer backward``: the last layer recomputed (GC) + its backward buffers + the transient
  dequantized weight, with no LoRA gradient yet;
- ``first layer backward``: one checkpoint, layer 0 recomputed, every other gradient alive;
- ``optimizer step``: all gradients + the optimizer's temporaries.
"""

from __future__ import annotations

from typing import Any

from vramplan.analytic import activations as act
from vramplan.analytic import adapters as ad
from vramplan.analytic import logits as lg
from vramplan.analytic import optimizer as opt
from vramplan.analytic import weights as wt
from vramplan.analytic.runtime import runtime_components as _runtime_components
from vramplan.arch.spec import Arch
from vramplan.breakdown import Breakdown, Component, Totals
from vramplan.calibration import Calibration
from vramplan.device import Device
from vramplan.engine import runtime_calibration
from vramplan.scenario import Attn, Hold, Loss, Quant, Recipe, Scenario


def _promote_b(a: int, b: int) -> int:
    return a if a >= b else b


__all__ = ["estimate", "runtime_components", "paged_optimizer_bytes", "static_terms", "effective_attention",
           "loss_workspace_bytes"]


#: Note added to both engines' breakdowns when ``effective_attention`` swaps sdpa for eager.
SDPA_FALLBACK_NOTE = ("{name} does not support sdpa (soft-capped attention scores, transformers' "
                      "_supports_sdpa = False): priced with eager attention, which transformers runs when no "
                      "attn_implementation is named; an explicit attn_implementation='sdpa' fails to load")


def effective_attention(arch: Arch, s: Scenario) -> tuple[Attn, str | None]:
    """The attention implementation transformers 5.24 actually runs, and a note when it differs.

    Gemma 2 (``modeling_gemma2.py``: ``_supports_sdpa = False``, "sdpa does not support softcapping")
    is the one family here without sdpa, recognised by its attention-score soft-capping. Loading it with
    no ``attn_implementation`` (the Trainer default), ``PreTrainedModel.get_correct_attn_implementation``
    tries sdpa, catches ``_sdpa_can_dispatch``'s ValueError and falls back to eager; vramplan's default
    ``sdpa`` stands for that default request, so both engines price eager and say so. (An explicit
    ``attn_implementation="sdpa"`` raises instead: ``vramplan.hf.build.meta_model`` does the same.)"""
    if s.attn is Attn.SDPA and arch.attn_logit_softcapping:
        return Attn.EAGER, SDPA_FALLBACK_NOTE.format(name=arch.name)
    return s.attn, None

#: Attribute of an Arch instance holding its static_terms cache (scenario shape -> terms).
_CACHE_ATTR = "_vramplan_static_terms"
_CACHE_MAX = 4096


def _dtypes(s: Scenario, cuda: bool = True, model_type: str = "") -> act.Dtypes:
    """Byte widths implied by the recipe (see ``Recipe``; peft ``prepare_model_for_kbit_training``
    upcasts every non-Params4bit fp16/bf16 parameter to fp32; TRL casts embeddings/lm_head back).
    Gemma's norms return their input's dtype, so its residual stream keeps the embedding's dtype."""
    c = s.dtype.nbytes
    autocast = s.autocast and c == 2
    # the k-bit preparation (and TRL's casts after it) only runs for a quantized model: without
    # quantization every parameter stays in the load dtype, whatever the recipe
    up = s.recipe is not Recipe.PLAIN and s.quant is not Quant.NONE
    norm_w = 4 if up else c
    embed_w = 4 if (up and s.recipe is Recipe.HF_PEFT) else c
    base_w = c
    keeps = model_type in act.NORM_KEEPS_INPUT_DTYPE
    resid = embed_w if keeps else (4 if up else c)
    return act.Dtypes(
        c=c, autocast=autocast, resid=resid, resid0=embed_w, norm_w=norm_w, base_w=base_w,
        other_w=4 if up else c, lora=c if autocast else s.adapter_dtype.nbytes, adapter=s.adapter_dtype.nbytes,
        bnb_keeps_input=s.bnb_keeps_input, quantized=s.quant is not Quant.NONE, dropout=s.lora_dropout > 0, full=s.full, norm_keeps_dtype=keeps,
        cuda=cuda)


def static_terms(arch: Arch, s: Scenario, semantics: str = "cuda") -> dict[str, Any]:
    """Scenario-shape quantities independent of batch and seq (cached)."""
    # The cache lives on the Arch instance itself (its __dict__; Arch is frozen, so not through
    # setattr): it dies with the instance, so a later Arch can never hit an entry keyed for an
    # earlier one (an ``id(arch)`` key could be reused after garbage collection), and two Arch
    # objects that compare equal but carry different config dicts never share entries.
    cache = arch.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = arch.__dict__[_CACHE_ATTR] = {}
    key = (semantics, s.rank, s.quant, s.double_quant, s.blocksize, s.dtype, s.targets, s.lora_dropout > 0,
           s.full, s.grad_checkpointing, s.attn, s.optimizer, s.recipe, s.autocast, s.adapter_dtype, s.loss,
           s.hold_logits, s.bnb_keeps_input)
    hit = cache.get(key)
    if hit is not None:
        return hit
    if len(cache) > _CACHE_MAX:
        cache.clear()
    if semantics not in ("cuda", "cpu"):
        raise ValueError(f"unknown semantics {semantics!r} (cuda or cpu)")
    attn, attn_note = effective_attention(arch, s)
    d = _dtypes(s, cuda=semantics == "cuda", model_type=arch.model_type)
    c = d.c
    comps: list[tuple[str, str, int, str]] = []
    # ---- base weights and quant state
    qlins = arch.quantizable_linears()
    n_q = sum(lin.count * lin.weight_params for lin in qlins)
    bias = sum(lin.count * lin.out_features for lin in qlins if lin.bias)
    max_w = max(lin.weight_params for lin in qlins)
    if s.quantized_4bit:
        packed = sum(lin.count * wt.packed_4bit_bytes(lin.weight_params) for lin in qlins)
        qs = sum(lin.count * wt.quant_state_4bit_bytes(lin.weight_params, s.blocksize, s.double_quant)
                 for lin in qlins) + wt.nested_code_bytes(sum(lin.count for lin in qlins), s.double_quant)
        comps.append(("weights/" + s.quant.value, "weights", packed, "packed 4-bit linears: ceil(n/2) B"))
        comps.append(("quant_state/absmax", "quant_state", qs,
                      "absmax per block" + (" (double-quantized)" if s.double_quant else "") + " + code tables (per weight)"))
    elif s.quant is Quant.INT8:
        w8 = sum(lin.count * wt.int8_weight_bytes(lin.in_features, lin.out_features)[0] for lin in qlins)
        sc = sum(lin.count * wt.int8_weight_bytes(lin.in_features, lin.out_features)[1] for lin in qlins)
        comps.append(("weights/int8", "weights", w8, "LLM.int8 weights: 1 B/param"))
        comps.append(("quant_state/row_scales", "quant_state", sc, "fp32 scale per output row"))
    else:
        name = "adapter/full_weights" if s.full else "weights/linears"
        comps.append((name, "adapter" if s.full else "weights", wt.float_bytes(n_q, d.base_w),
                      f"linear weights, {d.base_w} B/param"))
    buffers = wt.model_buffer_bytes(arch.model_type, arch.head_dim, arch.num_layers, arch.config)
    comps.append(("weights/buffers", "weights", buffers,
                  "rotary inv_freq / original_inv_freq (fp32) and Gemma's embed_scale, 512 B blocks"))
    head_w = d.resid0  # lm_head follows the embedding's dtype (tied or cast by TRL)
    trainable_other = 0
    unq = [("embeddings", arch.embed_params, d.resid0), ("lm_head", arch.lm_head_params, head_w),
           ("norms", arch.norm_params, d.norm_w),
           ("biases", bias, c if d.quantized else d.base_w),
           ("router", arch.router_params, d.other_w), ("experts", arch.expert_params, d.other_w)]
    for nm, n, b in unq:
        if n:
            if s.full:
                trainable_other += n
                comps.append((f"adapter/{nm}", "adapter", n * b, f"trainable, {b} B/param"))
            else:
                comps.append((f"weights/{nm}", "weights", n * b, f"unquantized, {b} B/param"))
    # ---- trainable parameters
    if s.full:
        targets: tuple = ()
        sizes = [(lin.weight_params, lin.count) for lin in qlins] + [(n, 1) for nm, n, b in unq if n]
        n_train = n_q + trainable_other
        pbytes = d.base_w
    else:
        targets = ad.target_linears(arch, s.targets, s.rank)
        moe_lora = ad.expert_lora_tensors(arch, s.targets, s.rank)
        sizes = ad.lora_tensor_sizes(targets, s.rank) + moe_lora
        n_train = sum(n * k for n, k in sizes)
        pbytes = s.adapter_dtype.nbytes
        comps.append(("adapter/lora", "adapter", n_train * pbytes,
                      f"LoRA A/B, {len(targets)} target kinds, {s.adapter_dtype.value}"))
    opt_bytes = opt.optimizer_state_bytes(s.optimizer, sizes, pbytes)
    paged = 0
    if s.optimizer.paged:
        opt_bytes, paged = opt.paged_split_bytes(s.optimizer, sizes)
    if opt_bytes or s.optimizer is not opt.Optim.SGD:
        comps.append((f"optimizer/{s.optimizer.value}", "optimizer", opt_bytes,
                      "optimizer state" + (" kept on the device (tensors < 1e5 elements, absmax)" if paged or
                                           s.optimizer.paged else "")))
    # per-layer gradients (LoRA / full) to apportion grads alive in the backward
    grad_total = n_train * pbytes
    L = arch.num_layers
    # full fine-tuning: lm_head's gradient (the embedding's, when tied) and the final norm's exist as
    # soon as the lm_head backward has run
    head_grad = (arch.vocab_size * arch.hidden_size + arch.hidden_size) * pbytes if s.full else 0
    # ---- activation coefficients
    parts = frozenset() if s.full else ad.expert_parts(arch, s.targets)
    notes: tuple[str, ...] = (attn_note,) if attn_note else ()
    if parts and s.lora_dropout > 0:
        notes += (f"peft 0.21 refuses lora_dropout > 0 on {arch.name}'s fused experts/router (ParamWrapper): "
                  "this run fails as configured; priced as if those wrappers had no dropout",)
    tset = frozenset(lin.name for lin in targets) | (frozenset({"experts"}) if parts - {"router"} else frozenset())
    dense = arch.dense_layers
    nm_ = len(arch.moe_layers)
    dense_sv = act.layer_saved(arch, d, s.rank, tset, attn.value, False) if dense else (0, 0, 0)
    moe_sv = act.layer_saved(arch, d, s.rank, tset, attn.value, True) if nm_ else (0, 0, 0)
    first_is_moe = 0 in set(arch.moe_layers)
    # layer 0 without checkpointing: its input needs no gradient (peft enables input gradients only
    # for checkpointing), so nothing before the first LoRA module is saved.
    first_sv = dense_sv if not first_is_moe else moe_sv
    if not s.grad_checkpointing and not s.full:
        first_sv = act.layer_saved(arch, d, s.rank, tset, attn.value, first_is_moe, live_in=False)
    # transformers 5 runs experts with grouped_mm (no per-expert autocast copies of the weights)
    moe_const_per_expert = 0
    work_dense = act.backward_working(arch, d, False, tset, s.rank) if dense else (0, 0, 0, 0)
    work_moe = act.backward_working(arch, d, True, tset, s.rank) if nm_ else (0, 0, 0, 0)
    deq = c * max_w if d.quantized else 0
    ld = lg.logits_dtype_bytes(c, d.autocast, head_w)
    softcap = bool(arch.final_logit_softcapping)
    V, H = arch.vocab_size, arch.hidden_size
    # LoRA on a named lm_head: dropout mask + lora_A input (H) and lora_B input (r) per token, kept
    # until the lm_head backward (peft's LoRA forward, as for any target)
    head_lora = 0
    if any(lin.group == "lm_head" for lin in targets):
        xin = d.adapter if (not d.autocast or not d.cuda) else act.norm_out(d, d.resid)
        head_lora = (H * (1 if d.cuda else xin) if d.dropout else 0) + d.lora * (H + s.rank)
    sw_layers = act.sliding_attention_layers(arch.model_type, arch.config, L)
    sw_tok, sw_quad = act.sliding_sdpa_saved(arch, d, attn.value) if sw_layers else (0, 0)
    out = dict(
        sw_n=len(sw_layers) if (sw_tok or sw_quad) else 0, sw_tok=sw_tok, sw_quad=sw_quad,
        sw_first=0 in sw_layers, sw_last=(L - 1) in sw_layers, window=arch.config.get("sliding_window") or 0,
        d=d, comps=tuple(Component(n, c_, b, note) for n, c_, b, note in comps), static=sum(x[2] for x in comps),
        grad_name="gradients/" + ("full" if s.full else "lora"), grad_total=grad_total,
        grad_per_layer=(grad_total - head_grad) // L, head_grad=head_grad, n_train=n_train,
        opt_temp=opt.optimizer_step_temp_bytes(s.optimizer, n_train, pbytes), L=L,
        dense=dense, nmoe=nm_, dense_sv=dense_sv, moe_sv=moe_sv, first_sv=first_sv, moe_cpe=moe_const_per_expert,
        last_moe=(L - 1) in set(arch.moe_layers), first_moe=first_is_moe,
        work_dense=work_dense, work_moe=work_moe, deq=deq,
        head_copy=lg.head_weight_copy_bytes(V, H, c, d.autocast, head_w),
        loss_args=(V, ld, softcap), legacy=s.loss is Loss.LEGACY,
        held=lg.held_logits_bytes(V, ld, 1, s.loss is Loss.LEGACY, s.hold_logits is not Hold.NONE),
        held_forward=s.hold_logits is Hold.LOOP,
        fin=4 * H + 4 + head_lora + (c * H if s.full else 0), ckpt0=d.resid0 * H, ckpt=d.resid * H,
        paged=paged, tied_extra=(2 * V * H * pbytes if (s.full and arch.tie_embeddings) else 0),
        n_targets=len(targets), notes=notes,
    )
    cache[key] = out
    return out


def paged_optimizer_bytes(arch: Arch, scenario: Scenario) -> int:  # noqa: D401
    """State bytes of a paged optimizer (in CUDA managed memory); 0 for unpaged ones."""
    return static_terms(arch, scenario)["paged"]


def loss_workspace_bytes(arch: Arch, scenario: Scenario, semantics: str = "cuda") -> int:
    """Bytes the loss holds at its busiest moment, whichever phase the step's peak falls in: the
    larger of the loss forward and the loss backward (``logits.loss_forward_bytes`` /
    ``loss_backward_bytes``), plus the logits a loop keeps (``held_logits_bytes``). The caching
    allocator's reserve grows with it (``runtime.allocator_reserve_bytes``)."""
    loss_b, loss_f, held = _loss_terms(static_terms(arch, scenario, semantics), scenario)
    return max(loss_b, loss_f) + held


def _loss_terms(st: dict[str, Any], scenario: Scenario) -> tuple[int, int, int]:
    """(loss backward, loss forward, held logits) bytes for this batch: ``logits.py``'s terms over
    T = b·s tokens (T1 = b·(s−1) shifted ones for the legacy loss)."""
    T = scenario.seq * scenario.batch
    T1 = scenario.batch * (scenario.seq - 1)
    return (lg.loss_backward_bytes(*st["loss_args"], T, T1, st["legacy"]),
            lg.loss_forward_bytes(*st["loss_args"], T, T1, st["legacy"]), T * st["held"])


def estimate(arch: Arch, scenario: Scenario, calibration: Calibration | None = None,
             device: "Device | str | None" = None) -> Breakdown:
    """Analytic memory budget of one training step (engine ``analytic``, ``vramplan.engine.Engine``).

    Allocated components sum to the allocated peak (the largest phase, ``Breakdown.peak_phase``);
    runtime components follow; ``Breakdown.upper`` is point × (1 + upper_bound_fraction). The
    ``device`` decides the program priced (``Device.semantics``: on CPU, what the same program
    allocates there, two documented differences, see ``activations.Dtypes.cuda``) and the runtime
    constants (``vramplan.engine.runtime_calibration``).
    """
    dev = Device.parse(device)
    semantics = dev.semantics
    cal = runtime_calibration(calibration, dev)
    st = static_terms(arch, scenario, semantics)
    T = scenario.seq * scenario.batch
    s_len = scenario.seq
    L = st["L"]
    gc = scenario.grad_checkpointing

    def layer(sv: tuple[int, int, int], moe: bool) -> int:
        b = T * sv[0] + T * s_len * sv[1] + sv[2]
        if moe and st["moe_cpe"]:
            b += st["moe_cpe"] * min(arch.num_experts, T * arch.experts_per_token)
        return b

    dense_b = layer(st["dense_sv"], False) if st["dense"] else 0
    moe_b = layer(st["moe_sv"], True) if st["nmoe"] else 0
    last_b = moe_b if st["last_moe"] else dense_b
    first_b = moe_b if st["first_moe"] else dense_b
    # sliding-window layers under sdpa once seq reaches the window: repeated K/V + additive mask
    sw_b = T * st["sw_tok"] + T * s_len * st["sw_quad"] if (st["sw_n"] and s_len >= st["window"]) else 0
    if sw_b:
        last_b += sw_b if st["sw_last"] else 0
        first_b_sw = first_b + (sw_b if st["sw_first"] else 0)
    else:
        first_b_sw = first_b
    def working(w: tuple[int, int, int]) -> tuple[int, int]:
        """(gradient buffers, transient dequantized weight) at the layer backward's busiest point."""
        dq = int(w[3] * cal.fused_dequant_factor)
        if T * w[0] + w[1] >= T * w[2] + dq:
            return T * w[0] + w[1], 0
        return T * w[2], dq

    work_last = working(st["work_moe"] if st["last_moe"] else st["work_dense"])
    work_first = working(st["work_moe"] if st["first_moe"] else st["work_dense"])
    fin = T * st["fin"]
    if gc:
        saved_all = T * (st["ckpt0"] + (L - 1) * st["ckpt"])
        saved_first = T * st["ckpt0"]
        act_name, act_note = "activations/checkpoints", "layer inputs kept by gradient checkpointing"
    else:
        inp = 4 * arch.hidden_size * T if st["d"].resid == 4 else 0
        first_nogc = layer(st["first_sv"], st["first_moe"]) + (inp if scenario.full else 0)
        saved_all = (st["dense"] * (dense_b + inp) + st["nmoe"] * (moe_b + inp) - first_b - inp + first_nogc
                     + st["sw_n"] * sw_b)
        saved_first = first_nogc + (sw_b if st["sw_first"] else 0)
        act_name, act_note = "activations/layers", "every decoder layer's saved tensors"
    grads_first = st["grad_total"] - st["grad_per_layer"]
    loss_b, loss_f, held = _loss_terms(st, scenario)
    phases = {
        "loss backward": saved_all + fin + st["head_copy"] + loss_b,
        "loss forward": saved_all + fin + st["head_copy"] + loss_f,
        "last layer backward": saved_all + (last_b if gc else 0) + sum(work_last) + st["head_grad"],
        "first layer backward": saved_first + (first_b_sw if gc else 0) + sum(work_first) + grads_first,
        "optimizer step": st["grad_total"] + st["opt_temp"],
    }
    if scenario.full:
        # full fine-tuning, tied embeddings: the embedding backward builds a second V·H gradient and
        # autograd accumulates it into lm_head's (a third buffer) while every other gradient exists
        phases["embedding backward"] = st["grad_total"] + st["tied_extra"] + T * arch.hidden_size * 4
    if held:  # the loop's ``outputs``: this step's logits through backward and the optimizer step,
        # (Hold.LOOP) the previous step's through this forward
        phases = {k: v + (held if (k != "loss forward" or st["held_forward"]) else 0) for k, v in phases.items()}
    phase = max(phases, key=phases.__getitem__)
    comps = list(st["comps"])
    if phase == "loss backward" or phase == "loss forward":
        grads = 0
        dyn = [(act_name, "activations", saved_all, act_note),
               ("activations/final_norm", "activations", fin, "final RMSNorm input (fp32) + rsqrt"),
               ("temporary/lm_head_autocast_copy", "temporary", st["head_copy"],
                "bf16 copy of the fp32 lm_head weight saved under autocast"),
               ("logits/loss", "logits", loss_b if phase == "loss backward" else loss_f,
                ("fp32 log-softmax output + gradients, b·s·V" if phase == "loss backward"
                 else "logits + fp32 upcast + log-softmax output, b·s·V")
                + (" (legacy loss: shifted fp32 copy)" if st["legacy"] else "")),
               ("temporary/dequant", "temporary", 0, "no 4-bit weight is dequantized at this phase")]
    elif phase == "embedding backward":
        grads = st["grad_total"]
        dyn = [("temporary/embedding_grad", "temporary", phases[phase] - grads,
                "tied embedding: second V·H gradient and its accumulation, + input gradient"),
               ("temporary/dequant", "temporary", 0, "no 4-bit weight is dequantized at this phase")]
    elif phase == "optimizer step":
        grads = st["grad_total"]
        dyn = [("temporary/optimizer_step", "temporary", st["opt_temp"], "optimizer step buffers"),
               ("temporary/dequant", "temporary", 0, "no 4-bit weight is dequantized at this phase")]
    else:
        last = phase == "last layer backward"
        grads = st["head_grad"] if last else grads_first
        dyn = [(act_name, "activations", saved_all if last else saved_first, act_note)]
        if gc:
            dyn.append(("activations/recompute", "activations", last_b if last else first_b_sw,
                        "one decoder layer re-run by gradient checkpointing"))
        wk, dq = work_last if last else work_first
        dyn.append(("activations/backward", "activations", wk, "gradient buffers inside one layer's backward"))
        dyn.append(("temporary/dequant", "temporary", dq, "largest 4-bit weight dequantized to the compute dtype"))
    if held and (phase != "loss forward" or st["held_forward"]):
        dyn.append(("logits/held_output", "logits", held,
                    "model output kept by the training loop: " + ("fp32 " if st["legacy"] else "") + "logits, b·s·V"))
    comps.append(Component(st["grad_name"], "gradients", grads,
                           "gradients alive at the peak (set to None after each step)"))
    comps.extend(Component(n, c, b, note) for n, c, b, note in dyn)
    allocated = st["static"] + grads + sum(x[2] for x in dyn)
    runtime = _runtime_components(arch, scenario, allocated, cal, loss_workspace=max(loss_b, loss_f) + held)
    comps.extend(runtime)
    alloc, res, tot = allocated, allocated, allocated
    for c in runtime:  # totals by the Breakdown rules, without re-walking the components
        if c.category in ("temporary", "weights", "activations"):
            alloc += c.bytes
            res += c.bytes
            tot += c.bytes
        elif c.category == "allocator":
            res += c.bytes
            tot += c.bytes
        else:
            tot += c.bytes
    f = 1.0 + cal.upper_bound_fraction
    bd = Breakdown(tuple(comps), engine="analytic", notes=st["notes"], peak_phase=phase,
                   upper=Totals(int(alloc * f), int(res * f), int(tot * f)),
                   extra=dict(phases={k: v + st["static"] for k, v in phases.items()},
                              trainable_params=st["n_train"], calibration=cal.fitted_on))
    return bd


def runtime_components(arch: Arch, scenario: Scenario, allocated_peak_bytes: int,
                       calibration: Calibration):  # re-export, see runtime.py
    from vramplan.analytic.runtime import runtime_components as rc

    return rc(arch, scenario, allocated_peak_bytes, calibration)
