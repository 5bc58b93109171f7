"""LLaMA-Factory (``llamafactory-cli train config.yaml``): its YAML.

Read from llamafactory 0.9.5 (research §3): no peft k-bit preparation (its own
``prepare_model_for_training`` casts nothing unless ``upcast_layernorm``); every trainable parameter
to fp32 after ``get_peft_model`` (``pure_bf16`` keeps bf16 and trains without autocast); its own
checkpointing, reentrant by default (``use_reentrant_gc: true``); ``lora_target: all``; HF's
per-device batch of 8 when the YAML gives none.
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks import base as b
from vramplan.frameworks import parallel as par
from vramplan.frameworks.base import MISSING, Era, Framework, Key

KEYS = (
    Key("model_name_or_path", MISSING, "model id or path"),
    Key("stage", "sft", "sft (pt also prices); dpo/kto/ppo/rm are issue 17"),
    Key("finetuning_type", "lora", "lora / full (freeze is not priced)"),
    Key("quantization_bit", None, "4 or 8"),
    Key("quantization_method", "bnb", "bnb"),
    Key("quantization_type", "nf4", "nf4 / fp4"),
    Key("double_quantization", True, "double quantization"),
    Key("freeze_vision_tower", True, "multimodal: the vision tower frozen (no adapter on it)"),
    Key("bf16", False, "bf16 mixed precision"),
    Key("fp16", False, "fp16 mixed precision"),
    Key("pure_bf16", False, "bf16 weights and adapters, no autocast"),
    Key("lora_rank", 8, "LoRA rank"),
    Key("lora_dropout", 0.0, "LoRA dropout"),
    Key("lora_target", "all", "all = every linear but lm_head"),
    Key("disable_gradient_checkpointing", False, "checkpointing is on unless disabled"),
    Key("use_reentrant_gc", True, "reentrant checkpointing"),
    Key("use_unsloth_gc", False, "offloaded checkpoints (every layer input to host memory)"),
    Key("flash_attn", "auto", "auto (= sdpa), sdpa, fa2, disabled"),
    Key("cutoff_len", 2048, "tokens per sample"),
    Key("per_device_train_batch_size", 8, "micro-batch (HF default)"),
    Key("optim", "adamw_torch_fused", "HF optimizer name"),
    Key("upcast_layernorm", False, "norms to fp32"),
    Key("upcast_lmhead_output", False, "fp32 copy of the logits"),
    Key("enable_liger_kernel", False, "Liger kernels before loading; sft/pt: FLCE (Loss.LIGER)"),
    Key("packing", None, "None = on only for stage pt: rows of cutoff_len"),
    Key("neat_packing", False, "packing with per-sample attention: a 4D mask, or varlen with fa2"),
    Key("use_unsloth", False, "Unsloth's loader"),
    Key("eval_strategy", "no", "evaluation during training (steps, epoch)"),
    Key("val_size", 0.0, "validation split: a fraction, or a count when >= 1"),
    Key("eval_dataset", None, "validation datasets"),
    *b.hf_eval_keys(),
    Key("compute_accuracy", False, "token accuracy: argmax ids kept per eval sample"),
    Key("predict_with_generate", False, "generation in evaluation (model.generate with a KV cache)"),
    Key("generation_max_length", None, "generation's total length bound (None = cutoff_len)"),
    Key("eval_num_beams", None, "beam search in evaluation (None = generation_num_beams)"),
    Key("generation_num_beams", None, "beam search in evaluation (None = greedy/sampling)"),
    Key("use_dora", False, "DoRA"),
    Key("use_rslora", False, "rsLoRA (scaling only: memory-neutral)"),
    Key("additional_target", None, "modules_to_save (embed_tokens, lm_head)"),
    Key("resize_vocab", False, "true (no additional_target): embed_tokens and lm_head trained in full"),
    Key("deepspeed", None, "DeepSpeed config path (examples/deepspeed/ds_z*_config.json known when absent)"),
    Key("ddp_bucket_cap_mb", None, "DDP bucket size in MiB (None = torch's 25)"),
)

#: llamafactory 0.9.5 ``model/model_utils/liger_kernel.py`` L39-93: the model_types it applies Liger to.
LIGER_MODEL_TYPES = frozenset((
    "gemma", "gemma2", "gemma3", "gemma3_text", "glm", "glm4", "glm4v", "granite", "llama", "llava", "mistral",
    "mixtral", "mllama", "olmo2", "paligemma", "phi3", "qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3", "qwen3_moe",
    "qwen3_next", "qwen3_5", "gpt_oss"))

_SOURCE = "llamafactory 0.9.5: hparams/*, model/adapter.py, model/model_utils/checkpointing.py (research §3)"


def scenario(r: b.Reader, era: Era, arch: Any, notes: list[str]) -> dict[str, Any]:
    who = "LLaMA-Factory"
    stage = str(r.get("stage")).lower()
    if stage not in ("sft", "pt"):
        raise b.ConfigError(f"{who}: stage '{stage}' is not priced yet (sft, pt; preference stages are issue 17)")
    out: dict[str, Any] = {}
    ft = str(r.get("finetuning_type")).lower()
    if ft not in ("lora", "full"):
        raise b.ConfigError(f"{who}: finetuning_type '{ft}' is not priced (lora or full)")
    out["full"] = ft == "full"
    pure = b.boolean(r.get("pure_bf16"), "pure_bf16")
    bf16, fp16 = b.boolean(r.get("bf16"), "bf16"), b.boolean(r.get("fp16"), "fp16")
    out["dtype"] = "fp16" if fp16 else "bf16"
    if not (bf16 or fp16 or pure):
        notes.append("neither bf16 nor fp16 set: LLaMA-Factory infers bf16 compute where the GPU supports it "
                     "(priced so) and the HF Trainer then runs without autocast")
        out["autocast"] = False
    if pure:
        out["autocast"] = False
        if not out["full"]:
            out["adapter_dtype"] = "bf16"
    bits = r.get("quantization_bit")
    if bits is None:
        out["quant"] = "none"
    else:
        method = str(r.get("quantization_method")).lower()
        if method != "bnb":
            raise b.ConfigError(f"{who}: quantization_method '{method}' is not priced (bnb)")
        nbits = b.integer(bits, "quantization_bit")
        if nbits == 4:
            qt = str(r.get("quantization_type")).lower()
            if qt not in ("nf4", "fp4"):
                raise b.ConfigError(f"{who}: quantization_type '{qt}' must be nf4 or fp4")
            out["quant"] = qt
            out["double_quant"] = b.boolean(r.get("double_quantization"), "double_quantization")
            # model/model_utils/quantization.py: bnb_4bit_quant_storage=compute_dtype (the FSDP-QLoRA layout)
            out["quant_storage"] = out["dtype"]
        elif nbits == 8:
            out["quant"] = "int8"
        else:
            raise b.ConfigError(f"{who}: quantization_bit must be 4 or 8, got {bits!r}")
    if getattr(arch, "vision", None) is not None:  # hparams/finetuning_args.py freeze_vision_tower (default True)
        out["vision"] = "frozen" if b.boolean(r.get("freeze_vision_tower"), "freeze_vision_tower") else "trained"
    if not out["full"]:
        out["rank"] = b.integer(r.get("lora_rank"), "lora_rank")
        out["lora_dropout"] = b.fraction(r.get("lora_dropout"), "lora_dropout")
        out["targets"] = b.targets(r.get("lora_target"), "lora_target") or ("all-linear",)
        b.adapter_variant(r, out, "use_dora", "additional_target", "use_rslora")
        if r.get("additional_target") is None and b.boolean(r.get("resize_vocab"), "resize_vocab"):
            # model/adapter.py: resize_vocab without additional_target saves both embedding modules
            out["modules_to_save"] = ("embed_tokens", "lm_head")
    gc = not b.boolean(r.get("disable_gradient_checkpointing"), "disable_gradient_checkpointing")
    out["grad_checkpointing"] = gc
    out["reentrant"] = b.boolean(r.get("use_reentrant_gc"), "use_reentrant_gc")
    if gc:
        notes.append("LLaMA-Factory 0.9.5 supports transformers <= 5.6; with transformers 5.24 its checkpointing "
                     "wrapper fails at the first forward (it expects a bound method, transformers passes "
                     "partial(forward, self)): priced as it runs on its supported stack (reentrant)")
    attn = str(r.get("flash_attn")).lower()
    table = {"auto": "sdpa", "sdpa": "sdpa", "fa2": "flash2", "disabled": "eager"}
    if attn not in table:
        raise b.ConfigError(f"{who}: flash_attn '{attn}' is not priced (auto, sdpa, fa2, disabled)")
    out["attn"] = table[attn]
    cutoff = b.integer(r.get("cutoff_len"), "cutoff_len")
    out["seq"] = cutoff
    out["batch"] = b.integer(r.get("per_device_train_batch_size"), "per_device_train_batch_size")
    out["optimizer"] = b.optimizer(r.get("optim"), who)
    out.update(_evaluation(r, notes))
    if b.boolean(r.get("enable_liger_kernel"), "enable_liger_kernel"):
        # model/model_utils/liger_kernel.py L30-101: its own model_type list; pt/sft keep Liger's defaults
        # (require_logits is False there), so the fused linear cross-entropy is on
        loss = b.liger(arch, {}, notes, who, model_types=LIGER_MODEL_TYPES, out=out)
        if loss:
            out["loss"] = loss
    if b.boolean(r.get("use_unsloth_gc"), "use_unsloth_gc") and out.get("grad_checkpointing", True):
        # model/model_utils/checkpointing.py L42-81: every layer input .to("cpu", non_blocking=True) (pinned on
        # CUDA), reentrant recompute: the tensors save_on_cpu moves
        out["offload"] = "checkpoints"
    b.unpriced(r, notes, (
                          ("use_unsloth", "Unsloth's loader"), ("upcast_layernorm", "fp32 norms"),
                          ("upcast_lmhead_output", "the fp32 lm_head output copy")))
    packing = r.get("packing")
    if b.boolean(r.get("neat_packing"), "neat_packing"):
        # neat_packing sets packing and block_diag_attn (hparams/data_args.py L185-188, parser.py L519)
        if out["attn"] == "flash2":
            if out["batch"] != 1:
                raise b.ConfigError(f"{who}: neat_packing with fa2 needs per_device_train_batch_size 1 (the collator "
                                    "asserts it: data/collator.py)")
            out["packing"] = "packed"
            notes.append("neat_packing with fa2: the collator drops the mask and flash-attention attends per sample "
                         "from the position ids (varlen); priced as a packed row")
        else:
            out["packing"] = "packed-mask"
            notes.append("neat_packing without fa2: the collator's (b, 1, cutoff_len, cutoff_len) mask in the compute "
                         "dtype (data/collator.py::prepare_4d_attention_mask) rides with the batch all step, priced so")
    elif (b.boolean(packing, "packing") if packing is not None else stage == "pt"):
        notes.append("packing: rows of cutoff_len tokens filled with several samples that attend across each other "
                     "(no per-sample positions without neat_packing), priced as full unpacked rows")
    # launcher.py L58-66: torchrun when FORCE_TORCHRUN or several GPUs; parser.py L466-474 sets
    # ddp_find_unused_parameters False for LoRA (no memory priced); FSDP only through accelerate launch
    par.resolve(r, notes, out, who, "llamafactory", deepspeed=par.framework_deepspeed(r, "deepspeed", "llamafactory"),
                bucket_cap_mb=r.get("ddp_bucket_cap_mb"), env_rule="llamafactory")
    if out.get("strategy") == "fsdp" and out.get("reentrant"):
        # model/model_utils/checkpointing.py L157-162: under FSDP2 use_reentrant_gc is set to False
        out["reentrant"] = False
        notes.append("LLaMA-Factory under FSDP2 sets use_reentrant_gc to False (checkpointing.py): non-reentrant")
    return out


def _evaluation(r: b.Reader, notes: list[str]) -> dict[str, Any]:
    """LLaMA-Factory 0.9.5 ``train/sft/workflow.py`` L80-86: ``compute_accuracy`` sets ``ComputeAccuracy`` with
    ``preprocess_logits_for_metrics=eval_logit_processor`` (argmax ids, ``train/sft/metric.py`` L47-58);
    ``predict_with_generate`` sets ``ComputeSimilarity`` and generates; otherwise no compute_metrics. Eval data:
    ``val_size`` (a count from 1 on, ``data/data_utils.py`` L109-115) or ``eval_dataset``."""
    val = r.get("val_size")
    data = bool(r.get("eval_dataset")) or float(val or 0) > 1e-6
    generate = b.boolean(r.get("predict_with_generate"), "predict_with_generate")
    accuracy = b.boolean(r.get("compute_accuracy"), "compute_accuracy")
    if generate and accuracy:
        raise b.ConfigError("LLaMA-Factory: predict_with_generate and compute_accuracy cannot be used together "
                            "(its parser refuses them)")
    out = b.hf_evaluation(r, notes, data=data, metrics="ids" if (accuracy or generate) else None,
                          samples=b.eval_set_size(val), script_metrics=False)
    if out and generate:
        out.update(_generation(r, notes))
    return out


def _generation(r: b.Reader, notes: list[str]) -> dict[str, Any]:
    """``predict_with_generate`` (llamafactory 0.9.5): ``CustomSeq2SeqTrainer.prediction_step``
    (``train/sft/trainer.py`` L165-189) pops the labels and generates (transformers 5.24
    ``Seq2SeqTrainer.prediction_step`` L290-372: no loss forward without labels), keeping the generated ids
    (``ComputeSimilarity``). During training ``Seq2SeqTrainer.evaluate`` (L178-193) replaces the trainer's
    generating arguments by ``max_length=generation_max_length``, which LLaMA-Factory sets to ``cutoff_len``
    when unset (``hparams/parser.py`` L457): prompt + new tokens <= that bound (prompts are cut so that
    prompt + response <= cutoff_len, ``data/processor/unsupervised.py``). The busiest case is the longest
    prompt: priced at cutoff_len tokens with max(1, bound - cutoff_len) new ones."""
    cutoff = b.integer(r.get("cutoff_len"), "cutoff_len")
    bound = r.get("generation_max_length")
    bound = cutoff if bound is None else b.integer(bound, "generation_max_length")
    beams = r.get("eval_num_beams") or r.get("generation_num_beams")
    if beams is not None and b.integer(beams, "eval_num_beams") > 1:
        notes.append(f"num_beams {beams}: beam search holds num_beams × the KV cache and reorders it each step; "
                     "not priced, priced as greedy decoding")
    attn = str(r.get("flash_attn")).lower()
    if attn not in ("auto", "sdpa"):
        notes.append(f"predict_with_generate: generation is priced with sdpa attention, not flash_attn {attn}; "
                     "priced as the loss forward of each eval batch")
        return {}
    new = max(1, bound - cutoff)
    notes.append(f"predict_with_generate: evaluation generates (greedy or sampled, every sequence to the length "
                 f"bound {bound}) with a DynamicCache: priced as the longest prompt, {cutoff} tokens, and {new} new "
                 "token(s), keeping the generated ids; a model whose generation_config.json sets max_new_tokens "
                 "generates that many instead (give --eval-new-tokens)")
    return {"eval_new_tokens": new}


def spell(fieldname: str, value: Any) -> Any:
    if fieldname == "grad_checkpointing":
        return not value
    if fieldname == "targets":
        return "all" if value == ("all-linear",) else ",".join(value)
    if fieldname == "attn":
        return {"flash2": "fa2", "eager": "disabled"}.get(value, value)
    return b.hf_spell(fieldname, value)


FRAMEWORK = Framework(
    name="llamafactory", title="LLaMA-Factory", package="llamafactory",
    eras=(Era("0.9.0", dict(recipe="plain", autocast=True, loss="hf", hold_logits="none"), source=_SOURCE),),
    keys=KEYS, scenario=scenario, model_key="model_name_or_path", style="yaml",
    launchers=(("llamafactory-cli", "train"), ("lmf", "train")),
    plan_keys=dict(seq="cutoff_len", batch="per_device_train_batch_size", rank="lora_rank",
                   grad_checkpointing="disable_gradient_checkpointing", optimizer="optim", targets="lora_target",
                   lora_dropout="lora_dropout", attn="flash_attn"),
    spell=spell, known_latest="0.9.5",
    examples=(dict(model_name_or_path="M", stage="sft", finetuning_type="lora", quantization_bit=4, bf16=True),
              dict(model_name_or_path="M", stage="sft", finetuning_type="lora", bf16=True)))
