"""Token-mixer kinds: what a decoder layer's attention-like block holds, one record per kind.

A decoder layer is a token mixer and a feed-forward block (``Arch.signature``). Softmax attention
over q/k/v/o (``ATTENTION``, sliding or not) is written in ``Arch.linears`` itself; every other kind
(linear attention, state-space blocks, latent attention) is a ``Mixer`` here: the linears it adds
(their ``group`` is the kind's name, so ``Arch.layer_linears`` keeps them in the layers of that
kind only) and its parameters that are not ``nn.Linear`` weights (convolution kernels, decay and
gate vectors, its own norms), which bitsandbytes leaves unquantized. The kind's saved activations
are priced in ``vramplan.analytic.mixers`` under the same name.

Adding a kind (docs/adding-a-model.md): one ``Mixer`` in ``MIXERS`` reading its sizes from the
config (``Arch.config``), the family's ``mixer_kinds`` naming which layers use it, and its walk in
``vramplan.analytic.mixers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

if TYPE_CHECKING:
    from vramplan.arch.spec import Arch, Linear

ATTENTION = "attention"
"""Softmax attention with q/k/v/o projections (``Arch.linears``)."""


@dataclass(frozen=True)
class Mixer:
    """One token-mixer kind other than plain attention."""

    name: str
    source: str
    """The transformers 5.24 module it mirrors (file and class)."""
    linears: Callable[["Arch", int], list["Linear"]]
    """(arch, layers of this kind) -> its ``Linear`` kinds, ``group`` = ``name``, ``count`` = layers."""
    params: Callable[["Arch"], dict[str, int]]
    """arch -> per-layer parameters that are not linear weights, by name (unquantized), but its norms'."""
    norms: Callable[["Arch"], int] = lambda arch: 0
    """arch -> per-layer weights of the kind's own norms (priced with the model's norms: a recipe that
    casts norms back casts these too)."""


def is_mixer_group(group: str) -> bool:
    """Whether linears of ``group`` belong to a token mixer (kept only in the layers of that kind)."""
    return group == ATTENTION or group in MIXERS


# ------------------------------------------------------------------------------------- kinds
# One section per kind: its linears and params functions, then its ``Mixer`` record.

# ---- identity: no token mixer (a layer that is a feed-forward block alone, Nemotron-H's ``-``/``E``)
IDENTITY = "identity"
"""A decoder layer without a token mixer: its one block is its MLP or MoE (``NemotronHBlock`` with
``block_type`` ``mlp`` / ``moe``); the walk saves nothing and passes the layer input on."""


def _no_linears(arch: "Arch", count: int) -> list["Linear"]:
    return []


def _no_params(arch: "Arch") -> dict[str, int]:
    """No parameters but linear weights (an ``identity`` layer; Llama 4's weightless L2 q/k norm)."""
    return {}


# ---- mamba2: the Mamba-2 mixer (NemotronHMamba2Mixer)
MAMBA2 = "mamba2"


@dataclass(frozen=True)
class Mamba2Shape:
    """The sizes ``NemotronHMamba2Mixer.__init__`` derives from the config (transformers 5.24
    ``models/nemotron_h/modeling_nemotron_h.py`` L370-420)."""

    heads: int
    """``mamba_num_heads`` (nh)."""
    head_dim: int
    """``mamba_head_dim`` (p)."""
    state: int
    """``ssm_state_size`` (n)."""
    groups: int
    """``n_groups`` (g): B and C are shared by nh / g heads."""
    conv_kernel: int
    """``conv_kernel`` (K)."""
    chunk: int
    """``chunk_size`` (the SSD scan's block length)."""
    conv_bias: bool
    """``use_conv_bias``."""
    proj_bias: bool
    """``use_bias`` (in_proj / out_proj)."""

    @property
    def inner(self) -> int:
        """``intermediate_size = mamba_num_heads * mamba_head_dim`` (x, z and the gated norm's width)."""
        return self.heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """``conv_dim = intermediate_size + 2 * n_groups * ssm_state_size`` (x, B, C through the conv)."""
        return self.inner + 2 * self.groups * self.state

    @property
    def in_out(self) -> int:
        """in_proj's out features: ``intermediate_size + conv_dim + num_heads`` (z, xBC, dt)."""
        return self.inner + self.conv_dim + self.heads


