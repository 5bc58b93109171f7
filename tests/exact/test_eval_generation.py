"""Feature 6 of issue 14, generation: ``predict_with_generate`` prices the KV cache (no torch).

Golden numbers derived by hand from transformers 5.24 ``generation/utils.py`` (``generate``:
``logits_to_keep=1``, a ``DynamicCache``; ``_sample``: the fp32 ``next_token_logits`` copy bound until
the next step) and ``cache_utils.py`` (``DynamicLayer.update``: ``torch.cat`` of the old and the new keys,
then values), with the dtypes of peft's inner model generating outside accelerate's autocast.
"""

from __future__ import annotations

import pytest
from vramplan import frameworks as F
from vramplan.analytic import estimate, loss_workspace_bytes, static_terms
from vramplan.analytic import evaluation as ev
from vramplan.arch import resolve
from vramplan.scenario import Scenario, ScenarioError

QWEN06 = resolve("Qwen3-0.6B")  # 28 layers, 8 KV heads × head_dim 128, H 1024, I 3072, V 151,936
V = 151_936


def _eval_dynamic(sc: Scenario) -> tuple[int, str]:
    bd = estimate(QWEN06, sc)
    return bd.extra["eval_peak_bytes"] - static_terms(QWEN06, sc).static, bd.extra["eval_moment"]


def test_defaults_generate_nothing():
    assert Scenario().eval_new_tokens == 0
    assert static_terms(QWEN06, Scenario(eval_batch=8)).eval_gen is None


def test_kv_cache_golden_hf_peft():
    """hf-peft QLoRA: the norms are upcast to fp32, a bitsandbytes projection returns its input's dtype and
    the generating model runs without autocast, so K (after the fp32 k_norm and the fp32 rotary tables of
    the fp32 embeddings) and V are fp32: 8 heads × 128 × (4 + 4) = 8,192 B per token per layer. Eval batch
    8 × 2048 prompt, one new token (the prefill): 8 · 2048 · 28 · 8,192 = 3,758,096,384 B (3.5 GiB). The
    prefill's last layer at its MLP, per token: embeddings 4H + layer input 4H + residual sum 4H + normed
    input 4H, rotary cos + sin 2 · 128 · 4, act(gate) + up 2 · 4 · I, lora_B's output + its scaling
    2 · 4 · I, position ids + input clone 16 = 66,576 (the tiny-model trace counts the same per token)."""
    sc = Scenario(seq=2048, eval_batch=8, eval_new_tokens=1)
    g = static_terms(QWEN06, sc).eval_gen
    assert (g.kv_tok, g.v_tok) == (8 * 128 * 8, 8 * 128 * 4)
    assert g.layer_tok == 16 * 1024 + 1024 + 16 * 3072 + 16 == 66_576
    bd = estimate(QWEN06, sc)
    assert bd.get("activations/eval_kv_cache") == 3_758_096_384 == 8 * 2048 * 28 * 8192
    assert bd.get("activations/eval_layer") == 16_384 * 66_576
    assert bd.peak_phase == "evaluation" and bd.extra["eval_moment"] == "prefill"
    # the same eval batch's loss forward (b·s·V logits + fp32 upcast + log-softmax) is 4.5 × larger
    assert estimate(QWEN06, Scenario(seq=2048, eval_batch=8)).extra["eval_peak_bytes"] > 4 * bd.extra["eval_peak_bytes"]


