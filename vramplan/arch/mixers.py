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
from typing import TYPE_CHECKING, Callable

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
    """arch -> per-layer parameters that are not linear weights, by name (unquantized)."""


def is_mixer_group(group: str) -> bool:
    """Whether linears of ``group`` belong to a token mixer (kept only in the layers of that kind)."""
    return group == ATTENTION or group in MIXERS


# ------------------------------------------------------------------------------------- kinds
# One section per kind: its linears and params functions, then its ``Mixer`` record.


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
    Mixer(MLA, "models/deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention", _mla_linears, _mla_params),
    Mixer(DSA, "models/glm_moe_dsa/modeling_glm_moe_dsa.py GlmMoeDsaAttention", _dsa_linears, _dsa_params),
    Mixer(KDA, "models/kimi_linear/modeling_kimi_linear.py KimiLinearDeltaAttention", _kda_linears, _kda_params),
)}
