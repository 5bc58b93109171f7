"""TRL (``trl sft``): its YAML config or its command line.

TRL changed what it does to a quantized model three times (research §4):

- 0.20 – 0.25: peft's ``prepare_model_for_kbit_training`` (reentrant checkpointing, fp32 upcast),
  then ``peft_module_casting_to_bf16`` (embeddings and lm_head back to bf16): ``Recipe.TRL``;
- 0.26 – 1.14: no k-bit preparation; every trainable parameter of a quantized model cast to bf16;
  checkpointing non-reentrant (transformers 5); the model's own loss;
- 1.15 – 1.16: as 0.26, with the fused chunked LM-head loss by default (``Loss.CHUNKED_HEAD``).

The ``trl sft`` CLI's ``ModelConfig`` loads in **float32** unless ``dtype`` says otherwise, with
bnb compute in that dtype; ``SFTConfig`` turns on checkpointing and bf16, max_length 1024.
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks import base as b
from vramplan.frameworks import parallel as par
from vramplan.frameworks.base import MISSING, Era, Framework, Key, parse_version

KEYS = (
    Key("model_name_or_path", MISSING, "model id or path"),
    Key("dtype", "float32", "load dtype and bnb compute dtype (ModelConfig default float32)"),
    Key("torch_dtype", None, "older spelling of dtype (read by TRL < 0.26 only)"),
    Key("use_peft", False, "LoRA; off = full fine-tuning"),
    Key("load_in_4bit", False, "4-bit base"),
    Key("load_in_8bit", False, "8-bit base"),
    Key("bnb_4bit_quant_type", "nf4", "4-bit data type"),
    Key("bnb_4bit_quant_storage", None, "storage dtype of the packed 4-bit weights (FSDP-QLoRA: the compute dtype)"),
    Key("use_bnb_nested_quant", False, "double quantization"),
    Key("lora_r", 16, "LoRA rank"),
    Key("lora_dropout", 0.05, "LoRA dropout"),
    Key("lora_target_modules", None, "None = peft's per-model default"),
    Key("use_dora", False, "DoRA"),
    Key("use_rslora", False, "rsLoRA (scaling only: memory-neutral)"),
    Key("lora_modules_to_save", None, "modules_to_save (embed_tokens, lm_head)"),
    Key("max_length", 1024, "tokens per sample"),
    Key("max_seq_length", None, "older spelling of max_length (not read by TRL >= 0.20)"),
    Key("per_device_train_batch_size", 8, "micro-batch (HF default)"),
    Key("gradient_checkpointing", True, "checkpointing (SFTConfig default on)"),
    Key("gradient_checkpointing_kwargs", None, "use_reentrant"),
    Key("bf16", None, "None = on unless fp16"),
    Key("fp16", False, "fp16"),
    Key("attn_implementation", None, "None = sdpa"),
    Key("optim", "adamw_torch_fused", "HF optimizer name"),
    Key("loss_type", "nll", "nll (fused head in >= 1.15) or dft"),
    Key("packing", False, "packing: bins of max_length; bfd forces padding_free"),
    Key("packing_strategy", "bfd", "bfd / bfd_split / bfd-requeue (padding-free), wrapped"),
    Key("padding_free", False, "the micro-batch as one row with position ids"),
    Key("activation_offloading", False, "TRL OffloadActivations"),
    Key("use_liger_kernel", False, "Liger kernels (>= 1.15: layer kernels only, FLCE forced off)"),
    Key("liger_kernel_config", None, "keyword arguments of Liger's apply function"),
    Key("eval_strategy", "no", "evaluation during training (steps, epoch)", aliases=("evaluation_strategy",)),
    *b.hf_eval_keys(),
    Key("deepspeed", None, "DeepSpeed config (a JSON path or mapping): ZeRO-2/3"),
    Key("fsdp", None, "FSDP on (true) or legacy options (full_shard, shard_grad_op, offload)"),
    Key("fsdp_config", None, "FSDP settings (version 2 by default, reshard_after_forward, cpu_offload)"),
    Key("ddp_bucket_cap_mb", None, "DDP bucket size in MiB (None = torch's 25)"),
    Key("ddp_find_unused_parameters", None, "DDP unused-parameter search (no memory priced)"),
    Key("accelerate_config", None, "trl sft: accelerate config (a file or a name shipped in trl/accelerate_configs)"),
    Key("num_processes", None, "trl sft: accelerate launch --num_processes (the total)"),
    Key("num_machines", None, "trl sft: accelerate launch --num_machines"),
)


def scenario(r: b.Reader, era: Era, arch: Any, notes: list[str]) -> dict[str, Any]:
    who = "TRL"
    v = parse_version(era.since)
    out: dict[str, Any] = {}
    if r.has("dtype"):
        raw = r.get("dtype")
    elif r.has("torch_dtype") and v < (0, 26):
        raw = r.get("torch_dtype")
    else:
        if r.has("torch_dtype"):
            r.get("torch_dtype")
            notes.append("torch_dtype is not a TRL >= 0.26 key (ModelConfig reads dtype): the float32 default "
                         "stays; write dtype: bfloat16")
        raw = r.get("dtype")
    d = b.dtype(raw, "dtype", arch)
    bf16 = r.get("bf16")
    fp16 = b.boolean(r.get("fp16"), "fp16")
    mixed = fp16 or bf16 is None or b.boolean(bf16, "bf16")
    out["dtype"] = d
    if d == "fp32":
        notes.append("dtype float32 (TRL's ModelConfig default): frozen weights load in fp32 and bnb computes in "
                     "fp32 while the Trainer autocasts to bf16; priced as the fp32 program without autocast (an "
                     "upper bound); set dtype: bfloat16 as most recipes do")
        out["autocast"] = False
    else:
        out["autocast"] = mixed
    four, eight = b.boolean(r.get("load_in_4bit"), "load_in_4bit"), b.boolean(r.get("load_in_8bit"), "load_in_8bit")
    peft = b.boolean(r.get("use_peft"), "use_peft")
    if (four or eight) and not peft:
        raise b.ConfigError(f"{who}: a quantized base needs use_peft: true (no full fine-tuning of 4/8-bit weights)")
    out["full"] = not peft
    if four:
        qt = str(r.get("bnb_4bit_quant_type")).lower()
        if qt not in ("nf4", "fp4"):
            raise b.ConfigError(f"{who}: bnb_4bit_quant_type '{qt}' must be nf4 or fp4")
        out["quant"] = qt
        out["double_quant"] = b.boolean(r.get("use_bnb_nested_quant"), "use_bnb_nested_quant")
        storage = b.quant_storage(r.get("bnb_4bit_quant_storage"), "bnb_4bit_quant_storage")
        if storage:
            out["quant_storage"] = storage
    else:
        out["quant"] = "int8" if eight else "none"
    if peft:
        out["rank"] = b.integer(r.get("lora_r"), "lora_r")
        out["lora_dropout"] = b.fraction(r.get("lora_dropout"), "lora_dropout")
        out["targets"] = b.targets(r.get("lora_target_modules"), "lora_target_modules") or \
            b.peft_default_targets(arch, who)
        b.adapter_variant(r, out, "use_dora", "lora_modules_to_save", "use_rslora")
        if v >= (0, 26) and (four or eight):
            if d == "bf16":
                out["adapter_dtype"] = d
            else:
                notes.append(f"TRL >= 0.26 casts the adapters of a quantized model to bf16; with {d} weights vramplan "
                             f"keeps adapters in fp32 or {d} only: priced as fp32 adapters (an upper bound)")
    length = r.get("max_length")
    if r.has("max_seq_length"):
        old = r.get("max_seq_length")
        if not r.has("max_length"):
            notes.append(f"max_seq_length is not a TRL >= 0.20 key (SFTConfig reads max_length): the default "
                         f"max_length {length} stays; write max_length: {old}")
    out["seq"] = b.integer(length, "max_length")
    out["batch"] = b.integer(r.get("per_device_train_batch_size"), "per_device_train_batch_size")
    gc = b.boolean(r.get("gradient_checkpointing"), "gradient_checkpointing")
    out["grad_checkpointing"] = gc
    kwargs = b.mapping(r.get("gradient_checkpointing_kwargs"), "gradient_checkpointing_kwargs")
    if v < (0, 26) and (four or eight):
        reent = kwargs.get("use_reentrant", True)  # peft's prep with `kwargs or {}`: torch's reentrant default
    else:
        reent = kwargs.get("use_reentrant", False)
    out["reentrant"] = b.boolean(reent, "use_reentrant")
    attn = r.get("attn_implementation")
    table = {None: "sdpa", "sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash2"}
    if not (attn is None or isinstance(attn, str)) or attn not in table:
        raise b.ConfigError(f"{who}: attn_implementation '{attn}' is not priced (sdpa, eager, flash_attention_2)")
    out["attn"] = table[attn]
    out["optimizer"] = b.optimizer(r.get("optim"), who)
    loss_type = str(r.get("loss_type")).lower()
    if loss_type not in ("nll", "chunked_nll", "dft"):
        raise b.ConfigError(f"{who}: loss_type '{loss_type}' is not priced (nll, dft)")
    if v >= (1, 15):
        notes.append("TRL >= 1.15 scores only label positions in its fused head on CUDA: --label-fraction "
                     "(default 1.0) lowers that share for completion-only data")
    _layout(r, out, notes, who)
    evaluation = b.hf_evaluation(r, notes)
    if evaluation and v >= (1, 15):
        notes.append("eval_strategy: TRL >= 1.15 evaluates through its fused LM head (prediction_step): that "
                     "evaluation is not priced; priced as the training step alone")
    else:
        out.update(evaluation)
    if b.boolean(r.get("use_liger_kernel"), "use_liger_kernel"):
        config = b.mapping(r.get("liger_kernel_config"), "liger_kernel_config")
        if v >= (1, 15) and config.get("fused_linear_cross_entropy"):
            raise b.ConfigError(f"{who}: liger_kernel_config fused_linear_cross_entropy: true is refused by TRL >= "
                                "1.15 (it would replace the forward its fused LM head patches)")
        # 1.15 - 1.16 sft_trainer.py L1125-1140: only the layer kernels, FLCE forced off; before, the HF
        # Trainer applies Liger's defaults (FLCE on)
        loss = b.liger(arch, config, notes, who, flce_allowed=v < (1, 15), out=out)
        if loss:
            out["loss"] = loss
            notes.append("use_liger_kernel before TRL 1.15: priced as the HF Trainer applies Liger (its fused linear "
                         "cross-entropy on); read from trl 1.16 and transformers 5.24, not from that TRL's source")
    if b.boolean(r.get("activation_offloading"), "activation_offloading"):
        out["offload"] = "activations"  # sft_trainer.py L1189-1193: OffloadActivations around training_step
    _launch(r, notes)
    par.hf_trainer_parallel(r, notes, out, who, "trl")
    if peft and out.get("strategy") == "zero3" and out.get("grad_checkpointing") and not out.get("reentrant"):
        # trl 1.16 trainer/sft_trainer.py L873-895: PEFT + ZeRO-3 + checkpointing forces use_reentrant True
        out["reentrant"] = True
        notes.append("PEFT with DeepSpeed ZeRO-3: TRL forces reentrant checkpointing (sft_trainer.py L873-895)")
    return out


def _layout(r: b.Reader, out: dict[str, Any], notes: list[str], who: str) -> None:
    """``packing`` / ``packing_strategy`` / ``padding_free`` (trl 1.16 ``sft_trainer.py`` L914-931,
    L999-1003; ``sft_config.py`` L214-250): bfd packing fills bins of ``max_length`` and forces
    padding_free, which concatenates the micro-batch into one row with position ids and no mask
    (``DataCollatorForLanguageModeling``); padding_free without packing and with ``max_length`` set is
    refused. TRL does not refuse padding-free without flash attention (its docs support FA2/3 only):
    transformers then masks the one row as one block-diagonal (b·s)² mask."""
    packing = b.boolean(r.get("packing"), "packing")
    strategy = str(r.get("packing_strategy")).lower()
    if strategy not in ("bfd", "bfd_split", "bfd-requeue", "wrapped"):
        raise b.ConfigError(f"{who}: packing_strategy '{strategy}' is not known (bfd, bfd_split, wrapped)")
    free = b.boolean(r.get("padding_free"), "padding_free") or (packing and strategy != "wrapped")
    if free and not packing:
        raise b.ConfigError(f"{who}: padding_free without packing does not enforce max_length and TRL refuses it "
                            "while max_length is set; enable packing (packing_strategy bfd)")
    if packing and not free:
        notes.append("packing_strategy wrapped: full rows of max_length without per-sample position ids (attention "
                     "crosses samples); priced as unpacked rows of max_length")
        return
    if not packing:
        return
    if out["attn"] == "flash2":
        out["packing"] = "packed"
        notes.append(f"packing (bfd): one padding-free row of {out['batch']} full bins of {out['seq']} tokens; "
                     "priced as packed rows (the same tensors under flash-attention's varlen kernel)")
        return
    rows, length = out["batch"], out["seq"]
    out.update(packing="packed", batch=1, seq=rows * length)
    notes.append(f"packing (bfd) with {out['attn']}: TRL's one padding-free row of {rows} × {length} tokens reaches "
                 f"{out['attn']} with transformers' block-diagonal mask over the whole row, priced as one packed row of "
                 f"{rows * length} tokens (flash_attention_2 attends per sample instead)")


_S = "trl {}: trainer/sft_trainer.py, trainer/model_config.py, models/utils.py (research §4)"
def _launch(r: b.Reader, notes: list[str]) -> None:
    """``trl sft`` hands the arguments its parser does not know to ``accelerate launch`` (trl 1.16
    ``cli/commands/training.py`` L52-70), ``--accelerate_config NAME`` becoming ``--config_file`` of a file or of
    ``trl/accelerate_configs/NAME.yaml`` (``cli/accelerate_config.py`` L19-48): read here as that launch."""
    name = r.get("accelerate_config")
    for key in ("num_processes", "num_machines"):
        if r.get(key) is not None:
            r.side[f"accelerate:--{key}"] = r.get(key)
    if name is None:
        return
    from vramplan.frameworks.shipped import TRL_ACCELERATE

    path = par._find(str(name), r.bases)
    if path is not None:
        data, where = par.read_mapping(path, "accelerate_config"), str(path)
    elif str(name) in TRL_ACCELERATE:
        data, where = TRL_ACCELERATE[str(name)], f"trl 1.16.0 trl/accelerate_configs/{name}.yaml"
    else:
        raise b.ConfigError(f"trl: accelerate_config {name} is neither a file nor a config shipped with trl "
                            f"({', '.join(TRL_ACCELERATE)})")
    flat: dict[str, Any] = {}
    par._flatten(data, "accelerate_config:", flat)
    r.side.update({"accelerate:--config_file": str(name), **flat})
    notes.append(f"accelerate config read from {where}")


FRAMEWORK = Framework(
    name="trl", title="TRL", package="trl",
    eras=(
        Era("0.20.0", dict(recipe="trl", loss="hf", hold_logits="none"), source=_S.format("0.20.0-0.25.1")),
        Era("0.26.0", dict(recipe="plain", loss="hf", hold_logits="none"), source=_S.format("0.26.0-1.14.0")),
        Era("1.15.0", dict(recipe="plain", loss="chunked-head", hold_logits="none"), source=_S.format("1.15.0-1.16.0")),
    ),
    keys=KEYS, scenario=scenario, model_key="model_name_or_path", style="yaml",
    launchers=(("trl", "sft"),),
    plan_keys=dict(seq="max_length", batch="per_device_train_batch_size", rank="lora_r",
                   grad_checkpointing="gradient_checkpointing", optimizer="optim", targets="lora_target_modules",
                   lora_dropout="lora_dropout", attn="attn_implementation", eval_batch="per_device_eval_batch_size"),
    spell=b.hf_spell, known_latest="1.16.0",
    examples=(dict(model_name_or_path="M", dtype="bfloat16", use_peft=True, load_in_4bit=True),
              dict(model_name_or_path="M", dtype="bfloat16", use_peft=True)))
