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
