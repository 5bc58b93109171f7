"""One row per family: the family record held to transformers, bitsandbytes and the trace.

``SHRUNK`` names, for every ``model_type`` in ``vramplan.arch.families.FAMILIES``, a registry entry
and the config overrides that shrink it to a 2-layer model of small widths (a hybrid's overrides
keep one layer of each kind). Adding a family is one ``Family`` record and one row here
(docs/adding-a-model.md); each row runs:
1. parameter counts (total and quantizable ``nn.Linear`` weights) against the transformers model
   built from the shrunk config on the meta device;
2. the 4-bit weights and quant state against the bytes bitsandbytes' own quantization allocates in
   the trace (fake tensors, the real ``Linear4bit`` code);
3. the analytic allocated peak within 1 % of the trace's, with and without gradient checkpointing.
``FULL`` names one full-size registry entry per family, priced by both engines within 1 % (the trace
extrapolated from short models, ``vramplan.trace``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from vramplan.arch import Arch, resolve
from vramplan.arch.families import FAMILIES

_SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              vocab_size=1024)
_MOE = dict(_SMALL, moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2)
#: Every linear but Mamba's out_proj, which peft 0.21 refuses on nemotron_h (all-linear included).
_NEMOTRON_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj")

#: Multi-head latent attention with DeepSeek's MoE: layer 0 dense, layer 1 MoE (8 experts in 2 groups).
_MLA = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4, vocab_size=1024,
            q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
            moe_intermediate_size=128, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            first_k_dense_replace=1)

#: peft 0.21.2's all-linear fails on Llama 4's router (``vramplan.hf.build.ROUTER_LINEAR_REFUSAL``): its rows
#: name the targets.
_LLAMA4_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Shrunk vision towers (``_vision``: overrides of the nested vision_config): 2 blocks of width 128.
_QWEN25_VIS = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                   fullatt_block_indexes=[1])
_QWEN3_VIS = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                  deepstack_visual_indexes=[0], num_position_embeddings=64)
_QWEN3_ROPE = {"mrope_interleaved": True, "mrope_section": [16, 8, 8], "rope_type": "default"}
#: Qwen's image, video and vision start/end token ids moved into the shrunk vocabulary (``_top``).
_QWEN_IDS = dict(image_token_id=1000, video_token_id=1001, vision_start_token_id=1002, vision_end_token_id=1003)
_PIXTRAL_VIS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, head_dim=32)
#: Gated DeltaNet hybrids: one linear-attention layer and one full-attention layer, q/k repeated to the
#: value heads (2 key heads, 4 value heads) as in every published size.
_DELTANET = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
                 linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention"])

#: model_type -> (registry entry, overrides of its config for the 2-layer shrunk model).
# Gemma 4 E2B: per-layer input embeddings (P 32), full layers at global_head_dim 128; kv sharing and the
# double-wide MLP need a third layer of a kind (tests/exact/test_gemma4_terms.py holds those variants)
_GEMMA4 = dict(_SMALL, global_head_dim=128, vocab_size_per_layer_input=1024, hidden_size_per_layer_input=32,
               num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"])
#: Gemma 4's image, begin- and end-of-image ids moved into the shrunk vocabulary, and the processor's smallest
#: soft-token budget (70: 630 patches per image; a 224 x 224 image is 24 x 24 patches pooled to 64 soft tokens)
_GEMMA4_IDS = dict(image_token_id=1000, boi_token_id=1001, eoi_token_id=1002, vision_soft_tokens_per_image=70)
#: A multimodal checkpoint read text-only (its towers dropped: transformers' Gemma4ForCausalLM on its text_config).
_TEXT_ONLY = dict(vision_config=None, audio_config=None)

SHRUNK: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("Llama-3.2-1B", _SMALL),
    "mistral": ("Mistral-7B-v0.3", _SMALL),
    "mixtral": ("Mixtral-8x7B-v0.1", dict(_SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2": ("Qwen2.5-0.5B", _SMALL),
    "qwen2_moe": ("Qwen1.5-MoE-A2.7B", dict(_MOE, shared_expert_intermediate_size=256)),
    "qwen3": ("Qwen3-0.6B", _SMALL),
    "qwen3_moe": ("Qwen3-30B-A3B", _MOE),
    "gemma2": ("gemma-2-2b", _SMALL),
    "gemma3_text": ("gemma-3-1b-pt", dict(_SMALL, layer_types=["sliding_attention", "full_attention"])),
    # Gemma 3 multimodal: a 2-block SigLIP of width 128 on 56 x 56 images (16 patches pooled to 4 features)
    "gemma3": ("gemma-3-4b-it", dict(_SMALL, layer_types=["sliding_attention", "full_attention"],
                                     _vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                                  num_attention_heads=2, image_size=56, patch_size=14),
                                     _top=dict(mm_tokens_per_image=4, image_token_index=1000, boi_token_index=1001,
                                               eoi_token_index=1002))),
    "gemma4_text": ("gemma-4-E2B-it", dict(_GEMMA4, _top=_TEXT_ONLY)),
    # Gemma 4 multimodal: the decoder above, 2-layer vision and audio towers of width 256 (one head of 256: the
    # engines price the towers' parameters unrounded, so the row keeps its norms and scales a whole number of
    # 512 B blocks; at full size the rounding is 16-48 KB)
    "gemma4": ("gemma-4-E2B-it", dict(_GEMMA4, _vision=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                                           num_attention_heads=1, num_key_value_heads=1, head_dim=256,
                                                           position_embedding_size=64),
                                      _top=dict(audio_config=dict(model_type="gemma4_audio", hidden_size=256,
                                                                  num_hidden_layers=2, num_attention_heads=1,
                                                                  subsampling_conv_channels=[256, 32],
                                                                  output_proj_dims=256),
                                                **_GEMMA4_IDS))),
    "phi3": ("Phi-3-mini-4k-instruct", dict(_SMALL, pad_token_id=0)),
    # one layer of each block (Mamba-2, attention, relu2 MLP, MoE); peft refuses LoRA on Mamba's out_proj
    "nemotron_h": ("NVIDIA-Nemotron-3-Nano-30B-A3B", dict(
        _SMALL, hybrid_override_pattern="M*-E", _layers=4, mamba_num_heads=8, mamba_head_dim=32, n_groups=2,
        ssm_state_size=32, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
        moe_shared_expert_intermediate_size=256, _scenario=dict(targets=_NEMOTRON_TARGETS))),
    "olmo2": ("OLMo-2-1124-7B-Instruct", dict(_SMALL, pad_token_id=0, eos_token_id=0)),
    "granite": ("granite-3.3-8b-instruct", _SMALL),
    "granitemoe": ("granite-3.1-3b-a800m-instruct", dict(_SMALL, intermediate_size=128, num_local_experts=8,
                                                         num_experts_per_tok=2)),
    "glm": ("glm-4-9b-chat-hf", dict(_SMALL, pad_token_id=0)),
    "cohere2": ("c4ai-command-r7b-12-2024", dict(_SMALL, layer_types=["sliding_attention", "full_attention"])),
    "seed_oss": ("Seed-OSS-36B-Instruct", dict(_SMALL, pad_token_id=0, bos_token_id=0, eos_token_id=0)),
    "gpt_oss": ("gpt-oss-20b", dict(_SMALL, num_local_experts=4, num_experts_per_tok=2)),
    # layer 0 dense (first_k_dense_replace 1), layer 1 MoE with its shared expert; qk-norm on (GLM-4.6's)
    "glm4_moe": ("GLM-4.5-Air", dict(_SMALL, moe_intermediate_size=128, n_routed_experts=8, num_experts_per_tok=2,
                                     use_qk_norm=True, pad_token_id=0)),
    # partial rotary (rotary_dim 32 of head_dim 64), qk-norm over the whole projection
    "minimax_m2": ("MiniMax-M2.5", dict(_SMALL, intermediate_size=128, num_local_experts=8, num_experts_per_tok=2,
                                        rotary_dim=32, attn_type_list=[1, 1])),
    # layer 0 chunked (RoPE, L2 q/k norm, chunk 128 < seq 256: sdpa's mask) with a dense MLP, layer 1 NoPE MoE
    "llama4_text": ("vramplan-llama4-scout-text", dict(_SMALL, intermediate_size=128, intermediate_size_mlp=512,
                                                  num_local_experts=4, num_experts_per_tok=1, moe_layers=[1],
                                                  no_rope_layers=[1, 0], attention_chunk_size=128,
                                                  _scenario=dict(targets=_LLAMA4_TARGETS))),
    "deepseek_v3": ("DeepSeek-R1", _MLA),
    "glm4_moe_lite": ("GLM-4.7-Flash", _MLA),
    # layer 0 runs its own indexer (dsa), layer 1 reuses its top-k (mla)
    "glm_moe_dsa": ("GLM-5.1", dict(_MLA, index_n_heads=4, index_head_dim=32, index_topk=64,
                                    indexer_types=["full", "shared"])),
    # multimodal: the decoder shrunk as above (mrope sections re-cut for head_dim 64), a 2-block tower
    "qwen2_5_vl": ("Qwen2.5-VL-7B-Instruct", dict(_SMALL, rope_scaling={"type": "mrope", "mrope_section": [16, 8, 8]},
                                                  _vision=_QWEN25_VIS, _top=_QWEN_IDS)),
    "qwen3_vl": ("Qwen3-VL-8B-Instruct", dict(_SMALL, rope_scaling=_QWEN3_ROPE, _vision=_QWEN3_VIS, _top=_QWEN_IDS)),
    "qwen3_vl_moe": ("Qwen3-VL-30B-A3B-Instruct", dict(_MOE, rope_scaling=_QWEN3_ROPE, _vision=_QWEN3_VIS,
                                                       _top=_QWEN_IDS)),
    "mistral3": ("Mistral-Small-3.1-24B-Instruct-2503", dict(_SMALL, _vision=_PIXTRAL_VIS)),
    "qwen3_next": ("Qwen3-Next-80B-A3B-Instruct", dict(_MOE, shared_expert_intermediate_size=128, **_DELTANET)),
    "qwen3_5_text": ("Qwen3.5-0.8B", dict(_SMALL, **_DELTANET)),
    "qwen3_5_moe_text": ("Agents-A1", dict(_MOE, shared_expert_intermediate_size=128, **_DELTANET)),
    # layer 0 Kimi Delta Attention with a dense MLP, layer 1 NoPE latent attention with MoE (Kimi's key names)
    "kimi_linear": ("Kimi-Linear-48B-A3B-Instruct", dict(
        hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4, vocab_size=1024,
        kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=128,
        num_experts=8, num_experts_per_token=2, num_shared_experts=1, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        linear_attn_config=dict(num_heads=4, head_dim=64, short_conv_kernel_size=4, kda_layers=[1],
                                full_attn_layers=[2]))),
}

#: model_type -> one full-size registry entry.
FULL: dict[str, str] = {
    "llama": "Llama-3.1-8B", "mistral": "Mistral-7B-v0.3", "mixtral": "Mixtral-8x7B-v0.1", "qwen2": "Qwen2.5-7B",
    "qwen2_moe": "Qwen1.5-MoE-A2.7B", "qwen3": "Qwen3-8B", "qwen3_moe": "Qwen3-30B-A3B", "gemma2": "gemma-2-9b",
    "gemma3_text": "gemma-3-4b-pt", "phi3": "Phi-3-mini-4k-instruct", "nemotron_h": "Nemotron-H-8B-Base-8K",
    "olmo2": "OLMo-2-1124-7B-Instruct", "granite": "granite-3.3-8b-instruct",
    "granitemoe": "granite-3.1-3b-a800m-instruct", "glm": "glm-4-9b-chat-hf", "seed_oss": "Seed-OSS-36B-Instruct",
    "gpt_oss": "gpt-oss-20b", "glm4_moe": "GLM-4.5-Air", "minimax_m2": "MiniMax-M2.5",
    "llama4_text": "vramplan-llama4-scout-text",
    "deepseek_v3": "Moonlight-16B-A3B-Instruct", "glm4_moe_lite": "GLM-4.7-Flash", "glm_moe_dsa": "GLM-5.1",
    "cohere2": "c4ai-command-r7b-12-2024", "gemma4_text": "gemma-4-E2B-it", "gemma4": "gemma-4-E2B-it",
    "gemma3": "gemma-3-4b-it",
    "qwen2_5_vl": "Qwen2.5-VL-7B-Instruct", "qwen3_vl": "Qwen3-VL-8B-Instruct",
    "qwen3_vl_moe": "Qwen3-VL-30B-A3B-Instruct", "mistral3": "Mistral-Small-3.1-24B-Instruct-2503",
    "qwen3_next": "Qwen3-Next-80B-A3B-Instruct", "qwen3_5_text": "Qwen3.5-0.8B", "qwen3_5_moe_text": "Agents-A1",
    "kimi_linear": "Kimi-Linear-48B-A3B-Instruct",
}

#: Per-layer config lists cut to the shrunk depth (their first entries kept).
_PER_LAYER_LISTS = ("layer_types", "mlp_only_layers", "moe_layers", "no_rope_layers", "mlp_layer_types", "indexer_types")
#: Of those, the lists of one name (or flag) per layer (the others list layer indices).
_NAMED_LISTS = ("layer_types", "no_rope_layers", "mlp_layer_types", "indexer_types")


#: Outer config fields a full-size row sets on its entry: a text family whose only full-size entries are
#: multimodal checkpoints reads one text-only.
FULL_TOP: dict[str, dict[str, Any]] = {"gemma4_text": _TEXT_ONLY}


def full_arch(model_type: str) -> Arch:
    """The full-size row's model: ``FULL``'s entry, with ``FULL_TOP``'s outer fields."""
    name = FULL[model_type]
    if model_type not in FULL_TOP:
        return resolve(name)
    return Arch.from_config({**_raw(name), **FULL_TOP[model_type]}, name=f"{name} (text only)")


