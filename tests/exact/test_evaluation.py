"""Feature 6 of issue 14: the HF Trainer's evaluation loop priced beside the training step (no torch).

Golden numbers derived by hand from transformers 5.24 ``trainer.py`` (``evaluation_loop`` /
``prediction_step``), ``trainer_pt_utils.EvalLoopContainer`` (``torch.cat`` of old and new) and
accelerate 1.15's ``convert_outputs_to_fp32`` (kept logits fp32 under mixed precision); the readers'
expectations from each framework's source (vramplan/frameworks/*.py docstrings cite the lines).
"""

from __future__ import annotations

import pytest
from vramplan import frameworks as F
from vramplan.analytic import estimate
from vramplan.analytic import evaluation as ev
from vramplan.arch import resolve
from vramplan.frameworks.base import ConfigError
from vramplan.scenario import Scenario, ScenarioError

QWEN06 = resolve("Qwen3-0.6B")  # V = 151,936, H = 1024, tied embeddings
V = 151_936


def _eval_rows(bd) -> int:
    return sum(c.bytes for c in bd.components if "/eval_" in c.name)


def test_defaults_price_no_evaluation():
    bd = estimate(QWEN06, Scenario())
    assert "evaluation" not in bd.extra["phases"] and "eval_peak_bytes" not in bd.extra
    assert not any("/eval_" in c.name for c in bd.components)


def test_accumulated_logits_golden():
    """Qwen3-0.6B, hf-peft, bf16 autocast, seq 512, eval batch 4, logits of 10 samples kept.

    Kept per sample: fp32 logits (accelerate's convert_to_fp32) P = 4·V·512 = 311,164,928 and int64
    labels L = 8·512 = 4,096. Batches 4, 4, 2. At the last batch's concatenation: the 8 kept + the 2
    new + the 10-sample result, 2·10·P = 6,223,298,560, the 8 kept samples' labels 8·L = 32,768, the
    batch's input_ids + labels 16·2·512 = 16,384: 6,223,347,712 over the training state. The last
    forward is smaller: 8·(P + L) + the previous batch's 4·P + inputs 16,384 + hidden 2·512·1024·4
    (fp32 final norm) + logits/upcast/log-softmax 10·V·1024 + labels shift 16·1024 = 5,294,063,616."""
    sc = Scenario(seq=512, eval_batch=4, eval_keep="logits", eval_samples=10)
    bd = estimate(QWEN06, sc)
    assert bd.peak_phase == "evaluation" and bd.extra["eval_moment"] == "concatenation"
    assert _eval_rows(bd) == 6_223_347_712 == 2 * 10 * 4 * V * 512 + 8 * 8 * 512 + 16 * 2 * 512
    assert bd.get("logits/eval_predictions") == 6_223_331_328
    fwd = ev.forward_bytes(1024, 1024, 1024, V, 1024, 2, 4, 2 * V * 1024, False)
    assert 16_384 + 8 * (4 * V * 512 + 4096) + 4 * 4 * V * 512 + fwd == 5_294_063_616
    assert bd.extra["eval_peak_bytes"] > bd.extra["training_peak_bytes"]
    assert bd.allocated_peak_bytes == bd.extra["eval_peak_bytes"] + bd.get("temporary/cublas_workspace")
    assert any("evaluation's is larger" in n for n in bd.notes)


def test_loss_only_eval_at_the_hf_default_batch_golden():
    """Nothing kept (no compute_metrics), eval batch 8 × 2048 = 16,384 tokens: inputs 16·T = 262,144,
    fp32 final hidden states 4·1024·T = 67,108,864, logits bf16 + fp32 upcast + log-softmax 10·V·T =
    24,893,194,240, padded + shifted labels 16·T = 262,144, and autocast's cached bf16 copies of the fp32
    LoRA weights (r = 8, every projection: 8·(3072 + 2048 + 2048 + 3072 + 4096 + 4096 + 4096) = 180,224
    elements a layer, 2 B each, 28 layers: 10,092,544): 24,970,919,936, about 5 × the training step."""
    bd = estimate(QWEN06, Scenario(eval_batch=8))
    assert _eval_rows(bd) == 24_960_827_392 + 10_092_544
    assert bd.get("activations/eval_autocast_cache") == 28 * 2 * 180_224
    assert bd.extra["eval_peak_bytes"] > 4 * bd.extra["training_peak_bytes"]
    small = estimate(QWEN06, Scenario(eval_batch=1))
    assert small.peak_phase == "loss backward" and small.allocated_peak_bytes == estimate(QWEN06, Scenario()).allocated_peak_bytes
    assert small.extra["eval_peak_bytes"] < small.extra["training_peak_bytes"]
    assert any("training step's is larger" in n for n in small.notes)


