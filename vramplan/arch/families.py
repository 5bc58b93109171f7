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

MOE_DEEPSEEK = "deepseek"
"""DeepSeek-V3 layout: layer i sparse where config.json ``mlp_layer_types`` says ``sparse``, else from
``first_k_dense_replace`` on (``DeepseekV3DecoderLayer.__init__``); ``n_routed_experts`` experts of
width ``moe_intermediate_size``; the shared experts (``Family.shared_experts_key``) beside them."""

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
    shared_experts_key: str | None = None
    """config.json key counting always-on, ungated shared experts of width ``moe_intermediate_size``,
    built as one MLP ``shared_experts`` of width count · ``moe_intermediate_size`` (DeepSeek-V3's
    ``n_shared_experts``: ``DeepseekV3MoE.__init__``); None: none, or Qwen2-MoE's gated one."""
    dense_prefix_key: str | None = "first_k_dense_replace"
    """``MOE_DEEPSEEK``: the config.json key of how many leading layers keep a dense MLP when it gives no
    ``mlp_layer_types`` (its class default in ``class_defaults``); None: the config class reads no such key
    and keeps ``dense_prefix_default`` leading dense layers."""
    dense_prefix_default: int = 0
    """``MOE_DEEPSEEK`` with ``dense_prefix_key`` None: the leading dense layers the config class builds."""
    dsa_mask: bool = False
    """The model always builds the causal mask (``allow_is_causal_skip=False``, the indexer reads it) and
    each latent-attention layer hands sdpa its own top-k-restricted boolean mask
    (``GlmMoeDsaAttention.forward``): sdpa saves the kernel's additive copy of it per layer."""
    router_fp32: bool = False
    """The router weight and its ``e_score_correction_bias`` buffer (E fp32 per MoE layer) stay fp32
    whatever the load dtype (``_keep_in_fp32_modules_strict = ["e_score_correction_bias",
    "gate.weight"]``); the router runs ``F.linear(x.float(), weight.float())``."""
    experts_key: str = "n_routed_experts"
    """``MOE_DEEPSEEK``: config.json key of the routed expert count (Kimi Linear's ``num_experts``)."""
    experts_per_token_key: str = "num_experts_per_tok"
    """``MOE_DEEPSEEK``: config.json key of the experts each token is routed to (``num_experts_per_token``)."""
    mla_rope: bool = True
    """Latent attention rotates its qk_rope slice (DeepSeek's ``apply_rotary_pos_emb_interleave``); False: NoPE
    latent attention with no rotary module at all (Kimi Linear's ``KimiLinearAttention``: q is a view of
    its projection, and the model holds no ``inv_freq`` buffers)."""
    head_dim_key: str = "head_dim"
    """config.json key of the rotary head dim (MLA: ``qk_rope_head_dim``, which the config class copies
    into ``head_dim``)."""
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
        if not self.mla_rope:
            return 0
        return len(self.attention_layer_types(cfg, num_layers)) if self.rotary_per_layer_type else 1