def mamba2_shape(arch: "Arch") -> Mamba2Shape:
    cfg, fam = arch.config, arch.family.class_defaults

    def get(key: str) -> object:
        value = cfg.get(key)
        return fam[key] if value is None else value

    return Mamba2Shape(int(get("mamba_num_heads")), int(get("mamba_head_dim")), int(get("ssm_state_size")),
                       int(get("n_groups")), int(get("conv_kernel")), int(get("chunk_size")),
                       bool(get("use_conv_bias")), bool(get("use_bias")))


def _mamba2_linears(arch: "Arch", count: int) -> list["Linear"]:
    """``in_proj`` (H -> inner + conv_dim + nh) and ``out_proj`` (inner -> H), bias = ``use_bias``."""
    from vramplan.arch.spec import Linear
    m = mamba2_shape(arch)
    H = arch.hidden_size
    return [Linear("in_proj", MAMBA2, H, m.in_out, m.proj_bias, count),
            Linear("out_proj", MAMBA2, m.inner, H, m.proj_bias, count)]


def _mamba2_params(arch: "Arch") -> dict[str, int]:
    """The depthwise ``conv1d`` (conv_dim x 1 x K, bias conv_dim), ``dt_bias``, ``A_log``, ``D`` (nh each)
    and the gated RMSNorm's weight (inner)."""
    m = mamba2_shape(arch)
    return {"conv1d": m.conv_dim * m.conv_kernel + (m.conv_dim if m.conv_bias else 0),
            "dt_bias": m.heads, "A_log": m.heads, "D": m.heads, "norm": m.inner}


# ---- chunked_attention: Llama 4's local (chunked) RoPE attention layers
CHUNKED_ATTENTION = "chunked_attention"


def _chunked_attention_linears(arch: "Arch", count: int) -> list["Linear"]:
    """The same q/k/v/o as softmax attention (``Llama4TextAttention.__init__``), in their own group."""
    return arch.attention_linears(CHUNKED_ATTENTION, count)


# ---------------------------------------------------------------------- mla (latent attention)
MLA = "mla"
"""Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash): q through a low-rank latent
(``q_a_proj`` -> ``q_a_layernorm`` -> ``q_b_proj``, or one ``q_proj`` when ``q_lora_rank`` is null), k/v
through one shared latent (``kv_a_proj_with_mqa`` -> ``kv_a_layernorm`` -> ``kv_b_proj``) plus a
single-head rotary key, heads of qk_nope + qk_rope (q, k) and v_head_dim (v)."""


def mla_dims(arch: "Arch") -> dict[str, int]:
    """The latent sizes of ``arch``'s config (transformers 5.24 ``DeepseekV3Config``): q_lora_rank (0
    when null), kv_lora_rank, qk_nope / qk_rope / v head dims, qk = nope + rope."""
    from vramplan.arch.spec import _int

    c, mt = arch.config, arch.model_type
    qr = c.get("q_lora_rank")
    dims = dict(q_lora_rank=_int(c, "q_lora_rank", mt) if qr is not None else 0,
                kv_lora_rank=_int(c, "kv_lora_rank", mt), nope=_int(c, "qk_nope_head_dim", mt),
                rope=_int(c, "qk_rope_head_dim", mt), v=_int(c, "v_head_dim", mt))
    dims["qk"] = dims["nope"] + dims["rope"]
    return dims


def _mla_linears(arch: "Arch", n: int) -> list["Linear"]:
    """``DeepseekV3Attention.__init__`` (modeling_deepseek_v3.py L375-410): the a-projections and o_proj
    carry ``attention_bias``, the b-projections none."""
    from vramplan.arch.spec import Linear

    m, H, nh = mla_dims(arch), arch.hidden_size, arch.num_heads
    bias = bool(arch.config.get("attention_bias"))
    out = []
    if m["q_lora_rank"]:
        out.append(Linear("q_a_proj", MLA, H, m["q_lora_rank"], bias, n))
        out.append(Linear("q_b_proj", MLA, m["q_lora_rank"], nh * m["qk"], False, n))
    else:
        out.append(Linear("q_proj", MLA, H, nh * m["qk"], False, n))
    out.append(Linear("kv_a_proj_with_mqa", MLA, H, m["kv_lora_rank"] + m["rope"], bias, n))
    out.append(Linear("kv_b_proj", MLA, m["kv_lora_rank"], nh * (m["nope"] + m["v"]), False, n))
    out.append(Linear("o_proj", MLA, nh * m["v"], H, bias, n))
    return out