def test_argmax_ids_are_small_golden():
    """ids: 8 B per kept position (argmax, int64) + 8 B labels: 100 samples × 2048 × 16 = 3,276,800
    bytes at most; the eval forward (the same as keeping nothing) dominates."""
    assert ev.kept_per_sample("ids", V, 2048, 2048, 4) == (8 * 2048, 8 * 2048)
    ids = estimate(QWEN06, Scenario(eval_batch=8, eval_keep="ids", eval_samples=100))
    none = estimate(QWEN06, Scenario(eval_batch=8))
    assert ids.extra["eval_moment"] == "forward"
    # batches 8 × 12 + 4: the last full batch's forward (88 samples kept before it, 88 · (8 + 8) · 2048,
    # + the previous batch's 8 rows of ids 8 · 8 · 2048) beats the last one's (96 kept, half the logits)
    assert ids.get("logits/eval_predictions") == 88 * 16 * 2048 + 8 * 8 * 2048 == 3_014_656
    assert ids.extra["eval_peak_bytes"] - none.extra["eval_peak_bytes"] == 3_014_656


def test_kept_logits_dtype():
    """fp32 under mixed precision (accelerate) and with the legacy loss; the lm_head's dtype otherwise."""
    assert ev.kept_logits_bytes(2, True, False) == 4
    assert ev.kept_logits_bytes(2, False, False) == 2
    assert ev.kept_logits_bytes(4, False, True) == 4
    plain = estimate(QWEN06, Scenario(seq=512, recipe="plain", autocast=False, eval_batch=2, eval_keep="logits",
                                      eval_samples=2))
    assert plain.extra["eval_moment"] == "forward"  # one batch: no concatenation


def test_concat_moment_is_the_larger_of_preds_and_labels():
    assert ev.concat_bytes(8, 2, 100, 10) == max(2 * 10 * 100 + 8 * 10, 10 * 100 + 18 * 10)
    assert ev.concat_bytes(8, 2, 1, 10) == 10 * 1 + 18 * 10  # ids with few kept positions: labels larger


@pytest.mark.parametrize("kw,message", [
    (dict(eval_keep="logits"), "set eval_batch"),
    (dict(eval_batch=4, eval_keep="logits"), "give eval_samples"),
    (dict(eval_batch=4, eval_samples=10), "nothing is kept"),
    (dict(eval_batch=-1), "non-negative"),
    (dict(eval_batch=4, loss="chunked-head"), "loss hf or legacy"),
    (dict(eval_batch=4, hold_logits="step"), "hold_logits must be none"),
    (dict(eval_batch=10_000, seq=2048), "exceeds"),
])
def test_bad_evaluation_fields_are_one_sentence(kw, message):
    with pytest.raises(ScenarioError, match=message):
        Scenario(**kw)


# ------------------------------------------------------------------------------- readers
def _fields(tmp_path, name: str, text: str, version: str | None = None,
            framework: str | None = None) -> tuple[dict, list[str]]:
    cfg = tmp_path / name
    cfg.write_text(text)
    loaded = F.load([str(cfg)], None, framework, version)
    res = F.resolve(loaded, QWEN06)
    Scenario(**res.fields)  # the fields make a valid scenario
    return res.fields, res.notes


def test_hf_trainer_eval_keys(tmp_path):
    base = '{"per_device_train_batch_size": 1, "bf16": true%s}'
    f, notes = _fields(tmp_path, "training_args.json", base % ', "eval_strategy": "steps"', framework="hf")
    assert f["eval_batch"] == 8 and "eval_keep" not in f  # the HF default batch; no compute_metrics assumed
    assert any("compute_metrics is the script's" in n for n in notes)
    f, _ = _fields(tmp_path, "training_args.json", base % ', "evaluation_strategy": "epoch", '
                   '"per_device_eval_batch_size": 2, "prediction_loss_only": true', framework="hf")
    assert f["eval_batch"] == 2
    f, _ = _fields(tmp_path, "training_args.json", base % "", framework="hf")
    assert "eval_batch" not in f


