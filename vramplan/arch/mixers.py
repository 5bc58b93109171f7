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
from typing import TYPE_CHECKING, Any, Callable, Mapping

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
    v_proj, the MLP width, the per-layer-input width P (0: none)."""
    full, shared = kind.startswith("gemma4_full"), kind.endswith("_kv_shared")
    k_eq_v = bool(_g4(cfg, "attention_k_eq_v"))
    hd = int(_g4(cfg, "global_head_dim") if full else _g4(cfg, "head_dim"))
    nkv = int(_g4(cfg, "num_key_value_heads"))
    if full and k_eq_v and cfg.get("num_global_key_value_heads") is not None:
        nkv = int(cfg["num_global_key_value_heads"])
    inter = int(_g4(cfg, "intermediate_size")) * (2 if (shared and _g4(cfg, "use_double_wide_mlp")) else 1)
    return dict(full=full, shared=shared, head_dim=hd, kv_heads=nkv, heads=int(_g4(cfg, "num_attention_heads")),
                kv_proj=not shared, v_proj=not shared and not (full and k_eq_v), inter=inter,
                ple=int(_g4(cfg, "hidden_size_per_layer_input") or 0), bias=bool(cfg.get("attention_bias") or False))


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


#: Every token-mixer kind but ``ATTENTION`` (the one place a kind is registered).
MIXERS: dict[str, Mixer] = {m.name: m for m in (
    *(Mixer(k, "models/gemma4/modeling_gemma4.py Gemma4TextDecoderLayer", _gemma4_linears(k), _gemma4_params)
      for k in GEMMA4_KINDS),
)}