def row_layers(model_type: str) -> int:
    """The shrunk depth of a row: 2, or the row's ``_layers`` (a hybrid with more than two layer kinds)."""
    return SHRUNK[model_type][1].get("_layers", 2)


def row_scenario(model_type: str) -> dict[str, Any]:
    """Scenario fields a row needs (``_scenario``: e.g. LoRA targets peft accepts on the family)."""
    return dict(SHRUNK[model_type][1].get("_scenario", {}))


def shrunk_config(model_type: str, layers: int | None = None) -> dict[str, Any]:
    """The shrunk config.json of ``model_type``'s row: the entry's config (its text part for a nested
    one is left nested), the row's overrides, ``layers`` decoder layers and per-layer lists cut (a
    layer-pattern string too)."""
    name, over = SHRUNK[model_type]
    layers = row_layers(model_type) if layers is None else layers
    raw = _raw(name)
    cfg = dict(resolve(name).config) if "text_config" not in raw and "vision_config" not in raw else dict(raw)
    target = cfg if "text_config" not in cfg else cfg.setdefault("text_config", {})
    target.update({k: v for k, v in over.items() if not k.startswith("_")})
    if "rope_scaling" in over:  # a published rope_parameters would override the shrunk sections
        target.pop("rope_parameters", None)
    target["num_hidden_layers"] = layers
    for key in _PER_LAYER_LISTS:
        value = target.get(key)
        if isinstance(value, list) and key not in over:
            target[key] = value[:layers] if key in _NAMED_LISTS else [i for i in value if i < layers]
    if isinstance(target.get("hybrid_override_pattern"), str):
        target["hybrid_override_pattern"] = target["hybrid_override_pattern"][:layers]
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # ids of the real vocabulary
        if isinstance(target.get(key), int) and target[key] >= target.get("vocab_size", 0):
            target[key] = 0
    for key, value in over.get("_top", {}).items():  # overrides of a nested config's outer part
        cfg[key] = value
    if "_vision" in over:  # overrides of a multimodal config's vision_config (a smaller tower)
        cfg["vision_config"] = {**dict(cfg.get("vision_config") or {}), **over["_vision"]}
    return cfg