def _mla_params(arch: "Arch") -> dict[str, int]:
    """The two latent RMSNorms (``q_a_layernorm`` when q is low-rank, ``kv_a_layernorm``)."""
    m = mla_dims(arch)
    out = {"kv_a_layernorm": m["kv_lora_rank"]}
    return {"q_a_layernorm": m["q_lora_rank"], **out} if m["q_lora_rank"] else out


# ------------------------------------------------------- dsa (latent attention + sparse indexer)
DSA = "dsa"
"""Latent attention whose layer runs DeepSeek sparse attention's indexer (GLM-5, ``GlmMoeDsaAttention``
with ``indexer_types[i] == "full"``); a ``"shared"`` layer reuses the previous indexer's top-k and is plain
``mla``. The indexer (``GlmMoeDsaIndexer``) has its own projections: ``wq_b`` (q_lora_rank ->
index_n_heads · index_head_dim, reading ``q_a_layernorm``'s output), ``wk`` (H -> index_head_dim), a
LayerNorm ``k_norm`` (weight and bias) and ``weights_proj`` (H -> index_n_heads), which transformers keeps
in fp32 (``_keep_in_fp32_modules = ["indexer.weights_proj"]``: not quantized). Its forward runs under
``torch.no_grad``."""


def dsa_dims(arch: "Arch") -> dict[str, int]:
    """The indexer's sizes (``GlmMoeDsaConfig``: index_n_heads 32, index_head_dim 128, index_topk 2048)."""
    from vramplan.arch.spec import _int

    c, mt = arch.config, arch.model_type
    return dict(heads=_int(c, "index_n_heads", mt, 32), head_dim=_int(c, "index_head_dim", mt, 128),
                topk=_int(c, "index_topk", mt, 2048))


def _dsa_linears(arch: "Arch", n: int) -> list["Linear"]:
    from vramplan.arch.spec import Linear

    m, x, H = mla_dims(arch), dsa_dims(arch), arch.hidden_size
    out = [Linear(lin.name, DSA, lin.in_features, lin.out_features, lin.bias, n) for lin in _mla_linears(arch, n)]
    out.append(Linear("indexer.wq_b", DSA, m["q_lora_rank"], x["heads"] * x["head_dim"], False, n, no_grad=True))
    out.append(Linear("indexer.wk", DSA, H, x["head_dim"], False, n, no_grad=True))
    out.append(Linear("indexer.weights_proj", DSA, H, x["heads"], False, n, quantized=False, no_grad=True))
    return out


def _dsa_params(arch: "Arch") -> dict[str, int]:
    return {**_mla_params(arch), "indexer.k_norm": 2 * dsa_dims(arch)["head_dim"]}


# ------------------------------------------------------------------------------------ gemma4
# transformers 5.24 ``models/gemma4/modeling_gemma4.py``: a ``Gemma4TextDecoderLayer`` is priced whole
# by its kind (attention, MLP, the optional per-layer-input block), its feed-forward block included
# (``Family.ffn_rule`` "in_mixer"), because its shapes differ per layer: full-attention layers use
# ``global_head_dim`` (and ``num_global_key_value_heads`` under ``attention_k_eq_v``, with no v_proj),
# the last ``num_kv_shared_layers`` layers reuse an earlier layer's keys and values (no k/v
# projections, a double-wide MLP under ``use_double_wide_mlp``).
GEMMA4_KINDS = ("gemma4_sliding", "gemma4_full", "gemma4_sliding_kv_shared", "gemma4_full_kv_shared")


#: ``Gemma4TextConfig.__post_init__``'s ``kwargs.pop("global_head_dim", 512)`` (a keyword, not a field).
GEMMA4_GLOBAL_HEAD_DIM = 512
#: ``Gemma4TextConfig``'s defaults of its per-layer attributes (read per layer from ``per_layer_config``).
GEMMA4_LAYER_DEFAULTS = {"head_dim": 256, "num_key_value_heads": 4}


def _g4(cfg: Mapping[str, Any], key: str) -> Any:
    from vramplan.arch.families import FAMILIES
    value = cfg.get(key)
    if value is None and key == "global_head_dim":
        return GEMMA4_GLOBAL_HEAD_DIM
    if value is None and key in GEMMA4_LAYER_DEFAULTS:
        return GEMMA4_LAYER_DEFAULTS[key]
    return FAMILIES["gemma4_text"].class_defaults.get(key) if value is None else value