def test_llamafactory_compute_accuracy_keeps_ids(tmp_path):
    head = "model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\nfinetuning_type: lora\nbf16: true\n"
    f, notes = _fields(tmp_path, "lf.yaml", head + "val_size: 0.1\neval_strategy: steps\n"
                       "per_device_eval_batch_size: 2\ncompute_accuracy: true\n")
    assert (f["eval_batch"], f["eval_keep"], f["eval_samples"]) == (2, "ids", 2)
    assert any("does not give the eval set's size" in n for n in notes)
    f, _ = _fields(tmp_path, "lf.yaml", head + "val_size: 500\neval_strategy: steps\ncompute_accuracy: true\n")
    assert (f["eval_batch"], f["eval_samples"]) == (8, 500)  # a count from 1 on; HF's batch 8
    f, _ = _fields(tmp_path, "lf.yaml", head + "val_size: 500\neval_strategy: steps\ncompute_accuracy: true\n"
                   "eval_accumulation_steps: 4\n")
    assert f["eval_samples"] == 32
    f, notes = _fields(tmp_path, "lf.yaml", head + "eval_dataset: alpaca\neval_strategy: steps\n"
                       "predict_with_generate: true\n")
    # generation is priced (tests/exact/test_eval_generation.py): the generated ids are kept
    assert (f["eval_batch"], f["eval_keep"], f["eval_new_tokens"]) == (8, "ids", 1)
    f, _ = _fields(tmp_path, "lf.yaml", head + "eval_strategy: steps\n")  # no eval data: no evaluation
    assert "eval_batch" not in f
    with pytest.raises(ConfigError, match="cannot be used together"):
        _fields(tmp_path, "lf.yaml", head + "val_size: 0.1\neval_strategy: steps\ncompute_accuracy: true\n"
                "predict_with_generate: true\n")


def test_axolotl_eval_batch_defaults_to_micro_batch(tmp_path):
    head = ("base_model: Qwen/Qwen3-0.6B\nadapter: lora\nlora_r: 8\nlora_target_linear: true\n"
            "micro_batch_size: 2\n")
    f, _ = _fields(tmp_path, "ax.yml", head + "val_set_size: 0.05\nevals_per_epoch: 4\n")
    assert f["eval_batch"] == 2 and "eval_keep" not in f
    f, _ = _fields(tmp_path, "ax.yml", head + "val_set_size: 0.05\neval_steps: 10\neval_batch_size: 6\n")
    assert f["eval_batch"] == 6
    f, _ = _fields(tmp_path, "ax.yml", head + "val_set_size: 0.05\n")  # nothing schedules it
    assert "eval_batch" not in f


def test_swift_eval_metric_acc_keeps_ids(tmp_path):
    cmd = "swift sft --model Qwen/Qwen3-0.6B --tuner_type lora --max_length 1024 "
    f, notes = _fields(tmp_path, "run.sh", cmd + "--split_dataset_ratio 0.01 --eval_metric acc "
                       "--per_device_eval_batch_size 4\n")
    assert (f["eval_batch"], f["eval_keep"]) == (4, "ids")
    f, _ = _fields(tmp_path, "run.sh", cmd + "--val_dataset a.jsonl\n")
    assert f["eval_batch"] == 1 and "eval_keep" not in f  # ms-swift's eval batch 1, no metric
    f, _ = _fields(tmp_path, "run.sh", cmd + "--val_dataset a.jsonl --save_strategy no\n")
    assert "eval_batch" not in f  # eval_strategy follows save_strategy
    f, _ = _fields(tmp_path, "run.sh", cmd + "--eval_metric acc\n")
    assert "eval_batch" not in f  # no eval data


def test_trl_eval_keys_by_version(tmp_path):
    text = "model_name_or_path: Qwen/Qwen3-0.6B\ndtype: bfloat16\nuse_peft: true\neval_strategy: steps\n"
    f, _ = _fields(tmp_path, "trl.yaml", text, version="1.10.0")
    assert f["eval_batch"] == 8
    f, notes = _fields(tmp_path, "trl.yaml", text, version="1.16.0")
    assert "eval_batch" not in f and any("fused LM head" in n and "not priced" in n for n in notes)


def test_torchtune_has_no_validation_loop(tmp_path):
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "data" / "frameworks" / "torchtune_qlora.yaml"
    cfg = tmp_path / "tt.yaml"
    cfg.write_text(fixture.read_text() + "dataset_val:\n  _component_: torchtune.datasets.alpaca_dataset\n"
                   "run_val_every_n_steps: 50\n")
    loaded = F.load([str(cfg)], None, "torchtune", None)
    res = F.resolve(loaded, QWEN06)
    assert "eval_batch" not in res.fields and any("no validation loop" in n for n in res.notes)


def test_plan_respects_the_eval_peak(cli_run):
    """On a T4, Qwen3-0.6B QLoRA fits at 1×2048; a loss-only evaluation at eval batch 8 (24.2 GiB at
    2048) does not, and the largest sequence the plan offers shrinks."""
    def largest_seq(*extra: str) -> str:
        code, out, _ = cli_run("plan", "-m", "Qwen3-0.6B", "--gpu", "T4", *extra)
        return next(line for line in out.splitlines() if "largest seq" in line)

    assert "2,048" not in largest_seq("--eval-batch", "8") and largest_seq() != largest_seq("--eval-batch", "8")
