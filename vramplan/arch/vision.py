"""Vision towers of multimodal checkpoints: one ``Tower`` record per ``vision_config`` ``model_type``.

A multimodal checkpoint is a text decoder (its ``Family`` record, read from ``text_config`` or the
flat config) plus a vision tower and the projector that maps the tower's output onto the text width.
``Arch.from_config`` reads the outer config's ``vision_config``; when its ``model_type`` is in
``TOWERS``, ``Arch.vision`` holds a ``Vision`` (the record, the vision config with the config
class's defaults filled in, the outer config). Everything the engines know of a tower comes from
its record:

- ``linears``: its ``nn.Linear`` kinds (tower blocks and projector/merger), ``group`` ``vision``
  or ``projector``. They are not in ``Arch.linears()`` (the decoder's), so no decoder term sees
  them; bitsandbytes replaces them when ``Scenario.vision`` is ``quantized`` or ``trained`` under a
  quantized base (transformers 5.24 ``from_pretrained`` with a ``BitsAndBytesConfig`` replaces every
  ``nn.Linear`` but ``get_keys_to_not_convert``'s, which names only ``lm_head`` (and the tied
  embedding) for these models: ``_keep_in_fp32_modules`` is empty for all of them);
- ``params``: the parameters that are not linear weights (patch embedding convolutions, norms,
  position tables, linear biases are counted on the linears), never quantized;
- ``buffers``: fp32 buffers (the tower's rotary ``inv_freq`` / ``original_inv_freq``);
- ``grid``: for one image of W × H pixels, (patches the tower attends over, merged features it
  outputs, placeholder tokens the processor puts in the text), from the processor's resize rule;
- ``saved``: what autograd keeps of one image when the tower is frozen (``vramplan.analytic.vision``).

Adding a tower (docs/adding-a-model.md): one ``Tower(...)`` in ``TOWERS``, its class defaults, and
the family record of its checkpoints' outer ``model_type`` (``Family.multimodal``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from vramplan.arch.spec import Linear

VISION = "vision"
"""``Linear.group`` of a tower block's linears."""
PROJECTOR = "projector"
"""``Linear.group`` of the projector / patch merger's linears."""


def _no_notes(v: "Vision") -> tuple[str, ...]:
    return ()


def _never(v: "Vision") -> bool:
    return False


@dataclass(frozen=True)
class Tower:
    """What vramplan knows about one vision tower kind (a ``vision_config`` ``model_type``)."""

    model_type: str
    source: str
    """The transformers 5.24 modeling file and classes it mirrors."""
    modules: tuple[str, ...]
    """Module paths in the multimodal model that hold the tower and projector: what a framework's
    bitsandbytes skip list names (ms-swift ``vision_tower`` / ``aligner``)."""
    defaults: Mapping[str, Any]
    """The vision config class's defaults (config.json may omit any of them)."""
    linears: Callable[["Vision"], list["Linear"]]
    params: Callable[["Vision"], dict[str, int]]
    buffers: Callable[["Vision"], tuple[int, ...]]
    """Element counts of its fp32 buffers (one tensor each)."""
    grid: Callable[["Vision", int, int], tuple[int, int, int]]
    """(vision, width, height) -> (patches, merged features, placeholder tokens) of one image."""
    inputs: str = "grid_thw"
    """How the processor hands images to the model: ``grid_thw`` (Qwen: ``pixel_values`` of shape
    (patches, C·tp·p·p) and ``image_grid_thw``), ``image_sizes`` (Pixtral: ``pixel_values`` of
    shape (images, C, h, w) and ``image_sizes``) or ``pixel_values`` (Gemma 3: (images, C, S, S) alone,
    S = ``image_size``) or ``position_ids`` (Gemma 4: ``pixel_values`` of shape (images, max_patches,
    3·p²), padded, and ``image_position_ids`` (images, max_patches, 2), plus ``mm_token_type_ids``)."""
    pixels: tuple[int, int] = (0, 0)
    """Qwen: the processor's (min_pixels, max_pixels) of ``smart_resize``."""
    walk: str = ""
    """The name of its saved-tensor walk in ``vramplan.analytic.vision.SAVED`` (what its images
    leave saved); empty: not priced yet (weights only)."""
    text_prefix: str = "model.language_model"
    """The decoder's module path in the multimodal model (the frameworks' LoRA regex covers it)."""
    deepstack: bool = False
    """Reads ``deepstack_visual_indexes`` (Qwen3-VL: one extra merger per index, whose outputs are
    added to the first decoder layers' hidden states)."""
    attn_default: tuple[str, ...] = ()
    """Sub-configs whose model supports only transformers' default attention, which the build leaves
    to it (Gemma 4's ``audio_config``: ``Gemma4AudioModel`` runs eager only, and
    ``attn_implementation="sdpa"`` for the whole model raises; unset, transformers picks eager there)."""
    last_unconverted: bool = False
    """Its last linear holds the model's last parameter (the lm_head being tied), which transformers
    5.24's ``get_keys_to_not_convert`` (``quantizers/base.py``: "remove last module") keeps out of the
    bitsandbytes conversion: an ``nn.Linear`` in the load dtype (Gemma 4's last embedder projection)."""
    notes: Callable[["Vision"], tuple[str, ...]] = _no_notes
    """Breakdown notes of what the record leaves out (Gemma 4: its audio inputs)."""
    image_idle: tuple[str, ...] = ()
    """Name prefixes of its linears that images do not run (Gemma 4's audio tower and embedder): trained,
    their adapters get no gradient from an image batch."""
    sliding_image_mask: Callable[["Vision"], bool] = _never
    """Whether a batch with images makes the decoder's sliding-window layers take a materialized
    (b, 1, s, s) mask from the first token on (Gemma 4: ``create_masks_for_vision_model``)."""


