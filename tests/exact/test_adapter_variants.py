"""Issue 14 feature 5: DoRA, modules_to_save, LoRA-FA and rsLoRA in the analytic engine and the
framework readers (no torch). Golden numbers derived by hand below."""

from __future__ import annotations

import json

import pytest
from vramplan import frameworks as F
from vramplan.analytic import estimate
from vramplan.arch import resolve
from vramplan.errors import VramplanError
from vramplan.frameworks.base import ConfigError
from vramplan.scenario import Scenario, ScenarioError

DEBUG = resolve("vramplan-debug")  # llama: H 64, I 128, 4 heads, 2 KV heads (head_dim 16), 2 layers, V 512, untied
QWEN = resolve("Qwen3-14B")


def _get(sc: Scenario, name: str) -> int:
    return estimate(DEBUG, sc).get(name)


def test_dora_magnitude_golden():
    # one magnitude value per output row of every target (peft DoraLinearLayer.update_layer):
    # q 64 + k 32 + v 32 + o 64 + gate 128 + up 128 + down 64 = 512 per layer, x 2 layers = 1,024
    # elements, fp32 (peft's adapter dtype): 4,096 B; AdamW state 2 x 4,096 = 8,192 B more
    lora, dora = Scenario(seq=64), Scenario(seq=64, dora=True)
    assert _get(dora, "adapter/dora_magnitude") == 4_096
    assert _get(dora, "optimizer/adamw") - _get(lora, "optimizer/adamw") == 8_192
    assert _get(dora, "adapter/lora") == _get(lora, "adapter/lora")
    bf16 = Scenario(seq=64, dora=True, adapter_dtype="bf16")
    assert _get(bf16, "adapter/dora_magnitude") == 2_048


def test_modules_to_save_golden():
    # each copy is V x H = 512 x 64 = 32,768 elements; hf-peft on a 4-bit base upcasts the embeddings
    # and lm_head to fp32 (prepare_model_for_kbit_training), and peft's deepcopy keeps that dtype:
    # 131,072 B per copy; AdamW 2 x 131,072 = 262,144 B per copy
    base = Scenario(seq=64)
    sc = Scenario(seq=64, modules_to_save=("embed_tokens", "lm_head"))
    assert _get(sc, "adapter/modules_to_save/embed_tokens") == 131_072
    assert _get(sc, "adapter/modules_to_save/lm_head") == 131_072
    assert _get(sc, "optimizer/adamw") - _get(base, "optimizer/adamw") == 2 * 262_144
    # the plain recipe leaves them bf16: 65,536 B per copy
    plain = Scenario(seq=64, modules_to_save="lm_head", recipe="plain")
    assert _get(plain, "adapter/modules_to_save/lm_head") == 65_536
    # the embedding backward is a phase of its own once the embedding trains
    assert "embedding backward" in estimate(DEBUG, Scenario(seq=64, modules_to_save="embed_tokens")).extra["phases"]
    assert "lm_head backward" in estimate(DEBUG, Scenario(seq=64, modules_to_save="lm_head")).extra["phases"]


def test_modules_to_save_on_tied_embeddings():
    # the copy of a tied lm_head is a new V x H tensor: 128,256 x 2,048 x 4 B (fp32 after the upcast)
    a = resolve("Llama-3.2-1B")
    assert estimate(a, Scenario(modules_to_save="lm_head")).get("adapter/modules_to_save/lm_head") == \
        128_256 * 2_048 * 4


def test_lora_fa_golden():
    # LoRA-FA trains B only: B is o x r per target = 8 x (64+32+32+64+128+128+64) = 4,096 per layer,
    # 8,192 elements for 2 layers -> AdamW 8 B each = 65,536 B; A (r x i: 8 x (64 x 6 + 128) = 4,096
    # per layer) keeps its weights but no state
    lora, fa = Scenario(seq=64), Scenario(seq=64, lora_fa=True)
    assert _get(fa, "optimizer/adamw") == 65_536
    assert _get(lora, "optimizer/adamw") == 2 * 65_536
    # A (8 x (6 x 64 + 128) = 4,096 per layer, 8,192 elements, fp32) is a frozen weight: 32,768 B
    assert _get(fa, "weights/lora_A_frozen") == 32_768
    assert _get(fa, "adapter/lora") + 32_768 == _get(lora, "adapter/lora")
    # and a frozen lora_A saves no input: fewer saved bytes without checkpointing
    nogc = dict(seq=64, grad_checkpointing=False, lora_dropout=0.0)
    assert estimate(DEBUG, Scenario(**nogc, lora_fa=True)).allocated_peak_bytes < \
        estimate(DEBUG, Scenario(**nogc)).allocated_peak_bytes


def test_dora_saves_more_than_lora():
    # without checkpointing every target keeps its base and LoRA outputs: > 2 x 2 B per output element
    nogc = dict(seq=512, grad_checkpointing=False)
    assert estimate(QWEN, Scenario(**nogc, dora=True)).allocated_peak_bytes > \
        estimate(QWEN, Scenario(**nogc)).allocated_peak_bytes + 40 * 512 * 4 * 5120