def test_decode_step_golden_plain_recipe():
    """LLaMA-Factory's dtypes (recipe plain: bf16 norms and embeddings, fp32 LoRA): K and V bf16, 4,096 B per
    token per layer. Eval batch 4, prompt 1024, 512 new tokens: the last decode step runs with the cache at
    m = 1024 + 512 − 2 = 1534 positions. Inside the last layer's update every layer holds m + 1 = 1535:
    4 · 1535 · 28 · 4096 = 704,184,320, plus that layer's old values 4 · 1534 · 1024 · 2 = 12,566,528, the
    previous step's fp32 next-token logits 4 · V · 4 = 2,430,976, the input and position ids
    2 · 8 · 4 · 1535 = 98,240 and the eval batch 16 · 4 · 1024 = 65,536: 719,345,600."""
    dyn, moment = _eval_dynamic(Scenario(seq=1024, recipe="plain", eval_batch=4, eval_new_tokens=512))
    assert moment == "decode"
    assert dyn == 704_184_320 + 12_566_528 + 2_430_976 + 98_240 + 65_536 == 719_345_600


def test_prefill_golden_plain_recipe():
    """One new token: the prefill. Cache 4 · 1024 · 28 · 4096 = 469,762,048; the last layer per token:
    (2 + 2·2 + 2) · 1024 = 8,192, rotary 2 · 128 · 2 = 512, act(gate) + up 2 · 2 · 3072 = 12,288, lora_B +
    scaling in fp32 2 · 4 · 3072 = 24,576, peft's fp32 cast of the bf16 input 4 · 1024 = 4,096, ids 16:
    49,680 × 4096 tokens = 203,489,280; the eval batch 65,536: 673,316,864."""
    dyn, moment = _eval_dynamic(Scenario(seq=1024, recipe="plain", eval_batch=4, eval_new_tokens=1))
    assert moment == "prefill"
    assert dyn == 469_762_048 + 4096 * 49_680 + 65_536 == 673_316_864


def test_generated_ids_are_kept_golden():
    """eval_keep ids with generation keeps each sample's generated sequence, (seq + n) int64, and its labels
    (seq int64): 10 samples in batches 4, 4, 2 at seq 1024 + 512 new tokens. The last full batch's decode
    (4 samples kept before it, 4 · (8 · 1536 + 8 · 1024)) is the busiest: 81,920 B of predictions."""
    base, _ = _eval_dynamic(Scenario(seq=1024, recipe="plain", eval_batch=4, eval_new_tokens=512))
    sc = Scenario(seq=1024, recipe="plain", eval_batch=4, eval_new_tokens=512, eval_keep="ids", eval_samples=10)
    bd = estimate(QWEN06, sc)
    assert bd.extra["eval_peak_bytes"] - static_terms(QWEN06, sc).static == base + 4 * (8 * 1536 + 8 * 1024)


def test_kv_dtypes():
    assert ev.kv_cache_dtypes(2, 2, 4, True) == (4, 2)  # an fp32 k_norm weight promotes K only
    assert ev.kv_cache_dtypes(2, 4, 2, False) == (4, 2)  # fp32 rotary tables (fp32 embeddings) promote K
    assert ev.kv_cache_dtypes(2, 2, 2, True) == (2, 2)
    # full fine-tuning generates through the prepared forward: autocast, bf16 K and V
    g = static_terms(QWEN06, Scenario(quant="none", full=True, recipe="plain", eval_batch=1,
                                      eval_new_tokens=4)).eval_gen
    assert g.kv_tok == 8 * 128 * 4


def test_eval_peak_feeds_the_allocator_reserve():
    """When the evaluation is the peak its loss blocks (eval batch 8 × 2048: logits bf16 + fp32 upcast +
    log-softmax, 10 · V · 16,384 B) join the reserve's loss workspace; a generating evaluation has none."""
    sc = Scenario(eval_batch=8)
    assert loss_workspace_bytes(QWEN06, sc) < loss_workspace_bytes(QWEN06, sc, evaluation=True) == 10 * V * 16_384
    gen = Scenario(eval_batch=8, eval_new_tokens=1)
    assert loss_workspace_bytes(QWEN06, gen, evaluation=True) == loss_workspace_bytes(QWEN06, gen)
    bd, small = estimate(QWEN06, sc), estimate(QWEN06, Scenario(eval_batch=8, recipe="plain"))
    assert bd.peak_phase == small.peak_phase == "evaluation"
    assert bd.get("runtime/allocator_reserve") > estimate(QWEN06, Scenario()).get("runtime/allocator_reserve")
    # the default scenario's reserve is untouched (no evaluation)
    assert estimate(QWEN06, Scenario()).get("runtime/allocator_reserve") == \
        estimate(QWEN06, Scenario(eval_batch=1)).get("runtime/allocator_reserve")


