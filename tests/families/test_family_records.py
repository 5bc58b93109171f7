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

from typing import Any

import pytest

from vramplan.arch import Arch, resolve
from vramplan.arch.families import FAMILIES

_SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              vocab_size=1024)
_MOE = dict(_SMALL, moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2)

#: Multi-head latent attention with DeepSeek's MoE: layer 0 dense, layer 1 MoE (8 experts in 2 groups).
_MLA = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4, vocab_size=1024,
            q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
            moe_intermediate_size=128, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            first_k_dense_replace=1)

#: model_type -> (registry entry, overrides of its config for the 2-layer shrunk model).
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
    "phi3": ("Phi-3-mini-4k-instruct", dict(_SMALL, pad_token_id=0)),
    "deepseek_v3": ("DeepSeek-R1", _MLA),
    "glm4_moe_lite": ("GLM-4.7-Flash", _MLA),
    # layer 0 runs its own indexer (dsa), layer 1 reuses its top-k (mla)
    "glm_moe_dsa": ("GLM-5.1", dict(_MLA, index_n_heads=4, index_head_dim=32, index_topk=64,
                                    indexer_types=["full", "shared"])),
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
    "gemma3_text": "gemma-3-4b-pt", "phi3": "Phi-3-mini-4k-instruct",
    "deepseek_v3": "Moonlight-16B-A3B-Instruct", "glm4_moe_lite": "GLM-4.7-Flash", "glm_moe_dsa": "GLM-5.1",
    "kimi_linear": "Kimi-Linear-48B-A3B-Instruct",
}

#: Per-layer config lists cut to the shrunk depth (their first entries kept).
_PER_LAYER_LISTS = ("layer_types", "mlp_only_layers", "mlp_layer_types", "indexer_types")
#: Of those, the lists of one name per layer (the others list layer indices).
_NAMED_LISTS = ("layer_types", "mlp_layer_types", "indexer_types")


def shrunk_config(model_type: str, layers: int = 2) -> dict[str, Any]:
    """The shrunk config.json of ``model_type``'s row: the entry's config (its text part for a nested
    one is left nested), the row's overrides, ``layers`` decoder layers and per-layer lists cut."""
    name, over = SHRUNK[model_type]
    cfg = dict(resolve(name).config) if "text_config" not in _raw(name) else dict(_raw(name))
    target = cfg if "text_config" not in cfg else cfg.setdefault("text_config", {})
    target.update({k: v for k, v in over.items() if not k.startswith("_")})
    target["num_hidden_layers"] = layers
    for key in _PER_LAYER_LISTS:
        value = target.get(key)
        if isinstance(value, list) and key not in over:
            target[key] = value[:layers] if key in _NAMED_LISTS else [i for i in value if i < layers]
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # ids of the real vocabulary
        if isinstance(target.get(key), int) and target[key] >= target.get("vocab_size", 0):
            target[key] = 0
    for key, value in over.get("_top", {}).items():  # overrides of a nested config's outer part
        cfg[key] = value
    return cfg


def _raw(name: str) -> dict[str, Any]:
    from vramplan.arch import find_entry
    return dict(find_entry(name).config)


def shrunk_arch(model_type: str, layers: int = 2) -> Arch:
    return Arch.from_config(shrunk_config(model_type, layers), name=f"{model_type}-shrunk")


def test_every_family_has_a_row():
    assert set(SHRUNK) == set(FAMILIES) == set(FULL)


@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_shrunk_config_is_the_family(model_type):
    arch = shrunk_arch(model_type)
    assert arch.model_type == model_type and arch.num_layers == 2


# ------------------------------------------------------------------------- ours vs theirs
@pytest.mark.torch
@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_param_counts_match_transformers(model_type):
    """Every parameter (``sum(numel)`` of the model built on the meta device) and the weights
    bitsandbytes replaces (the ``Linear4bit`` modules of the same model built for NF4)."""
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
    assert (arch.total_params, arch.quantized_params) == (total, linear)


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
    sc = Scenario(**{"seq": 256, **drop, **kw})
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


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(FULL))
def test_full_size_entry_within_1_percent(model_type):
    pytest.importorskip("torch")
    from vramplan.analytic import estimate
    from vramplan.scenario import Scenario
    from vramplan.trace import trace

    drop = {"lora_dropout": 0.0} if FAMILIES[model_type].expert_lora_targets else {}
    arch, sc = resolve(FULL[model_type]), Scenario(seq=2048, rank=16, **drop)
    theirs = trace(arch, sc, device="cuda")
    ours = estimate(arch, sc, device="cuda")
    err = ours.allocated_peak_bytes / theirs.allocated_peak_bytes - 1
    assert abs(err) < 0.01, f"{err:+.3%} (ours {ours.peak_phase}, trace {theirs.peak_phase})"
