"""vramplan.hf.build: the real-framework model, held to the frameworks' own behaviour."""

import warnings

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytestmark = pytest.mark.torch

from vramplan.arch import resolve  # noqa: E402
from vramplan.hf import build as B  # noqa: E402
from vramplan.hf import interventions as I  # noqa: E402
from vramplan.scenario import Scenario  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

DEBUG = resolve("vramplan-debug")
MOE = resolve("vramplan-debug-moe")


def _dtypes(model):
    return {n: p.dtype for n, p in model.named_parameters()}


def test_bnb_config_sets_every_field():
    q = B.bnb_config(Scenario(quant="nf4", double_quant=True, dtype="bf16"))
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_use_double_quant is True
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert q.bnb_4bit_quant_storage == torch.uint8
    f = B.bnb_config(Scenario(quant="fp4", double_quant=False, dtype="fp16"))
    assert (f.bnb_4bit_quant_type, f.bnb_4bit_use_double_quant) == ("fp4", False)
    assert f.bnb_4bit_compute_dtype == torch.float16
    assert B.bnb_config(Scenario(quant="none")) is None


def test_hf_config_and_truncation():
    cfg = B.hf_config(DEBUG)
    assert type(cfg).__name__ == "LlamaConfig"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.use_cache) == (64, 2, 512, False)
    assert B.hf_config(DEBUG, layers=1).num_hidden_layers == 1
    g = B.hf_config(resolve("gemma-3-4b-pt"), layers=7)
    assert type(g).__name__ == "Gemma3TextConfig" and len(g.layer_types) == 7


def test_meta_model_replaces_exactly_the_quantizable_linears():
    m = B.meta_model(DEBUG, Scenario())
    n4 = sum(isinstance(x, bnb.nn.Linear4bit) for x in m.modules())
    assert n4 == sum(lin.count for lin in DEBUG.quantizable_linears())
    assert not isinstance(m.lm_head, bnb.nn.Linear4bit)
    assert m.is_loaded_in_4bit


