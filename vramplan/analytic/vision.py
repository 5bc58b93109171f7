"""The vision tower of a multimodal model: its weights and what its images leave alive (bytes).

Symbols: the tower's linears (``Vision.linears``: blocks and projector), n_img = images per sample ×
batch, per image (patches P, merged features F, placeholder tokens T) from ``Vision.image``.
Sources: transformers 5.24 ``modeling_qwen2_5_vl.py`` / ``modeling_qwen3_vl.py`` /
``modeling_mistral3.py`` / ``modeling_gemma3.py`` (``get_image_features``, ``get_placeholder_mask``,
``masked_scatter``), ``modeling_siglip.py``;
bitsandbytes 0.50.2 for the quantized linears (``weights.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.analytic import weights as wt
from vramplan.arch.vision import PROJECTOR
from vramplan.scenario import Scenario, VisionMode

if TYPE_CHECKING:
    from vramplan.arch.spec import Arch, Linear
    from vramplan.arch.vision import Vision


def quantizes_tower(arch: "Arch", s: Scenario) -> bool:
    """Whether bitsandbytes replaces the tower's linears: a quantized base and the tower not skipped
    (``VisionMode.QUANTIZED``, or ``TRAINED``: peft's LoRA then wraps the ``Linear4bit``)."""
    return arch.vision is not None and s.quant.value != "none" and s.vision is not VisionMode.FROZEN


def tower_quantized_linears(arch: "Arch", s: Scenario) -> tuple["Linear", ...]:
    """The tower linears bitsandbytes replaces (joined to the decoder's 4-bit / int8 rows)."""
    return arch.vision.quantizable_linears() if quantizes_tower(arch, s) else ()


def tower_float_params(v: "Vision", quantized: bool) -> int:
    """Tower parameters kept in floating point: everything but the linear weights bitsandbytes packs
    (biases, norms, patch embedding, position table), or every parameter when nothing is quantized."""
    return v.other_params + v.bias_params if quantized else v.total_params


def tower_buffer_bytes(v: "Vision") -> int:
    """The tower's fp32 buffers (rotary ``inv_freq`` / ``original_inv_freq``), each rounded to the
    allocator's 512 B block (``weights.model_buffer_bytes``' rule)."""
    return sum(-(-4 * n // wt.ALLOC_BLOCK) * wt.ALLOC_BLOCK for n in v.tower.buffers(v))


def image_tokens(v: "Vision", s: Scenario) -> int:
    """Placeholder tokens per sample: images × tokens per image (``Vision.image``). They are part of
    ``--seq`` (frameworks count them in ``max_length`` / ``cutoff_len``: the template expands the image
    placeholders before truncating)."""
    return s.images * v.image(*s.image_wh)[2] if s.images else 0


def tower_trains(arch: "Arch", s: Scenario) -> bool:
    return arch.vision is not None and s.vision is VisionMode.TRAINED


def tower_lora_targets(arch: "Arch", s: Scenario) -> tuple["Linear", ...]:
    """The tower linears peft adapts when the tower trains: every one under ``all-linear`` (peft's
    ``_maybe_include_all_linear_layers`` keeps every ``nn.Linear`` but the output head), else those
    whose leaf name a target names (peft's suffix match)."""
    if not tower_trains(arch, s) or s.full:
        return ()
    lins = arch.vision.linears()
    if s.targets == ("all-linear",):
        return lins
    return tuple(lin for lin in lins if lin.name.split(".")[-1] in s.targets)


def tower_image_targets(arch: "Arch", s: Scenario) -> tuple["Linear", ...]:
    """The trained tower's LoRA targets an image batch runs (``tower_lora_targets`` but the record's
    ``Tower.image_idle`` ones: Gemma 4's audio tower gets no ``input_features``, so its adapters get no
    gradient and torch's AdamW makes no state for them, ``_init_group`` skipping ``p.grad is None``)."""
    idle = arch.vision.tower.image_idle if arch.vision is not None else ()
    return tuple(lin for lin in tower_lora_targets(arch, s) if not (idle and lin.name.startswith(idle)))


# ------------------------------------------------------------------------------ images
def _blk(n: int) -> int:
    """``n`` bytes in the caching allocator's 512 B blocks."""
    return -(-n // wt.ALLOC_BLOCK) * wt.ALLOC_BLOCK


def pixel_bytes(v: "Vision", s: Scenario) -> int:
    """The batch's image inputs per sample, alive all step (the collator's tensors, fp32 as the
    processors return them): Qwen's ``pixel_values`` (patches, C·tp·p²), ``image_grid_thw``
    (int64, images × 3) and ``mm_token_type_ids`` (int64 per token); Pixtral's ``pixel_values`` (images, C, h, w) and ``image_sizes``. Summed
    per sample (one tensor per batch in the trace: the blocks of the per-sample figure are an upper
    bound by < 512 B)."""
    if not s.images:
        return 0
    patches, features, tokens = v.image(*s.image_wh)
    if v.tower.inputs == "pixel_values":  # Gemma 3: (images, C, S, S) at the tower's image_size, nothing else
        S = v.get("image_size")
        return _blk(4 * s.images * v.get("num_channels") * S * S)
    if v.tower.inputs == "position_ids":
        return gemma4_pixel_bytes(v, s, patches)
    if v.tower.inputs == "grid_thw":
        p, tp, C = v.get("patch_size"), v.get("temporal_patch_size"), v.get("in_channels")
        # + the processor's int64 ``mm_token_type_ids`` (one per token)
        return _blk(4 * s.images * patches * C * tp * p * p) + _blk(8 * 3 * s.images) + _blk(8 * s.seq)
    P = v.get("patch_size")
    return _blk(4 * s.images * patches * v.get("num_channels") * P * P) + _blk(8 * 2 * s.images)


def gemma4_pixel_bytes(v: "Vision", s: Scenario, patches: int) -> int:
    """Gemma 4's image inputs per sample (transformers 5.24 ``image_processing_gemma4.py``
    ``_preprocess``, ``processing_gemma4.py``): ``pixel_values`` (images, max_patches, 3·p²) in fp32,
    every image padded to max_patches (``patches``, ``Vision.image``) whatever its size;
    ``image_position_ids`` (images, max_patches, 2) int64; and the processor's int64
    ``mm_token_type_ids`` (``return_mm_token_type_ids = True``: one per token, which the bidirectional
    image mask reads)."""
    p = v.get("patch_size")
    return _blk(4 * s.images * patches * 3 * p * p) + _blk(8 * 2 * s.images * patches) + _blk(8 * s.seq)


def tower_saved_bytes(arch: "Arch", s: Scenario, act_bytes: int, weight_bytes: int, resid0: int) -> tuple[int, int]:
    """(bytes per sample, bytes per step) the images leave saved from the forward until the decoder's
    backward is done, under gradient checkpointing with a frozen (or quantized) tower.

    transformers 5.24 ``PreTrainedModel.enable_input_require_grads`` (which peft's and the Trainer's
    checkpointing call) hooks the input embeddings of *every* ``PreTrainedModel`` submodule: the
    vision tower's too (``_input_embed_layer = "patch_embed"``). The patch embedding's output then
    requires grad, so the frozen tower records its graph and the decoder's backward flows on through
    the merger and every tower block down to the patch embedding (input gradients only). Without
    checkpointing nothing in the tower requires grad and it saves nothing. Priced (Qwen2.5-VL,
    ``modeling_qwen2_5_vl.py``; P patches, F = P/merge² features, Hv tower width, M = Hv·merge²,
    a = the tower's activation dtype, autocast's):

    - the patch embedding's output and each checkpointed block's input: (1 + depth)·P·Hv·a;
    - the rotary cos / sin every block takes (checkpointed with it): 2·P·(Hv/heads)·4 (fp32);
    - the merger: ``ln_q``'s fp32 input and rsqrt (4·P·Hv + 4·P), ``mlp.0``'s output kept by the
      GELU (F·M·a), and, under autocast with wider weights, the bf16 copies of ``mlp.0`` / ``mlp.2``
      (weight and bias) each linear keeps for its input gradient (per step);
    - the decoder's embedding output stays alive beside the scattered copy that is layer 0's
      checkpointed input: b·s·H·resid0 per sample (``keeps_embedding_copy``, priced by the caller).
    Returns (per sample, per step); (0, 0) without images or checkpointing."""
    v = arch.vision
    if v is None or not s.images or not s.grad_checkpointing or s.full or tower_trains(arch, s):
        return 0, 0
    walk = SAVED.get(v.tower.walk)
    if walk is None:
        return 0, 0
    per, step = walk(v, s, act_bytes, weight_bytes)
    # a quantized tower's projector linears are bitsandbytes layers: no autocast weight copies to keep
    # (a projector with no linear, Gemma 3's bare ``mm_input_projection_weight``, keeps its copy)
    quantized_projector = quantizes_tower(arch, s) and any(lin.group == PROJECTOR for lin in v.linears())
    return per, (0 if quantized_projector else step)


def keeps_embedding_copy(arch: "Arch", s: Scenario) -> bool:
    """Under checkpointing with images, the decoder's embedding output (which requires grad: the
    input-embedding hook) stays alive beside the placeholder-scattered copy that is layer 0's
    checkpointed input (``masked_scatter``, ``get_placeholder_mask``): one more b·s·H in the
    embedding's dtype, seen in the trace for every tower here; without checkpointing nothing there
    requires grad."""
    return arch.vision is not None and bool(s.images) and s.grad_checkpointing and not s.full


def _qwen3_saved(v: "Vision", s: Scenario, a: int, w: int) -> tuple[int, int]:
    """Qwen3-VL (``modeling_qwen3_vl.py``) and Qwen3.5 (``modeling_qwen3_5.py``,
    ``modeling_qwen3_5_moe.py``): ``Qwen3VLVisionModel`` / ``Qwen3_5VisionModel`` /
    ``Qwen3_5MoeVisionModel`` expose no input embeddings (no ``_input_embed_layer``:
    ``get_input_embeddings`` raises ``NotImplementedError``), so ``enable_input_require_grads`` leaves
    the tower alone and the frozen tower saves nothing. Its deepstack features are added to the first decoder layers'
    hidden states through a clone (``_deepstack_process``), which replaces the layer output it copies
    (the same size): nothing more."""
    return 0, 0


def _qwen25_saved(v: "Vision", s: Scenario, a: int, w: int) -> tuple[int, int]:
    patches, features, _ = v.image(*s.image_wh)
    P, F = s.images * patches, s.images * features
    Hv, D, heads = v.get("hidden_size"), v.get("depth"), v.get("num_heads")
    M = Hv * v.get("spatial_merge_size") ** 2
    out = v.get("out_hidden_size")
    per = ((1 + D) * _blk(P * Hv * a) + 2 * _blk(4 * P * (Hv // heads))
           + _blk(4 * P * Hv) + _blk(4 * P) + _blk(F * M * a))
    step = (_blk(a * M * M) + _blk(a * M) + _blk(a * out * M) + _blk(a * out)) if w != a else 0
    return per, step


def _pixtral_saved(v: "Vision", s: Scenario, a: int, w: int) -> tuple[int, int]:
    """Pixtral + the Mistral 3 projector (``modeling_pixtral.py``, ``modeling_mistral3.py``): the
    patch convolution's output (P·Hv·a); ``ln_pre``'s fp32 input and rsqrt; the residual stream in
    the norms' weight dtype (an fp32 weight promotes it: RMSNorm returns ``weight * x``), so every
    block input and the last block's output, which the projector's RMSNorm saves with its rsqrt:
    (layers + 1)·P·Hv·w; the 2-D rotary cos / sin (2·P·head_dim, fp32); the projector's
    ``linear_1`` output kept by the GELU (F·T·a) and, under autocast with wider weights, the copies
    of ``merging_layer`` / ``linear_1`` / ``linear_2`` (per step). The block-diagonal attention mask
    (P_batch² in the norms' dtype) is ``tower_mask_bytes``'."""
    patches, features, _ = v.image(*s.image_wh)
    P, F = s.images * patches, s.images * features
    Hv, L = v.get("hidden_size"), v.get("num_hidden_layers")
    hd = v.get("head_dim") or Hv // v.get("num_attention_heads")
    m = v.outer.get("spatial_merge_size", 2)
    T = v.text_hidden
    per = (_blk(P * Hv * a) + _blk(4 * P * Hv) + _blk(4 * P) + (L + 1) * _blk(P * Hv * w) + _blk(4 * P)
           + 2 * _blk(4 * P * hd) + _blk(F * T * a))
    step = (_blk(a * Hv * m * m * Hv) + _blk(a * T * Hv) + _blk(a * T * T)) if w != a else 0
    return per, step


def _gemma4_saved(v: "Vision", s: Scenario, a: int, w: int) -> tuple[int, int]:
    """Gemma 4 (``modeling_gemma4.py``): ``Gemma4VisionModel`` exposes no input embeddings (no
    ``embed_tokens`` / ``embeddings`` / ``model`` / ``language_model``, and its ``base_model`` is itself:
    ``get_input_embeddings`` raises ``NotImplementedError``, which ``enable_input_require_grads``
    skips), so no hook makes the patch embedder's output require grad; the frozen tower, the pooler and
    ``embed_vision`` run without a graph and ``masked_scatter`` takes their features as a constant
    source. The images leave nothing saved in the tower (their placeholders' scatter copy is
    ``keeps_embedding_copy``'s)."""
    return 0, 0


def sliding_image_mask(arch: "Arch", s: Scenario, attn: str) -> bool:
    """Whether a batch with images gives the decoder's sliding-window layers sdpa's mask from the first
    token on, as if seq had reached the window: the tower record says its decoder builds a sliding mask
    for images (``Tower.sliding_image_mask``: Gemma 4's bidirectional image blocks). Every sliding layer
    then saves what it saves past the window (``activations.sliding_sdpa_saved``: K/V repeated per query
    head, the kernel's additive copy of the mask), and what the family prices per token·s past the
    window (Gemma 4's ``mixers.gemma4_model_saved``: the boolean (b, 1, s, s) mask checkpointing keeps)
    applies at any length: ``terms`` sets the window to 0. Measured on the trace (shrunk
    gemma-4-E2B-it, one 224×224 image, seq 256 < window 512): the sliding layer's sdpa saves
    2·(q − kv)·2 B per token + 2 B per token·s more, and checkpointing keeps the 64 KiB mask. False for
    other towers, no images, or eager / flash attention."""
    v = arch.vision
    return v is not None and bool(s.images) and attn == "sdpa" and v.tower.sliding_image_mask(v)


def _siglip_saved(v: "Vision", s: Scenario, a: int, w: int) -> tuple[int, int]:
    """SigLIP + Gemma 3's projector (transformers 5.24 ``models/siglip/modeling_siglip.py``
    ``SiglipVisionModel``, ``models/gemma3/modeling_gemma3.py`` ``Gemma3MultiModalProjector``).
    ``SiglipVisionModel._input_embed_layer = "patch_embedding"`` (found under ``embeddings`` by
    ``PreTrainedModel.get_input_embeddings``): the hook makes the Conv2d's output a leaf that requires
    grad, and ``_set_gradient_checkpointing`` checkpoints every ``SiglipEncoderLayer`` (a
    ``GradientCheckpointingLayer``) with the decoder's. Per image (P patches, F = ``mm_tokens_per_image``
    features, D tower width, T text width; a = the tower's activation dtype, w = its weights', r = the
    residual stream's: the patch output plus the position table in w, max(a, w) under autocast; n = the
    LayerNorm's dtype, fp32 under autocast, else r):

    - the patch convolution's output (the leaf, kept by its ``AccumulateGrad`` node): P·D·a;
    - each checkpointed encoder layer's input (layer 0's: the embeddings): layers·P·D·r;
    - ``post_layernorm`` (``native_layer_norm``): its input in n, mean and rstd (fp32, P each);
    - the projector: ``avg_pool`` (``AvgPool2d``) keeps its input, the ``.contiguous()`` copy of the
      transposed output (P·D·n); ``mm_soft_emb_norm`` (``Gemma3RMSNorm``, fp32: ``x.float()``) keeps
      the pooled x (F·D·4) and the rsqrt (F·4);
    - per step: the RMSNorm's ``1 + weight.float()`` (D·4) that its last multiply keeps; under
      autocast with wider weights, the ``mm_input_projection_weight`` copy the bare ``torch.matmul``
      keeps (D·T·a); under autocast with 16-bit weights, the ``post_layernorm`` weight and bias fp32
      copies;
    - a loop that holds the model output (``--hold-logits``) keeps ``image_outputs`` too:
      ``last_hidden_state`` (P·D·n) and the projector's ``type_as`` output (F·T·n).
    The encoder layers' attention and MLP are recomputed in backward (checkpointed): nothing saved."""
    from vramplan.scenario import Hold

    patches, features, _ = v.image(*s.image_wh)
    P, F = s.images * patches, s.images * features
    D, L, T = v.get("hidden_size"), v.get("num_hidden_layers"), v.text_hidden
    autocast = s.autocast and a == 2
    r = max(a, w) if autocast else w
    n = 4 if autocast else r
    per = (_blk(P * D * a) + L * _blk(P * D * r) + _blk(P * D * n) + 2 * _blk(4 * P) + _blk(P * D * n)
           + _blk(4 * F * D) + _blk(4 * F))
    if s.hold_logits is not Hold.NONE:
        per += _blk(P * D * n) + _blk(F * T * n)
    step = (_blk(4 * D) + (_blk(a * D * T) if autocast and w != a else 0)
            + (2 * _blk(4 * D) if autocast and w != 4 else 0))
    return per, step


def tower_mask_bytes(arch: "Arch", s: Scenario, w: int) -> int:
    """Pixtral's block-diagonal attention mask over every image of the micro-batch
    (``modeling_pixtral.py::generate_block_attention_mask``: (1, 1, P_batch, P_batch) filled in the
    hidden states' dtype), which each checkpointed block keeps as an input: bytes per sample², i.e.
    w·P² for P patches per sample (× batch²). 0 for other towers, or without checkpointing."""
    v = arch.vision
    if v is None or v.tower.walk != "pixtral" or not s.images or not s.grad_checkpointing or s.full:
        return 0
    P = s.images * v.image(*s.image_wh)[0]
    return w * P * P


#: ``Tower.walk`` -> the saved bytes of its images under checkpointing (``tower_saved_bytes``).
SAVED = {"qwen2_5": _qwen25_saved, "qwen3_vit": _qwen3_saved, "pixtral": _pixtral_saved, "siglip": _siglip_saved,
         "gemma4_vit": _gemma4_saved}


def vision_notes(arch: "Arch", s: Scenario) -> tuple[str, ...]:
    """The breakdown notes of a multimodal model's tower (none for a text-only model)."""
    v = arch.vision
    if v is None:
        return (f"--images {s.images}: {arch.name} has no vision tower here, images ignored",) if s.images else ()
    out: tuple[str, ...] = v.tower.notes(v)
    if s.images:
        patches, features, tokens = v.image(*s.image_wh)
        out += (f"{s.images} image(s) of {s.image_size} per sample: {patches} patches, {tokens} placeholder tokens "
                f"each, counted in --seq {s.seq}",)
        if tokens * s.images > s.seq:
            out += (f"the images' {tokens * s.images} placeholder tokens exceed --seq {s.seq}: the frameworks "
                    "truncate or drop such samples",)
        if tower_trains(arch, s):
            out += ("--vision trained: the tower's adapters, gradients and optimizer state are priced; the "
                    "activations its trained blocks save are not derived yet (the trace counts them)",)
        elif not v.tower.walk:
            out += (f"{v.tower.source.split(' ')[0]}: what its images leave saved under checkpointing is not derived yet "
                    "(the pixel values are priced; the trace counts the rest)",)
        out += tower_working_note(arch, s)
    return out


def tower_working_note(arch: "Arch", s: Scenario) -> tuple[str, ...]:
    """What the images' estimate leaves out under eager attention: the tower's own working memory (a
    block's forward, and under checkpointing its recomputation and backward, which run after the
    decoder's backward, ``torch.utils.checkpoint``). Eager attention materialises heads·P² scores per
    image there (``eager_attention_forward``: fp32 softmax, then its copy in the query's dtype), which
    can pass the decoder's peak: measured on Gemma 3's full-width SigLIP (4096 patches, 16 heads) under
    a small decoder, the trace's peak was the tower's backward, 6× the analytic figure. Under sdpa its
    kernels keep O(P) state and the decoder's loss is the peak for every registry checkpoint measured."""
    if not s.images or s.attn.value != "eager":
        return ()
    return ("--attn eager with images: the tower's own working memory (its blocks' eager attention scores, "
            "heads x patches² per image, in its forward and, under checkpointing, its recomputed backward) is "
            "not priced and can be the step's peak (the trace counts it)",)
