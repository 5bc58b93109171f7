"""Saved activations of the token-mixer kinds of ``vramplan.arch.mixers`` other than attention.

Each kind registers, under its ``Mixer`` name:
- ``WALKS[kind](w, arch, lins, attn, live) -> (output dtype, output needs a gradient)``: what the
  kind's block saves for backward per token / token·s / fixed bytes, added to the ``_Walk`` ``w``
  (``vramplan.analytic.activations``) exactly as ``activations._attention_saved`` does for attention:
  its input norm, projections (``w.linears`` prices LoRA on them), the mixer core, its output
  projection.
- ``WORKING[kind](arch, d, targets, rank, layer, **kw) -> (a, a_fixed, b, b_fixed)``: the backward
  working set of a layer of that kind, as ``activations.backward_working`` returns it, for layers
  whose busiest backward moment is not a plain attention layer's MLP (a layer without a
  feed-forward block, or a mixer whose backward outweighs its MLP's).

Every function cites the transformers 5.24 code it mirrors (file, lines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from vramplan.analytic.activations import Dtypes, _Walk
    from vramplan.arch.spec import Arch, Linear

Walk = Callable[["_Walk", "Arch", "dict[str, Linear]", str, bool], "tuple[int, bool]"]
Working = Callable[..., "tuple[int, int, int, int]"]

# ------------------------------------------------------------------------------------- kinds
# One section per kind: its walk and working functions.


# ------------------------------------------------------------------------------------ gemma4
# transformers 5.24 ``models/gemma4/modeling_gemma4.py``. Each ``gemma4_*`` kind walks the whole
# ``Gemma4TextDecoderLayer.forward`` (L1361-1418): attention, MLP, the per-layer-input block.

def gemma4_norm(w: "_Walk", width: int, rows: int, live: bool, xd: int, fresh: bool = True,
                scale: bool = True) -> None:
    """``Gemma4RMSNorm`` (L196-214) of ``rows`` vectors of ``width`` with an input of ``xd`` bytes:
    ``x = hidden.float()``; ``x.pow(2)`` saves x, ``torch.pow(mean + eps, -0.5)`` saves its input (one fp32
    per row) and ``x * that`` saves x and the result (another per row): 4·width·rows + 8·rows, where x
    is the input itself when fp32 (``fresh``: no one else saves it; the residual stream's input norm has
    its x counted by the caller). With a weight (``with_scale``), ``normed * self.weight.float()`` saves
    the fp32 copy of a 16-bit weight (4·width fixed). The output is ``type_as`` the input."""
    d = w.d
    if not live:
        return
    w.tok += 8 * rows + (4 * width * rows if (fresh or xd != 4) else 0)
    if scale and d.norm_w != 4:
        w.const += 4 * width
    if d.full and scale:
        w.tok += 4 * width * rows


def _g4_live_pli(d: "Dtypes", targets: frozenset[str], gc: bool) -> bool:
    """Whether the per-layer inputs need a gradient: the embedding output does under checkpointing
    (peft's ``enable_input_require_grads``), or the projection is trained."""
    return gc or d.full or "per_layer_model_projection" in targets


def _g4_kv_dtype(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]") -> int:
    d = w.d
    scratch = type(w)(d, w.r, w.targets)
    kd, _ = scratch.linears((lins.get("k_proj") or lins["q_proj"],), d.resid, False, True)
    return kd if kd >= d.resid0 else d.resid0


def gemma4_model_saved(arch: "Arch", d: "Dtypes", rank: int, targets: frozenset[str], gc: bool,
                       attn: str) -> tuple[int, int, int]:
    """What the model holds from the forward to the end of the backward outside the decoder layers
    (``Gemma4TextModel.forward`` L1620-1660), as (bytes per token, per sequence position, per token·s
    once the sequence reaches the sliding window):
    1. the per-layer inputs (P > 0, ``project_per_layer_inputs`` L1751-1784):
       ``per_layer_model_projection(inputs_embeds)`` (a LoRA target under ``all-linear``: what its adapter
       saves, ``_Walk.linears``), ``* scale`` (a Python float: nothing), ``per_layer_projection_norm`` over
       L rows of P (``gemma4_norm``), then ``(projection + token_identity) * 2**-0.5``, the (b, s, L, P)
       tensor each layer's ``hidden_states * per_layer_input`` saves a slice of (and checkpointing holds
       as every layer's argument): L·P in its dtype;
    2. under checkpointing, the keys and values the last unshared layer of each attention type stores
       in ``shared_kv_states`` (``Gemma4TextAttention.forward`` L1226-1227, ``kv_sharing_modes`` "store"):
       the dict is an argument of every checkpointed layer, so they stay until the backward ends:
       2 · kv · their dtype per store layer;
    3. the rotary tables: ``Gemma4TextRotaryEmbedding.forward`` returns cos and sin of one row of positions
       per attention type, (1, s, head_dim) in the embedding output's dtype (``cos.to(x.dtype)``; the full
       type's head_dim is ``global_head_dim``), saved by every layer's RoPE ``mul`` (and held as layer
       arguments under checkpointing): 2 · resid0 · head_dim per position and type;
    4. under checkpointing with sdpa, the boolean (b, 1, s, s) sliding-window mask
       (``create_sliding_window_causal_mask``, built once seq reaches the window) is every sliding layer's
       argument: 1 B per token·s."""
    from vramplan.analytic.activations import _promote, _Walk
    from vramplan.arch.mixers import _g4, gemma4_dims, gemma4_kinds
    cfg, L = arch.config, arch.num_layers
    P = int(_g4(cfg, "hidden_size_per_layer_input") or 0)
    w = _Walk(d, rank, targets)
    if P:
        lin = next(x for x in arch.linears() if x.name == "per_layer_model_projection")
        live0 = gc or d.full
        pd, _ = w.linears((lin,), d.resid0, False, live0)
        gemma4_norm(w, P, L, _g4_live_pli(d, targets, gc), pd)
        w.tok += L * P * _promote(pd, d.resid0)
    if gc:
        kinds = gemma4_kinds(cfg, L)
        store = {}
        for i, k in enumerate(kinds):
            if not k.endswith("_kv_shared"):
                store[k] = i  # the last unshared layer of each type
        for k, i in store.items():
            g = gemma4_dims(cfg, k)
            lins = {x.name: x for x in arch.layer_linears(i)}
            w.tok += 2 * g["kv_heads"] * g["head_dim"] * _g4_kv_dtype(w, arch, lins)
    from vramplan.arch.mixers import gemma4_layer_types
    types = set(gemma4_layer_types(cfg, L))
    pos = sum(2 * d.resid0 * int(_g4(cfg, "global_head_dim") if t == "full_attention" else _g4(cfg, "head_dim"))
              for t in types)
    quad = 1 if (gc and attn == "sdpa" and "sliding_attention" in types) else 0
    return w.tok, pos, quad


def gemma4_kv_hold(arch: "Arch", d: "Dtypes", rank: int, targets: frozenset[str], gc: bool,
                   attn: str) -> tuple[tuple[int, int], ...]:
    """Under checkpointing, (layer, bytes per token) of each "store" layer's key/value branch kept alive
    once that layer's backward has recomputed it: the recomputed keys and values it writes into
    ``shared_kv_states`` (an argument of every earlier layer's checkpoint) keep the saved tensors of
    the recomputed graph that made them, from the layer's input on: ``input_layernorm`` (its fp32 x: the
    layer input itself when fp32, and the per-row tensors), the k/v projections' LoRA (dropout mask, cast
    input, lora_A output: ``_Walk.linears``) and k_norm / v_norm (``gemma4_norm``), until the backward
    ends (counted by the trace's tracker at layer 0's backward on a 2-layer shrunk model: layer 1's
    input, k/v LoRA and norm tensors alive). Empty without checkpointing."""
    from vramplan.analytic.activations import _Walk
    from vramplan.arch.mixers import gemma4_dims, gemma4_kinds
    if not gc:
        return ()
    cfg, L = arch.config, arch.num_layers
    store: dict[str, int] = {}
    for i, k in enumerate(gemma4_kinds(cfg, L)):
        if not k.endswith("_kv_shared"):
            store[k] = i
    out = []
    for k, i in sorted(store.items(), key=lambda kv: kv[1]):
        g = gemma4_dims(cfg, k)
        lins = {x.name: x for x in arch.layer_linears(i)}
        w = _Walk(d, rank, targets)
        gemma4_norm(w, arch.hidden_size, 1, True, d.resid)  # input_layernorm: x (its fp32 copy) and rows
        kd, _ = w.linears(tuple(lins[n] for n in ("k_proj", "v_proj") if n in lins), d.resid, False, True)
        gemma4_norm(w, g["head_dim"], g["kv_heads"], True, kd)
        w.tok += 8 * g["kv_heads"] + (0 if (not g["v_proj"] and kd == 4) else 4 * g["head_dim"] * g["kv_heads"])
        out.append((i, w.tok))
    return tuple(out)


def _gemma4_walk(kind: str) -> "Walk":
    def walk(w: "_Walk", arch: "Arch", lins: "dict[str, Linear]", attn: str, live: bool,
             marks: dict[str, int] | None = None) -> tuple[int, bool]:
        """One ``Gemma4TextDecoderLayer`` of ``kind``:
        1. ``input_layernorm`` on the residual x (its x counted by the caller);
        2. q (k, v) projections; ``q_norm``, ``k_norm`` and the weightless ``v_norm`` (``gemma4_norm``;
           under ``attention_k_eq_v`` v_norm reads k_proj's output, the same fp32 tensor k_norm saves
           when it is fp32); RoPE saves the shared cos/sin tables only;
        3. sdpa (flash / memory-efficient) saves q, k, v in its dtype, the output and an fp32
           log-sum-exp per head; a kv-shared layer's k and v are the producer's tensors (nothing new,
           unless autocast casts them); with head_dim > 256 transformers repeats k and v to every head
           (``integrations/sdpa_attention.py::use_gqa_in_sdpa``), saved as such;
        4. o_proj, ``post_attention_layernorm``, the residual add, ``pre_feedforward_layernorm``;
        5. the MLP: gate, up, ``gelu_pytorch_tanh(gate)`` saves gate, the product saves both factors, down;
           ``post_feedforward_layernorm``, the residual add;
        6. per-layer input (P > 0): ``per_layer_input_gate``, gelu saves its input, ``* per_layer_input``
           saves the gelu output (the per-layer input itself is ``gemma4_model_saved``'s),
           ``per_layer_projection``, ``post_per_layer_input_norm``, the residual add;
        7. ``hidden_states *= self.layer_scalar`` (a buffer): nothing.
        ``marks["down"]``: the bytes per token saved up to the down projection (``_gemma4_working``)."""
        from vramplan.analytic.activations import _promote
        from vramplan.arch.mixers import _g4, gemma4_dims
        from vramplan.errors import VramplanError
        if _g4(arch.config, "enable_moe_block"):
            raise VramplanError(f"{arch.name}: Gemma 4's MoE block (enable_moe_block: a router and 3-D experts beside "
                                "each layer's MLP) is not priced by the analytic engine yet; --method trace prices it "
                                "exactly (its parameters are counted)")
        d, targets = w.d, w.targets
        g, H = gemma4_dims(arch.config, kind), arch.hidden_size
        nh, hd, nkv = g["heads"], g["head_dim"], g["kv_heads"]
        q, kv = nh * hd, nkv * hd
        gemma4_norm(w, H, 1, live, d.resid, fresh=False)
        n1 = d.resid
        group = tuple(lins[n] for n in ("q_proj", "k_proj", "v_proj") if n in lins)
        qd, _ = w.linears(group, n1, False, live)
        lq = live or d.full or "q_proj" in targets
        lk = live or d.full or "k_proj" in targets or "v_proj" in targets
        gemma4_norm(w, hd, nh, lq, qd)
        if g["kv_proj"]:
            gemma4_norm(w, hd, nkv, lk, qd)
            same = not g["v_proj"] and qd == 4  # v_norm saves the fp32 k_proj output k_norm saved
            if lk:
                w.tok += 8 * nkv + (0 if same else 4 * hd * nkv)
        rd = _promote(qd, d.resid0)
        la = lq or lk
        ad = d.c if (d.autocast or attn == "flash2") else rd
        if la:
            if hd > 256:
                kvs = 2 * q
            elif g["kv_proj"] or ad != rd:
                kvs = 2 * kv
            else:
                kvs = 0
            if attn == "eager":
                w.tok += ad * (q + 2 * q)
                w.quad += 4 * nh + (ad * nh if (ad != 4 or rd != 4) else 0)
            else:
                w.tok += ad * (q + kvs) + ad * q + 4 * nh
        x_o_saved = la and attn != "eager"
        od, lo = w.linears((lins["o_proj"],), ad, x_o_saved, la)
        gemma4_norm(w, H, 1, lo, od)
        live1 = live or lo
        h1 = _promote(d.resid, od)
        gemma4_norm(w, H, 1, live1, h1)
        I = g["inter"]
        gd, _ = w.linears((lins["gate_proj"], lins["up_proj"]), h1, False, live1)
        lg = live1 or d.full or "gate_proj" in targets
        lu = live1 or d.full or "up_proj" in targets
        w.tok += gd * I * ((1 if lg else 0) + (1 if lg else 0) + (1 if lu else 0))
        md, lm = w.linears((lins["down_proj"],), gd, False, lg or lu)
        if marks is not None:
            marks["down"] = w.tok
        gemma4_norm(w, H, 1, lm, md)
        live2 = live1 or lm
        h2 = _promote(h1, md)
        if g["ple"]:
            P = g["ple"]
            pg, lp = w.linears((lins["per_layer_input_gate"],), h2, False, live2)
            if lp:
                w.tok += pg * P  # gelu's input
            pli = _g4_live_pli(d, targets, True)  # any LoRA run: the projection output needs a gradient
            if pli:
                w.tok += pg * P  # the gelu output, for the per-layer input's gradient
            pp = _promote(pg, d.resid0)
            pd, lpp = w.linears((lins["per_layer_projection"],), pp, False, lp or pli)
            gemma4_norm(w, H, 1, lpp, pd)
            h2 = _promote(h2, pd)
        return h2, True
    return walk


def gemma4_working_moments(kind: str, arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                           gc: bool = True) -> dict[str, int]:
    """Bytes per token beyond the layer's saved tensors at each candidate moment of a ``gemma4_*`` layer's
    backward (``_gemma4_working`` takes the largest):
    - ``norm``: the layer backward starts at its last norm (``post_per_layer_input_norm`` with P > 0, else
      ``post_feedforward_layernorm``): the incoming gradient of the layer output (resid·H) and the five fp32
      H-sized tensors of an RMSNorm backward (``activations.NORM_BACKWARD_FP32``), beside the accumulated
      gradient of the per-layer inputs when a later layer's backward has made it (the trace's peak on a
      2-layer shrunk model at layer 0: six fp32 b·s·H tensors and one (b, s, L, P) ``select_backward``);
    - ``mlp``: the MLP's down projection and ``act(gate) * up`` backward, as ``activations.backward_working``
      prices a dense layer, with this layer's MLP width, less what the backward freed before (the tensors
      saved after the down projection, ``marks["down"]``), beside the per-layer inputs' gradient;
    - ``recompute`` (checkpointing, a LoRA-targeted down projection): the recomputed forward at the down
      projection's LoRA (peft ``lora/bnb.py`` L549; the trace's peak on a shrunk kv-shared model): what the
      layer saved up to there with ``act(gate) * up`` (gd·I) and its dropout output (I in the LoRA input's
      dtype) alive, less the layer's whole saved set (negative unless it saves little after).
    ``deq``: the dequantized down weight (bytes, fixed) of the base branch moment ``base``."""
    from vramplan.analytic.activations import NORM_BACKWARD_FP32, _promote, _Walk
    from vramplan.arch.mixers import gemma4_dims
    g, H, c = gemma4_dims(arch.config, kind), arch.hidden_size, d.c
    I, L = g["inter"], arch.num_layers
    lins = {x.name: x for x in arch.layer_linears(layer)}
    w, marks = _Walk(d, rank, targets), {}
    _gemma4_walk(kind)(w, arch, lins, "sdpa", True, marks)
    after = w.tok - marks["down"]
    gd = _promote(d.resid, c) if d.quantized else (c if d.autocast else d.base_w)
    pli = L * g["ple"] * _promote(d.resid, d.resid0) if g["ple"] else 0
    targeted = "down_proj" in targets and not d.full
    convert = d.lora_input_cast
    xin = d.adapter if convert else gd
    hpart = 3 * gd * H
    if convert and gd != d.adapter and not d.full:
        hpart += 2 * d.adapter * H
    if targeted:
        saves = (I * (1 if d.cuda else xin) if d.dropout else 0) + d.lora * I
        a_lora = (xin * I) if d.dropout else (d.lora + xin) * I
        b = c * I + xin * I - saves
    else:
        saves, a_lora, b = 0, 0, c * I
    out = dict(norm=_promote(d.resid, c) * H + 4 * NORM_BACKWARD_FP32 * H + (pli if layer < L - 1 else 0),
               mlp=max(a_lora, 3 * gd * I - saves) + hpart - after + pli,
               base=b + hpart - after + pli, deq=c * I * H if d.quantized else 0)
    if gc and targeted:
        out["recompute"] = marks["down"] + gd * I + (xin * I if d.dropout else 0) - w.tok
    return out


def _gemma4_working(kind: str) -> "Working":
    def working(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                **kw: Any) -> tuple[int, int, int, int]:
        """The busiest of ``gemma4_working_moments``: (a, 0, b, b_fixed) with a the largest per-token
        moment and b the down projection's base branch beside its dequantized weight."""
        m = gemma4_working_moments(kind, arch, d, targets, rank, layer, gc=kw.get("gc", True))
        a = max(v for k, v in m.items() if k not in ("base", "deq"))
        return a, 0, m["base"], m["deq"]
    return working


#: kind -> its saved-activation walk (the one place a kind's walk is registered).
WALKS: dict[str, Walk] = {
    **{k: _gemma4_walk(k) for k in ("gemma4_sliding", "gemma4_full", "gemma4_sliding_kv_shared",
                                    "gemma4_full_kv_shared")},
}

#: kind -> the backward working set of its layers (``backward_working_of``).
WORKING: dict[str, Working] = {
    **{k: _gemma4_working(k) for k in ("gemma4_sliding", "gemma4_full", "gemma4_sliding_kv_shared",
                                       "gemma4_full_kv_shared")},
}

#: ``Family.layout`` -> bytes per token the model saves outside its decoder layers (``terms``' ``pre_tok``).
MODEL_SAVED: dict[str, Callable[..., tuple[int, int, int]]] = {
    "per_layer_inputs": gemma4_model_saved,
}

#: ``Family.layout`` -> (layer, bytes per token) held from that layer's backward on (``terms``' ``kv_hold``).
MODEL_HOLD: dict[str, Callable[..., tuple[tuple[int, int], ...]]] = {
    "per_layer_inputs": gemma4_kv_hold,
}


def backward_working_of(arch: "Arch", d: "Dtypes", targets: frozenset[str], rank: int, layer: int,
                        **kw: Any) -> tuple[int, int, int, int]:
    """``activations.backward_working`` for decoder layer ``layer`` whose signature is not plain
    attention with a dense or MoE MLP: the kind's ``WORKING`` function when it has one; else (a
    mixer followed by an MLP, whose busiest moment is the MLP's) the MLP's."""
    from vramplan.analytic import activations as act
    mixer, ffn = arch.signature(layer)
    if mixer in WORKING:
        return WORKING[mixer](arch, d, targets, rank, layer, **kw)
    if ffn == "none":
        raise NotImplementedError(f"token mixer '{mixer}' has no backward working set (vramplan.analytic.mixers)")
    return act.backward_working(arch, d, ffn == "moe", targets, rank, **kw)