def test_recipe_dtypes_are_pinned():
    """hf-peft upcasts every non-4-bit parameter to fp32; trl puts embeddings and lm_head back to bf16
    (norms stay fp32); plain leaves everything in bf16. LoRA adapters are fp32 (peft's autocast)."""
    for recipe, emb, norm in (("hf-peft", torch.float32, torch.float32),
                              ("trl", torch.bfloat16, torch.float32),
                              ("plain", torch.bfloat16, torch.bfloat16)):
        m = B.build_model(DEBUG, Scenario(recipe=recipe))
        d = _dtypes(m)
        assert d["base_model.model.model.embed_tokens.weight"] == emb, recipe
        assert d["base_model.model.lm_head.weight"] == emb, recipe
        assert d["base_model.model.model.norm.weight"] == norm, recipe
        assert d["base_model.model.model.layers.0.input_layernorm.weight"] == norm, recipe
        assert d["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == torch.float32


def _group(name: str) -> str | None:
    """The ``recipes.GROUPS`` group of a parameter of the built model (None: a 4-bit or LoRA tensor)."""
    if "lora_" in name:
        return None
    for key, group in (("embed_tokens", "embeddings"), ("lm_head", "lm_head"), ("norm", "norms"),
                       ("experts", "experts"), ("mlp.gate.", "router"), ("router", "router")):
        if key in name:
            return group
    return "biases" if name.endswith(".bias") else None


@pytest.mark.parametrize("arch", [DEBUG, MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("quant", ["nf4", "none"])
@pytest.mark.parametrize("recipe", ["hf-peft", "trl", "plain"])
def test_recipe_spec_matches_the_real_build(arch, quant, recipe):
    """Ours vs theirs: every unquantized parameter group of the model peft and (for trl) TRL leave
    behind has exactly the width ``RecipeSpec.group_bytes`` gives the analytic engine."""
    from vramplan.recipes import spec

    sc = Scenario(recipe=recipe, quant=quant, lora_dropout=0.0)
    rs = spec(sc.recipe)
    seen = set()
    for name, p in B.build_model(arch, sc).named_parameters():
        group = _group(name)
        if group is None or p.dtype == torch.uint8:
            continue
        seen.add(group)
        assert p.element_size() == rs.group_bytes(group, quant != "none", 2), (name, p.dtype)
    assert {"embeddings", "lm_head", "norms"} <= seen
    if arch is MOE:
        assert {"experts", "router"} <= seen


def test_lora_trainable_parameters_match_the_arch():
    sc = Scenario(rank=4)
    m = B.build_model(DEBUG, sc)
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    expected = sum(lin.count * sc.rank * (lin.in_features + lin.out_features) for lin in DEBUG.quantizable_linears())
    assert trainable == expected
    full = B.build_model(DEBUG, Scenario(quant="none", full=True))
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == DEBUG.total_params


def test_materialize_real_quantizes_like_bitsandbytes():
    sc = Scenario(blocksize=128)
    m = B.build_model(DEBUG, sc)
    B.materialize(m, sc)
    layer = m.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    w = layer.weight
    assert isinstance(w, bnb.nn.Params4bit) and w.dtype == torch.uint8
    assert w.numel() == 64 * 64 // 2
    qs = w.quant_state
    assert qs.blocksize == 128 and qs.quant_type == "nf4" and qs.nested
    assert qs.absmax.numel() == 64 * 64 // 128 and qs.absmax.dtype == torch.uint8  # double-quantized
    assert all(p.device.type == "cpu" for p in m.parameters())
    assert m.base_model.model.lm_head.weight is not None


def test_moe_experts_stay_unquantized_and_get_upcast():
    """transformers 5 fuses experts into 3-D parameters and the router is a TopKRouter: bitsandbytes
    quantizes neither, hf-peft's prepare_model_for_kbit_training upcasts them to fp32, and peft 0.21
    maps all-linear onto them (ParamWrapper), which refuses LoRA dropout."""
    sc = Scenario(lora_dropout=0.0)
    meta = B.meta_model(MOE, sc)
    mlp = meta.model.layers[0].mlp
    assert type(mlp.gate).__name__.endswith("TopKRouter")
    assert mlp.experts.gate_up_proj.dim() == 3 and mlp.experts.gate_up_proj.dtype == torch.bfloat16
    m = B.build_model(MOE, sc)
    d = _dtypes(m)
    experts = [n for n in d if n.endswith("gate_up_proj") or n.endswith("experts.base_layer.base_layer.down_proj")]
    assert experts and all(d[n] == torch.float32 for n in experts)
    assert any(".mlp.experts." in n and "lora_A" in n for n in d)
    assert any(".mlp.gate.lora_A" in n for n in d)
    with pytest.raises(B.TraceUnsupported, match="lora-dropout 0"):
        B.build_model(MOE, Scenario(lora_dropout=0.05))


def test_interventions_are_scoped():
    """Every process-wide patch of vramplan.hf.interventions is undone when its block exits."""
    import transformers.integrations.moe as moe
    import transformers.masking_utils as mu
    from transformers import AttentionInterface

    orig = mu.find_packed_sequence_indices
    with I.sequence_layout(False):
        assert mu.find_packed_sequence_indices(torch.tensor([[0, 1, 0, 1]])) is None
    assert mu.find_packed_sequence_indices is orig

    dropout, autocast, grouped = torch.nn.functional.dropout, torch.is_autocast_enabled, moe._grouped_mm
    with I.cuda_semantics(), I.non_bf16_grouped_mm():
        assert torch.nn.functional.dropout is not dropout and torch.is_autocast_enabled is not autocast
        assert moe._grouped_mm is not grouped
    assert (torch.nn.functional.dropout, torch.is_autocast_enabled, moe._grouped_mm) == (dropout, autocast, grouped)

    assert I.FLASH2_STANDIN not in AttentionInterface()
    with I.flash2_on_sdpa():
        assert I.FLASH2_STANDIN in AttentionInterface()
    assert I.FLASH2_STANDIN not in AttentionInterface()


def test_checkpointed_wraps_what_torch_recomputes():
    """transformers 5 checkpoints a decoder layer's ``forward`` (GradientCheckpointingLayer), so module
    hooks miss the recomputation in backward; ``checkpointed`` sees the function itself run twice
    (forward, then recomputed in backward) and puts the checkpoint function back on exit."""
    sc = Scenario(seq=8, batch=1)
    m = B.build_model(DEBUG, sc)
    B.materialize(m, sc)
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [x for x in m.modules() if isinstance(x, GradientCheckpointingLayer)]
    before = [x._gradient_checkpointing_func for x in layers]
    calls, hooked = [], []
    layers[0].register_forward_pre_hook(lambda mod, args: hooked.append(mod))

    def wrap(function):
        def run(*args, **kwargs):
            calls.append(function)
            return function(*args, **kwargs)
        return run

    with I.checkpointed(m, wrap) as n:
        assert n == len(layers) == DEBUG.num_layers
        m(**B.synthetic_batch(DEBUG, sc)).loss.backward()
    assert len(calls) == 2 * n and len(hooked) == 1  # each layer ran twice, its hook once
    assert [x._gradient_checkpointing_func for x in layers] == before
    with I.checkpointed(B.build_model(DEBUG, sc.replace(grad_checkpointing=False)), wrap) as n:
        assert n == 0


def test_prepare_is_the_build_of_both_callers():
    """``prepare`` on a meta model is ``build_model``; the bitsandbytes-0.43.1 input saving hooks every
    4-bit layer; plain leaves the base dtypes, hf-peft upcasts (vramplan.recipes)."""
    sc = Scenario(bnb_keeps_input=True)
    m = B.prepare(B.meta_model(DEBUG, sc), DEBUG, sc)
    assert _dtypes(m) == _dtypes(B.build_model(DEBUG, sc))
    four = [x for x in m.modules() if isinstance(x, bnb.nn.Linear4bit)]
    assert four and all(len(x._forward_hooks) == 1 for x in four)
    assert m.training


def test_synthetic_batch():
    b = B.synthetic_batch(DEBUG, Scenario(seq=16, batch=3))
    assert b["input_ids"].shape == (3, 16) and b["input_ids"].dtype == torch.long
    assert torch.equal(b["input_ids"], b["labels"]) and b["labels"].data_ptr() != b["input_ids"].data_ptr()
    assert "attention_mask" not in b


def test_train_step_phases_and_real_update():
    sc = Scenario(seq=16, batch=1, optimizer="adamw")
    m = B.build_model(DEBUG, sc)
    B.materialize(m, sc)
    opt = B.make_optimizer(m, sc)
    lora_b = m.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight
    before = lora_b.detach().clone()
    phases = []
    B.train_step(m, opt, B.synthetic_batch(DEBUG, sc), sc, on_phase=phases.append)
    assert phases == ["forward", "backward", "optimizer"]
    assert not torch.equal(before, lora_b.detach())
    assert all(p.grad is None for p in m.parameters())


def test_optimizers():
    m = B.build_model(DEBUG, Scenario())
    B.materialize(m, Scenario())
    assert type(B.make_optimizer(m, Scenario(optimizer="adamw"))).__name__ == "AdamW"
    assert type(B.make_optimizer(m, Scenario(optimizer="adamw8bit"))).__name__ == "AdamW8bit"
    assert type(B.make_optimizer(m, Scenario(optimizer="paged_adamw8bit"))).__name__ == "PagedAdamW8bit"
    assert type(B.make_optimizer(m, Scenario(optimizer="sgd"))).__name__ == "SGD"


def test_flash2_standin_casts_fp32_qkv():
    """Without autocast, sdpa on fp32 q/k/v returns fp32; the stand-in casts them to the model dtype
    first, as transformers' flash-attention-2 wrapper does."""
    assert B.attn_implementation(Scenario(attn="flash2")) == I.FLASH2_STANDIN
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Mod(torch.nn.Module):
        num_key_value_groups = 1
        is_causal = True

        class config:  # noqa: N801
            dtype = torch.bfloat16

    q = torch.randn(1, 2, 8, 16)
    with I.flash2_on_sdpa():
        out, _ = AttentionInterface()[I.FLASH2_STANDIN](Mod(), q, q.clone(), q.clone(), None)
    assert out.dtype == torch.bfloat16
    ref, _ = sdpa_attention_forward(Mod(), q, q.clone(), q.clone(), None)
    assert ref.dtype == torch.float32