def _raw(name: str) -> dict[str, Any]:
    from vramplan.arch import find_entry
    return copy.deepcopy(dict(find_entry(name).config))  # the shrunk row must not edit the cached registry


def shrunk_arch(model_type: str, layers: int | None = None) -> Arch:
    return Arch.from_config(shrunk_config(model_type, layers), name=f"{model_type}-shrunk")


def test_every_family_has_a_row():
    assert set(SHRUNK) == set(FAMILIES) == set(FULL)


@pytest.mark.torch
def test_frozen_tower_lora_regex_reaches_the_whole_decoder():
    """With the tower frozen the trace's LoRA targets are a regex over the language model, as ms-swift builds it
    (``{module}(?=\\.).*\\.(targets)``): a linear directly under it (Gemma 4's per_layer_model_projection) is
    a target, as in the analytic engine; the towers' linears are not."""
    import re

    pytest.importorskip("peft")
    from vramplan.hf.build import lora_config
    from vramplan.scenario import Scenario

    pattern = lora_config(Scenario(seq=256), shrunk_arch("gemma4")).target_modules
    assert re.fullmatch(pattern, "model.language_model.per_layer_model_projection")
    assert re.fullmatch(pattern, "model.language_model.layers.1.mlp.down_proj")
    assert not re.fullmatch(pattern, "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear")
    assert not re.fullmatch(pattern, "model.embed_audio.embedding_projection")


