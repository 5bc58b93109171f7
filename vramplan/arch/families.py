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
    final_softcapping: bool = False
    """Reads ``final_logit_softcapping`` only (Gemma 4: its attention scores are not soft-capped)."""
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
    layout: str | None = None
    """Modules outside the decoder layers and the token embedding that the family adds, and buffers
    beyond the rotary ones (``vramplan.arch.layouts.LAYOUTS``: Gemma 4's per-layer input embeddings
    and their projection); None: none."""
    expert_lora_targets: Mapping[str, str] = field(default_factory=dict)
    """v4 module name -> the fused part peft 0.21 adapts for it (``router``, ``gate_up``, ``down``):
    ``utils/transformers_weight_conversion.py`` ``_MOE_TARGET_MODULE_MAPPING``. Empty: peft adapts no
    expert parameter (qwen2_moe maps to None there)."""

    multimodal: bool = False
    """An outer multimodal ``model_type`` (its config.json nests the decoder in ``text_config``, or is
    flat, beside a ``vision_config``): the record describes its text decoder, ``vramplan.arch.vision``
    its tower; ``tie_word_embeddings`` is read from the outer config (transformers 5 ties on it)."""
    tie_reads_text: bool = False
    """The outer config also ties when its ``text_config`` says so (Qwen2.5-VL's pre-v5 saves:
    ``Qwen2_5_VLConfig.__post_init__``)."""

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


_GEMMA3 = dict(qk_norm=True, norms_per_layer=4, tie_default=True, norm_keeps_input_dtype=True,
               rotary_per_layer_type=True, scaled_embedding=True, sliding_rule=SLIDE_PATTERN,
               class_defaults=dict(num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208))

def _gemma4_mixers(cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    from vramplan.arch.mixers import gemma4_kinds
    return gemma4_kinds(cfg, num_layers)


MIXER_RULES["gemma4"] = _gemma4_mixers
"""Gemma 4: each decoder layer is one ``gemma4_*`` kind (``vramplan.arch.mixers``), by its attention type
and whether it reuses an earlier layer's keys and values (``Gemma4TextConfig.kv_sharing_modes``)."""
FFN_RULES["in_mixer"] = lambda cfg, num_layers: tuple(range(num_layers))
"""Every layer's feed-forward block is priced with its mixer kind (the kind walks the whole layer)."""

#: Gemma4TextConfig's fields (transformers 5.24 ``configuration_gemma4.py``) the engines read.
#: (``head_dim`` and ``num_key_value_heads`` are per-layer attributes there: ``vramplan.arch.mixers.GEMMA4_LAYER_DEFAULTS``.)
_GEMMA4_DEFAULTS = dict(vocab_size=262_144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30,
                        num_attention_heads=8, tie_word_embeddings=True,
                        sliding_window=512, vocab_size_per_layer_input=262_144, hidden_size_per_layer_input=256,
                        attention_k_eq_v=False, num_kv_shared_layers=0, enable_moe_block=False,
                        use_double_wide_mlp=False)

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
    # the multimodal checkpoints (Gemma3ForConditionalGeneration: SigLIP tower + projector, the decoder in
    # text_config); a gemma3 config without a vision_config reads as gemma3_text (ALIASES)
    Family("gemma3", "models/gemma3/modeling_gemma3.py (Gemma3Model: Gemma3TextModel under text_config)",
           multimodal=True, **_GEMMA3),
    Family("phi3", "models/phi3/modeling_phi3.py", fused=True, sliding_rule=SLIDE_ALL),
    Family("gemma4_text", "models/gemma4/modeling_gemma4.py", qk_norm=True, norms_per_layer=4, tie_default=True,
           final_softcapping=True, norm_keeps_input_dtype=True, rotary_per_layer_type=True, scaled_embedding=True,
           sliding_rule=SLIDE_PATTERN, mixer_rule="gemma4", ffn_rule="in_mixer", layout="per_layer_inputs",
           class_defaults=_GEMMA4_DEFAULTS),
    # multimodal checkpoints: the text decoder's record (the tower is vramplan.arch.vision's)
    Family("qwen2_5_vl", "models/qwen2_5_vl/modeling_qwen2_5_vl.py (Qwen2_5_VLTextModel: Qwen2 layers)",
           qkv_bias=True, sliding_rule=SLIDE_FROM_MAX_WINDOW, multimodal=True, tie_reads_text=True),
    Family("qwen3_vl", "models/qwen3_vl/modeling_qwen3_vl.py (Qwen3VLTextModel: Qwen3 layers)", qk_norm=True,
           multimodal=True),
    Family("qwen3_vl_moe", "models/qwen3_vl_moe/modeling_qwen3_vl_moe.py (Qwen3VLMoeTextModel: Qwen3-MoE layers)",
           qk_norm=True, moe=MOE_QWEN, multimodal=True),  # peft 0.21 maps no v4 expert names for it
    Family("mistral3", "models/mistral3/modeling_mistral3.py (Mistral3Model: a MistralModel under text_config)",
           sliding_rule=SLIDE_ALL, multimodal=True, tie_default=True),
)}

#: model_types read as another family: the config's own model_type -> the family's.
ALIASES: dict[str, str] = {
    "gemma3": "gemma3_text",  # Gemma 3 multimodal configs: the text part (``text_config``)
    "gemma4": "gemma4_text",  # Gemma 4 multimodal configs: the text part (``text_config``)
}

#: Known model_types deliberately not modelled yet, with the reason shown to users.
UNSUPPORTED: dict[str, str] = {
    "qwen3_next": "hybrid linear attention (Gated DeltaNet) is not modelled yet",
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