def gemma4_layer_types(cfg: Mapping[str, Any], num_layers: int) -> list[str]:
    """Each layer's attention type as ``Gemma4TextConfig.__post_init__`` settles it: config.json
    ``layer_types`` (else 5 sliding : 1 full), the last layer forced to ``full_attention``."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        out = list(types[:num_layers])
    else:
        out = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(num_layers)]
    if out and out[-1] != "full_attention":
        out[-1] = "full_attention"
    return out


def gemma4_shared(cfg: Mapping[str, Any], num_layers: int) -> list[bool]:
    """Whether each layer reuses an earlier layer's keys and values (``kv_sharing_modes`` "reuse"):
    the last ``num_kv_shared_layers`` layers."""
    first = num_layers - min(int(_g4(cfg, "num_kv_shared_layers") or 0), num_layers)
    return [i >= first for i in range(num_layers)]


def gemma4_kinds(cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    """The ``gemma4_*`` kind of each decoder layer."""
    types, shared = gemma4_layer_types(cfg, num_layers), gemma4_shared(cfg, num_layers)
    return tuple(("gemma4_full" if t == "full_attention" else "gemma4_sliding") + ("_kv_shared" if sh else "")
                 for t, sh in zip(types, shared))


def gemma4_dims(cfg: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The sizes of one layer of ``kind`` (``Gemma4TextAttention.__init__`` with ``per_layer_config``,
    ``Gemma4TextMLP.__init__``): head_dim and kv heads (full layers: ``global_head_dim``, and
    ``num_global_key_value_heads`` when ``attention_k_eq_v``), whether it has k/v projections and a
    v_proj, the MLP width, the per-layer-input width P (0: none) and, with ``enable_moe_block``
    (``Gemma4TextRouter.__init__``, ``Gemma4TextExperts.__init__``), the experts E (``num_experts``), the
    top-k (``top_k_experts``) and the expert width M (``moe_intermediate_size``); 0 each without it."""
    full, shared = kind.startswith("gemma4_full"), kind.endswith("_kv_shared")
    k_eq_v = bool(_g4(cfg, "attention_k_eq_v"))
    hd = int(_g4(cfg, "global_head_dim") if full else _g4(cfg, "head_dim"))
    nkv = int(_g4(cfg, "num_key_value_heads"))
    if full and k_eq_v and cfg.get("num_global_key_value_heads") is not None:
        nkv = int(cfg["num_global_key_value_heads"])
    inter = int(_g4(cfg, "intermediate_size")) * (2 if (shared and _g4(cfg, "use_double_wide_mlp")) else 1)
    moe = bool(_g4(cfg, "enable_moe_block"))
    return dict(full=full, shared=shared, head_dim=hd, kv_heads=nkv, heads=int(_g4(cfg, "num_attention_heads")),
                kv_proj=not shared, v_proj=not shared and not (full and k_eq_v), inter=inter,
                ple=int(_g4(cfg, "hidden_size_per_layer_input") or 0), bias=bool(cfg.get("attention_bias") or False),
                experts=int(cfg["num_experts"]) if moe else 0, top_k=int(cfg["top_k_experts"]) if moe else 0,
                moe_inter=int(cfg["moe_intermediate_size"]) if moe else 0)


def _gemma4_linears(kind: str) -> Callable[["Arch", int], list["Linear"]]:
    def linears(arch: "Arch", n: int) -> list["Linear"]:
        from vramplan.arch.spec import Linear
        g, H = gemma4_dims(arch.config, kind), arch.hidden_size
        q, kv, b = g["heads"] * g["head_dim"], g["kv_heads"] * g["head_dim"], g["bias"]
        out = [Linear("q_proj", kind, H, q, b, n)]
        if g["kv_proj"]:
            out.append(Linear("k_proj", kind, H, kv, b, n))
        if g["v_proj"]:
            out.append(Linear("v_proj", kind, H, kv, b, n))
        out.append(Linear("o_proj", kind, q, H, b, n))
        out += [Linear("gate_proj", kind, H, g["inter"], False, n), Linear("up_proj", kind, H, g["inter"], False, n),
                Linear("down_proj", kind, g["inter"], H, False, n)]
        if g["ple"]:
            out += [Linear("per_layer_input_gate", kind, H, g["ple"], False, n),
                    Linear("per_layer_projection", kind, g["ple"], H, False, n)]
        if _g4(arch.config, "enable_moe_block"):  # ``Gemma4TextRouter.proj``, an nn.Linear bitsandbytes replaces
            out.append(Linear("router.proj", kind, H, int(arch.config["num_experts"]), False, n))
        return out
    return linears