@dataclass(frozen=True)
class Vision:
    """The tower of one multimodal checkpoint."""

    tower: Tower
    config: Mapping[str, Any] = field(compare=False, repr=False)
    """The vision config, the class defaults filled in."""
    outer: Mapping[str, Any] = field(compare=False, repr=False)
    """The outer (multimodal) config.json."""
    text_hidden: int = 0
    """The text decoder's width (the projector's output)."""

    def get(self, key: str) -> Any:
        return self.config.get(key, self.tower.defaults.get(key))

    def linears(self) -> tuple["Linear", ...]:
        return tuple(self.tower.linears(self))

    def param_counts(self) -> dict[str, int]:
        """Tower and projector parameters by kind: linears (weights and biases) and the rest."""
        out: dict[str, int] = {}
        for lin in self.linears():
            out[f"vision.{lin.name}"] = out.get(f"vision.{lin.name}", 0) + lin.params
        for key, n in self.tower.params(self).items():
            out[f"vision.{key}"] = out.get(f"vision.{key}", 0) + n
        return out

    @property
    def total_params(self) -> int:
        return sum(self.param_counts().values())

    def quantizable_linears(self) -> tuple["Linear", ...]:
        """The linears bitsandbytes replaces when the tower is quantized (all but ``last_unconverted``'s)."""
        lins = self.linears()
        return lins[:-1] if self.tower.last_unconverted else lins

    @property
    def linear_weight_params(self) -> int:
        return sum(lin.count * lin.weight_params for lin in self.linears())

    @property
    def quantizable_weight_params(self) -> int:
        return sum(lin.count * lin.weight_params for lin in self.quantizable_linears())

    @property
    def bias_params(self) -> int:
        """Biases of the linears bitsandbytes replaces."""
        return sum(lin.count * lin.out_features for lin in self.quantizable_linears() if lin.bias)

    @property
    def other_params(self) -> int:
        """Parameters bitsandbytes leaves as they are: neither a replaced linear's weight nor its bias
        (norms, embeddings, convolutions; a ``last_unconverted`` linear whole)."""
        kept = self.linears()[len(self.quantizable_linears()):]
        return sum(self.tower.params(self).values()) + sum(lin.params for lin in kept)

    def image(self, width: int, height: int) -> tuple[int, int, int]:
        """(patches, features, placeholder tokens) of one W × H image."""
        return self.tower.grid(self, width, height)


# ----------------------------------------------------------------------------------- helpers
def _lin(name: str, group: str, i: int, o: int, bias: bool, count: int) -> "Linear":
    from vramplan.arch.spec import Linear

    return Linear(name, group, i, o, bias, count)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's image resize (transformers 5.24 ``models/qwen2_vl/image_processing_qwen2_vl.py``
    ``smart_resize``, used by the Qwen2.5-VL and Qwen3-VL processors): both sides a multiple of
    ``factor`` = patch · merge, the area within [min_pixels, max_pixels], aspect ratio kept."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


#: Qwen processors' pixel bounds (not in config.json): Qwen2.5-VL's published
#: ``preprocessor_config.json`` (``min_pixels`` 3136 = 56², ``max_pixels`` 12845056 = 28²·16384);
#: Qwen3-VL's (``size`` ``shortest_edge`` 65536, ``longest_edge`` 16777216).
QWEN25_PIXELS = (3136, 12845056)
QWEN3_PIXELS = (65536, 16777216)


