"""Model families as data: every per-``model_type`` fact vramplan uses, in one ``Family`` record each.

``Arch.from_config`` reads a family's layout (biases, norms, fused projections, MoE layout, class
defaults); the analytic engine reads its memory traits (norm dtype, rotary buffers, embedding
scaling, sliding-window rule, which fused expert parameters peft adapts) through ``Arch.family`` and
never compares ``model_type`` strings itself (tests/theirs/test_families.py pins that).

Each record cites the transformers 5.24 file it mirrors. Adding a family (docs/design.md):
1. one ``Family(...)`` entry in ``FAMILIES`` with its source file;
2. a registry file ``vramplan/arch/registry/<family>.json`` with a tiny and a real entry;
3. run the ours-vs-theirs tests (parameter counts on the meta device, analytic vs trace on a shrunk
   config); a new kind of layer (not a new value of an existing trait) needs a term in the engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: How a family lays out its mixture-of-experts layers (``Arch._moe_fields`` reads the config keys).
MOE_MIXTRAL = "mixtral"
"""Every layer sparse; ``num_local_experts`` experts of width ``intermediate_size``."""
MOE_QWEN = "qwen"
"""Layer i sparse unless in ``mlp_only_layers`` and when ``(i + 1) % decoder_sparse_step == 0``;
``num_experts`` experts of width ``moe_intermediate_size`` (``Qwen3MoeDecoderLayer.__init__``)."""

#: Sliding-window rules (``Family.sliding_rule``), after config.json ``layer_types`` when given.
SLIDE_PATTERN = "pattern"
"""Gemma 3: layer i slides unless (i + 1) % ``sliding_window_pattern`` == 0 (default 6)."""
SLIDE_EVEN = "even"
"""Gemma 2: even layers slide (``Gemma2Config``)."""
SLIDE_ALL = "all"
"""Every layer when ``sliding_window`` is set (``create_sliding_window_causal_mask``)."""
SLIDE_FROM_MAX_WINDOW = "from_max_window_layers"
"""Qwen2: layers from ``max_window_layers`` on when ``use_sliding_window`` and ``sliding_window``."""


@dataclass(frozen=True)
class Family:
    """What vramplan knows about one ``model_type``."""

    model_type: str
    source: str
    """The transformers 5.24 modeling file the record mirrors."""
    qkv_bias: bool = False
    """q/k/v carry a bias whatever ``attention_bias`` says (the Qwen2 family hard-codes it)."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k (Qwen3, Gemma 3)."""
    norms_per_layer: int = 2
    """RMSNorms of width H per decoder layer (Gemma: four, around attention and MLP)."""
    tie_default: bool = False
    """The config class's ``tie_word_embeddings`` when config.json omits it."""
    fused: bool = False
    """Phi-3 layout: ``qkv_proj`` and ``gate_up_proj``."""
    moe: str | None = None
    """``MOE_MIXTRAL``, ``MOE_QWEN`` or None (dense)."""
    shared_expert: bool = False
    """A gated always-on shared expert beside the routed ones (Qwen2-MoE)."""
    class_defaults: Mapping[str, Any] = field(default_factory=dict)
    """Fields the config class fills in when config.json omits them (published configs rely on it)."""
    softcapping: bool = False
    """Reads ``final_logit_softcapping`` / ``attn_logit_softcapping`` (Gemma 2)."""
    norm_keeps_input_dtype: bool = False
    """RMSNorm computes in fp32 and returns its input's dtype (``output.type_as(x)``), so an fp32
    norm weight does not promote the residual stream, as Llama's ``weight * x.to(input_dtype)`` does."""
    rotary_per_layer_type: bool = False
    """The rotary module keeps one ``inv_freq``/``original_inv_freq`` pair per attention layer type
    (``Gemma3RotaryEmbedding``: ``{layer_type}_inv_freq``); else a single pair."""
    scaled_embedding: bool = False
    """``*ScaledWordEmbedding`` with a scalar ``embed_scale`` buffer."""
    sliding_rule: str | None = None
    """Which layers use sliding-window attention when config.json gives no ``layer_types``."""
    mixer: str = "attention"
    """The token-mixer kind of its attention layers (``vramplan.arch.mixers``): ``attention``, or a
    kind of its own for every such layer (latent attention, say)."""
    mixer_kinds: Mapping[str, str] = field(default_factory=dict)
    """config.json ``layer_types`` value -> token-mixer kind, for the values that are not softmax
    attention (a hybrid's ``linear_attention`` layers, say); unnamed values are ``mixer``."""
    mixer_rule: str | None = None
    """How to read each layer's mixer kind when config.json gives it some other way than
    ``layer_types`` (``layer_mixers``)."""
    ffn_rule: str | None = None
    """How to read which layers have no feed-forward block (``ffn_free_layers``); None: all have one."""
    attn_output_gate: bool = False
    """Gated attention (Qwen3-Next, Qwen3.5): ``q_proj`` outputs the query and a gate of the same width
    (``2 · heads · head_dim``), and the attention output is multiplied by ``sigmoid(gate)`` before
    ``o_proj`` (``Qwen3NextAttention.forward``)."""
    deltanet_split: bool = False
    """The gated DeltaNet mixer projects with four linears ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``,
    ``in_proj_a`` (Qwen3.5, ``Qwen3_5GatedDeltaNet``) instead of ``in_proj_qkvz`` and ``in_proj_ba``
    (Qwen3-Next)."""
    outer_keys: tuple[str, ...] = ()
    """Keys of a nested config's outer part that the text model inherits when its ``text_config`` lacks
    them (Qwen3.5: ``tie_word_embeddings`` is written beside ``text_config``, and
    ``Qwen3_5ForConditionalGeneration`` ties its lm_head by the outer value)."""
    expert_lora_targets: Mapping[str, str] = field(default_factory=dict)
    """v4 module name -> the fused part peft 0.21 adapts for it (``router``, ``gate_up``, ``down``):
    ``utils/transformers_weight_conversion.py`` ``_MOE_TARGET_MODULE_MAPPING``. Empty: peft adapts no
    expert parameter (qwen2_moe maps to None there)."""

    def sliding_layers(self, cfg: Mapping[str, Any], num_layers: int) -> tuple[int, ...]:
        """Indices of the decoder layers whose attention is sliding-window, as transformers decides:
        config.json ``layer_types`` when given, else the family's ``sliding_rule``."""
        types = cfg.get("layer_types")
        if isinstance(types, list) and types:
            return tuple(i for i, t in enumerate(types[:num_layers]) if t == "sliding_attention")
        rule = self.sliding_rule
        if rule == SLIDE_PATTERN:
            p = cfg.get("sliding_window_pattern", 6) or 6
            return tuple(i for i in range(num_layers) if (i + 1) % p)
        if rule == SLIDE_EVEN:
            return tuple(range(0, num_layers, 2))
        if rule == SLIDE_ALL and cfg.get("sliding_window"):
            return tuple(range(num_layers))
        if rule == SLIDE_FROM_MAX_WINDOW and cfg.get("use_sliding_window") and cfg.get("sliding_window"):
            return tuple(range(cfg.get("max_window_layers", 0) or 0, num_layers))
        return ()

    def layer_mixers(self, cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
        """Each decoder layer's token-mixer kind; () when every layer is plain ``attention``."""
        types = cfg.get("layer_types")
        if self.mixer_kinds and isinstance(types, list) and types:
            kinds = tuple(self.mixer_kinds.get(t, self.mixer) for t in types[:num_layers])
        elif self.mixer_rule is not None:
            kinds = MIXER_RULES[self.mixer_rule](cfg, num_layers)
        else:
            kinds = (self.mixer,) * num_layers
        return () if all(k == "attention" for k in kinds) else kinds

    def ffn_free_layers(self, cfg: Mapping[str, Any], num_layers: int) -> tuple[int, ...]:
        """Indices of the decoder layers with no feed-forward block."""
        return FFN_RULES[self.ffn_rule](cfg, num_layers) if self.ffn_rule is not None else ()

    def attention_layer_types(self, cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
        """Distinct attention layer types: config.json ``layer_types`` when given, else Gemma 3's
        derivation from ``sliding_window_pattern`` (layer i is full attention when (i + 1) % pattern == 0)."""
        types = cfg.get("layer_types")
        if isinstance(types, list) and types:
            return tuple(sorted(set(types[:num_layers])))
        p = cfg.get("sliding_window_pattern", 6) or 6
        return tuple(sorted({"full_attention" if (i + 1) % p == 0 else "sliding_attention"
                             for i in range(num_layers)}))

    def rotary_sets(self, cfg: Mapping[str, Any], num_layers: int) -> int:
        """How many inv_freq/original_inv_freq pairs the rotary module holds."""
        return len(self.attention_layer_types(cfg, num_layers)) if self.rotary_per_layer_type else 1


#: ``Family.mixer_rule`` name -> (config, layers) -> each layer's mixer kind.
MIXER_RULES: dict[str, Callable[[Mapping[str, Any], int], tuple[str, ...]]] = {}
#: ``Family.ffn_rule`` name -> (config, layers) -> the layers without a feed-forward block.
FFN_RULES: dict[str, Callable[[Mapping[str, Any], int], tuple[int, ...]]] = {}


def _full_attention_interval(cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    """Qwen3-Next / Qwen3.5 without ``layer_types``: layer i is full attention when (i + 1) % interval
    == 0 (``full_attention_interval``, default 4), else gated DeltaNet (``Qwen3NextConfig.__post_init__``,
    ``Qwen3_5TextConfig.__post_init__``)."""
    p = cfg.get("full_attention_interval", 4) or 4
    return tuple("attention" if (i + 1) % p == 0 else "gated_deltanet" for i in range(num_layers))


MIXER_RULES["full_attention_interval"] = _full_attention_interval


#: Qwen3-Next and Qwen3.5 (``models/qwen3_next``, ``models/qwen3_5``, ``models/qwen3_5_moe``): 3 gated
#: DeltaNet layers to 1 gated full-attention layer, zero-centred RMSNorm ``(1 + weight)`` returning the
#: input's dtype (``Qwen3NextRMSNorm.forward``: ``output.type_as(x)``), q/k norms on full attention.
_QWEN_HYBRID = dict(qk_norm=True, norm_keeps_input_dtype=True, attn_output_gate=True,
                    mixer_kinds={"linear_attention": "gated_deltanet"}, mixer_rule="full_attention_interval")
_DELTANET_DEFAULTS = dict(linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
                          linear_num_key_heads=16, linear_num_value_heads=32)

_GEMMA3 = dict(qk_norm=True, norms_per_layer=4, tie_default=True, norm_keeps_input_dtype=True,
               rotary_per_layer_type=True, scaled_embedding=True, sliding_rule=SLIDE_PATTERN,
               class_defaults=dict(num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208))

#: Every supported family (the one place a per-model_type fact is written).
FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "models/llama/modeling_llama.py"),
    Family("mistral", "models/mistral/modeling_mistral.py", sliding_rule=SLIDE_ALL),
    Family("mixtral", "models/mixtral/modeling_mixtral.py", moe=MOE_MIXTRAL, sliding_rule=SLIDE_ALL,
           expert_lora_targets={"gate": "router", "w1": "gate_up", "w3": "gate_up", "w2": "down"}),
    Family("qwen2", "models/qwen2/modeling_qwen2.py", qkv_bias=True, sliding_rule=SLIDE_FROM_MAX_WINDOW),
    Family("qwen2_moe", "models/qwen2_moe/modeling_qwen2_moe.py", qkv_bias=True, moe=MOE_QWEN,
           shared_expert=True, sliding_rule=SLIDE_FROM_MAX_WINDOW),
    Family("qwen3", "models/qwen3/modeling_qwen3.py", qk_norm=True),
    Family("qwen3_moe", "models/qwen3_moe/modeling_qwen3_moe.py", qk_norm=True, moe=MOE_QWEN,
           expert_lora_targets={"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up",
                                "down_proj": "down"}),
    Family("gemma2", "models/gemma2/modeling_gemma2.py", norms_per_layer=4, tie_default=True, softcapping=True,
           norm_keeps_input_dtype=True, scaled_embedding=True, sliding_rule=SLIDE_EVEN,
           class_defaults=dict(head_dim=256)),
    Family("gemma3_text", "models/gemma3/modeling_gemma3.py", **_GEMMA3),
    Family("phi3", "models/phi3/modeling_phi3.py", fused=True, sliding_rule=SLIDE_ALL),
    # peft 0.21 remaps qwen3_next's expert names (``_MODEL_TO_CONVERSION_PATTERN``: qwen3_next -> qwen2_moe);
    # qwen3_5_moe_text maps to qwen3_5_text, which has no expert mapping: peft adapts no expert parameter
    Family("qwen3_next", "models/qwen3_next/modeling_qwen3_next.py", moe=MOE_QWEN, shared_expert=True,
           class_defaults=dict(_DELTANET_DEFAULTS, head_dim=256), **_QWEN_HYBRID,
           expert_lora_targets={"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up",
                                "down_proj": "down"}),
    Family("qwen3_5_text", "models/qwen3_5/modeling_qwen3_5.py", deltanet_split=True,
           outer_keys=("tie_word_embeddings",), class_defaults=dict(_DELTANET_DEFAULTS, head_dim=256),
           **_QWEN_HYBRID),
    Family("qwen3_5_moe_text", "models/qwen3_5_moe/modeling_qwen3_5_moe.py", deltanet_split=True, moe=MOE_QWEN,
           shared_expert=True, outer_keys=("tie_word_embeddings",),
           class_defaults=dict(_DELTANET_DEFAULTS, head_dim=256), **_QWEN_HYBRID),
)}

#: model_types read as another family: the config's own model_type -> the family's.
ALIASES: dict[str, str] = {
    "gemma3": "gemma3_text",  # Gemma 3 multimodal configs: the text part (``text_config``)
    "qwen3_5": "qwen3_5_text",  # Qwen3.5 multimodal configs: the text part
    "qwen3_5_moe": "qwen3_5_moe_text",
}

#: Known model_types deliberately not modelled yet, with the reason shown to users.
UNSUPPORTED: dict[str, str] = {
    "jamba": "hybrid Mamba/attention layers are not modelled yet",
    "falcon_h1": "hybrid Mamba/attention layers are not modelled yet",
    "mamba": "state-space models are not modelled",
    "mamba2": "state-space models are not modelled",
    "rwkv": "RWKV is not modelled",
    "deepseek_v3": "multi-head latent attention is not modelled yet",
    "deepseek_v2": "multi-head latent attention is not modelled yet",
    "lfm2": "hybrid convolution/attention layers are not modelled yet",
    "gpt_oss": "gpt-oss MXFP4 experts are not modelled yet",
}


def family(model_type: str) -> Family:
    """The record of ``model_type`` (after ``ALIASES``); KeyError when unknown."""
    return FAMILIES[ALIASES.get(model_type, model_type)]
