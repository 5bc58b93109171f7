"""The architecture of a decoder-only LLM, read from its Hugging Face ``config.json``.

``Arch`` is pure data with exact parameter counts; it imports no torch. Its module list mirrors the
modules transformers 5.x instantiates for each supported ``model_type``, so that "which modules does
bitsandbytes quantize" and "which modules does peft's ``all-linear`` reach" are answered from the same
list the frameworks walk. The per-family facts it reads (biases, norms, fused projections, MoE layout,
class defaults) are the ``Family`` records of ``vramplan.arch.families``, each citing its transformers
file; MoE experts are fused 3-D parameters in transformers 5.x.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from vramplan.arch.families import (ALIASES, FAMILIES, MOE_DEEPSEEK, MOE_FIRST_K_DENSE, MOE_INTERLEAVED, MOE_MIXTRAL,
                                    MOE_PATTERN, Family, generic)
from vramplan.arch.mixers import ATTENTION, MIXERS, is_mixer_group
from vramplan.arch.vision import Vision, vision_of
from vramplan.errors import VramplanError


class ArchError(VramplanError):
    """A config.json that vramplan cannot turn into an architecture (missing field, unsupported type)."""


@dataclass(frozen=True)
class Linear:
    """One ``nn.Linear`` kind of the model (e.g. every layer's ``q_proj``)."""

    name: str
    """Module leaf name as transformers names it (``q_proj``, ``gate_up_proj``, ``lm_head``...)."""
    group: str
    """``attention``, ``mlp``, ``shared_expert`` or ``lm_head``."""
    in_features: int
    out_features: int
    bias: bool
    count: int
    """How many instances the whole model holds (usually one per decoder layer)."""
    quantized: bool = True
    """bitsandbytes replaces it (False: a module transformers keeps in fp32, ``_keep_in_fp32_modules``,
    which ``from_pretrained`` leaves out of the conversion and loads in fp32 under a quantization config)."""
    no_grad: bool = False
    """Its forward runs under ``torch.no_grad`` (DeepSeek sparse attention's indexer): LoRA on it saves
    nothing and gets no gradient, so the optimizer keeps no state for it."""

    @property
    def weight_params(self) -> int:
        """Elements of one instance's weight."""
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        """Elements of all instances, weights and biases."""
        return self.count * (self.weight_params + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class LayerClass:
    """Decoder layers that share one (mixer, feed-forward) signature, so save the same tensors."""

    mixer: str
    ffn: str
    layers: tuple[int, ...]
    """Their indices, ascending."""

    @property
    def count(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class ExpertTensor:
    """A fused MoE expert parameter of shape ``(num_experts, out, in)`` (transformers 5.x).

    It is an ``nn.Parameter``, not an ``nn.Linear``: bitsandbytes' linear replacement does not reach
    it, so it stays in the load dtype (and ``prepare_model_for_kbit_training`` upcasts it to fp32).
    peft 0.21 does adapt it for qwen3_moe and mixtral, by remapping the v4 expert names onto the
    fused parameter (see ``vramplan.analytic.adapters.expert_lora_tensors``).
    """

    name: str
    """``gate_up_proj`` (out = 2 * moe_intermediate) or ``down_proj`` (out = hidden)."""
    num_experts: int
    out_features: int
    in_features: int
    count: int
    """Number of MoE layers."""

    @property
    def params(self) -> int:
        return self.count * self.num_experts * self.out_features * self.in_features


def _get(cfg: Mapping[str, Any], key: str, model_type: str, default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    defaults = FAMILIES[model_type].class_defaults if model_type in FAMILIES else {}
    if key in defaults:
        return defaults[key]
    if default is not ...:
        return default
    raise ArchError(f"config.json is missing required field '{key}' (model_type '{model_type}')")


#: Sizes beyond which a config describes no trainable model (refused before anything is built, so
#: a hostile config cannot make the engines allocate per-layer tables of 10^12 entries).
MAX_SIZE: dict[str, int] = {
    "num_hidden_layers": 10_000, "hidden_size": 1 << 20, "intermediate_size": 1 << 22,
    "moe_intermediate_size": 1 << 22, "shared_expert_intermediate_size": 1 << 22,
    "num_attention_heads": 1 << 14, "num_key_value_heads": 1 << 14, "head_dim": 1 << 16,
    "vocab_size": 1 << 27, "num_experts": 1 << 16, "num_local_experts": 1 << 16,
    "num_experts_per_tok": 1 << 16, "decoder_sparse_step": 10_000, "n_routed_experts": 1 << 16,
    "num_experts_per_token": 1 << 16,
    "qk_rope_head_dim": 1 << 16, "qk_nope_head_dim": 1 << 16, "v_head_dim": 1 << 16, "kv_lora_rank": 1 << 20,
    "q_lora_rank": 1 << 20,
}


def _int(cfg: Mapping[str, Any], key: str, model_type: str, default: Any = ...) -> int:
    value = _get(cfg, key, model_type, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArchError(f"config.json field '{key}' must be a positive integer, got {_show(value)}")
    if value > MAX_SIZE.get(key, value):
        raise ArchError(f"config.json field '{key}' = {value:,} is beyond any real model (at most {MAX_SIZE[key]:,})")
    return value


def _show(value: Any) -> str:
    """A value for an error message, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional(cfg: Mapping[str, Any], key: str, kind: str) -> Any:
    """An optional config field, type-checked: None when absent or null.

    ``kind``: ``int+`` (positive int), ``int0`` (non-negative int), ``num+`` (finite positive number),
    ``frac`` (finite number in (0, 1]), ``ints`` (list of non-negative ints), ``strs`` (list of
    strings), ``dict``, ``bool``."""
    value = cfg.get(key)
    if value is None:
        return None
    ok = {
        "int+": lambda v: _is_int(v) and v > 0,
        "int0": lambda v: _is_int(v) and v >= 0,
        "num+": lambda v: _is_num(v) and v > 0,
        "frac": lambda v: _is_num(v) and 0 < v <= 1,
        "ints": lambda v: isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v),
        "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "dict": lambda v: isinstance(v, Mapping),
        "bool": lambda v: isinstance(v, bool),
    }[kind](value)
    if not ok:
        what = {"int+": "a positive integer", "int0": "a non-negative integer", "num+": "a finite positive number",
                "frac": "a number in (0, 1]", "ints": "a list of non-negative integers",
                "strs": "a list of strings", "dict": "an object", "bool": "true or false"}[kind]
        raise ArchError(f"config.json field '{key}' must be {what}, got {_show(value)}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and v not in (float("inf"), -float("inf"))


#: Optional fields the engines read, with their kind (``_optional``). Checked up front so that a
#: malformed value is one line naming the field, never a traceback deep inside an engine.
OPTIONAL_FIELDS: dict[str, str] = {
    "max_position_embeddings": "int0", "sliding_window": "int+", "sliding_window_pattern": "int+",
    "mlp_only_layers": "ints", "layer_types": "strs", "max_window_layers": "int0",
    "use_sliding_window": "bool", "partial_rotary_factor": "frac", "rope_parameters": "dict",
    "rope_scaling": "dict", "final_logit_softcapping": "num+", "attn_logit_softcapping": "num+",
    "tie_word_embeddings": "bool", "attention_bias": "bool", "mlp_bias": "bool",
}


def _check_optional(cfg: Mapping[str, Any]) -> None:
    for key, kind in OPTIONAL_FIELDS.items():
        _optional(cfg, key, kind)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    _optional(rope, "partial_rotary_factor", "frac")


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer, with exact module shapes. All sizes are element counts."""

    name: str
    """Display name (registry name, hub id or path)."""
    model_type: str
    """config.json ``model_type`` (the text model's, for nested configs)."""
    hidden_size: int
    """Residual width H."""
    intermediate_size: int
    """Dense MLP width I (0 when every layer is MoE and the config gives none)."""
    num_layers: int
    """Decoder layers L."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (GQA when fewer than ``num_heads``)."""
    head_dim: int
    """Per-head width d."""
    vocab_size: int
    """Vocabulary V (rows of the embedding and of lm_head)."""
    tie_embeddings: bool
    """lm_head shares the embedding's weight."""
    qkv_bias: bool
    """q/k/v projections carry a bias."""
    o_bias: bool
    """o_proj carries a bias."""
    mlp_bias: bool
    """MLP projections carry a bias."""
    qk_norm: bool
    """Per-head RMSNorm on q and k (Qwen3, Gemma 3)."""
    norms_per_layer: int
    """RMSNorms per decoder layer, each of width H."""
    fused: bool = False
    """Phi-3 layout: ``qkv_proj`` and ``gate_up_proj``."""
    num_experts: int = 0
    """Routed experts per MoE layer (0 = dense)."""
    experts_per_token: int = 0
    """Top-k routing."""
    moe_intermediate_size: int = 0
    """Width of one routed expert."""
    shared_expert_intermediate_size: int = 0
    """Width of the always-on shared expert (Qwen2-MoE), 0 if none."""
    moe_layers: tuple[int, ...] = ()
    """Indices of the decoder layers whose MLP is a sparse MoE block."""
    max_position_embeddings: int = 0
    """Context length from config.json (informational)."""
    sliding_window: int | None = None
    """Sliding-window size, where the family uses one (informational)."""
    final_logit_softcapping: float | None = None
    """Gemma 2 tanh soft-capping of the logits (adds logits-sized temporaries)."""
    attn_logit_softcapping: float | None = None
    """Gemma 2 soft-capping of attention scores (forces the eager path)."""
    mixers: tuple[str, ...] = ()
    """Per decoder layer, its token-mixer kind (``vramplan.arch.mixers``): ``attention`` (softmax
    attention over q/k/v/o, sliding or not) or another kind a family declares (``Family.mixer_kinds``).
    Empty: every layer is ``attention``."""
    ffn_free: tuple[int, ...] = ()
    """Decoder layers with no feed-forward block (a hybrid's mixer-only layers)."""
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The config dict this was built from (the text part for nested configs)."""
    vision: Vision | None = None
    """The vision tower and projector of a multimodal checkpoint (``vramplan.arch.vision``): its
    ``vision_config`` is of a registered tower kind. None for a text-only model. Its parameters are
    not in ``param_counts`` / ``linears`` (the decoder's); ``all_params`` adds them."""

    def __post_init__(self) -> None:
        for kind in self.mixers:
            if kind != ATTENTION and kind not in MIXERS:
                raise ArchError(f"config.json names a layer kind vramplan does not model ({_show(kind)})")
        if self.num_heads % self.num_kv_heads:
            raise ArchError(
                f"num_attention_heads ({self.num_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.num_experts and not (0 < self.experts_per_token <= self.num_experts):
            raise ArchError("num_experts_per_tok must be between 1 and the number of experts")

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str | None = None) -> "Arch":
        """Build from a config.json dict; nested ``text_config`` is used when present."""
        if not isinstance(config, Mapping):
            raise ArchError("config.json must hold a JSON object")
        cfg: Mapping[str, Any] = config
        outer_type = config.get("model_type")
        multimodal = isinstance(outer_type, str) and outer_type in FAMILIES and FAMILIES[outer_type].multimodal
        if multimodal and outer_type in ALIASES and not isinstance(config.get("vision_config"), Mapping):
            multimodal = False  # Gemma 3: a config with no vision_config prices its text decoder (ALIASES)
        if isinstance(config.get("text_config"), Mapping):
            cfg = dict(config["text_config"])
            if multimodal:  # the text part is priced by the outer model_type's record
                cfg["model_type"] = outer_type
            elif "model_type" not in cfg and config.get("model_type") in ALIASES:
                cfg["model_type"] = ALIASES[config["model_type"]]
            inner = FAMILIES.get(ALIASES.get(cfg.get("model_type"), cfg.get("model_type")))  # type: ignore[arg-type]
            for key in (inner.outer_keys if inner else ()):  # outer fields the text model inherits
                if key not in cfg and key in config:
                    cfg[key] = config[key]
        model_type = cfg.get("model_type")
        if not model_type:
            raise ArchError("config.json is missing required field 'model_type'")
        if not isinstance(model_type, str):
            raise ArchError(f"config.json field 'model_type' must be a string, got {_show(model_type)}")
        if not multimodal:
            model_type = ALIASES.get(model_type, model_type)  # e.g. a flat gemma3 config without text_config
        # a model_type with no record gets the stand-in family: the trace (transformers' own modeling
        # code) prices it; the analytic engine refuses it (``no_record_reason``)
        fam = FAMILIES.get(model_type) or generic(model_type)
        if not fam.record and cfg.get("auto_map"):
            raise ArchError(f"model_type '{model_type}' is a remote-code model (its config.json auto_map names modeling "
                            "code shipped with the checkpoint): vramplan never runs remote code (trust_remote_code), "
                            "so neither engine can price it; a transformers-native port (its own model_type) can be")
        _check_optional(cfg)
        H = _int(cfg, "hidden_size", model_type)
        blocks = fam.blocks(cfg)
        if blocks is not None:  # one block per layer: the block list sets the depth (NemotronHConfig)
            L = len(blocks)
            if L > MAX_SIZE["num_hidden_layers"]:
                raise ArchError(f"config.json lists {L:,} decoder layers: beyond any real model")
        else:
            L = _int(cfg, "num_hidden_layers", model_type)
        nh = _int(cfg, "num_attention_heads", model_type)
        nkv = _int(cfg, "num_key_value_heads", model_type, nh)
        head_dim = _int(cfg, fam.head_dim_key, model_type, H // nh)
        V = _int(cfg, "vocab_size", model_type)
        tie = bool(_get(cfg, "tie_word_embeddings", model_type, fam.tie_default))
        if fam.multimodal:  # transformers 5 ties on the outer config's flag (its class default when absent)
            tie = bool(config.get("tie_word_embeddings", fam.tie_default)) or (fam.tie_reads_text and tie)
        attn_bias = bool(_get(cfg, "attention_bias", model_type, False))
        mlp_bias = bool(_get(cfg, "mlp_bias", model_type, False))

        moe: dict[str, Any] = {}
        if fam.moe:
            moe = _moe_fields(cfg, fam, L)
            if len(moe.get("moe_layers", ())) < L:  # some layers keep a dense MLP
                inter = _int(cfg, fam.dense_width_key, model_type)
            else:
                inter = _int(cfg, "intermediate_size", model_type, 0) if cfg.get("intermediate_size") else 0
        elif fam.record:
            inter = _int(cfg, "intermediate_size", model_type)
        else:
            inter = _int(cfg, "intermediate_size", model_type, 0) if cfg.get("intermediate_size") else 0
        softcap = cfg.get("final_logit_softcapping") if (fam.softcapping or fam.final_softcapping) else None
        attn_softcap = cfg.get("attn_logit_softcapping") if fam.softcapping else None
        return cls(
            name=name or cfg.get("_name_or_path") or model_type,
            model_type=model_type,
            hidden_size=H,
            intermediate_size=inter,
            num_layers=L,
            num_heads=nh,
            num_kv_heads=nkv,
            head_dim=head_dim,
            vocab_size=V,
            tie_embeddings=tie,
            qkv_bias=attn_bias or fam.qkv_bias,
            o_bias=bool(_get(cfg, fam.o_proj_bias_key, model_type, False)) if fam.o_proj_bias_key
            else attn_bias and fam.o_proj_bias,
            mlp_bias=mlp_bias,
            qk_norm=bool(_get(cfg, fam.qk_norm_key, model_type, False)) if fam.qk_norm_key else fam.qk_norm,
            norms_per_layer=fam.norms_per_layer,
            fused=fam.fused,
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 0),
            sliding_window=cfg.get("sliding_window"),
            final_logit_softcapping=softcap,
            attn_logit_softcapping=attn_softcap,
            mixers=fam.layer_mixers(cfg, L),
            ffn_free=fam.ffn_free_layers(cfg, L),
            config=dict(cfg),
            vision=vision_of(config, H) if fam.multimodal else None,
            **moe,
        )

    # ------------------------------------------------------------------------------- modules
    @property
    def family(self) -> Family:
        """The family record of ``model_type`` (``vramplan.arch.families``; the stand-in ``generic``
        record, ``record`` False, for a type without one)."""
        return FAMILIES.get(self.model_type) or generic(self.model_type)

    @property
    def is_moe(self) -> bool:
        """A sparse MoE priced by the shared expert terms (``num_experts`` from the config's MoE fields)."""
        return self.num_experts > 0

    @property
    def has_experts(self) -> bool:
        """Holds fused 3-D expert parameters at all: ``is_moe``, or experts inside a whole-layer mixer
        record (Gemma 4's MoE layers, ``layout_params("experts")``)."""
        return self.is_moe or self.expert_params > 0

    @property
    def q_out(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_out(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def dense_layers(self) -> int:
        """Layers whose feed-forward block is a dense MLP."""
        return self.num_layers - len(self.moe_layers) - len(set(self.ffn_free) - set(self.moe_layers))

    def mixer(self, layer: int) -> str:
        """The token-mixer kind of decoder layer ``layer``."""
        return self.mixers[layer] if self.mixers else ATTENTION

    def ffn(self, layer: int) -> str:
        """The feed-forward kind of decoder layer ``layer``: ``moe``, ``dense`` or ``none``."""
        if layer in self.moe_layers:
            return "moe"
        return "none" if layer in self.ffn_free else "dense"

    def signature(self, layer: int) -> tuple[str, str]:
        """(mixer kind, feed-forward kind) of decoder layer ``layer``: layers of one signature save the
        same tensors."""
        return self.mixer(layer), self.ffn(layer)

    def layer_classes(self) -> tuple["LayerClass", ...]:
        """The decoder layers grouped by ``signature``, in order of first appearance."""
        seen: dict[tuple[str, str], list[int]] = {}
        for i in range(self.num_layers):
            seen.setdefault(self.signature(i), []).append(i)
        return tuple(LayerClass(sig[0], sig[1], tuple(idx)) for sig, idx in seen.items())

    def mixer_layers(self, kind: str) -> int:
        """How many decoder layers use token mixer ``kind``."""
        return self.num_layers if not self.mixers and kind == ATTENTION else self.mixers.count(kind)

    def linears(self) -> tuple[Linear, ...]:
        """Every ``nn.Linear`` kind in the model, lm_head last (tied or not, it is a Linear)."""
        H, L = self.hidden_size, self.num_layers
        out: list[Linear] = []
        na = self.mixer_layers(ATTENTION)
        if na:
            out.extend(self.attention_linears(ATTENTION, na))
        for kind in dict.fromkeys(self.mixers):  # the other mixer kinds, in order of first appearance
            if kind != ATTENTION:
                out.extend(MIXERS[kind].linears(self, self.mixers.count(kind)))
        nd = self.dense_layers
        if nd:
            I = self.intermediate_size
            if self.fused or self.family.fused_gate_up:
                out.append(Linear("gate_up_proj", "mlp", H, 2 * I, self.mlp_bias, nd))
            elif not self.family.mlp_gated:  # NemotronHMLP: up_proj, act, down_proj
                out.append(Linear("up_proj", "mlp", H, I, self.mlp_bias, nd))
            else:
                out.append(Linear("gate_proj", "mlp", H, I, self.mlp_bias, nd))
                out.append(Linear("up_proj", "mlp", H, I, self.mlp_bias, nd))
            out.append(Linear("down_proj", "mlp", I, H, self.mlp_bias, nd))
        nm = len(self.moe_layers)
        if nm:
            S = self.shared_expert_intermediate_size
            if S and not self.family.mlp_gated:  # NemotronHMoE.shared_experts: a NemotronHMLP, no gate
                out.append(Linear("shared_experts.up_proj", "shared_expert", H, S, self.mlp_bias, nm))
                out.append(Linear("shared_experts.down_proj", "shared_expert", S, H, self.mlp_bias, nm))
            elif S:
                p = self.family.shared_expert_module
                out.append(Linear(f"{p}.gate_proj", "shared_expert", H, S, False, nm))
                out.append(Linear(f"{p}.up_proj", "shared_expert", H, S, False, nm))
                out.append(Linear(f"{p}.down_proj", "shared_expert", S, H, False, nm))
                if self.family.shared_expert_gated:
                    out.append(Linear("shared_expert_gate", "shared_expert", H, 1, False, nm))
        if self.family.layout is not None:  # model-level linears (group ``model``)
            from vramplan.arch.layouts import LAYOUTS
            out.extend(LAYOUTS[self.family.layout].linears(self))
        out.append(Linear("lm_head", "lm_head", H, self.vocab_size, False, 1))
        return tuple(out)

    def attention_linears(self, group: str, count: int) -> list[Linear]:
        """q/k/v/o (Phi-3's fused ``qkv_proj``) of ``count`` softmax-attention layers, in ``group``
        (``attention``, or a kind of softmax attention of its own, e.g. Llama 4's chunked layers)."""
        H = self.hidden_size
        gate = 2 if self.family.attn_output_gate else 1  # gated attention (Qwen3-Next): query and gate
        if self.fused:
            out = [Linear("qkv_proj", group, H, self.q_out + 2 * self.kv_out, self.qkv_bias, count)]
        else:
            out = [Linear("q_proj", group, H, gate * self.q_out, self.qkv_bias, count),
                   Linear("k_proj", group, H, self.kv_out, self.qkv_bias, count),
                   Linear("v_proj", group, H, self.kv_out, self.qkv_bias, count)]
        out.append(Linear("o_proj", group, self.q_out, H, self.o_bias, count))
        return out

    @property
    def shared_expert_down(self) -> str:
        """The shared expert's down projection's name (``Family.shared_expert_module``)."""
        return f"{self.family.shared_expert_module}.down_proj"

    def layer_linears(self, layer: int) -> tuple[Linear, ...]:
        """The linears of decoder layer ``layer`` (count = 1 each): its mixer's group and its
        feed-forward block's (``mlp`` for a dense MLP, ``shared_expert`` beside MoE experts)."""
        mixer, ffn = self.signature(layer)
        keep = []
        for lin in self.linears():
            if lin.group in ("lm_head", "model"):
                continue
            if lin.group == "mlp" and ffn != "dense":
                continue
            if lin.group == "shared_expert" and ffn != "moe":
                continue
            if is_mixer_group(lin.group) and lin.group != mixer:
                continue
            keep.append(Linear(lin.name, lin.group, lin.in_features, lin.out_features, lin.bias, 1, lin.quantized,
                               lin.no_grad))
        return tuple(keep)

    @property
    def router_linears(self) -> tuple[Linear, ...]:
        """The router as an ``nn.Linear`` subclass (``Family.router_linear``: Llama 4's ``router``),
        one per MoE layer: peft's ``all-linear`` reaches it, bitsandbytes does not quantize it."""
        if not (self.family.router_linear and self.moe_layers):
            return ()
        return (Linear("router", "router", self.hidden_size, self.num_experts, False, len(self.moe_layers)),)

    @property
    def router_params(self) -> int:
        """Router weights (``mlp.gate``, shape E × H per MoE layer). In transformers 5.x the router
        is a ``*TopKRouter`` module holding a bare parameter, not an ``nn.Linear``: bitsandbytes
        leaves it unquantized. (peft 0.21 still adapts it for qwen3_moe and mixtral under
        ``all-linear``, through its v4-name remapping.)"""
        bias = self.num_experts if self.family.router_bias else 0  # gpt-oss ``GptOssTopKRouter.bias``
        return len(self.moe_layers) * (self.num_experts * self.hidden_size + bias) + self.layout_params("router")

    @property
    def sink_params(self) -> int:
        """Learned attention sinks (``Family.attention_sinks``): one logit per query head per attention
        layer (gpt-oss ``GptOssAttention.sinks``), a bare parameter bitsandbytes leaves unquantized."""
        return self.num_heads * self.mixer_layers(ATTENTION) if self.family.attention_sinks else 0

    def expert_tensors(self) -> tuple[ExpertTensor, ...]:
        """Fused 3-D expert parameters (empty for dense models)."""
        nm = len(self.moe_layers)
        if not nm:
            return ()
        E, H, M = self.num_experts, self.hidden_size, self.moe_intermediate_size
        if not self.family.mlp_gated:  # NemotronHExperts: up_proj (E, M, H), down_proj (E, H, M)
            return (ExpertTensor("up_proj", E, M, H, nm), ExpertTensor("down_proj", E, H, M, nm))
        out = (
            ExpertTensor("gate_up_proj", E, 2 * M, H, nm),
            ExpertTensor("down_proj", E, H, M, nm),
        )
        if self.family.expert_bias:  # gpt-oss: (E, 2M) and (E, H) biases beside the weights
            out += (ExpertTensor("gate_up_proj_bias", E, 2 * M, 1, nm), ExpertTensor("down_proj_bias", E, H, 1, nm))
        return out

    # -------------------------------------------------------------------------------- counts
    def layout_params(self, group: str) -> int:
        """Parameters of weight group ``group`` the family's layout adds (``vramplan.arch.layouts``)."""
        if self.family.layout is None:
            return 0
        from vramplan.arch.layouts import LAYOUTS
        return LAYOUTS[self.family.layout].params(self).get(group, 0)

    @property
    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size + self.layout_params("embeddings")

    @property
    def lm_head_params(self) -> int:
        """0 when tied: the weight is the embedding's and counted once."""
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        """Decoder-layer norms, q/k norms and the final norm."""
        per_layer = self.norms_per_layer * self.hidden_size
        width = (self.q_out + self.kv_out) if self.family.qk_norm_full else 2 * self.head_dim
        qk = width * self.mixer_layers(ATTENTION) if self.qk_norm else 0
        own = sum(MIXERS[k].norms(self) * self.mixers.count(k) for k in dict.fromkeys(self.mixers) if k != ATTENTION)
        return self.num_layers * per_layer + qk + own + self.hidden_size + self.layout_params("norms")

    def param_counts(self) -> dict[str, int]:
        """Parameters per module kind; values sum to ``total_params``."""
        counts: dict[str, int] = {"embed_tokens": self.embed_params}
        for lin in self.linears():
            if lin.group == "lm_head":
                continue
            counts[lin.name] = counts.get(lin.name, 0) + lin.params
        for t in self.expert_tensors():
            counts[f"experts.{t.name}"] = t.params
        if self.layout_params("experts"):
            counts["experts"] = self.layout_params("experts")
        if self.router_params:
            counts["router"] = self.router_params
        if self.sink_params:
            counts["sinks"] = self.sink_params
        for kind in dict.fromkeys(self.mixers):
            if kind != ATTENTION:
                for key, n in MIXERS[kind].params(self).items():  # conv kernels, gates, norms of the kind
                    counts[f"{kind}.{key}"] = n * self.mixers.count(kind)
        counts["norms"] = self.norm_params
        counts["lm_head"] = self.lm_head_params
        return counts

    @property
    def mixer_params(self) -> int:
        """Parameters of the token mixers other than attention that are not linear weights (conv
        kernels, decay and gate vectors, their own norms): unquantized."""
        return sum(MIXERS[kind].params(self).get(key, 0) * self.mixers.count(kind)
                   for kind in dict.fromkeys(self.mixers) if kind != ATTENTION for key in MIXERS[kind].params(self))

    @property
    def total_params(self) -> int:
        """Every parameter, tied weights counted once (= ``sum(p.numel())`` in transformers)."""
        return sum(self.param_counts().values())

    @property
    def vision_params(self) -> int:
        """Parameters of the vision tower and projector (0 for a text-only model)."""
        return self.vision.total_params if self.vision is not None else 0

    @property
    def all_params(self) -> int:
        """Every parameter of the model transformers builds: the decoder's and the vision tower's."""
        return self.total_params + self.vision_params

    def quantizable_linears(self) -> tuple[Linear, ...]:
        """The linears bitsandbytes replaces: every ``nn.Linear`` except lm_head (and those transformers
        keeps in fp32, ``Linear.quantized``)."""
        return tuple(lin for lin in self.linears() if lin.group != "lm_head" and lin.quantized)

    def adaptable_linears(self) -> tuple[Linear, ...]:
        """Every ``nn.Linear`` but lm_head: what peft's ``all-linear`` reaches (quantized or not)."""
        return tuple(lin for lin in self.linears() if lin.group != "lm_head")

    @property
    def fp32_linear_params(self) -> int:
        """Weights and biases of the linears transformers keeps in fp32 (``Linear.quantized`` False)."""
        return sum(lin.params for lin in self.linears() if lin.group != "lm_head" and not lin.quantized)

    @property
    def quantized_params(self) -> int:
        """Weight elements in quantizable linears (biases stay unquantized)."""
        return sum(lin.count * lin.weight_params for lin in self.quantizable_linears())

    @property
    def unquantized_params(self) -> int:
        """Parameters bitsandbytes leaves in floating point: embeddings, norms, biases, lm_head,
        routers and fused experts."""
        return self.total_params - self.quantized_params

    @property
    def expert_params(self) -> int:
        return sum(t.params for t in self.expert_tensors()) + self.layout_params("experts")

    def linear_names(self) -> tuple[str, ...]:
        """Leaf names peft can target (lm_head excluded)."""
        return tuple(lin.name.split(".")[-1] for lin in self.adaptable_linears())


def _moe_fields(cfg: Mapping[str, Any], fam: Family, L: int) -> dict[str, Any]:
    """Expert counts and which layers are sparse, by the family's MoE layout (``Family.moe``)."""
    model_type = fam.model_type
    if fam.moe == MOE_PATTERN:  # NemotronHMoE in the layers whose block is ``moe``
        layers = tuple(i for i, b in enumerate(fam.blocks(cfg) or ()) if b == "moe")
        if not layers:
            return {}
        if cfg.get("moe_latent_size"):
            raise ArchError("config.json field 'moe_latent_size' (latent MoE projections) is not modelled yet")
        E = _int(cfg, "n_routed_experts", model_type)
        return dict(num_experts=E, experts_per_token=_int(cfg, "num_experts_per_tok", model_type),
                    moe_intermediate_size=_int(cfg, "moe_intermediate_size", model_type),
                    shared_expert_intermediate_size=_int(cfg, "moe_shared_expert_intermediate_size", model_type),
                    moe_layers=layers)
    if fam.moe == MOE_DEEPSEEK:
        E = _int(cfg, fam.experts_key, model_type)
        k = _int(cfg, fam.experts_per_token_key, model_type)
        M = _int(cfg, "moe_intermediate_size", model_type)
        types = cfg.get("mlp_layer_types")
        if isinstance(types, list) and types:
            layers = tuple(i for i, t in enumerate(types[:L]) if t == "sparse")
        else:
            key = fam.dense_prefix_key
            first = cfg.get(key) if key else None
            if first is None:
                first = fam.class_defaults.get(key, fam.dense_prefix_default) if key else fam.dense_prefix_default
            if isinstance(first, bool) or not isinstance(first, int) or first < 0:
                raise ArchError(f"config.json field '{key}' must be a non-negative integer, got {_show(first)}")
            layers = tuple(range(min(first, L), L))
        shared = fam.shared_experts_key and _get(cfg, fam.shared_experts_key, model_type, 0)
        if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
            raise ArchError(f"config.json field '{fam.shared_experts_key}' must be a non-negative integer")
        return dict(num_experts=E, experts_per_token=k, moe_intermediate_size=M,
                    shared_expert_intermediate_size=shared * M, moe_layers=layers)
    if fam.moe == MOE_MIXTRAL:
        E = _int(cfg, "num_local_experts", model_type)
        k = _int(cfg, "num_experts_per_tok", model_type)
        M = _int(cfg, "intermediate_size", model_type)
        return dict(num_experts=E, experts_per_token=k, moe_intermediate_size=M, moe_layers=tuple(range(L)))
    if fam.moe == MOE_FIRST_K_DENSE:
        E = _int(cfg, "n_routed_experts", model_type)
        k = _int(cfg, "num_experts_per_tok", model_type)
        M = _int(cfg, "moe_intermediate_size", model_type)
        first = _int(cfg, "first_k_dense_replace", model_type)
        shared = M * _int(cfg, "n_shared_experts", model_type) if fam.shared_expert else 0
        return dict(num_experts=E, experts_per_token=k, moe_intermediate_size=M,
                    shared_expert_intermediate_size=shared, moe_layers=tuple(range(min(first, L), L)))
    if fam.moe == MOE_INTERLEAVED:
        E = _int(cfg, "num_local_experts", model_type)
        k = _int(cfg, "num_experts_per_tok", model_type)
        M = _int(cfg, "intermediate_size", model_type)
        given = cfg.get("moe_layers")
        if isinstance(given, list):
            layers = tuple(sorted({int(i) for i in given if 0 <= int(i) < L}))
        else:
            step = _int(cfg, "interleave_moe_layer_step", model_type)
            layers = tuple(range(step - 1, L, step))
        return dict(num_experts=E, experts_per_token=k, moe_intermediate_size=M,
                    shared_expert_intermediate_size=M if fam.shared_expert else 0, moe_layers=layers)
    E = _int(cfg, "num_experts", model_type)
    k = _int(cfg, "num_experts_per_tok", model_type)
    M = _int(cfg, "moe_intermediate_size", model_type)
    step = _int(cfg, "decoder_sparse_step", model_type, 1)
    only = set(cfg.get("mlp_only_layers") or [])
    layers = tuple(i for i in range(L) if i not in only and (i + 1) % step == 0)
    shared = _int(cfg, "shared_expert_intermediate_size", model_type) if fam.shared_expert else 0
    return dict(num_experts=E, experts_per_token=k, moe_intermediate_size=M,
                shared_expert_intermediate_size=shared, moe_layers=layers)