def test_weights_only_towers_refuse_images():
    """A tower that prices its weights only says so for --images, in one line."""
    from vramplan.analytic import estimate
    from vramplan.errors import VramplanError
    from vramplan.scenario import Scenario

    from vramplan.arch.vision import TOWERS, Vision, _no_images

    for t in _WEIGHTS_ONLY:
        with pytest.raises(VramplanError, match="images are not modelled"):
            estimate(shrunk_arch(t), Scenario(seq=1024, images=1, image_size="224x224"))
    # the towers whose decoders other families price (Llama 4's): the record itself refuses
    for tower in (t for t in TOWERS.values() if t.grid is _no_images):
        with pytest.raises(VramplanError, match="images are not modelled"):
            Vision(tower, {}, {}).image(224, 224)


@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_shrunk_rows_leave_the_registry_as_stored(model_type):
    """The registry is cached for the process: cutting a row (a nested text_config too) and editing the
    resolved Arch's config must not reach the stored entry that the full-size row resolves later."""
    from vramplan.arch import find_entry
    entry = find_entry(SHRUNK[model_type][0])
    before = json.dumps(entry.config, sort_keys=True)
    shrunk_config(model_type)
    arch = resolve(entry.name)
    for value in arch.config.values():
        if isinstance(value, (dict, list)):
            value.clear()
    assert json.dumps(entry.config, sort_keys=True) == before