@pytest.mark.parametrize("kw,message", [
    (dict(eval_new_tokens=4), "set eval_batch"),
    (dict(eval_batch=2, eval_new_tokens=4, eval_keep="logits", eval_samples=2), "use eval_keep ids"),
    (dict(eval_batch=2, eval_new_tokens=4, attn="eager"), "sdpa"),
    (dict(eval_batch=2, eval_new_tokens=-1), "non-negative"),
    (dict(eval_batch=1000, seq=8192, eval_new_tokens=4096), "exceeds"),
])
def test_bad_generation_fields(kw, message):
    with pytest.raises(ScenarioError, match=message):
        Scenario(**kw)


# ------------------------------------------------------------------------------- readers
def _fields(tmp_path, name: str, text: str) -> tuple[dict, list[str]]:
    cfg = tmp_path / name
    cfg.write_text(text)
    res = F.resolve(F.load([str(cfg)], None, None, None), QWEN06)
    Scenario(**res.fields)
    return res.fields, res.notes


def test_llamafactory_predict_with_generate(tmp_path):
    head = ("model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\nfinetuning_type: lora\nbf16: true\ncutoff_len: 1024\n"
            "eval_strategy: steps\nval_size: 200\npredict_with_generate: true\n")
    f, notes = _fields(tmp_path, "lf.yaml", head)
    # the bound is cutoff_len (parser.py L457): the longest prompt and one new token; generated ids kept
    assert (f["eval_batch"], f["eval_keep"], f["eval_samples"], f["eval_new_tokens"]) == (8, "ids", 200, 1)
    assert any("predict_with_generate: evaluation generates" in n for n in notes)
    f, _ = _fields(tmp_path, "lf.yaml", head + "generation_max_length: 1536\n")
    assert f["eval_new_tokens"] == 512
    f, notes = _fields(tmp_path, "lf.yaml", head + "eval_num_beams: 4\n")
    assert any("beam search" in n for n in notes)
    f, notes = _fields(tmp_path, "lf.yaml", head + "flash_attn: fa2\n")
    assert "eval_new_tokens" not in f and any("priced with sdpa" in n for n in notes)


def test_ms_swift_predict_with_generate(tmp_path):
    text = ('{"model": "Qwen/Qwen3-0.6B", "max_length": 1024, "val_dataset": ["x.jsonl"], '
            '"predict_with_generate": true, "per_device_eval_batch_size": 2%s}')
    f, notes = _fields(tmp_path, "args.json", text % "")
    assert (f["eval_batch"], f["eval_new_tokens"]) == (2, 64) and "eval_keep" not in f  # ms-swift's default
    assert any("generates 64 tokens" in n for n in notes)
    f, _ = _fields(tmp_path, "args.json", text % ', "max_new_tokens": 256')
    assert f["eval_new_tokens"] == 256
    f, notes = _fields(tmp_path, "args.json", text.replace('"predict_with_generate": true', '"eval_metric": "nlg"') % "")
    assert "eval_new_tokens" not in f and any("without predict_with_generate" in n for n in notes)


def test_hf_use_cache_is_noted(tmp_path):
    cfg = tmp_path / "training_args.json"
    cfg.write_text('{"per_device_train_batch_size": 1, "bf16": true, "eval_strategy": "steps", "use_cache": true}')
    res = F.resolve(F.load([str(cfg)], None, "hf", None), QWEN06)
    assert any(n.startswith("use_cache: true") for n in res.notes)