def test_dora_held_and_incoming_golden():
    # vramplan-debug's down_proj (i 128 -> o 64), unquantized bf16 base under autocast, fp32 adapter:
    # peft's plain lora.Linear casts x (bf16, 2 B) to fp32 (xin 4 B) and, with dropout (default 0.05),
    # holds that copy beside the caller's x: 4 x 128 = 512 B per token; the base output (bf16) is
    # alive through the DoRA forward: 2 x 64 = 128 B -> 640 B per token held.
    from vramplan.analytic import activations as act
    from vramplan.analytic.terms import static_terms

    st = static_terms(DEBUG, Scenario(seq=64, dora=True, quant="none"))
    down = next(lin for lin in DEBUG.layer_linears(1) if lin.name == "down_proj")
    assert act.dora_held(st.d, down, 2, 4, 2) == 640
    # no dropout and lora_A computing in bf16 (autocast): the fp32 copy is still unsaved, same 640 B;
    # the NF4 wrapper (no cast, xin = xd = 2): only the base output, 128 B
    assert act.dora_held(static_terms(DEBUG, Scenario(seq=64, dora=True, quant="none", lora_dropout=0.0)).d,
                         down, 2, 4, 2) == 640
    assert act.dora_held(static_terms(DEBUG, Scenario(seq=64, dora=True)).d, down, 2, 2, 2) == 128
    # the incoming gradient under checkpointing: result.to(bf16)'s backward casts the layer output's
    # gradient to fp32 (4 x 64), the add hands the base output's part back in bf16 (2 x 64), and
    # ``* scaling`` copies the fp32 gradient (4 x 64) in place of the bf16 copy already counted
    # (- 2 x 64): (8 + 2 - 2) x 64 = 512 B per token
    assert st.dora_grad_in == 512
    # the bitsandbytes wrapper under autocast adds the fp32 DoRA term without a cast back: 0
    assert static_terms(DEBUG, Scenario(seq=64, dora=True)).dora_grad_in == 0
    assert static_terms(DEBUG, Scenario(seq=64, quant="none")).dora_grad_in == 0


def test_defaults_unchanged():
    assert Scenario() == Scenario(dora=False, modules_to_save=(), lora_fa=False)


@pytest.mark.parametrize("kw,match", [
    (dict(modules_to_save="model.norm"), "not priced"),
    (dict(lora_fa=True, optimizer="adamw8bit"), "LoRA-FA"),
    (dict(lora_fa=True, dora=True), "magnitude"),
    (dict(full=True, quant="none", dora=True), "LoRA adapters"),
    (dict(full=True, quant="none", modules_to_save="lm_head"), "LoRA adapters"),
])
def test_bad_combinations(kw, match):
    with pytest.raises(ScenarioError, match=match):
        Scenario(**kw)


def _fields(tmp_path, name: str, text: str, arch=QWEN) -> dict:
    p = tmp_path / name
    p.write_text(text)
    return F.resolve(F.load([str(p)]), arch).fields


def test_framework_keys(tmp_path):
    hf = tmp_path / "adapter_config.json"
    hf.write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], "use_dora": True,
                              "use_rslora": True, "modules_to_save": ["lm_head"]}))
    res = F.resolve(F.load([str(hf)]), QWEN)
    assert res.fields["dora"] is True and res.fields["modules_to_save"] == ("lm_head",)
    assert not any("not yet priced" in n or "rslora" in n.lower() for n in res.notes)
    lf = _fields(tmp_path, "lf.yaml", "model_name_or_path: Qwen/Qwen3-14B\nstage: sft\nfinetuning_type: lora\n"
                 "use_dora: true\nuse_rslora: true\nresize_vocab: true\n")
    assert lf["dora"] is True and lf["modules_to_save"] == ("embed_tokens", "lm_head")
    lf2 = _fields(tmp_path, "lf2.yaml", "model_name_or_path: Qwen/Qwen3-14B\nstage: sft\nfinetuning_type: lora\n"
                  "additional_target: embed_tokens\nresize_vocab: true\n")
    assert lf2["modules_to_save"] == ("embed_tokens",)
    ax = _fields(tmp_path, "ax.yml", "base_model: Qwen/Qwen3-14B\nadapter: lora\nlora_r: 8\nlora_target_linear: "
                 "true\npeft_use_dora: true\npeft_use_rslora: true\nlora_modules_to_save: [embed_tokens, lm_head]\n")
    assert ax["dora"] is True and ax["modules_to_save"] == ("embed_tokens", "lm_head")
    loaded = F.load([], ["swift", "sft", "--model", "Qwen/Qwen3-14B", "--use_dora", "true", "--use_rslora", "true",
                         "--modules_to_save", "lm_head"])
    sw = F.resolve(loaded, QWEN).fields
    assert sw["dora"] is True and sw["modules_to_save"] == ("lm_head",)
    trl = _fields(tmp_path, "trl.yaml", "model_name_or_path: Qwen/Qwen3-14B\nuse_peft: true\nuse_dora: true\n"
                  "use_rslora: true\nlora_modules_to_save: [lm_head]\n")
    assert trl["dora"] is True and trl["modules_to_save"] == ("lm_head",)
    # rsLoRA maps to no field: a config with it resolves exactly as one without
    plain = _fields(tmp_path, "trl2.yaml", "model_name_or_path: Qwen/Qwen3-14B\nuse_peft: true\n")
    rs = _fields(tmp_path, "trl3.yaml", "model_name_or_path: Qwen/Qwen3-14B\nuse_peft: true\nuse_rslora: true\n")
    assert rs == plain


def test_framework_keys_refused(tmp_path):
    with pytest.raises(ConfigError, match="not priced"):
        _fields(tmp_path, "ax.yml", "base_model: Qwen/Qwen3-14B\nadapter: lora\nlora_r: 8\n"
                "lora_modules_to_save: [model.norm]\n")
    with pytest.raises(ConfigError, match="DoRALinear"):
        _fields(tmp_path, "tt.yaml", "model:\n  _component_: torchtune.models.llama3.lora_llama3_8b\n"
                "  lora_attn_modules: [q_proj, v_proj]\n  use_dora: true\n")