def _qwen_grid(v: Vision, width: int, height: int) -> tuple[int, int, int]:
    """The processor's ``image_grid_thw`` = (1, h/p, w/p) after ``smart_resize`` with the tower's
    ``pixels`` bounds (an image is one temporal patch: the processor repeats it
    ``temporal_patch_size`` times): patches = h·w/p², features = tokens = patches / merge²
    (``processing_qwen2_vl.py``: one ``<|image_pad|>`` per merged feature)."""
    p, m = v.get("patch_size"), v.get("spatial_merge_size")
    h, w = smart_resize(height, width, p * m, *v.tower.pixels)
    patches = (h // p) * (w // p)
    return patches, patches // (m * m), patches // (m * m)


def _qwen_buffers(v: Vision) -> tuple[int, ...]:
    """``*VisionRotaryEmbedding``: ``inv_freq`` and ``original_inv_freq``, head_dim/4 fp32 each
    (``compute_axial_rope_parameters``: ``arange(0, head_dim // 2, 2)``)."""
    hd = v.get("hidden_size") // v.get("num_heads")
    return (hd // 4, hd // 4)


# -------------------------------------------------------------------------- qwen2_5_vl_vision
def _qwen25_linears(v: Vision) -> list["Linear"]:
    """``Qwen2_5_VLVisionBlock`` × depth: ``attn.qkv`` (H -> 3H), ``attn.proj``, ``mlp.gate_proj`` /
    ``up_proj`` (H -> I), ``mlp.down_proj``, all with bias; ``Qwen2_5_VLPatchMerger``: ``mlp.0``
    (4H -> 4H) and ``mlp.2`` (4H -> text width), with bias (merge 2: 4 = merge²)."""
    H, I, D = v.get("hidden_size"), v.get("intermediate_size"), v.get("depth")
    M = H * v.get("spatial_merge_size") ** 2
    out = v.get("out_hidden_size")
    return [_lin("attn.qkv", VISION, H, 3 * H, True, D), _lin("attn.proj", VISION, H, H, True, D),
            _lin("mlp.gate_proj", VISION, H, I, True, D), _lin("mlp.up_proj", VISION, H, I, True, D),
            _lin("mlp.down_proj", VISION, I, H, True, D),
            _lin("merger.mlp.0", PROJECTOR, M, M, True, 1), _lin("merger.mlp.2", PROJECTOR, M, out, True, 1)]


def _qwen25_params(v: Vision) -> dict[str, int]:
    """``patch_embed.proj``: Conv3d (C·tp·p·p -> H, no bias); ``norm1`` / ``norm2`` RMSNorm (H) per
    block; the merger's ``ln_q`` RMSNorm (H)."""
    H, p, tp, C = v.get("hidden_size"), v.get("patch_size"), v.get("temporal_patch_size"), v.get("in_channels")
    return {"patch_embed": H * C * tp * p * p, "norms": 2 * H * v.get("depth") + H}


# ---------------------------------------------------------------------------- qwen3_vl_vision
def _deepstack(v: Vision) -> int:
    """Deepstack mergers: one per ``deepstack_visual_indexes`` entry (Qwen3-VL); none for Qwen3.5's
    tower, whose config class has no such field."""
    return len(v.get("deepstack_visual_indexes") or ()) if v.tower.deepstack else 0


def _qwen3_linears(v: Vision) -> list["Linear"]:
    """``Qwen3VLVisionBlock`` × depth: ``attn.qkv``, ``attn.proj``, ``mlp.linear_fc1`` (H -> I),
    ``mlp.linear_fc2``, with bias; ``Qwen3VLVisionPatchMerger`` ``merger`` and one per
    ``deepstack_visual_indexes`` entry (``deepstack_merger_list``): ``linear_fc1`` (4H -> 4H),
    ``linear_fc2`` (4H -> text width), with bias."""
    H, I, D = v.get("hidden_size"), v.get("intermediate_size"), v.get("depth")
    M = H * v.get("spatial_merge_size") ** 2
    out, k = v.get("out_hidden_size"), 1 + _deepstack(v)
    return [_lin("attn.qkv", VISION, H, 3 * H, True, D), _lin("attn.proj", VISION, H, H, True, D),
            _lin("mlp.linear_fc1", VISION, H, I, True, D), _lin("mlp.linear_fc2", VISION, I, H, True, D),
            _lin("merger.linear_fc1", PROJECTOR, M, M, True, k), _lin("merger.linear_fc2", PROJECTOR, M, out, True, k)]


def _qwen3_params(v: Vision) -> dict[str, int]:
    """``patch_embed.proj`` Conv3d with bias; ``pos_embed`` (``num_position_embeddings`` × H);
    LayerNorms (weight + bias) ``norm1`` / ``norm2`` per block; the merger's LayerNorm over H, each
    deepstack merger's over 4H (``use_postshuffle_norm=True``)."""
    H, p, tp, C = v.get("hidden_size"), v.get("patch_size"), v.get("temporal_patch_size"), v.get("in_channels")
    M = H * v.get("spatial_merge_size") ** 2
    ds = _deepstack(v)
    return {"patch_embed": H * C * tp * p * p + H, "pos_embed": v.get("num_position_embeddings") * H,
            "norms": 4 * H * v.get("depth") + 2 * H + ds * 2 * M}


# ------------------------------------------------------------------------------------ pixtral
def _pixtral_head_dim(v: Vision) -> int:
    return v.get("head_dim") or v.get("hidden_size") // v.get("num_attention_heads")


def _pixtral_linears(v: Vision) -> list["Linear"]:
    """``PixtralAttentionLayer`` × layers: ``attention.q/k/v/o_proj`` (H -> heads·head_dim, no bias),
    ``feed_forward.gate/up/down_proj`` (no bias); ``Mistral3MultiModalProjector``:
    ``patch_merger.merging_layer`` (H·merge² -> H, no bias), ``linear_1`` (H -> text width) and
    ``linear_2`` (text -> text), bias = ``multimodal_projector_bias`` (outer config)."""
    H, I, L = v.get("hidden_size"), v.get("intermediate_size"), v.get("num_hidden_layers")
    q = v.get("num_attention_heads") * _pixtral_head_dim(v)
    m = v.outer.get("spatial_merge_size", 2)
    b = bool(v.outer.get("multimodal_projector_bias", False))
    T = v.text_hidden
    return [_lin("attention.q_proj", VISION, H, q, False, L), _lin("attention.k_proj", VISION, H, q, False, L),
            _lin("attention.v_proj", VISION, H, q, False, L), _lin("attention.o_proj", VISION, q, H, False, L),
            _lin("feed_forward.gate_proj", VISION, H, I, False, L), _lin("feed_forward.up_proj", VISION, H, I, False, L),
            _lin("feed_forward.down_proj", VISION, I, H, False, L),
            _lin("patch_merger.merging_layer", PROJECTOR, H * m * m, H, False, 1),
            _lin("linear_1", PROJECTOR, H, T, b, 1), _lin("linear_2", PROJECTOR, T, T, b, 1)]


def _pixtral_params(v: Vision) -> dict[str, int]:
    """``patch_conv`` Conv2d (C·p·p -> H, no bias), ``ln_pre`` RMSNorm (H), ``attention_norm`` and
    ``ffn_norm`` (H) per layer; the projector's ``norm`` RMSNorm (H)."""
    H, p, C = v.get("hidden_size"), v.get("patch_size"), v.get("num_channels")
    return {"patch_embed": H * C * p * p, "norms": H + 2 * H * v.get("num_hidden_layers") + H}


def _pixtral_buffers(v: Vision) -> tuple[int, ...]:
    """``PixtralRotaryEmbedding``: ``inv_freq`` and ``original_inv_freq``, head_dim/2 fp32 each."""
    hd = _pixtral_head_dim(v)
    return (hd // 2, hd // 2)


def _pixtral_grid(v: Vision, width: int, height: int) -> tuple[int, int, int]:
    """transformers 5.24 ``models/pixtral/image_processing_pixtral.py::get_resize_output_image_size``
    and ``processing_pixtral.py``: the longest edge scaled down to ``image_size`` (Mistral Small 3.x:
    1540, the processor's ``longest_edge``), then each side rounded up to a multiple of P = patch ·
    merge (the processor's ``patch_size · spatial_merge_size``). The tower attends over the p-patch
    grid, the projector's patch merger merges merge × merge patches: features = (h/P)·(w/P); the text
    holds one ``[IMG]`` per feature plus one ``[IMG_BREAK]`` per row (the last one ``[IMG_END]``):
    tokens = (h/P)·(w/P + 1)."""
    p, m, edge = v.get("patch_size"), v.outer.get("spatial_merge_size", 2), v.get("image_size")
    ratio = max(height / edge, width / edge)
    if ratio > 1:
        height, width = int(math.floor(height / ratio)), int(math.floor(width / ratio))
    P = p * m
    nh, nw = -(-height // P), -(-width // P)
    return (nh * m) * (nw * m), nh * nw, nh * (nw + 1)


# -------------------------------------------------------------------------- siglip_vision_model
def _siglip_linears(v: Vision) -> list["Linear"]:
    """``SiglipEncoderLayer`` × layers (transformers 5.24 ``models/siglip/modeling_siglip.py``):
    ``self_attn.q/k/v_proj`` and ``out_proj`` (D -> D), ``mlp.fc1`` (D -> I), ``mlp.fc2``, all with
    bias. No head (Gemma 3's ``vision_use_head`` is false). Gemma 3's projector
    (``Gemma3MultiModalProjector``) holds a bare ``mm_input_projection_weight`` parameter, no linear."""
    D, I, L = v.get("hidden_size"), v.get("intermediate_size"), v.get("num_hidden_layers")
    return [_lin("self_attn.q_proj", VISION, D, D, True, L), _lin("self_attn.k_proj", VISION, D, D, True, L),
            _lin("self_attn.v_proj", VISION, D, D, True, L), _lin("self_attn.out_proj", VISION, D, D, True, L),
            _lin("mlp.fc1", VISION, D, I, True, L), _lin("mlp.fc2", VISION, I, D, True, L)]


def _siglip_patches(v: Vision) -> int:
    return (v.get("image_size") // v.get("patch_size")) ** 2


def _siglip_params(v: Vision) -> dict[str, int]:
    """``SiglipVisionEmbeddings``: ``patch_embedding`` Conv2d (C·p·p -> D, with bias) and
    ``position_embedding`` (one row per patch); ``layer_norm1`` / ``layer_norm2`` LayerNorms (weight and
    bias) per layer and ``post_layernorm``; Gemma 3's projector: ``mm_input_projection_weight``
    (D × text width) and ``mm_soft_emb_norm`` (``Gemma3RMSNorm``, D)."""
    D, p, C = v.get("hidden_size"), v.get("patch_size"), v.get("num_channels")
    return {"patch_embed": D * C * p * p + D, "pos_embed": _siglip_patches(v) * D,
            "norms": 4 * D * v.get("num_hidden_layers") + 2 * D + D,
            "mm_input_projection": D * v.text_hidden}


def _siglip_buffers(v: Vision) -> tuple[int, ...]:
    """``SiglipVisionEmbeddings.position_ids``: ``arange(patches)`` int64 (8 B each, as two fp32
    elements' bytes here)."""
    return (2 * _siglip_patches(v),)


def _siglip_grid(v: Vision, width: int, height: int) -> tuple[int, int, int]:
    """Gemma 3's processor resizes every image to the tower's ``image_size`` square (896 × 896,
    ``image_processing_gemma3.py`` ``size``; no pan-and-scan by default): (896 / 14)² = 4096 patches;
    the projector average-pools them to ``mm_tokens_per_image`` (256) features; the text holds
    ``processing_gemma3.py``'s ``full_image_sequence``: ``"\\n\\n" + <start_of_image> + 256 ×
    <image_soft_token> + <end_of_image> + "\\n\\n"`` (``image_seq_length`` 256): 256 + 2 tokens, plus
    the two ``\\n\\n`` (one token each in Gemma's vocabulary): 260."""
    n = v.outer.get("mm_tokens_per_image", 256)
    return _siglip_patches(v), n, n + 4

# ------------------------------------------------------------------------- llama4_vision_model
def _llama4_linears(v: Vision) -> list["Linear"]:
    """``Llama4VisionModel`` (``models/llama4/modeling_llama4.py``): ``patch_embedding.linear`` (the
    unfolded C·p² -> H, no bias: an ``nn.Linear``, so bitsandbytes reaches it), per layer
    ``self_attn.q/k/v/o_proj`` (H -> H, bias) and ``mlp.fc1`` / ``fc2`` (H <-> I, bias); the
    ``vision_adapter.mlp`` (``fc1`` I -> projector_input_dim, ``fc2`` projector_output_dim ->
    projector_output_dim, no bias); ``Llama4MultiModalProjector.linear_1`` (vision_output_dim -> text
    width, no bias)."""
    H, I, L = v.get("hidden_size"), v.get("intermediate_size"), v.get("num_hidden_layers")
    C, p = v.get("num_channels"), v.get("patch_size")
    pin, pout = v.get("projector_input_dim"), v.get("projector_output_dim")
    return [_lin("patch_embedding.linear", VISION, C * p * p, H, False, 1),
            *(_lin(f"self_attn.{n}", VISION, H, H, True, L) for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
            _lin("mlp.fc1", VISION, H, I, True, L), _lin("mlp.fc2", VISION, I, H, True, L),
            _lin("vision_adapter.mlp.fc1", PROJECTOR, I, pin, False, 1),
            _lin("vision_adapter.mlp.fc2", PROJECTOR, pout, pout, False, 1),
            _lin("linear_1", PROJECTOR, v.get("vision_output_dim"), v.text_hidden, False, 1)]


def _llama4_params(v: Vision) -> dict[str, int]:
    """``class_embedding`` (H), ``positional_embedding_vlm`` ((S/p)² + 1) × H, LayerNorms (weight +
    bias) ``layernorm_pre`` / ``layernorm_post`` and two per layer."""
    H, L = v.get("hidden_size"), v.get("num_hidden_layers")
    n = (v.get("image_size") // v.get("patch_size")) ** 2 + 1
    return {"embeddings": H + n * H, "norms": 4 * H + 4 * H * L}


def _llama4_buffers(v: Vision) -> tuple[int, ...]:
    """``Llama4VisionRotaryEmbedding.freqs_ci``: ((S/p)² + 1) × 1 × head_dim/2 complex64, counted as
    fp32 pairs."""
    n = (v.get("image_size") // v.get("patch_size")) ** 2 + 1
    return (n * (v.get("hidden_size") // v.get("num_attention_heads")),)


# ------------------------------------------------------------------------------- gemma4_vision
# transformers 5.24 ``models/gemma4/modeling_gemma4.py``: ``Gemma4Model`` holds ``vision_tower``
# (``Gemma4VisionModel``), ``embed_vision`` (``Gemma4MultimodalEmbedder``) and, when the config has an
# ``audio_config`` (the E2B / E4B checkpoints), ``audio_tower`` (``Gemma4AudioModel``) and ``embed_audio``.
# Both towers load with the decoder (``AutoModelForCausalLM`` maps ``gemma4`` to
# ``Gemma4ForConditionalGeneration``), so the record prices the two together: ``Scenario.vision`` applies to
# both. ``--images`` runs the vision tower (``_gemma4_grid``); audio inputs are not modelled (``_gemma4_notes``).
_GEMMA4_AUDIO_DEFAULTS = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=8,
                              subsampling_conv_channels=[128, 32], conv_kernel_size=5, use_clipped_linears=True,
                              output_proj_dims=1536)
"""``Gemma4AudioConfig``'s class defaults (``configuration_gemma4.py``) for the fields the audio tower's shapes read."""


def _gemma4_audio(v: Vision) -> dict[str, Any] | None:
    """The outer config's ``audio_config`` with the class defaults filled in; None without one."""
    a = v.outer.get("audio_config")
    return {**_GEMMA4_AUDIO_DEFAULTS, **a} if isinstance(a, Mapping) else None


def _gemma4_clipped(v: Vision) -> int:
    """``Gemma4ClippableLinear`` modules of both towers that carry the four clipping scalars
    (``use_clipped_linears``): the vision layer's seven, the audio layer's ten."""
    n = 7 * v.get("num_hidden_layers") if v.get("use_clipped_linears") else 0
    a = _gemma4_audio(v)
    return n + (10 * a["num_hidden_layers"] if a and a["use_clipped_linears"] else 0)


def _gemma4_linears(v: Vision) -> list["Linear"]:
    """Every ``nn.Linear`` of the two towers (none has a bias but the audio ``output_proj``):

    - vision: ``patch_embedder.input_proj`` (3·p² -> H); per layer the ``Gemma4ClippableLinear``s'
      inner ``linear`` of ``self_attn.q/k/v/o_proj`` (H -> heads·head_dim, kv_heads·head_dim) and
      ``mlp.gate/up/down_proj`` (H <-> I); ``embed_vision.embedding_projection`` (H -> text width);
    - audio: ``subsample_conv_projection.input_proj_linear`` ((c0 // 4)·c1 -> A); per layer
      ``feed_forward1`` / ``feed_forward2`` ``ffw_layer_1`` (A -> 4A) and ``ffw_layer_2`` (4A -> A),
      ``self_attn.q/k/v_proj`` (A -> A), ``self_attn.post`` (A -> A), ``self_attn.relative_k_proj``
      (A -> A), ``lconv1d.linear_start`` (A -> 2A) and ``linear_end`` (A -> A); ``output_proj``
      (A -> output_proj_dims, bias); ``embed_audio.embedding_projection`` (output_proj_dims -> text width)."""
    H, I, L, p = v.get("hidden_size"), v.get("intermediate_size"), v.get("num_hidden_layers"), v.get("patch_size")
    hd, nh, nkv = v.get("head_dim"), v.get("num_attention_heads"), v.get("num_key_value_heads")
    out = [_lin("patch_embedder.input_proj", VISION, 3 * p * p, H, False, 1),
           _lin("self_attn.q_proj", VISION, H, nh * hd, False, L), _lin("self_attn.k_proj", VISION, H, nkv * hd, False, L),
           _lin("self_attn.v_proj", VISION, H, nkv * hd, False, L), _lin("self_attn.o_proj", VISION, nh * hd, H, False, L),
           _lin("mlp.gate_proj", VISION, H, I, False, L), _lin("mlp.up_proj", VISION, H, I, False, L),
           _lin("mlp.down_proj", VISION, I, H, False, L),
           _lin("embed_vision.embedding_projection", PROJECTOR, H, v.text_hidden, False, 1)]
    a = _gemma4_audio(v)
    if a is not None:
        A, La, (c0, c1), o = a["hidden_size"], a["num_hidden_layers"], a["subsampling_conv_channels"], a["output_proj_dims"]
        out += [_lin("audio.input_proj_linear", VISION, (c0 // 4) * c1, A, False, 1),
                _lin("audio.ffw_layer_1", VISION, A, 4 * A, False, 2 * La),
                _lin("audio.ffw_layer_2", VISION, 4 * A, A, False, 2 * La),
                *(_lin(f"audio.self_attn.{n}", VISION, A, A, False, La)
                  for n in ("q_proj", "k_proj", "v_proj", "post", "relative_k_proj")),
                _lin("audio.lconv1d.linear_start", VISION, A, 2 * A, False, La),
                _lin("audio.lconv1d.linear_end", VISION, A, A, False, La),
                _lin("audio.output_proj", VISION, A, o, True, 1),
                _lin("embed_audio.embedding_projection", PROJECTOR, o, v.text_hidden, False, 1)]
    return out


def _gemma4_params(v: Vision) -> dict[str, int]:
    """The parameters that are not linear weights: the vision ``position_embedding_table`` (2 ×
    position_embedding_size × H); per vision layer ``q_norm`` / ``k_norm`` (head_dim; ``v_norm`` has no
    weight) and four H-wide norms; the audio tower's two sub-sampling ``Conv2d`` (1 -> c0 and c0 -> c1,
    3 × 3, no bias) and their bias-less LayerNorms (c0, c1), and per audio layer: the depthwise
    ``Conv1d`` (A × kernel), ``per_dim_scale`` (A / heads), nine A-wide norms (two per feed-forward, two
    in ``lconv1d``, ``norm_pre_attn``, ``norm_post_attn``, ``norm_out``). The embedders' norms have no
    weight."""
    H, L, hd = v.get("hidden_size"), v.get("num_hidden_layers"), v.get("head_dim")
    out = {"pos_embed": 2 * v.get("position_embedding_size") * H, "norms": L * (2 * hd + 4 * H)}
    a = _gemma4_audio(v)
    if a is not None:
        A, La, (c0, c1), k = (a["hidden_size"], a["num_hidden_layers"], a["subsampling_conv_channels"],
                              a["conv_kernel_size"])
        out["audio.subsample"] = 9 * c0 + 9 * c1 * c0 + c0 + c1
        out["audio.conv1d"] = La * A * k
        out["audio.norms"] = La * (9 * A + A // a["num_attention_heads"])
    return out


def _gemma4_buffers(v: Vision) -> tuple[int, ...]:
    """Buffers, one element count each: the vision rotary ``inv_freq`` / ``original_inv_freq`` (one per
    other position of head_dim / 2: ``compute_axial_rope_parameters``); ``std_bias`` / ``std_scale`` (H,
    under ``standardize``); four clipping scalars per ``Gemma4ClippableLinear`` (``_gemma4_clipped``); the
    audio ``rel_pos_enc.inv_timescales`` (A / 2) and one ``softcap`` scalar per audio layer."""
    half = v.get("head_dim") // 2
    out = [(half + 1) // 2] * 2 + ([v.get("hidden_size")] * 2 if v.get("standardize") else [])
    out += [1] * (4 * _gemma4_clipped(v))
    a = _gemma4_audio(v)
    if a is not None:
        out += [a["hidden_size"] // 2] + [1] * a["num_hidden_layers"]
    return tuple(out)


#: ``Gemma4ImageProcessor``'s supported ``max_soft_tokens`` (``image_processing_gemma4.py``
#: ``_SUPPORTED_SOFT_TOKENS``) and its default (the class attribute, 280).
GEMMA4_SOFT_TOKENS = (70, 140, 280, 560, 1120)
GEMMA4_DEFAULT_SOFT_TOKENS = 280


def gemma4_soft_budget(v: Vision) -> int:
    """The processor's ``max_soft_tokens``: the outer config's ``vision_soft_tokens_per_image`` (which
    transformers' ``convert_gemma4_weights.py`` writes beside the processor's value: 280 for every
    published size), else ``Gemma4ImageProcessor``'s default 280; one of ``GEMMA4_SOFT_TOKENS``."""
    from vramplan.arch.spec import ArchError

    n = v.outer.get("vision_soft_tokens_per_image") or GEMMA4_DEFAULT_SOFT_TOKENS
    if n not in GEMMA4_SOFT_TOKENS:
        raise ArchError(f"gemma4: vision_soft_tokens_per_image {n} is not one the processor supports "
                        f"{GEMMA4_SOFT_TOKENS}")
    return n


def gemma4_resize(v: Vision, width: int, height: int) -> tuple[int, int]:
    """(height, width) in pixels of a W × H image after ``Gemma4ImageProcessor``'s
    ``aspect_ratio_preserving_resize`` (transformers 5.24 ``image_processing_gemma4.py``
    ``get_aspect_ratio_preserving_size``): scaled to the area of max_patches = max_soft_tokens · k²
    patches of p² pixels (k = ``pooling_kernel_size``), each side rounded down to a multiple of k·p; a
    side that rounds to 0 becomes k·p and the other floor(its ratio)·k·p, at most (max_patches / k²)·k·p."""
    from vramplan.arch.spec import ArchError

    p, k = v.get("patch_size"), v.get("pooling_kernel_size")
    max_patches = gemma4_soft_budget(v) * k * k
    factor = math.sqrt(max_patches * p * p / (height * width))
    side = k * p
    th, tw = int(math.floor(factor * height / side)) * side, int(math.floor(factor * width / side)) * side
    if th == 0 and tw == 0:
        raise ArchError(f"gemma4: a {width}x{height} image resizes to 0 x 0 (the processor refuses it)")
    longest = (max_patches // (k * k)) * side
    if th == 0:
        th, tw = side, min(int(math.floor(width / height)) * side, longest)
    elif tw == 0:
        tw, th = side, min(int(math.floor(height / width)) * side, longest)
    return th, tw


def _gemma4_grid(v: Vision, width: int, height: int) -> tuple[int, int, int]:
    """``Gemma4ImageProcessor._preprocess`` (``image_processing_gemma4.py``): the resized image
    (``gemma4_resize``) is cut into (h/p)·(w/p) patches and padded to max_patches = max_soft_tokens · k²
    (``pad_along_first_dim``, position (-1, -1)): the tower attends over all max_patches (the padding
    masked), ``Gemma4VisionPooler`` averages k × k patches into (h/p)·(w/p) / k² soft tokens
    (``num_soft_tokens_per_image``) and strips the padding; ``processing_gemma4.py``
    ``replace_image_token`` writes ``<boi>`` + one image token per soft token + ``<eoi>``:
    (max_patches, soft tokens, soft tokens + 2)."""
    p, k = v.get("patch_size"), v.get("pooling_kernel_size")
    h, w = gemma4_resize(v, width, height)
    soft = (h // p) * (w // p) // (k * k)
    return gemma4_soft_budget(v) * k * k, soft, soft + 2


def _gemma4_notes(v: Vision) -> tuple[str, ...]:
    """The audio tower (E2B / E4B): its weights are priced, its inputs (``input_features``) are not."""
    if _gemma4_audio(v) is None:
        return ()
    return ("gemma4: audio inputs are not modelled (the audio tower's weights are priced; --images prices the "
            "image inputs only)",)


def _gemma4_sliding_image_mask(v: Vision) -> bool:
    """``Gemma4Model.forward`` (``modeling_gemma4.py``): with ``use_bidirectional_attention == "vision"``
    (every published Gemma 4's ``text_config``) and the processor's ``mm_token_type_ids``, the masks come
    from ``create_masks_for_vision_model``: the sliding-window mask with a ``blockwise_overlay``
    ``or_mask_function`` (each image's tokens attend to each other), which makes ``create_causal_mask``
    drop its skip (``allow_is_causal_skip = False``, ``masking_utils.py``): sdpa gets a boolean
    (b, 1, s, s) mask at any length; the full-attention mask stays causal (skipped under sdpa)."""
    text = v.outer.get("text_config")
    return isinstance(text, Mapping) and text.get("use_bidirectional_attention") == "vision"


def _no_images(v: Vision, width: int, height: int) -> tuple[int, int, int]:
    from vramplan.arch.spec import ArchError

    raise ArchError(f"{v.tower.model_type}: images are not modelled for this tower (its weights are priced; "
                    "use --images 0)")


_QWEN25_DEFAULTS = dict(depth=32, hidden_size=3584, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                        spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=3584,
                        fullatt_block_indexes=[7, 15, 23, 31])
_QWEN3_DEFAULTS = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, in_channels=3, patch_size=16,
                       spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=3584, num_position_embeddings=2304,
                       deepstack_visual_indexes=[8, 16, 24])
_QWEN35_DEFAULTS = {k: v for k, v in _QWEN3_DEFAULTS.items() if k != "deepstack_visual_indexes"}

#: Every vision tower kind (the one place a tower is registered), by ``vision_config`` ``model_type``.
TOWERS: dict[str, Tower] = {t.model_type: t for t in (
    Tower("qwen2_5_vl_vision", "models/qwen2_5_vl/modeling_qwen2_5_vl.py (Qwen2_5_VisionTransformerPretrainedModel)",
          ("model.visual",), _QWEN25_DEFAULTS, _qwen25_linears, _qwen25_params, _qwen_buffers, _qwen_grid, pixels=QWEN25_PIXELS,
          walk="qwen2_5"),
    Tower("qwen3_vl_vision", "models/qwen3_vl/modeling_qwen3_vl.py (Qwen3VLVisionModel)",
          ("model.visual",), _QWEN3_DEFAULTS, _qwen3_linears, _qwen3_params, _qwen_buffers, _qwen_grid, pixels=QWEN3_PIXELS,
          deepstack=True, walk="qwen3_vit"),
    Tower("qwen3_vl_moe_vision", "models/qwen3_vl_moe/modeling_qwen3_vl_moe.py (Qwen3VLMoeVisionModel)",
          ("model.visual",), _QWEN3_DEFAULTS, _qwen3_linears, _qwen3_params, _qwen_buffers, _qwen_grid, pixels=QWEN3_PIXELS,
          deepstack=True, walk="qwen3_vit"),
    # Qwen3.5: Qwen3-VL's tower without deepstack mergers (Qwen3_5VisionModel); its processor is assumed
    # to keep Qwen3-VL's pixel bounds. Like Qwen3-VL's, the model names no input embedding (no
    # ``_input_embed_layer``: ``get_input_embeddings`` raises), so ``enable_input_require_grads`` leaves it
    # alone and a frozen tower saves nothing (walk ``qwen3_vit``)
    Tower("qwen3_5_vision", "models/qwen3_5/modeling_qwen3_5.py (Qwen3_5VisionModel)",
          ("model.visual",), _QWEN35_DEFAULTS, _qwen3_linears, _qwen3_params, _qwen_buffers, _qwen_grid, pixels=QWEN3_PIXELS,
          walk="qwen3_vit"),
    Tower("qwen3_5_moe_vision", "models/qwen3_5_moe/modeling_qwen3_5_moe.py (Qwen3_5MoeVisionModel)",
          ("model.visual",), _QWEN35_DEFAULTS, _qwen3_linears, _qwen3_params, _qwen_buffers, _qwen_grid, pixels=QWEN3_PIXELS,
          walk="qwen3_vit"),
    Tower("llama4_vision_model", "models/llama4/modeling_llama4.py (Llama4VisionModel, Llama4MultiModalProjector)",
          ("vision_model", "multi_modal_projector"),
          dict(hidden_size=768, num_hidden_layers=34, num_attention_heads=16, num_channels=3, intermediate_size=5632,
               vision_output_dim=7680, image_size=448, patch_size=14, projector_input_dim=4096,
               projector_output_dim=4096),
          _llama4_linears, _llama4_params, _llama4_buffers, _no_images, text_prefix="language_model"),
    Tower("siglip_vision_model", "models/siglip/modeling_siglip.py (SiglipVisionModel) + models/gemma3/"
          "modeling_gemma3.py (Gemma3MultiModalProjector)", ("model.vision_tower", "model.multi_modal_projector"),
          dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
               image_size=224, patch_size=16, vision_use_head=True),
          _siglip_linears, _siglip_params, _siglip_buffers, _siglip_grid, inputs="pixel_values", walk="siglip"),
    Tower("pixtral", "models/pixtral/modeling_pixtral.py (PixtralVisionModel) + models/mistral3/modeling_mistral3.py "
          "(Mistral3MultiModalProjector)", ("model.vision_tower", "model.multi_modal_projector"),
          dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, num_channels=3,
               image_size=1024, patch_size=16, head_dim=None),
          _pixtral_linears, _pixtral_params, _pixtral_buffers, _pixtral_grid, inputs="image_sizes", walk="pixtral"),
    Tower("gemma4_vision", "models/gemma4/modeling_gemma4.py (Gemma4VisionModel, Gemma4AudioModel, "
          "Gemma4MultimodalEmbedder)", ("model.vision_tower", "model.embed_vision", "model.audio_tower", "model.embed_audio"),
          dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
               num_key_value_heads=12, head_dim=64, patch_size=16, position_embedding_size=10240,
               use_clipped_linears=False, standardize=False, pooling_kernel_size=3),
          _gemma4_linears, _gemma4_params, _gemma4_buffers, _gemma4_grid, inputs="position_ids", walk="gemma4_vit",
          attn_default=("audio_config",), last_unconverted=True, notes=_gemma4_notes,
          sliding_image_mask=_gemma4_sliding_image_mask, image_idle=("audio.", "embed_audio.")),
)}

#: Outer model_type -> the ``vision_config`` model_type its config class fills in when the config.json
#: omits it (Qwen2.5-VL's published configs do).
DEFAULT_TOWER: dict[str, str] = {"qwen2_5_vl": "qwen2_5_vl_vision", "qwen3_vl": "qwen3_vl_vision",
                                 "qwen3_vl_moe": "qwen3_vl_moe_vision", "mistral3": "pixtral",
                                 "qwen3_5": "qwen3_5_vision", "qwen3_5_moe": "qwen3_5_moe_vision",
                                 "llama4": "llama4_vision_model",
                                 "gemma3": "siglip_vision_model", "gemma4": "gemma4_vision"}


def vision_of(outer: Mapping[str, Any], text_hidden: int) -> Vision | None:
    """The ``Vision`` of a multimodal config.json, None when it has no ``vision_config`` of a known tower."""
    vc = outer.get("vision_config")
    if not isinstance(vc, Mapping):
        return None
    kind = vc.get("model_type")
    if not kind or kind == outer.get("model_type"):  # omitted, or an old Qwen2.5-VL save's (its config fixes it)
        kind = DEFAULT_TOWER.get(outer.get("model_type", ""))
    tower = TOWERS.get(kind or "")
    if tower is None:
        return None
    cfg = dict(vc)
    return Vision(tower, cfg, dict(outer), text_hidden)
