"""Model families as data: every per-``model_type`` fact vramplan uses, in one ``Family`` record each.

``Arch.from_config`` reads a family's layout (biases, norms, fused projections, MoE layout, class
defaults); the analytic engine reads its memory traits (norm dtype, rotary buffers, embedding
scaling, sliding-window rule, which fused expert parameters peft adapts) through ``Arch.family`` and
never compares ``model_type`` strings itself (tests/theirs/test_families.py pins that).

Each record cites the transformers 5.24 file it mirrors. Adding a family (docs/adding-a-model.md):
1. one ``Family(...)`` entry in ``FAMILIES`` with its source file;
2. a registry file ``vramplan/arch/registry/<family>.json``, each entry citing its config.json;
3. one row (``SHRUNK`` and ``FULL``) of tests/families/test_family_records.py: parameter counts on the
   meta device, 4-bit bytes against bitsandbytes, analytic vs trace within 1 %. A new kind of layer
   (not a new value of an existing trait) needs its terms once: a token mixer in
   ``vramplan.arch.mixers`` and ``vramplan.analytic.mixers``.
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
MOE_FIRST_K_DENSE = "first_k_dense"
"""GLM-4.5 (``Glm4MoeDecoderLayer.__init__``: ``layer_idx >= config.first_k_dense_replace``): layers from
``first_k_dense_replace`` on sparse, ``n_routed_experts`` experts of width ``moe_intermediate_size`` and
always-on shared experts of width ``moe_intermediate_size * n_shared_experts`` (``Glm4MoeMoE``)."""
MOE_INTERLEAVED = "interleaved"
"""Llama 4 (``Llama4TextConfig.__post_init__``): the layers in ``moe_layers``, by default every
``interleave_moe_layer_step``-th (``range(step - 1, L, step)``); ``num_local_experts`` experts of width
``intermediate_size`` and one shared expert of that width (``Llama4TextMoe``); dense layers are
``intermediate_size_mlp`` wide (``Family.dense_width_key``)."""

#: How a family's router scores the experts (``Family.router``; ``analytic.activations._router_saved``).
ROUTER_SOFTMAX = "softmax"
"""Mixtral / Qwen: ``softmax(logits, dtype=float32)`` then top-k."""
ROUTER_SIGMOID = "sigmoid"
"""MiniMax-M2 (``MiniMaxM2TopKRouter``): ``sigmoid(logits.float())``, top-k of the scores plus the
``e_score_correction_bias`` buffer, the top-k scores renormalised."""
ROUTER_SIGMOID_GROUPED = "sigmoid_grouped"
"""GLM-4.5 (``Glm4MoeTopkRouter``): fp32 ``F.linear``, sigmoid, group-limited top-k (``n_group`` groups,
the best ``topk_group`` kept by their top-2 sum, the rest masked) of the bias-corrected scores."""
ROUTER_TOPK_SIGMOID = "topk_sigmoid"
"""Llama 4 (``Llama4Router``, an ``nn.Linear``): top-k of the logits, scattered into a -inf row, then
``sigmoid(scores.float())``: a score per (token, expert), zero off the top-k."""

#: How a family's routed experts run (``Family.experts``).
EXPERTS_GROUPED = "grouped"
"""transformers 5 ``@use_experts_implementation`` (``integrations/moe.py``): each token through its
top-k experts only (``grouped_mm``)."""
EXPERTS_DENSE_BMM = "dense_bmm"
"""Llama 4 (``Llama4TextExperts.forward``): every token through every expert, its input scaled by
the router score (zero off the top-k), two ``torch.bmm`` over the (E, T, ·) stack."""

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
MOE_PATTERN = "pattern"
"""Nemotron-H: the layers whose block (``Family.block_rule``) is ``moe``; ``n_routed_experts`` experts
of width ``moe_intermediate_size``, one shared expert of ``moe_shared_expert_intermediate_size``."""
SLIDE_CHUNKED = "chunked"
"""Llama 4: the chunked-attention layers (``llama4_chunked_layers``), local attention within
``attention_chunk_size`` tokens (``Family.window_key``): sdpa's mask is built (not skipped) once the
sequence reaches the chunk, as for a sliding window (``masking_utils.create_chunked_causal_mask``)."""


@dataclass(frozen=True)
class Family:
    """What vramplan knows about one ``model_type``."""

    model_type: str
    source: str
    """The transformers 5.24 modeling file the record mirrors."""
    record: bool = True
    """False for the stand-in of a ``model_type`` with no record (``generic``): only the trace, which
    runs transformers' own modeling code, can price it."""
    qkv_bias: bool = False
    """q/k/v carry a bias whatever ``attention_bias`` says (the Qwen2 family hard-codes it)."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k (Qwen3, Gemma 3)."""
    o_proj_bias: bool = True
    """o_proj carries ``attention_bias`` too (False: GLM-4.5 builds it with ``bias=False``)."""
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
    shared_expert_module: str = "shared_expert"
    """The shared expert's module name inside the MoE block (``shared_experts`` in GLM-4.5); its
    linears are ``<module>.gate_proj`` / ``up_proj`` / ``down_proj``."""
    shared_expert_gated: bool = True
    """The shared expert's output is scaled by ``sigmoid(shared_expert_gate(x))`` (Qwen2-MoE); False:
    added as is (GLM-4.5 ``Glm4MoeMoE``, Llama 4 ``Llama4TextMoe``)."""
    dense_width_key: str = "intermediate_size"
    """config.json key of a dense (non-MoE) layer's MLP width (Llama 4: ``intermediate_size_mlp``)."""
    router: str = ROUTER_SOFTMAX
    """How the router scores the experts (``ROUTER_*``)."""
    router_fp32: bool = False
    """The router weight is kept in fp32 whatever the load dtype (``_keep_in_fp32_modules_strict``:
    GLM-4.5 ``["e_score_correction_bias", "gate.weight"]``, Nemotron-H's ``NemotronHTopkRouter``)."""
    router_linear: bool = False
    """The router is an ``nn.Linear`` subclass (``Llama4Router``): bitsandbytes skips it
    (``replace_with_bnb_linear`` replaces ``type(module) is nn.Linear`` only), peft's ``all-linear``
    reaches it (``isinstance``)."""
    score_bias: str | None = None
    """Each MoE layer's router ``e_score_correction_bias`` buffer (E values): ``fp32`` (GLM-4.5,
    Nemotron-H: kept in fp32), ``load`` (MiniMax-M2, the load dtype) or None."""
    experts: str = EXPERTS_GROUPED
    """How the routed experts run (``EXPERTS_*``)."""
    qk_norm_key: str | None = None
    """config.json key switching the q/k norm on (GLM-4.5 ``use_qk_norm``, default False), overriding
    ``qk_norm`` (which stays the config class's default)."""
    qk_norm_full: bool = False
    """The q/k RMSNorm spans the whole projection (width heads·head_dim, one rsqrt per token) instead of
    one head (OLMo 2 ``Olmo2RMSNorm(num_attention_heads * head_dim)`` on q_proj's output; MiniMax-M2's
    ``RMSNorm(heads * head_dim)`` before the head split)."""
    shared_experts_key: str | None = None
    """config.json key counting always-on, ungated shared experts of width ``moe_intermediate_size``,
    built as one MLP ``shared_experts`` of width count · ``moe_intermediate_size`` (DeepSeek-V3's
    ``n_shared_experts``: ``DeepseekV3MoE.__init__``); None: none, or Qwen2-MoE's gated one."""
    dense_prefix_key: str | None = "first_k_dense_replace"
    """``MOE_DEEPSEEK``: the config.json key of how many leading layers keep a dense MLP when it gives no
    ``mlp_layer_types`` (its class default in ``class_defaults``); None: the config class reads no such key
    and keeps ``dense_prefix_default`` leading dense layers."""
    dense_prefix_default: int = 0
    """``MOE_DEEPSEEK``: the leading dense layers the config class builds when config.json names none and
    the key is no class attribute (Kimi Linear's ``kwargs.get("first_k_dense_replace", 1)``); with
    ``dense_prefix_key`` None, always."""
    dsa_mask: bool = False
    """The model always builds the causal mask (``allow_is_causal_skip=False``, the indexer reads it) and
    each latent-attention layer hands sdpa its own top-k-restricted boolean mask
    (``GlmMoeDsaAttention.forward``): sdpa saves the kernel's additive copy of it per layer."""
    experts_key: str = "n_routed_experts"
    """``MOE_DEEPSEEK``: config.json key of the routed expert count (Kimi Linear's ``num_experts``)."""
    experts_per_token_key: str = "num_experts_per_tok"
    """``MOE_DEEPSEEK``: config.json key of the experts each token is routed to (``num_experts_per_token``)."""
    head_dim_key: str = "head_dim"
    """config.json key of the rotary head dim (MLA: ``qk_rope_head_dim``, which the config class copies
    into ``head_dim``)."""
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
    window_key: str = "sliding_window"
    """config.json key of the local-attention window (Llama 4: ``attention_chunk_size``)."""
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
    block_rule: str | None = None
    """How config.json lists each decoder layer's one block (``BLOCK_RULES``), where a layer is a
    single mixer *or* feed-forward block (Nemotron-H); the list's length is the depth. None: every
    layer is a mixer followed by a feed-forward block and ``num_hidden_layers`` is the depth."""
    mlp_gated: bool = True
    """The dense MLP, the shared expert and the routed experts are gated (``act(gate) * up``); False:
    ``down(act(up(x)))`` with no gate projection (Nemotron-H's relu2 MLP)."""
    rotary: bool = True
    """Attention applies rotary embeddings (a rotary module with its inv_freq buffers); False: none
    (Nemotron-H; Kimi Linear's NoPE latent attention, whose q is a view of its projection)."""
    lora_refused: tuple[str, ...] = ()
    """Linear leaf names peft 0.21 refuses to adapt on this model_type (``all-linear`` included):
    ``tuners_utils._check_lora_target_modules_mamba`` raises for Mamba models' ``out_proj``."""
    layout: str | None = None
    """Modules outside the decoder layers and the token embedding that the family adds, and buffers
    beyond the rotary ones (``vramplan.arch.layouts.LAYOUTS``: Gemma 4's per-layer input embeddings
    and their projection); None: none."""
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

    post_norms: bool = False
    """Norms on the branch outputs only: no input or pre-MLP norm; ``post_attention_layernorm`` on the
    attention output and ``post_feedforward_layernorm`` on the MLP output before each residual add
    (``Olmo2DecoderLayer.forward``). The two norms of ``norms_per_layer``."""
    router_topk_first: bool = False
    """The router takes the top-k of its raw logits and softmaxes those k (``GraniteMoeTopKRouter``): it
    saves no E-wide softmax output, unlike Mixtral's softmax-then-top-k."""

    moe_recompute_moment: bool = False
    """Price the end of a MoE layer's recomputed block under gradient checkpointing with frozen experts
    (``activations.moe_recompute_end_bytes``) as a moment of its backward. Off for the MoE families
    priced before issue 15, whose estimates stay as calibrated (the same moment exists there: their
    shrunk rows with LoRA on attention only are within 1 % of the trace without it)."""

    moe_output_moment: bool = False
    """Price the routed experts' output backward as moments of a MoE layer's backward
    (``activations.moe_output_backward``): DeepSeek's MoE block adds its shared expert after the routed
    experts (``DeepseekV3MoE.forward``), so the shared expert's backward runs first (no expert gradient
    exists yet) and is freed when the routed experts' output gradients are made. Off for the MoE families
    priced before, whose estimates stay as calibrated."""

    embedding_multiplier: bool = False
    """The embedding output is scaled outside the embedding module, a new tensor (Granite:
    ``inputs_embeds * self.embedding_multiplier``; ``weights.embedding_leaf_factor``)."""

    fused_gate_up: bool = False
    """The MLP's gate and up projections are one ``gate_up_proj`` while q/k/v stay separate (GLM:
    ``GlmMLP``); ``fused`` is Phi-3's layout, which fuses both."""
    o_proj_bias_key: str | None = None
    """A config.json field of its own for o_proj's bias, in place of ``attention_bias`` (Seed-OSS:
    ``attention_out_bias``)."""
    attention_dropout_key: str | None = None
    """A config field of attention-probability dropout that is on by default in training (Seed-OSS:
    ``attention_dropout`` = 0.1, passed to the attention kernel as ``dropout_p``); None: no such dropout."""
    residual_dropout_key: str | None = None
    """A config field of dropout on the attention and MLP outputs before each residual add (Seed-OSS:
    ``residual_dropout``, ``SeedOssAttention`` / ``SeedOssMLP``); None: none."""
    sdpa_refusal: str | None = None
    """Why transformers refuses sdpa for the family (its ``_supports_sdpa = False``), shown in the note
    when the default request is priced as eager; None: sdpa runs."""
    attention_sinks: bool = False
    """A learned logit per query head joins every softmax (``sinks``, nh parameters per attention
    layer): eager attention concatenates it to the scores, softmaxes in the scores' dtype and drops it
    (gpt-oss ``eager_attention_forward``)."""
    expert_bias: bool = False
    """The fused experts carry biases: ``gate_up_proj_bias`` (E × 2M) and ``down_proj_bias`` (E × H)
    per MoE layer, added in place after each grouped matmul (``integrations/moe.py::_grouped_linear``)."""
    router_bias: bool = False
    """The router is a linear with a bias (E per MoE layer), and its softmax runs over the k selected
    logits only, in their dtype (``GptOssTopKRouter.forward``: top-k, then softmax)."""
    clamped_swiglu: bool = False
    """The experts' gate is gpt-oss's clamped SwiGLU over interleaved gate/up columns:
    ``(clamp(up) + 1) * clamp(gate) * sigmoid(alpha * clamp(gate))`` (``GptOssExperts._apply_gate``)."""

    sliding_pattern_default: int = 6
    """``SLIDE_PATTERN``'s period when config.json gives no ``sliding_window_pattern`` (Gemma 3: 6; Cohere 2:
    4, the ``Cohere2Config.__post_init__`` default it derives ``layer_types`` from)."""
    layer_norm: bool = False
    """Its norms are mean-subtracting LayerNorms without bias (``Cohere2LayerNorm``): in fp32, ``x - mean``
    twice (one saved by ``pow``, one by the product with ``rsqrt``) where an RMSNorm saves x once
    (``activations.layer_norm_saved``)."""
    parallel_block: bool = False
    """Attention and MLP read the same normalized input and both add to the residual
    (``Cohere2DecoderLayer``: ``residual + attn(h) + mlp(h)``, one norm per layer)."""
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
            p = cfg.get("sliding_window_pattern", self.sliding_pattern_default) or self.sliding_pattern_default
            return tuple(i for i in range(num_layers) if (i + 1) % p)
        if rule == SLIDE_EVEN:
            return tuple(range(0, num_layers, 2))
        if rule == SLIDE_ALL and cfg.get("sliding_window"):
            return tuple(range(num_layers))
        if rule == SLIDE_FROM_MAX_WINDOW and cfg.get("use_sliding_window") and cfg.get("sliding_window"):
            return tuple(range(cfg.get("max_window_layers", 0) or 0, num_layers))
        if rule == SLIDE_CHUNKED:
            return llama4_chunked_layers(cfg, num_layers)
        return ()

    def attention_dropout(self, cfg: Mapping[str, Any]) -> float:
        """The attention-probability dropout training runs with (``attention_dropout_key``), 0.0 if none."""
        return self._rate(cfg, self.attention_dropout_key)

    def residual_dropout(self, cfg: Mapping[str, Any]) -> float:
        """The residual-branch dropout training runs with (``residual_dropout_key``), 0.0 if none."""
        return self._rate(cfg, self.residual_dropout_key)

    def _rate(self, cfg: Mapping[str, Any], key: str | None) -> float:
        if key is None:
            return 0.0
        value = cfg.get(key)
        value = self.class_defaults.get(key, 0.0) if value is None else value
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
    def window(self, cfg: Mapping[str, Any]) -> int:
        """The local-attention window of the sliding (or chunked) layers, 0 when none."""
        value = cfg.get(self.window_key, self.class_defaults.get(self.window_key))
        return int(value or 0)

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
        if not self.rotary:
            return 0
        return len(self.attention_layer_types(cfg, num_layers)) if self.rotary_per_layer_type else 1

    def blocks(self, cfg: Mapping[str, Any]) -> tuple[str, ...] | None:
        """Each decoder layer's block kind by ``block_rule`` (None: not a one-block-per-layer family)."""
        return BLOCK_RULES[self.block_rule](cfg) if self.block_rule is not None else None


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
#: ``Family.block_rule`` name -> config -> each decoder layer's block kind.
BLOCK_RULES: dict[str, Callable[[Mapping[str, Any]], tuple[str, ...]]] = {}


