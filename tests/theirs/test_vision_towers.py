"""The vision tower records held to transformers 5.24's own modules (ours vs theirs): every tower in
``vramplan.arch.vision.TOWERS`` built alone on the meta device from a small config; its parameter
count, its ``nn.Linear`` weights and its buffers. The towers of the multimodal families in
``tests/families`` are also checked inside their whole models there; this covers the towers whose
decoders other families price (Qwen3.5, Llama 4)."""

from __future__ import annotations

import pytest

from vramplan.arch.vision import TOWERS, Vision

_QWEN = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
             num_position_embeddings=64)


def _case(kind):
    if kind == "llama4_vision_model":
        from transformers import Llama4VisionConfig
        from transformers.models.llama4.modeling_llama4 import Llama4VisionModel

        cfg = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                   patch_size=14, vision_output_dim=160, projector_input_dim=160, projector_output_dim=160)
        # the model's multi_modal_projector.linear_1 (vision_output_dim -> text width) is outside Llama4VisionModel
        return Llama4VisionModel(Llama4VisionConfig(**cfg)), Vision(TOWERS[kind], cfg, {"model_type": "llama4"}, 64), 160 * 64
    if kind == "qwen3_5_vision":
        from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

        return Qwen3_5VisionModel(Qwen3_5VisionConfig(**_QWEN)), Vision(TOWERS[kind], _QWEN, {}, 256), 0
    if kind == "qwen3_5_moe_vision":
        from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeVisionConfig
        from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeVisionModel

        return Qwen3_5MoeVisionModel(Qwen3_5MoeVisionConfig(**_QWEN)), Vision(TOWERS[kind], _QWEN, {}, 256), 0
    pytest.skip(f"{kind}: checked inside its family's shrunk model (tests/families)")


@pytest.mark.torch
@pytest.mark.parametrize("kind", sorted(TOWERS))
def test_tower_counts_match_transformers(kind):
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        model, v, outside = _case(kind)
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert (v.total_params - outside, v.linear_weight_params - outside) == (total, linear)
    fp32 = sum(b.numel() * b.element_size() // 4 for b in model.buffers())
    assert sum(v.tower.buffers(v)) == fp32


def _gemma4_processor(**kw):
    """transformers' own Gemma 4 image processor with its class defaults (the torchvision backend, or the PIL
    one, whose resize rule is the same ``get_aspect_ratio_preserving_size``, when torchvision is absent)."""
    try:
        from transformers.models.gemma4.image_processing_gemma4 import Gemma4ImageProcessor as P
    except ImportError:
        from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil as P
    return P(**kw)


_GEMMA4_SIZES = [(896, 672), (224, 224), (1024, 512), (640, 480), (100, 3000), (3000, 100), (1, 2048), (50, 50)]


@pytest.mark.torch
@pytest.mark.parametrize("budget", [280, 70])
@pytest.mark.parametrize("wh", _GEMMA4_SIZES, ids=[f"{w}x{h}" for w, h in _GEMMA4_SIZES])
def test_gemma4_image_grid_matches_the_processor(wh, budget):
    """Ours vs theirs: ``Vision.image`` (the Gemma 4 tower's grid) and the trace's inputs
    (``build.vision_inputs``) against ``Gemma4ImageProcessor`` run on a synthetic W × H image: the padded
    patch count, the soft tokens, the (x, y) patch positions, and the placeholder text
    (``Gemma4Processor.replace_image_token``)."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

    from vramplan.arch import resolve
    from vramplan.errors import VramplanError
    from vramplan.hf.build import _gemma4_inputs

    base = resolve("gemma-4-E2B-it").vision
    v = Vision(base.tower, base.config, {**base.outer, "vision_soft_tokens_per_image": budget}, base.text_hidden)
    w, h = wh
    processor = _gemma4_processor(max_soft_tokens=budget)
    try:
        theirs = processor(images=np.zeros((h, w, 3), dtype=np.uint8), return_tensors="pt")
    except ValueError:  # the processor refuses an image that resizes to 0 x 0: so do we, in one line
        with pytest.raises(VramplanError, match="resizes to 0 x 0"):
            v.image(w, h)
        return
    patches, soft, tokens = v.image(w, h)
    assert (patches, soft) == (theirs["pixel_values"].shape[1], int(theirs["num_soft_tokens_per_image"][0]))
    ph = SimpleNamespace(boi_token="<B>", eoi_token="<E>", image_token="<I>")
    text = Gemma4Processor.replace_image_token(ph, {"num_soft_tokens_per_image": [soft]}, 0)
    assert tokens == text.count("<") and text.count("<I>") == soft
    ids = torch.zeros(1, tokens + 2, dtype=torch.long)
    ours = _gemma4_inputs(v, 1, w, h, patches, ids, 0)
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert ours["pixel_values"].dtype == theirs["pixel_values"].dtype
    assert torch.equal(ours["image_position_ids"], theirs["image_position_ids"].long())


def test_gemma4_registry_soft_tokens_are_the_processor_default():
    """The published Gemma 4 entries carry the processor's default soft-token budget (280), so the grid
    reads the processor's own value."""
    pytest.importorskip("transformers")
    from vramplan.arch import resolve

    default = _gemma4_processor().max_soft_tokens
    for name in ("gemma-4-E2B-it", "gemma-4-E4B-it", "gemma-4-26B-A4B-it", "gemma-4-31B-it"):
        v = resolve(name).vision
        assert v.outer.get("vision_soft_tokens_per_image", default) == default
        assert v.get("pooling_kernel_size") == _gemma4_processor().pooling_kernel_size
        assert v.get("patch_size") == _gemma4_processor().patch_size


def _hooked_tower(kind):
    """The tower built alone (meta device) with ``enable_input_require_grads`` applied: whether transformers
    hooked an input embedding on it (``PreTrainedModel.get_input_embeddings``; the hook is what makes a frozen
    tower record its graph under checkpointing)."""
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        if kind == "siglip_vision_model":
            from transformers import SiglipVisionConfig, SiglipVisionModel

            model = SiglipVisionModel(SiglipVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                                         num_attention_heads=2, image_size=56, patch_size=14))
        else:
            model = _case(kind)[0]
    model.enable_input_require_grads()
    return bool(model._require_grads_hooks)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["qwen3_5_vision", "qwen3_5_moe_vision", "siglip_vision_model"])
def test_tower_walk_matches_the_input_embedding_hook(kind):
    """A tower's walk saves under checkpointing exactly when transformers 5.24 hooks its input embeddings:
    SigLIP's ``_input_embed_layer = "patch_embedding"`` (under ``embeddings``) is hooked; Qwen3.5's
    ``Qwen3_5VisionModel`` / ``Qwen3_5MoeVisionModel`` name none (``get_input_embeddings`` raises
    ``NotImplementedError``, skipped), so they take Qwen3-VL's walk, which saves nothing."""
    from vramplan.analytic.vision import SAVED

    pytest.importorskip("transformers")
    walk = TOWERS[kind].walk
    assert walk in SAVED
    assert _hooked_tower(kind) == (walk != "qwen3_vit")