def _indexer_layers(cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    """GLM-5 (``GlmMoeDsaConfig.__post_init__``): ``indexer_types`` when given, else ``index_topk_pattern``
    (``F``/``S``), else layer i runs its own indexer when max(i - offset + 1, 0) % freq == 0
    (``index_topk_freq`` 1, ``index_skip_topk_offset`` 2): ``full`` -> ``dsa``, ``shared`` -> ``mla``."""
    types = cfg.get("indexer_types")
    if not (isinstance(types, list) and types):
        pattern = cfg.get("index_topk_pattern")
        if pattern is not None:
            types = [{"F": "full", "S": "shared"}[c] for c in pattern] if isinstance(pattern, str) else list(pattern)
        else:
            freq = max(int(cfg.get("index_topk_freq", 1) or 1), 1)
            offset = int(cfg.get("index_skip_topk_offset", 2) or 0)
            types = ["full" if (max(i - offset + 1, 0) % freq) == 0 else "shared" for i in range(num_layers)]
    return tuple("mla" if t == "shared" else "dsa" for t in types[:num_layers])


def _kda_layers(cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    """Kimi Linear (``KimiLinearConfig.__post_init__``): ``layer_types`` when given (``linear_attention`` ->
    ``kda``), else ``linear_attn_config`` ``kda_layers`` / ``full_attn_layers`` (1-based layer numbers, as
    the checkpoint writes them), else layer i is full attention when i and i % 4 == 0; full attention
    layers are latent attention (``mla``)."""
    types = cfg.get("layer_types")
    if not (isinstance(types, list) and types):
        lac = cfg.get("linear_attn_config") or {}
        if "full_attn_layers" in lac and "kda_layers" in lac:
            types = [None] * num_layers
            for n in lac["full_attn_layers"]:
                if 1 <= n <= num_layers:
                    types[n - 1] = "full_attention"
            for n in lac["kda_layers"]:
                if 1 <= n <= num_layers:
                    types[n - 1] = "linear_attention"
        else:
            types = ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(num_layers)]
    return tuple("kda" if t == "linear_attention" else "mla" for t in types[:num_layers])


#: ``Family.mixer_rule`` name -> (config, layers) -> each layer's mixer kind.
MIXER_RULES: dict[str, Callable[[Mapping[str, Any], int], tuple[str, ...]]] = {
    "indexer_types": _indexer_layers,
    "kda_layers": _kda_layers,
}
#: ``Family.ffn_rule`` name -> (config, layers) -> the layers without a feed-forward block.
FFN_RULES: dict[str, Callable[[Mapping[str, Any], int], tuple[int, ...]]] = {}


_GEMMA3 = dict(qk_norm=True, norms_per_layer=4, tie_default=True, norm_keeps_input_dtype=True,
               rotary_per_layer_type=True, scaled_embedding=True, sliding_rule=SLIDE_PATTERN,
               class_defaults=dict(num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208))

#: Multi-head latent attention (``vramplan.arch.mixers`` ``mla``) with DeepSeek's MoE: fp32 group-limited
#: sigmoid router, ungated shared experts, leading dense layers. peft 0.21 maps these model_types to the
#: ``qwen2_moe`` conversion (transformers ``conversion_mapping._MODEL_TO_CONVERSION_PATTERN``), so its
#: ``_MOE_TARGET_MODULE_MAPPING`` entry applies: ``gate`` -> the router, gate/up/down -> the fused experts.
_DEEPSEEK = dict(mixer="mla", moe=MOE_DEEPSEEK, shared_experts_key="n_shared_experts", router_fp32=True,
                 head_dim_key="qk_rope_head_dim",
                 expert_lora_targets={"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up",
                                      "down_proj": "down"})

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
    Family("deepseek_v3", "models/deepseek_v3/modeling_deepseek_v3.py", **_DEEPSEEK,
           class_defaults=dict(first_k_dense_replace=3, n_shared_experts=1)),
    # Glm4MoeLiteConfig reads no first_k_dense_replace: without mlp_layer_types, layer 0 alone is dense
    Family("glm4_moe_lite", "models/glm4_moe_lite/modeling_glm4_moe_lite.py", **_DEEPSEEK,
           dense_prefix_key=None, dense_prefix_default=1, class_defaults=dict(n_shared_experts=1)),
    # GLM-5: latent attention + DeepSeek sparse attention's indexer on its "full" layers
    Family("glm_moe_dsa", "models/glm_moe_dsa/modeling_glm_moe_dsa.py", **dict(_DEEPSEEK, mixer="dsa"),
           mixer_rule="indexer_types", dsa_mask=True,
           class_defaults=dict(first_k_dense_replace=3, n_shared_experts=1)),
    # Kimi Linear: Kimi Delta Attention layers and NoPE latent attention, DeepSeek's MoE under Kimi's key names;
    # its own weight conversion (not qwen2_moe's): peft adapts no expert parameter
    Family("kimi_linear", "models/kimi_linear/modeling_kimi_linear.py",
           **dict(_DEEPSEEK, expert_lora_targets={}, shared_experts_key="num_shared_experts"),
           mixer_rule="kda_layers", mla_rope=False,
           experts_key="num_experts", experts_per_token_key="num_experts_per_token",
           class_defaults=dict(first_k_dense_replace=1, num_shared_experts=1, num_experts=256,
                               num_experts_per_token=8, moe_intermediate_size=1024, qk_rope_head_dim=64,
                               qk_nope_head_dim=128, v_head_dim=128, kv_lora_rank=512)),
)}

#: model_types read as another family: the config's own model_type -> the family's.
ALIASES: dict[str, str] = {
    "gemma3": "gemma3_text",  # Gemma 3 multimodal configs: the text part (``text_config``)
    # Kimi-K2's config.json names a remote-code ``kimi_k2`` type that transformers 5.24 does not know; its
    # ``architectures`` is DeepseekV3ForCausalLM, whose shapes it has: priced (and traced) as deepseek_v3
    "kimi_k2": "deepseek_v3",
}

#: Known model_types deliberately not modelled yet, with the reason shown to users.
UNSUPPORTED: dict[str, str] = {
    "qwen3_next": "hybrid linear attention (Gated DeltaNet) is not modelled yet",
    "jamba": "hybrid Mamba/attention layers are not modelled yet",
    "falcon_h1": "hybrid Mamba/attention layers are not modelled yet",
    "mamba": "state-space models are not modelled",
    "mamba2": "state-space models are not modelled",
    "rwkv": "RWKV is not modelled",
    "deepseek_v2": "multi-head latent attention is not modelled yet",
    "lfm2": "hybrid convolution/attention layers are not modelled yet",
    "gpt_oss": "gpt-oss MXFP4 experts are not modelled yet",
}


def family(model_type: str) -> Family:
    """The record of ``model_type`` (after ``ALIASES``); KeyError when unknown."""
    return FAMILIES[ALIASES.get(model_type, model_type)]