# ------------------------------------------------------------------------------ nemotron_h
#: ``NemotronHConfig._pattern_to_list`` (configuration_nemotron_h.py): pattern character -> block.
NEMOTRON_H_BLOCKS = {"M": "linear_attention", "E": "moe", "*": "full_attention", "-": "mlp"}
#: Block -> the token-mixer kind of its layer (``identity``: the layer is a feed-forward block alone).
NEMOTRON_H_MIXERS = {"linear_attention": "mamba2", "full_attention": "attention", "mlp": "identity", "moe": "identity"}


def nemotron_h_blocks(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """``NemotronHConfig.__post_init__``: ``layers_block_type`` (alias ``layer_types``) when given, else
    ``hybrid_override_pattern`` read character by character; its length is the depth (the config class
    ignores ``num_hidden_layers``). Default ``["linear_attention", "moe", "full_attention", "mlp"]``."""
    types = cfg.get("layers_block_type") or cfg.get("layer_types")
    if isinstance(types, list) and types:  # legacy names as ``configuration_utils.remap_legacy_layer_types``
        return tuple({"mamba": "linear_attention", "attention": "full_attention"}.get(t, t) for t in types)
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        return tuple(NEMOTRON_H_BLOCKS.get(ch, ch) for ch in pattern)
    return ("linear_attention", "moe", "full_attention", "mlp")


BLOCK_RULES["nemotron_h"] = nemotron_h_blocks
MIXER_RULES["nemotron_h"] = lambda cfg, n: tuple(NEMOTRON_H_MIXERS.get(b, b) for b in nemotron_h_blocks(cfg)[:n])
FFN_RULES["nemotron_h"] = lambda cfg, n: tuple(i for i, b in enumerate(nemotron_h_blocks(cfg)[:n])
                                               if b in ("linear_attention", "full_attention"))


def llama4_no_rope_layers(cfg: Mapping[str, Any], num_layers: int) -> list[int]:
    """Llama 4's ``no_rope_layers`` (1: the layer applies RoPE), as ``Llama4TextConfig.__post_init__``
    fills it when config.json gives none: ``int((i + 1) % no_rope_layer_interval != 0)`` (interval 4)."""
    given = cfg.get("no_rope_layers")
    if isinstance(given, list) and given:
        return [int(bool(v)) for v in given[:num_layers]]
    interval = cfg.get("no_rope_layer_interval", 4) or 4
    return [int((i + 1) % interval != 0) for i in range(num_layers)]


def llama4_chunked_layers(cfg: Mapping[str, Any], num_layers: int) -> tuple[int, ...]:
    """Llama 4's chunked-attention layers: config.json ``layer_types`` when given, else (as
    ``Llama4TextConfig.__post_init__``) the RoPE layers when ``attention_chunk_size`` is set."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        return tuple(i for i, t in enumerate(types[:num_layers]) if t == "chunked_attention")
    if "attention_chunk_size" in cfg and cfg["attention_chunk_size"] is None:
        return ()  # (the config class's default is 8192)
    return tuple(i for i, r in enumerate(llama4_no_rope_layers(cfg, num_layers)) if r)


def _llama4_mixers(cfg: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    """Llama 4: ``chunked_attention`` (RoPE, the L2 q/k norm when ``use_qk_norm``, local chunks) on
    its chunked layers, plain ``attention`` (NoPE, global) on the others (``Llama4TextAttention``)."""
    chunked = set(llama4_chunked_layers(cfg, num_layers))
    return tuple("chunked_attention" if i in chunked else "attention" for i in range(num_layers))


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

#: Multi-head latent attention (``vramplan.arch.mixers`` ``mla``) with DeepSeek's MoE: fp32 group-limited
#: sigmoid router, ungated shared experts, leading dense layers. peft 0.21 maps these model_types to the
#: ``qwen2_moe`` conversion (transformers ``conversion_mapping._MODEL_TO_CONVERSION_PATTERN``), so its
#: ``_MOE_TARGET_MODULE_MAPPING`` entry applies: ``gate`` -> the router, gate/up/down -> the fused experts.
_DEEPSEEK = dict(mixer="mla", moe=MOE_DEEPSEEK, shared_experts_key="n_shared_experts", router_fp32=True,
                 moe_output_moment=True,
                 score_bias="fp32", router=ROUTER_SIGMOID_GROUPED, shared_expert_module="shared_experts",
                 shared_expert_gated=False, head_dim_key="qk_rope_head_dim",
                 expert_lora_targets={"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up",
                                      "down_proj": "down"})
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
_GEMMA4 = dict(qk_norm=True, norms_per_layer=4, tie_default=True, final_softcapping=True, norm_keeps_input_dtype=True,
               rotary_per_layer_type=True, scaled_embedding=True, sliding_rule=SLIDE_PATTERN, mixer_rule="gemma4",
               ffn_rule="in_mixer", layout="per_layer_inputs", class_defaults=_GEMMA4_DEFAULTS)

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
    # NemotronHBlock: one pre-norm, one block (Mamba-2 mixer, attention without RoPE, relu2 MLP or
    # sigmoid-routed MoE with a shared expert), one residual add
    Family("nemotron_h", "models/nemotron_h/modeling_nemotron_h.py", norms_per_layer=1, moe=MOE_PATTERN,
           shared_expert=True, mixer_rule="nemotron_h", ffn_rule="nemotron_h", block_rule="nemotron_h",
           mlp_gated=False, rotary=False, router_fp32=True, score_bias="fp32", lora_refused=("out_proj",),
           shared_expert_module="shared_experts",
           class_defaults=dict(vocab_size=131072, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                               head_dim=128, intermediate_size=21504, mlp_hidden_act="relu2", ssm_state_size=128,
                               mamba_num_heads=128, mamba_head_dim=64, n_groups=8, conv_kernel=4,
                               use_conv_bias=True, use_bias=False, chunk_size=128, n_routed_experts=8,
                               moe_intermediate_size=7688, moe_shared_expert_intermediate_size=7688,
                               num_experts_per_tok=2, tie_word_embeddings=False, mlp_bias=False)),
    # issue 15, dense and simple MoE families
    Family("olmo2", "models/olmo2/modeling_olmo2.py", qk_norm=True, qk_norm_full=True, post_norms=True,
           norm_keeps_input_dtype=True),
    Family("granite", "models/granite/modeling_granite.py", embedding_multiplier=True),
    Family("cohere2", "models/cohere2/modeling_cohere2.py", norms_per_layer=1, tie_default=True,
           norm_keeps_input_dtype=True, layer_norm=True, parallel_block=True, sliding_rule=SLIDE_PATTERN,
           sliding_pattern_default=4),
    Family("glm", "models/glm/modeling_glm.py", fused_gate_up=True, o_proj_bias=False,
           class_defaults=dict(attention_bias=True, head_dim=128, num_key_value_heads=2)),
    Family("seed_oss", "models/seed_oss/modeling_seed_oss.py", o_proj_bias_key="attention_out_bias",
           attention_dropout_key="attention_dropout", residual_dropout_key="residual_dropout",
           class_defaults=dict(attention_bias=True, attention_out_bias=False, head_dim=128,
                               attention_dropout=0.1, residual_dropout=0.1)),
    Family("granitemoe", "models/granitemoe/modeling_granitemoe.py", moe=MOE_MIXTRAL, router_topk_first=True,
           moe_recompute_moment=True, embedding_multiplier=True),
    # gpt-oss: every layer MoE (num_local_experts of width intermediate_size: the Mixtral keys), q/k/v/o biases,
    # norms returning their input's dtype (``(weight * x).to(input_dtype)``), sinks, biased experts and router
    Family("gpt_oss", "models/gpt_oss/modeling_gpt_oss.py", moe=MOE_MIXTRAL, norm_keeps_input_dtype=True,
           sdpa_refusal="learned attention sinks", attention_sinks=True, expert_bias=True, router_bias=True,
           clamped_swiglu=True, sliding_rule=SLIDE_EVEN,  # GptOssConfig: layer i slides when (i + 1) % 2
           class_defaults=dict(attention_bias=True, head_dim=64, num_key_value_heads=8, num_attention_heads=64)),
    # peft 0.21 remaps v4 expert names by transformers' ``conversion_mapping._MODEL_TO_CONVERSION_PATTERN``:
    # glm4_moe -> qwen2_moe's table, minimax_m2 -> mixtral's; llama4 has none (its experts stay unadapted)
    Family("glm4_moe", "models/glm4_moe/modeling_glm4_moe.py", moe=MOE_FIRST_K_DENSE, shared_expert=True,
           shared_expert_module="shared_experts", shared_expert_gated=False, router=ROUTER_SIGMOID_GROUPED,
           router_fp32=True, score_bias="fp32", qk_norm_key="use_qk_norm", o_proj_bias=False,
           expert_lora_targets={"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up",
                                "down_proj": "down"},
           class_defaults=dict(first_k_dense_replace=1, n_shared_experts=1, n_group=1, topk_group=1)),
    Family("minimax_m2", "models/minimax_m2/modeling_minimax_m2.py", moe=MOE_MIXTRAL, qk_norm=True,
           qk_norm_full=True, router=ROUTER_SIGMOID, score_bias="load",
           expert_lora_targets={"gate": "router", "w1": "gate_up", "w3": "gate_up", "w2": "down"}),
    # peft 0.21.2's all-linear wraps its router (an nn.Linear subclass) and fails: name the targets
    Family("llama4_text", "models/llama4/modeling_llama4.py", moe=MOE_INTERLEAVED, shared_expert=True,
           shared_expert_gated=False, dense_width_key="intermediate_size_mlp", router=ROUTER_TOPK_SIGMOID,
           router_linear=True, experts=EXPERTS_DENSE_BMM, mixer_rule="llama4", sliding_rule=SLIDE_CHUNKED,
           window_key="attention_chunk_size",
           class_defaults=dict(interleave_moe_layer_step=1, use_qk_norm=True, head_dim=128,
                               attention_chunk_size=8192)),
    Family("deepseek_v3", "models/deepseek_v3/modeling_deepseek_v3.py", **_DEEPSEEK,
           class_defaults=dict(first_k_dense_replace=3, n_shared_experts=1)),
    # Glm4MoeLiteConfig reads no first_k_dense_replace: without mlp_layer_types, layer 0 alone is dense
    Family("glm4_moe_lite", "models/glm4_moe_lite/modeling_glm4_moe_lite.py", **_DEEPSEEK,
           dense_prefix_key=None, dense_prefix_default=1, class_defaults=dict(n_shared_experts=1)),
    # GLM-5: latent attention + DeepSeek sparse attention's indexer on its "full" layers
    Family("glm_moe_dsa", "models/glm_moe_dsa/modeling_glm_moe_dsa.py", **dict(_DEEPSEEK, mixer="dsa"),
           mixer_rule="indexer_types", dsa_mask=True,
           class_defaults=dict(first_k_dense_replace=3, n_shared_experts=1)),
    Family("gemma4_text", "models/gemma4/modeling_gemma4.py", **_GEMMA4),
    # the multimodal checkpoints (Gemma4ForConditionalGeneration, which AutoModelForCausalLM builds for a gemma4
    # config: vision tower, and audio tower where the config has one, beside the decoder in text_config); a
    # gemma4 config without a vision_config reads as gemma4_text (ALIASES)
    Family("gemma4", "models/gemma4/modeling_gemma4.py (Gemma4Model: Gemma4TextModel under text_config)",
           multimodal=True, **_GEMMA4),
    # multimodal checkpoints: the text decoder's record (the tower is vramplan.arch.vision's)
    Family("qwen2_5_vl", "models/qwen2_5_vl/modeling_qwen2_5_vl.py (Qwen2_5_VLTextModel: Qwen2 layers)",
           qkv_bias=True, sliding_rule=SLIDE_FROM_MAX_WINDOW, multimodal=True, tie_reads_text=True),
    Family("qwen3_vl", "models/qwen3_vl/modeling_qwen3_vl.py (Qwen3VLTextModel: Qwen3 layers)", qk_norm=True,
           multimodal=True),
    Family("qwen3_vl_moe", "models/qwen3_vl_moe/modeling_qwen3_vl_moe.py (Qwen3VLMoeTextModel: Qwen3-MoE layers)",
           qk_norm=True, moe=MOE_QWEN, multimodal=True),  # peft 0.21 maps no v4 expert names for it
    Family("mistral3", "models/mistral3/modeling_mistral3.py (Mistral3Model: a MistralModel under text_config)",
           sliding_rule=SLIDE_ALL, multimodal=True, tie_default=True),
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
    # Kimi Linear: Kimi Delta Attention layers and NoPE latent attention, DeepSeek's MoE under Kimi's key names;
    # its own weight conversion (not qwen2_moe's): peft adapts no expert parameter
    Family("kimi_linear", "models/kimi_linear/modeling_kimi_linear.py",
           **dict(_DEEPSEEK, expert_lora_targets={}, shared_experts_key="num_shared_experts"),
           mixer_rule="kda_layers", rotary=False,
           experts_key="num_experts", experts_per_token_key="num_experts_per_token",
           dense_prefix_default=1,
           class_defaults=dict(num_shared_experts=1, num_experts=256, num_experts_per_token=8,
                               moe_intermediate_size=1024, qk_rope_head_dim=64, qk_nope_head_dim=128,
                               v_head_dim=128, kv_lora_rank=512)),
)}

#: model_types read as another family: the config's own model_type -> the family's.
ALIASES: dict[str, str] = {
    "gemma3": "gemma3_text",  # Gemma 3 multimodal configs: the text part (``text_config``)
    "llama4": "llama4_text",  # Llama 4 multimodal configs: the text decoder (``text_config``)
    # Kimi-K2's config.json names a remote-code ``kimi_k2`` type that transformers 5.24 does not know; its
    # ``architectures`` is DeepseekV3ForCausalLM, whose shapes it has: priced (and traced) as deepseek_v3
    "kimi_k2": "deepseek_v3",
    "gemma4": "gemma4_text",  # a Gemma 4 config with no vision_config: the text part (``text_config``)
    "qwen3_5": "qwen3_5_text",  # Qwen3.5 multimodal configs: the text part
    "qwen3_5_moe": "qwen3_5_moe_text",
}

#: Known model_types deliberately not modelled yet, with the reason shown to users.
UNSUPPORTED: dict[str, str] = {
    "jamba": "its Mamba-1 selective-scan layers have no token-mixer kind",
    "falcon_h1": "its parallel Mamba-2 + attention layers have no record (the mamba2 kind exists)",
    "mamba": "Mamba-1's selective scan has no token-mixer kind",
    "mamba2": "a pure Mamba-2 model has no record (the mamba2 kind exists)",
    "rwkv": "RWKV is not modelled",
    "deepseek_v2": "DeepSeek-V2's MoE layout has no record (latent attention, the mla kind, exists)",
    "lfm2": "its short-convolution layers have no token-mixer kind",
}


def generic(model_type: str) -> Family:
    """The stand-in record of a ``model_type`` vramplan has no record of (every trait at its default)."""
    return Family(model_type, source="", record=False)


def no_record_reason(arch: Any) -> str:
    """Why the analytic engine cannot price ``arch`` (an ``Arch`` of a type with no record), and what
    prices it now (one sentence)."""
    model_type = arch.model_type
    why = UNSUPPORTED.get(model_type, "no family record")
    return (f"model_type '{model_type}' is not priced by the analytic engine ({why}; families: "
            f"{', '.join(sorted(FAMILIES))}): `--method trace` prices it exactly with transformers' own modeling "
            "code, and docs/adding-a-model.md says how to add its record")
MIXER_RULES["llama4"] = _llama4_mixers
LLAMA4_TEXT = FAMILIES["llama4_text"]





def family(model_type: str) -> Family:
    """The record of ``model_type`` (after ``ALIASES``); KeyError when unknown."""
    return FAMILIES[ALIASES.get(model_type, model_type)]