def _gemma4_params(arch: "Arch") -> dict[str, int]:
    """Nothing here: a Gemma 4 layer's q/k norms and per-layer-input norm are counted with the other
    norms (``vramplan.arch.layouts`` "gemma4"), so the weight terms price them in the norms' dtype."""
    return {}


# ------------------------------------------------------------------- gated_deltanet (Qwen3-Next)
GATED_DELTANET = "gated_deltanet"
"""Gated DeltaNet linear attention (``Qwen3NextGatedDeltaNet``, ``Qwen3_5GatedDeltaNet``)."""


class DeltaNetDims(NamedTuple):
    """Sizes of one gated DeltaNet layer (config.json ``linear_*``, the config class's defaults)."""

    nk: int
    """Query/key heads (``linear_num_key_heads``)."""
    nv: int
    """Value heads (``linear_num_value_heads``); q and k are repeated to nv heads in the kernel."""
    dk: int
    """Query/key head width (``linear_key_head_dim``)."""
    dv: int
    """Value head width (``linear_value_head_dim``)."""
    kernel: int
    """Causal convolution width (``linear_conv_kernel_dim``)."""

    @property
    def key_dim(self) -> int:
        return self.nk * self.dk

    @property
    def value_dim(self) -> int:
        return self.nv * self.dv

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise convolution over q, k and v (``conv_dim``)."""
        return 2 * self.key_dim + self.value_dim


def _cfg(arch: "Arch", key: str) -> Any:
    value = arch.config.get(key)
    return value if value is not None else arch.family.class_defaults[key]


def deltanet_dims(arch: "Arch") -> DeltaNetDims:
    """The gated DeltaNet sizes of ``arch``."""
    return DeltaNetDims(*(int(_cfg(arch, k)) for k in ("linear_num_key_heads", "linear_num_value_heads",
                                                          "linear_key_head_dim", "linear_value_head_dim",
                                                          "linear_conv_kernel_dim")))


def _deltanet_linears(arch: "Arch", n: int) -> list["Linear"]:
    """``Qwen3NextGatedDeltaNet.__init__``: ``in_proj_qkvz`` (H -> 2·key_dim + 2·value_dim), ``in_proj_ba``
    (H -> 2·nv), ``out_proj`` (value_dim -> H), no biases; Qwen3.5 (``Family.deltanet_split``,
    ``Qwen3_5GatedDeltaNet.__init__``) splits the input projections into ``in_proj_qkv`` (H -> conv_dim),
    ``in_proj_z`` (H -> value_dim), ``in_proj_b`` and ``in_proj_a`` (H -> nv each)."""
    from vramplan.arch.spec import Linear
    t, H = deltanet_dims(arch), arch.hidden_size
    g = GATED_DELTANET
    if arch.family.deltanet_split:
        ins = [Linear("in_proj_qkv", g, H, t.conv_dim, False, n), Linear("in_proj_z", g, H, t.value_dim, False, n),
               Linear("in_proj_b", g, H, t.nv, False, n), Linear("in_proj_a", g, H, t.nv, False, n)]
    else:
        ins = [Linear("in_proj_qkvz", g, H, 2 * t.key_dim + 2 * t.value_dim, False, n),
               Linear("in_proj_ba", g, H, 2 * t.nv, False, n)]
    return ins + [Linear("out_proj", g, t.value_dim, H, False, n)]


def _deltanet_params(arch: "Arch") -> dict[str, int]:
    """The depthwise ``conv1d`` kernel (conv_dim × 1 × kernel, no bias), ``A_log`` and ``dt_bias`` (nv each)."""
    t = deltanet_dims(arch)
    return {"conv1d": t.conv_dim * t.kernel, "A_log": t.nv, "dt_bias": t.nv}


def _deltanet_norms(arch: "Arch") -> int:
    """``Qwen3NextRMSNormGated(head_v_dim)``: one weight of dv, shared by every value head."""
    return deltanet_dims(arch).dv


# ------------------------------------------------------------- kda (Kimi Delta Attention)
KDA = "kda"
"""Kimi Delta Attention (``KimiLinearDeltaAttention``, transformers 5.24 ``modeling_kimi_linear.py``
L571-716): a gated delta rule with a per-channel decay. q/k/v projections (H -> num_heads · head_dim
each, ``linear_attn_config`` ``num_heads`` / ``head_dim``), one depthwise causal ``conv1d`` over the
three (kernel ``short_conv_kernel_size``, no bias), the forget gate (``forget_gate.f_a_proj`` H -> head_dim,
``f_b_proj`` head_dim -> qkv, fp32 ``dt_bias`` of qkv, ``A_log`` per head), ``b_proj`` (H -> heads, the
beta), the output gate (``g_a_proj`` H -> head_dim, ``g_b_proj`` head_dim -> qkv), a gated RMSNorm
``o_norm`` over head_dim and ``o_proj`` (qkv -> H); no biases."""


def kda_dims(arch: "Arch") -> dict[str, int]:
    """``KimiLinearConfig.__post_init__``: ``linear_attn_config`` ``num_heads`` (32), ``head_dim`` (128),
    ``short_conv_kernel_size`` (4), else the flat ``linear_num_heads`` / ``linear_head_dim`` /
    ``linear_conv_kernel_dim``; qkv = heads · head_dim."""
    from vramplan.arch.spec import _int

    c, mt = arch.config, arch.model_type
    lac = c.get("linear_attn_config") or {}
    nh = _int(lac, "num_heads", mt, _int(c, "linear_num_heads", mt, 32))
    hd = _int(lac, "head_dim", mt, _int(c, "linear_head_dim", mt, 128))
    k = _int(lac, "short_conv_kernel_size", mt, _int(c, "linear_conv_kernel_dim", mt, 4))
    return dict(heads=nh, head_dim=hd, kernel=k, qkv=nh * hd)


def _kda_linears(arch: "Arch", n: int) -> list["Linear"]:
    """``KimiLinearDeltaAttention.__init__`` (L575-610) and ``KimiLinearForgetGate.__init__`` (L321-330)."""
    from vramplan.arch.spec import Linear

    m, H = kda_dims(arch), arch.hidden_size
    D, hd = m["qkv"], m["head_dim"]
    return [Linear("q_proj", KDA, H, D, False, n), Linear("k_proj", KDA, H, D, False, n),
            Linear("v_proj", KDA, H, D, False, n),
            Linear("forget_gate.f_a_proj", KDA, H, hd, False, n), Linear("forget_gate.f_b_proj", KDA, hd, D, False, n),
            Linear("b_proj", KDA, H, m["heads"], False, n),
            Linear("g_a_proj", KDA, H, hd, False, n), Linear("g_b_proj", KDA, hd, D, False, n),
            Linear("o_proj", KDA, D, H, False, n)]


def _kda_params(arch: "Arch") -> dict[str, int]:
    """The depthwise conv kernel (3 · qkv × kernel), ``dt_bias`` (qkv, kept fp32: ``_keep_in_fp32_modules_strict``),
    ``A_log`` (heads) and ``o_norm`` (head_dim)."""
    m = kda_dims(arch)
    return {"conv1d": 3 * m["qkv"] * m["kernel"], "forget_gate.dt_bias": m["qkv"], "forget_gate.A_log": m["heads"],
            "o_norm": m["head_dim"]}


#: Every token-mixer kind but ``ATTENTION`` (the one place a kind is registered).
MIXERS: dict[str, Mixer] = {m.name: m for m in (
    Mixer(IDENTITY, "models/nemotron_h/modeling_nemotron_h.py NemotronHBlock (mlp / moe blocks)", _no_linears,
          _no_params),
    Mixer(MAMBA2, "models/nemotron_h/modeling_nemotron_h.py NemotronHMamba2Mixer", _mamba2_linears, _mamba2_params),
    Mixer(CHUNKED_ATTENTION, "models/llama4/modeling_llama4.py::Llama4TextAttention (use_rope layers)",
          _chunked_attention_linears, _no_params),
    Mixer(MLA, "models/deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention", _mla_linears, _mla_params),
    Mixer(DSA, "models/glm_moe_dsa/modeling_glm_moe_dsa.py GlmMoeDsaAttention", _dsa_linears, _dsa_params),
    *(Mixer(k, "models/gemma4/modeling_gemma4.py Gemma4TextDecoderLayer", _gemma4_linears(k), _gemma4_params)
      for k in GEMMA4_KINDS),
    Mixer(GATED_DELTANET, "models/qwen3_next/modeling_qwen3_next.py::Qwen3NextGatedDeltaNet",
          _deltanet_linears, _deltanet_params, _deltanet_norms),
    Mixer(KDA, "models/kimi_linear/modeling_kimi_linear.py KimiLinearDeltaAttention", _kda_linears, _kda_params),
)}
