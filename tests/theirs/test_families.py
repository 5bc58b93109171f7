"""The family table against transformers and peft (ours vs theirs), and the seam it defines.

Every ``Family`` trait is checked on the real modeling code: one registry model per family is built
on the meta device with transformers 5.x (a few decoder layers, nothing allocated), and each trait is
read off the module tree, the config class or peft's own mapping tables.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vramplan.arch import Arch
from vramplan.arch.families import ALIASES, FAMILIES, UNSUPPORTED
from vramplan.arch.lookup import registry

#: Decoder layers built per family: enough for Gemma 3's sliding/full pattern (every 6th is full).
LAYERS = 8
ANALYTIC = Path(__file__).resolve().parents[2] / "vramplan" / "analytic"


def _one_per_family():
    """model_type -> one registry model of it; a multimodal checkpoint whose config type is also read as a
    text family (``ALIASES``: Gemma 4) counts for that family too, read text-only (its towers dropped)."""
    seen = {}
    for e in registry():
        a = e.arch()
        seen.setdefault(a.model_type, a)
        if a.vision is not None and e.config.get("model_type") in ALIASES:
            text = Arch.from_config({**e.config, "vision_config": None, "audio_config": None}, name=f"{e.name} (text)")
            seen.setdefault(text.model_type, text)
    return seen


def test_every_family_has_a_registry_model():
    assert set(_one_per_family()) == set(FAMILIES)


def test_analytic_modules_hold_no_model_type():
    """The analytic engine reads family traits, never ``model_type``: no string constant naming a
    model_type and no ``.model_type`` attribute read in vramplan/analytic/."""
    names = set(FAMILIES) | set(ALIASES) | set(UNSUPPORTED)
    hits = []
    for path in sorted(ANALYTIC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                hits.append(f"{path.name}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr == "model_type":
                hits.append(f"{path.name}:{node.lineno} .model_type")
    assert not hits, hits


# ------------------------------------------------------------------------------ ours vs theirs
@pytest.fixture(scope="module")
def built():
    """model_type -> (arch, transformers config, meta model of its first ``LAYERS`` decoder layers)."""
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoModelForCausalLM

    from vramplan.hf.build import hf_config

    out = {}
    for mt, arch in _one_per_family().items():
        cfg = hf_config(arch, layers=min(LAYERS, arch.num_layers))
        auto = AutoModelForCausalLM
        if arch.vision is not None:  # the multimodal model (tower, projector, decoder)
            from transformers import AutoModelForImageTextToText as auto
        with torch.device("meta"):
            model = auto.from_config(cfg)
        if arch.vision is not None:  # the decoder's config (layer_types, softcapping...)
            cfg = cfg.get_text_config()
        out[mt] = (arch, cfg, model)
    return out


def _layer(model):
    """The first decoder layer, or in a hybrid the first one whose token mixer is softmax attention
    (Nemotron-H's layers are ``NemotronHBlock``s of one block each: its first ``*`` layer)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "HBlock"))]
    return next((m for m in layers if any(hasattr(c, "q_proj") or hasattr(c, "qkv_proj") for c in m.children())),
                layers[0])


@pytest.mark.torch
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_layout_traits_match_the_modeling_code(built, model_type):
    arch, cfg, model = built[model_type]
    fam = FAMILIES[model_type]
    layer = _layer(model)
    attn = next(m for n, m in layer.named_children() if "attn" in n or hasattr(m, "q_proj"))
    assert fam.qk_norm == hasattr(attn, "q_norm") == hasattr(attn, "k_norm")
    assert fam.fused == hasattr(attn, "qkv_proj")
    norms = [n for n, m in layer.named_children() if "norm" in n.lower()]
    assert fam.norms_per_layer == len(norms), norms
    if fam.qkv_bias:
        assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert fam.scaled_embedding == any(n.endswith("embed_scale") for n, _ in model.named_buffers())
    inv = [n for n, _ in model.named_buffers() if n.endswith("inv_freq") and "original" not in n
           and not any(n.startswith(f"{m}.") for m in (arch.vision.tower.modules if arch.vision else ()))]
    assert len(inv) == fam.rotary_sets(arch.config, cfg.num_hidden_layers), inv
    assert fam.softcapping == (getattr(cfg, "attn_logit_softcapping", None) is not None)
    assert bool(fam.moe) == arch.is_moe
    if fam.shared_expert:  # in the MoE layers (GLM-4.5's layer 0 is dense): the family's module name
        assert any(n.endswith("." + fam.shared_expert_module) for n, _ in model.named_modules())


@pytest.mark.torch
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_config_class_defaults_match(model_type):
    """``tie_default`` and ``class_defaults`` are the config class's own defaults."""
    pytest.importorskip("transformers")
    from transformers import AutoConfig

    fam = FAMILIES[model_type]
    default = AutoConfig.for_model(model_type)
    assert bool(default.tie_word_embeddings) == fam.tie_default
    text = default.get_text_config() if fam.multimodal else default  # a multimodal record's defaults: its decoder's
    for key, value in fam.class_defaults.items():
        assert getattr(text, key) == value, key


@pytest.mark.torch
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_sliding_layers_match_the_config_class(built, model_type):
    """Where the transformers config derives ``layer_types``, the family's rule gives the same layers."""
    arch, cfg, _ = built[model_type]
    full = FAMILIES[model_type].sliding_layers(arch.config, arch.num_layers)
    from vramplan.hf.build import hf_config

    full_cfg = hf_config(arch)
    types = getattr(full_cfg.get_text_config() if arch.vision is not None else full_cfg, "layer_types", None)
    if types is None:
        pytest.skip(f"{model_type}: the config class derives no layer_types")
    want = tuple(i for i, t in enumerate(types) if t in ("sliding_attention", "chunked_attention"))  # local
    if not arch.config.get("sliding_window") and FAMILIES[model_type].sliding_rule in ("all", "from_max_window_layers"):
        assert full == ()
    else:
        assert full == want


@pytest.mark.torch
@pytest.mark.parametrize("model_type", sorted(f for f in FAMILIES if FAMILIES[f].moe))
def test_expert_lora_targets_match_peft(model_type):
    """``expert_lora_targets`` is peft 0.21's remapping of v4 expert names onto transformers 5's fused
    parameters (``utils/transformers_weight_conversion.py``)."""
    conv = pytest.importorskip("peft.utils.transformers_weight_conversion")
    pattern = conv._MODEL_TO_CONVERSION_PATTERN.get(model_type)
    theirs = conv._MOE_TARGET_MODULE_MAPPING.get(pattern, {}) if pattern else {}
    part = {"gate.weight": "router", "gate_up_proj": "gate_up", "down_proj": "down"}
    assert {k: part[v] for k, v in theirs.items()} == dict(FAMILIES[model_type].expert_lora_targets)
