"""A plain transformers ``Trainer`` + peft script: its ``TrainingArguments`` JSON (``to_json_string``)
with peft's ``adapter_config.json``.

transformers 5.24 / peft 0.21.2 (research §0.1, §5): the Trainer enables checkpointing at
``train()`` with non-reentrant kwargs, overriding the reentrant GC peft's k-bit preparation set;
compute_loss drops the outputs before backward; peft's adapters are fp32. The quantization of the
base is in neither file (it is the script's ``BitsAndBytesConfig``): unquantized unless ``--quant``
says otherwise, and a quantized run is priced with peft's ``prepare_model_for_kbit_training``
(``Recipe.HF_PEFT``), what such scripts call.
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks import base as b
from vramplan.frameworks import parallel as par
from vramplan.frameworks.base import Era, Framework, Key

KEYS = (
    Key("adapter_config.base_model_name_or_path", None, "model id or path"),
    Key("adapter_config.peft_type", "LORA", "LORA only"),
    Key("adapter_config.r", 8, "LoRA rank"),
    Key("adapter_config.lora_dropout", 0.0, "LoRA dropout"),
    Key("adapter_config.target_modules", None, "None = peft's per-model default"),
    Key("adapter_config.use_dora", False, "DoRA"),
    Key("adapter_config.modules_to_save", None, "fully trained copies (embed_tokens, lm_head)"),
    Key("adapter_config.use_rslora", False, "rsLoRA (scaling only: memory-neutral)"),
    Key("training_args.per_device_train_batch_size", 8, "micro-batch"),
    Key("training_args.gradient_checkpointing", False, "checkpointing"),
    Key("training_args.gradient_checkpointing_kwargs", None, "use_reentrant (None = non-reentrant), offload"),
    Key("training_args.bf16", False, "bf16 autocast"),
    Key("training_args.fp16", False, "fp16 autocast"),
    Key("training_args.optim", "adamw_torch_fused", "HF optimizer name"),
    Key("training_args.use_liger_kernel", False, "Liger kernels, at train() (FLCE: Loss.LIGER)"),
    Key("training_args.liger_kernel_config", None, "keyword arguments of Liger's apply function (None = its defaults)"),
    Key("training_args.eval_strategy", "no", "evaluation during training (steps, epoch)",
        aliases=("training_args.evaluation_strategy",)),
    *b.hf_eval_keys("training_args."),
    Key("training_args.use_cache", False, "KV cache in every forward (the Trainer sets model.config.use_cache)"),
    Key("training_args.predict_with_generate", False, "Seq2SeqTrainer generation in evaluation (script's metrics)"),
    Key("training_args.deepspeed", None, "DeepSpeed config (a JSON path or mapping): ZeRO-2/3"),
    Key("training_args.fsdp", None, "FSDP on (true) or legacy options (full_shard, shard_grad_op, offload)"),
    Key("training_args.fsdp_config", None, "FSDP settings (version 2 by default, reshard_after_forward, cpu_offload)"),
    Key("training_args.ddp_bucket_cap_mb", None, "DDP bucket size in MiB (None = torch's 25)"),
    Key("training_args.ddp_find_unused_parameters", None, "DDP unused-parameter search (no memory priced)"),
)


def scenario(r: b.Reader, era: Era, arch: Any, notes: list[str]) -> dict[str, Any]:
    who = "HF Trainer"
    out: dict[str, Any] = {}
    bf16 = b.boolean(r.get("training_args.bf16"), "bf16")
    fp16 = b.boolean(r.get("training_args.fp16"), "fp16")
    out["dtype"] = "fp16" if fp16 else ("bf16" if bf16 else b.dtype("auto", "dtype", arch))
    out["autocast"] = bf16 or fp16
    if "adapter_config" in r.data:
        kind = str(r.get("adapter_config.peft_type")).upper()
        if kind != "LORA":
            raise b.ConfigError(f"{who}: peft_type {kind} is not priced (LORA)")
        out["rank"] = b.integer(r.get("adapter_config.r"), "r")
        out["lora_dropout"] = b.fraction(r.get("adapter_config.lora_dropout"), "lora_dropout")
        out["targets"] = b.targets(r.get("adapter_config.target_modules"), "target_modules") or \
            b.peft_default_targets(arch, who)
        b.adapter_variant(r, out, "adapter_config.use_dora", "adapter_config.modules_to_save",
                          "adapter_config.use_rslora")
        out["quant"] = "none"
        notes.append("training_args.json and adapter_config.json do not say whether the base is quantized: "
                     "unquantized unless --quant says so (--quant nf4 for QLoRA, priced with peft's k-bit "
                     "preparation)")
    else:
        out["full"] = True
        out["quant"] = "none"
        notes.append("no adapter_config.json: priced as full fine-tuning (pass it as a second --config for LoRA)")
    out["batch"] = b.integer(r.get("training_args.per_device_train_batch_size"), "per_device_train_batch_size")
    gc = b.boolean(r.get("training_args.gradient_checkpointing"), "gradient_checkpointing")
    out["grad_checkpointing"] = gc
    kwargs = b.mapping(r.get("training_args.gradient_checkpointing_kwargs"), "gradient_checkpointing_kwargs")
    out["reentrant"] = b.boolean(kwargs.get("use_reentrant", False), "use_reentrant")
    if gc and b.boolean(kwargs.get("offload", False), "offload"):
        # trainer.py L1503-1528 pops offload and passes it to activation_checkpointing_enable: save_on_cpu
        out["offload"] = "checkpoints"
    out["optimizer"] = b.optimizer(r.get("training_args.optim"), who)
    notes.append("TrainingArguments carry no sequence length (the data decides it): priced at --seq "
                 "(default 2048)")
    evaluation = b.hf_evaluation(r, notes, "training_args.")
    out.update(evaluation)
    if evaluation and b.boolean(r.get("training_args.use_cache"), "use_cache"):
        # transformers 5.24 trainer.py L646: model.config.use_cache = args.use_cache; the models' forward
        # then builds a DynamicCache (modeling_llama.py L374-375) that the eval forward returns
        notes.append("use_cache: true makes every eval forward build a KV cache of the whole batch (K + V of every "
                     "layer); not priced, priced as the Trainer's default use_cache=False")
    if evaluation and b.boolean(r.get("training_args.predict_with_generate"), "predict_with_generate"):
        notes.append("predict_with_generate: a Seq2SeqTrainer generates only with the script's compute_metrics "
                     "(without it prediction_loss_only skips generation); priced without generation, add "
                     "--eval-new-tokens N (generation_max_length minus the prompt) for a generating evaluation")
    if b.boolean(r.get("training_args.use_liger_kernel"), "use_liger_kernel"):
        config = b.mapping(r.get("training_args.liger_kernel_config"), "liger_kernel_config")
        loss = b.liger(arch, config, notes, who, out=out)
        if loss:
            out["loss"] = loss
    par.hf_trainer_parallel(r, notes, out, who, "hf", "training_args.")
    return out


FRAMEWORK = Framework(
    name="hf", title="HF Trainer + peft", package="transformers",
    eras=(Era("5.0.0", dict(recipe="hf-peft", loss="hf", hold_logits="none"),
              source="transformers 5.24.0 trainer.py / training_args.py, peft 0.21.2 (research §0.1, §5)"),),
    keys=KEYS, scenario=scenario, model_key="adapter_config.base_model_name_or_path", style="json",
    plan_keys=dict(batch="training_args.per_device_train_batch_size", rank="adapter_config.r",
                   grad_checkpointing="training_args.gradient_checkpointing", optimizer="training_args.optim",
                   targets="adapter_config.target_modules", lora_dropout="adapter_config.lora_dropout",
                   eval_batch="training_args.per_device_eval_batch_size"),
    spell=b.hf_spell, known_latest="5.24.0",
    examples=(dict(training_args=dict(bf16=True), adapter_config=dict(base_model_name_or_path="M", r=8)),
              dict(training_args=dict(bf16=True), adapter_config=dict(base_model_name_or_path="M", r=8))))