@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_shrunk_config_is_the_family(model_type):
    arch = shrunk_arch(model_type)
    assert arch.model_type == model_type and arch.num_layers == row_layers(model_type)


# ------------------------------------------------------------------------- ours vs theirs
@pytest.mark.torch
@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_param_counts_match_transformers(model_type):
    """Every parameter (``sum(numel)`` of the model built on the meta device: a multimodal model's
    tower too, ``Arch.all_params``) and the weights bitsandbytes replaces (the ``Linear4bit`` modules of
    the same model built for NF4; a frozen vision tower is skipped, a quantized one's are counted)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from vramplan.hf.build import meta_model
    from vramplan.scenario import Scenario

    arch = shrunk_arch(model_type)
    total = sum(p.numel() for p in meta_model(arch, Scenario(quant="none", attn="eager")).parameters())
    q4 = meta_model(arch, Scenario(attn="eager"))
    linear = sum(m.in_features * m.out_features for m in q4.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert (arch.all_params, arch.quantized_params) == (total, linear)
    if arch.vision is not None:
        q4v = meta_model(arch, Scenario(attn="eager", vision="quantized"))
        linear_v = sum(m.in_features * m.out_features for m in q4v.modules() if isinstance(m, bnb.nn.Linear4bit))
        assert arch.quantized_params + arch.vision.quantizable_weight_params == linear_v


def _both(model_type: str, **kw: Any):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    arch = shrunk_arch(model_type)
    # peft's wrapper of fused expert parameters refuses dropout (``lora.ParamWrapper``)
    drop = {"lora_dropout": 0.0} if FAMILIES[model_type].expert_lora_targets else {}
    sc = Scenario(**{"seq": 256, **drop, **row_scenario(model_type), **kw})
    return arch, estimate(arch, sc, device="cuda"), trace(arch, sc, extrapolate=False, device="cuda")


@pytest.mark.torch
@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_4bit_bytes_match_bitsandbytes(model_type):
    arch, ours, theirs = _both(model_type)
    a, t = ours.by_category(), theirs.by_category()
    # the trace rounds each tensor to a 512 B block (a bias, each quant-state tensor): up to four blocks
    # per quantized weight
    n = sum(lin.count for lin in arch.quantizable_linears())
    ours_b, theirs_b = a.get("weights", 0) + a.get("quant_state", 0), t.get("weights", 0) + t.get("quant_state", 0)
    assert ours_b == pytest.approx(theirs_b, rel=0.001, abs=4 * 512 * n)
    assert a.get("weights", 0) >= t.get("weights", 0) - 2 * 512 * n


@pytest.mark.torch
@pytest.mark.parametrize("gc", [True, False], ids=["gc", "no-gc"])
@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_analytic_within_1_percent_of_trace(model_type, gc):
    arch, ours, theirs = _both(model_type, grad_checkpointing=gc)
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"


#: Full-size rows known to miss 1 % (open work, measured): the row runs and reports, but does not gate.
KNOWN_FULL_SIZE_GAPS: dict[str, str] = {}
#: Full-size rows not run by the suite, with why (their trace's cost is not known to fit the CI budget).
SKIPPED_FULL_SIZE: dict[str, str] = {
}


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("model_type", [
    pytest.param(t, marks=pytest.mark.xfail(reason=KNOWN_FULL_SIZE_GAPS[t], strict=False)) if t in KNOWN_FULL_SIZE_GAPS
    else pytest.param(t, marks=pytest.mark.skip(reason=SKIPPED_FULL_SIZE[t])) if t in SKIPPED_FULL_SIZE
    else t for t in sorted(FULL)])
def test_full_size_entry_within_1_percent(model_type):
    pytest.importorskip("torch")
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    drop = {"lora_dropout": 0.0} if FAMILIES[model_type].expert_lora_targets else {}
    arch, sc = full_arch(model_type), Scenario(seq=2048, rank=16, **drop, **row_scenario(model_type))
    theirs = trace(arch, sc, device="cuda")
    ours = estimate(arch, sc, device="cuda")
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"


#: The multimodal families (a vision tower kind each) and the scenarios of their image rows.
_MULTIMODAL = sorted(t for t in SHRUNK if FAMILIES[t].multimodal)
#: Multimodal families whose tower prices its weights only (``vramplan.arch.vision._no_images``: --images refused).
_WEIGHTS_ONLY: dict[str, str] = {}


@pytest.mark.torch
@pytest.mark.parametrize("gc", [True, False], ids=["gc", "no-gc"])
@pytest.mark.parametrize("model_type", [pytest.param(t, marks=pytest.mark.skip(reason=_WEIGHTS_ONLY[t]))
                                        if t in _WEIGHTS_ONLY else t for t in _MULTIMODAL])
def test_images_within_1_percent_of_trace(model_type, gc):
    """One 224×224 image per sample (Qwen2.5-VL / Qwen3-VL: 256 patches, 64 tokens; Pixtral: 256
    patches, 64 features, 72 tokens; Gemma 4 at the shrunk row's 70 soft-token budget: 630 patches padded,
    576 real, pooled to 64 soft tokens, 66 tokens) on the shrunk model and tower, both engines (the trace
    on real CPU tensors: the vision path reads tensor values)."""
    if not gc and model_type not in ("qwen2_5_vl", "gemma4"):
        # gemma4 too: its images give the sliding layers sdpa's mask, checkpointing or not
        pytest.skip("without checkpointing a frozen tower saves nothing: one row (qwen2_5_vl) checks it")
    arch, ours, theirs = _both(model_type, grad_checkpointing=gc, images=1, image_size="224x224")
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"


#: Gemma 3's SigLIP at its published width (1152, intermediate 4304, 16 heads, patch 14) on its 896 × 896
#: images (4096 patches pooled to 256 features), cut to 2 encoder layers, under the shrunk decoder with a
#: 32768-token vocabulary: the loss backward stays the peak (with the row's 1024 the tower's own backward,
#: a recomputed 4096-patch encoder layer, is the busiest moment, which the analytic engine does not price)
#: and the images are ~13 % of it.
_GEMMA3_TOWER = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2, num_attention_heads=16,
                     image_size=896, patch_size=14)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"vision": "quantized"}], ids=["frozen", "quantized-tower"])
def test_gemma3_full_width_tower_images_within_1_percent_of_trace(kw):
    """One 896×896 image per sample through the full-width SigLIP (``_GEMMA3_TOWER``) under checkpointing
    (the trace on real CPU tensors, ~25-35 s a row alone on 2 cores), the tower frozen or quantized (its
    encoder linears 4-bit, the projector's bare weight not): the peak within 1 %, and what the images add
    (the analytic ``activations/images`` row: pixel values, the tower's saved tensors, the embedding copy)
    within 1 % of what they add to the trace's saved activations at its peak (the run without the image)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    cfg = shrunk_config("gemma3")
    cfg["vision_config"].update(_GEMMA3_TOWER)
    cfg["text_config"]["vocab_size"] = 32768
    cfg["mm_tokens_per_image"] = 256
    arch = Arch.from_config(cfg, name="gemma3-full-width-tower")
    runs = {}
    for images in (1, 0):
        sc = Scenario(seq=1024, grad_checkpointing=True, images=images, image_size="896x896", **kw)
        runs[images] = estimate(arch, sc, device="cuda"), trace(arch, sc, extrapolate=False, device="cuda")
    ours, theirs = runs[1]
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"
    assert ours.peak_phase == theirs.peak_phase == "loss backward"

    def part(bd, name):
        return sum(c.bytes for c in bd.components if c.name == name)

    ours_images = part(ours, "activations/images")
    theirs_images = part(theirs, "activations/saved") - part(runs[0][1], "activations/saved")
    assert ours_images > 0.1 * theirs.allocated_peak_bytes  # the tower's share is material here
    assert ours_images == pytest.approx(theirs_images, rel=0.01)
