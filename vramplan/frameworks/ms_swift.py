"""ms-swift (``swift sft``): its command-line arguments, as a shell command or a JSON/YAML args file.

Read from ms-swift 4.6.0 (``../shared/research/frameworks.md`` §1, file and line there): no k-bit
preparation (frozen weights stay in the load dtype), peft's fp32 adapters unless ``--lora_dtype``,
gradient checkpointing on and **reentrant** on one GPU (``swift/trainers/mixin.py``
``_fix_gradient_checkpointing``), logits only at label positions (``use_logits_to_keep`` auto),
quantization only with ``--quant_method``.
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks import base as b
from vramplan.frameworks import parallel as par
from vramplan.frameworks.base import MISSING, Era, Framework, Key

KEYS = (
    Key("model", MISSING, "model id or path"),
    Key("tuner_type", "lora", "lora or full", aliases=("train_type",)),
    Key("quant_method", None, "bnb quantizes; None = no quantization, whatever quant_bits says"),
    Key("quant_bits", None, "4 or 8 (with quant_method bnb)"),
    Key("bnb_4bit_quant_type", "nf4", "4-bit data type"),
    Key("bnb_4bit_use_double_quant", True, "double quantization"),
    Key("bnb_4bit_compute_dtype", None, "None = torch_dtype when bf16, else fp32"),
    Key("bnb_4bit_quant_storage", None, "storage dtype of the packed 4-bit weights (None = uint8)"),
    Key("torch_dtype", None, "None = config.json's dtype (bf16 when it names none)"),
    Key("lora_rank", 8, "LoRA rank"),
    Key("lora_dropout", 0.05, "LoRA dropout"),
    Key("target_modules", ["all-linear"], "LoRA targets"),
    Key("lora_dtype", None, "None = peft's fp32 adapters"),
    Key("use_dora", False, "DoRA"),
    Key("use_rslora", False, "rsLoRA (scaling only: memory-neutral)"),
    Key("modules_to_save", [], "modules_to_save (embed_tokens, lm_head)"),
    Key("gradient_checkpointing", True, "checkpoint every decoder layer"),
    Key("gradient_checkpointing_kwargs", None, "use_reentrant: None = reentrant on one GPU"),
    Key("attn_impl", None, "None = sdpa"),
    Key("max_length", None, "None = the model's max_position_embeddings"),
    Key("per_device_train_batch_size", 1, "micro-batch"),
    Key("optim", "adamw_torch_fused", "HF optimizer name"),
    Key("use_logits_to_keep", None, "None = auto: logits only at label positions"),
    Key("packing", False, "sample packing: rows of packing_length, the micro-batch as one padding-free row"),
    Key("padding_free", False, "padding-free batches: the micro-batch as one row"),
    Key("packing_length", None, "None = max_length"),
    Key("use_liger_kernel", False, "HF's use_liger_kernel (FLCE: Loss.LIGER)"),
    Key("eval_strategy", None, "None = save_strategy"),
    Key("save_strategy", "steps", "checkpoint strategy (eval follows it)"),
    Key("split_dataset_ratio", 0.0, "validation split of the training data"),
    Key("val_dataset", None, "validation datasets"),
    *b.hf_eval_keys(batch=1),
    Key("eval_metric", None, "acc = argmax ids per eval sample; nlg = generation's metrics"),
    Key("predict_with_generate", False, "generation in evaluation (model.generate with a KV cache)"),
    Key("max_new_tokens", 64, "tokens generated per eval prompt (predict_with_generate)"),
    Key("num_beams", 1, "beam search in generation"),
    Key("freeze_vit", True, "multimodal: the vision tower frozen (skipped by bitsandbytes, no adapter)"),
    Key("freeze_aligner", True, "multimodal: the projector (aligner) frozen"),
    Key("deepspeed", None, "DeepSpeed: zero2, zero3, zero2_offload, zero3_offload (shipped), a JSON path or JSON"),
    Key("fsdp", None, "FSDP2: fsdp2 (shipped) or a JSON path / JSON with fsdp and fsdp_config"),
    Key("ddp_bucket_cap_mb", None, "DDP bucket size in MiB (None = torch's 25)"),
    Key("ENV", None, "a YAML/JSON args file's environment (NPROC_PER_NODE, NNODES ...): set unless already set"),
    Key("ddp_find_unused_parameters", None, "DDP unused-parameter search (no memory priced)"),
)

_SOURCE = "ms-swift 4.6.0: swift/arguments/*, swift/trainers/mixin.py, swift/tuners/peft.py (research §1)"


def scenario(r: b.Reader, era: Era, arch: Any, notes: list[str]) -> dict[str, Any]:
    who = "ms-swift"
    out: dict[str, Any] = {}
    tuner = str(r.get("tuner_type")).lower()
    if r.has("train_type") and not r.data.get("tuner_type"):
        notes.append("--train_type is ms-swift 3's name: ms-swift 4 reads --tuner_type and its parser stops on "
                     "--train_type (remaining_argv); read here as --tuner_type")
    if tuner not in ("lora", "full"):
        raise b.ConfigError(f"{who}: tuner_type '{tuner}' is not priced (lora or full)")
    out["full"] = tuner == "full"
    torch_dtype = b.dtype(r.get("torch_dtype"), "torch_dtype", arch)
    out["dtype"] = torch_dtype
    method, bits = r.get("quant_method"), r.get("quant_bits")
    if method is None:
        out["quant"] = "none"
        if bits is not None:
            notes.append(f"--quant_bits {bits} without --quant_method does nothing in ms-swift 4.6 "
                         "(get_quantization_config returns None): priced unquantized; add --quant_method bnb")
    else:
        if str(method).lower() != "bnb":
            raise b.ConfigError(f"{who}: quant_method '{method}' is not priced (bnb)")
        nbits = b.integer(bits if bits is not None else 0, "quant_bits", minimum=0)
        if nbits == 4:
            qt = str(r.get("bnb_4bit_quant_type")).lower()
            if qt not in ("nf4", "fp4"):
                raise b.ConfigError(f"{who}: bnb_4bit_quant_type '{qt}' must be nf4 or fp4")
            out["quant"] = qt
            out["double_quant"] = b.boolean(r.get("bnb_4bit_use_double_quant"), "bnb_4bit_use_double_quant")
            storage = b.quant_storage(r.get("bnb_4bit_quant_storage"), "bnb_4bit_quant_storage")
            if storage:
                out["quant_storage"] = storage
            compute = r.get("bnb_4bit_compute_dtype")
            resolved = b.dtype(compute, "bnb_4bit_compute_dtype") if compute is not None else (
                torch_dtype if torch_dtype == "bf16" else "fp32")
            if resolved != torch_dtype:
                notes.append(f"bnb_4bit_compute_dtype resolves to {resolved} with torch_dtype {torch_dtype}: "
                             f"priced with {torch_dtype} throughout")
        elif nbits == 8:
            out["quant"] = "int8"
        else:
            raise b.ConfigError(f"{who}: quant_bits must be 4 or 8 with quant_method bnb, got {bits!r}")
    if not out["full"]:
        out["rank"] = b.integer(r.get("lora_rank"), "lora_rank")
        out["lora_dropout"] = b.fraction(r.get("lora_dropout"), "lora_dropout")
        tg = b.targets(r.get("target_modules"), "target_modules")
        out["targets"] = tg or ("all-linear",)
        b.adapter_variant(r, out, "use_dora", "modules_to_save", "use_rslora")
        lora_dtype = r.get("lora_dtype")
        if lora_dtype is not None:
            ld = b.dtype(lora_dtype, "lora_dtype")
            if ld not in ("fp32", torch_dtype):
                raise b.ConfigError(f"{who}: lora_dtype {ld} with torch_dtype {torch_dtype} is not priced")
            out["adapter_dtype"] = ld
    if getattr(arch, "vision", None) is not None:  # swift/arguments/tuner_args.py: ViT and aligner frozen by default
        vit, aligner = b.boolean(r.get("freeze_vit"), "freeze_vit"), b.boolean(r.get("freeze_aligner"), "freeze_aligner")
        out["vision"] = "frozen" if vit else "trained"
        if vit and not aligner:
            notes.append("freeze_aligner false with freeze_vit true: the projector alone trains; priced with the "
                         "whole tower frozen (--vision trained prices it trained)")
    gc = b.boolean(r.get("gradient_checkpointing"), "gradient_checkpointing")
    out["grad_checkpointing"] = gc
    kwargs = b.mapping(r.get("gradient_checkpointing_kwargs"), "gradient_checkpointing_kwargs")
    reent = kwargs.get("use_reentrant")
    out["reentrant"] = True if reent is None else b.boolean(reent, "use_reentrant")
    out["attn"] = _attn(r.get("attn_impl"))
    length = r.get("max_length")
    if length is None:
        length = arch.config.get("max_position_embeddings") or 2048
        notes.append(f"max_length unset: ms-swift trains up to the model's max_position_embeddings ({length}) "
                     "and deletes longer samples (truncation_strategy delete); priced at that length")
    out["seq"] = b.integer(length, "max_length")
    out["batch"] = b.integer(r.get("per_device_train_batch_size"), "per_device_train_batch_size")
    out["optimizer"] = b.optimizer(r.get("optim"), who)
    keep = r.get("use_logits_to_keep")
    if keep is None or b.boolean(keep, "use_logits_to_keep"):
        notes.append("ms-swift computes logits only at label positions (use_logits_to_keep): priced at "
                     "--label-fraction of the tokens (default 1.0, every token: the upper bound; give the "
                     "response share of your data, e.g. --label-fraction 0.4)")
    out.update(_evaluation(r, notes))
    if b.boolean(r.get("use_liger_kernel"), "use_liger_kernel"):
        # trainers/arguments.py L155, L243-262: forwarded to the HF Trainer, which applies Liger's defaults at
        # train(); swift's patch of LigerForCausalLMLoss makes the kept hidden states contiguous
        loss = b.liger(arch, {}, notes, who, out=out)
        if loss:
            out["loss"] = loss
            notes.append("ms-swift: Liger's loss is skipped (labels popped) when a loss_scale, custom loss, DFT or "
                         "channel loss is set (seq2seq_trainer.py L134-140); priced with it")
    _layout(r, out, notes)
    _parallel(r, out, notes, reent)
    return out


def _parallel(r: b.Reader, out: dict[str, Any], notes: list[str], reent: Any) -> None:
    """ms-swift's multi-GPU keys: ``--deepspeed`` (a shipped name, a path or JSON; ``sft_args.py``
    ``_init_deepspeed`` L252-283), ``--fsdp`` (``fsdp2`` -> its shipped ``swift/config/fsdp2.json``, or a
    path/JSON holding ``fsdp`` and ``fsdp_config``; ``fsdp_version`` defaults to 2; ``_init_fsdp`` L285-334),
    the world from ``NPROC_PER_NODE`` / ``NNODES``; under DDP without DeepSpeed or FSDP its checkpoint patch
    is non-reentrant unless ``use_reentrant`` is given (``trainers/mixin.py`` ``_fix_gradient_checkpointing``)."""
    env = r.get("ENV")
    if env is not None:
        # swift/cli/main.py parse_yaml_args L51-58: the file's ENV entries are set when the environment has
        # none of that name, so a VAR=value on the command line wins
        for k, v in b.mapping(env, "ENV").items():
            r.side.setdefault(f"env:{k}", str(v))
    fsdp = None
    value = r.get("fsdp")
    if value not in (None, "", False):
        text = str(value).strip()
        if text == "fsdp2":
            cfg, where = dict(SWIFT_FSDP2), "ms-swift 4.6.0 swift/config/fsdp2.json (the --fsdp name)"
        elif text.startswith("{"):
            cfg, where = b.mapping(text, "fsdp"), "--fsdp (inline JSON)"
        else:
            path = par._find(text, r.bases)
            if path is None:
                raise b.ConfigError(f"ms-swift: --fsdp {text}: not fsdp2 and no such file")
            cfg, where = par.read_mapping(path, "--fsdp"), str(path)
        notes.append(f"FSDP config read from {where}")
        fc = b.mapping(cfg.get("fsdp_config"), "fsdp_config")
        fsdp = par.hf_fsdp(cfg.get("fsdp", "full_shard auto_wrap"), {"version": 2, **fc}, r, "ms-swift", notes)
    ds = par.framework_deepspeed(r, "deepspeed", "ms-swift")
    if ds is not None and fsdp is not None:
        raise b.ConfigError("ms-swift: FSDP2 is not compatible with DeepSpeed (ms-swift refuses both)")
    par.resolve(r, notes, out, "ms-swift", "ms-swift", deepspeed=ds, fsdp=fsdp,
                bucket_cap_mb=r.get("ddp_bucket_cap_mb"), env_rule="ms-swift")
    par.ddp_keys(r, out, notes, "ddp_find_unused_parameters")
    if out.get("strategy") == "ddp" and reent is None and out.get("grad_checkpointing"):
        out["reentrant"] = False
        notes.append("ms-swift under DDP (no DeepSpeed, no FSDP): its checkpoint patch is non-reentrant when "
                     "use_reentrant is not given (trainers/mixin.py _fix_gradient_checkpointing)")


#: ms-swift 4.6.0 ``swift/config/fsdp2.json`` (its memory keys).
SWIFT_FSDP2 = {"fsdp": "full_shard auto_wrap",
               "fsdp_config": {"fsdp_version": 2, "reshard_after_forward": True,
                               "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "cpu_ram_efficient_loading": True,
                               "state_dict_type": "SHARDED_STATE_DICT", "activation_checkpointing": True}}


def _evaluation(r: b.Reader, notes: list[str]) -> dict[str, Any]:
    """ms-swift 4.6: ``eval_strategy`` defaults to ``save_strategy`` and is ``no`` without eval data
    (``val_dataset`` or ``split_dataset_ratio`` > 0; ``arguments/sft_args.py`` L232-233, L406-416);
    ``--eval_metric acc`` passes ``AccMetrics`` whose ``preprocess_logits_for_metrics`` keeps argmax ids
    (``trainers/mixin.py`` L1108-1116, ``metrics/acc.py`` L65-68); none by default (``_init_metric``:
    ``nlg`` with ``predict_with_generate``)."""
    data = bool(r.get("val_dataset")) or float(r.get("split_dataset_ratio") or 0) > 0
    strategy = r.get("eval_strategy")
    strategy = r.get("save_strategy") if strategy is None else strategy
    metric = r.get("eval_metric")
    generate = b.boolean(r.get("predict_with_generate"), "predict_with_generate")
    metric = str(metric).lower() if metric is not None else ("nlg" if generate else None)
    if metric not in (None, "acc", "nlg"):
        raise b.ConfigError(f"ms-swift: eval_metric '{metric}' is not priced (acc, nlg)")
    out = b.hf_evaluation(r, notes, data=data, metrics="ids" if metric == "acc" else None, script_metrics=False,
                            strategy=strategy)
    if out and generate:
        out.update(_generation(r, notes))
    elif out and metric == "nlg":
        notes.append("eval_metric nlg without predict_with_generate: evaluation runs the loss forward (no "
                     "generation), priced so")
    return out


def _layout(r: b.Reader, out: dict[str, Any], notes: list[str]) -> None:
    """``--packing`` / ``--padding_free`` (ms-swift 4.6 ``arguments/sft_args.py::_check_padding_free``:
    packing sets padding_free; either needs a flash-attention ``attn_impl``, else ValueError). With
    padding_free the template concatenates the micro-batch into one row with position ids
    (``template/base.py``, ``packing_row``); with packing each row is first a bin of samples filled to
    ``packing_length`` (``base_args.py``: default ``max_length``)."""
    packing = b.boolean(r.get("packing"), "packing")
    free = b.boolean(r.get("padding_free"), "padding_free")
    if not (packing or free):
        return
    feature = "packing" if packing else "padding_free"
    if out["attn"] != "flash2":
        raise b.ConfigError(f'ms-swift: the "{feature}" feature requires a flash attention implementation '
                            f"(attn_impl flash_attn or flash_attention_2), as ms-swift refuses otherwise")
    if packing:
        length = r.get("packing_length")
        if length is not None:
            out["seq"] = b.integer(length, "packing_length")
        out["packing"] = "packed"
        notes.append(f"packing: the micro-batch is one padding-free row of {out['batch']} full bins of "
                     f"{out['seq']} tokens; priced as packed rows (the same tensors under flash-attention's varlen "
                     "kernel), always full")
    else:
        out["packing"] = "padding-free"


def _generation(r: b.Reader, notes: list[str]) -> dict[str, Any]:
    """ms-swift 4.6 ``predict_with_generate``: ``Seq2SeqTrainer.prediction_step`` (``trainers/seq2seq_trainer.py``
    L65-100) generates through its ``TransformersEngine`` (batches of ``per_device_eval_batch_size``) with
    ``max_tokens = model.generation_config.max_new_tokens``, which ``_prepare_generation_config``
    (``pipelines/train/sft.py`` L44-49) sets from ``--max_new_tokens`` (64, ``arguments/sft_args.py`` L173);
    it keeps the decoded text (a few bytes per sample) and runs no loss forward."""
    if b.integer(r.get("num_beams"), "num_beams") > 1:
        notes.append(f"num_beams {r.get('num_beams')}: beam search holds num_beams × the KV cache; not priced, "
                     "priced as greedy decoding")
    if _attn(r.get("attn_impl")) != "sdpa":
        notes.append("predict_with_generate: generation is priced with sdpa attention only; priced as the loss "
                     "forward of each eval batch")
        return {}
    new = b.integer(r.get("max_new_tokens"), "max_new_tokens")
    if new < 1:
        return {}
    notes.append(f"predict_with_generate: evaluation generates {new} tokens per prompt with a DynamicCache (every "
                 "sequence to max_new_tokens), the prompt priced at max_length tokens")
    return {"eval_new_tokens": new}


def _attn(value: Any) -> str:
    if value is None:
        return "sdpa"
    v = str(value).lower()
    table = {"sdpa": "sdpa", "eager": "eager", "flash_attn": "flash2", "flash_attention_2": "flash2"}
    if v not in table:
        raise b.ConfigError(f"ms-swift: attn_impl '{value}' is not priced (sdpa, eager, flash_attn)")
    return table[v]


def spell(fieldname: str, value: Any) -> Any:
    if fieldname == "attn":
        return {"flash2": "flash_attn"}.get(value, value)
    if fieldname == "targets":
        return " ".join(value)
    return b.hf_spell(fieldname, value)


FRAMEWORK = Framework(
    name="ms-swift", title="ms-swift", package="ms-swift",
    eras=(Era("4.0.0", dict(recipe="plain", autocast=True, loss="hf", hold_logits="none"), source=_SOURCE),),
    keys=KEYS, scenario=scenario, model_key="model", style="cli", launchers=(("swift", "sft"),),
    plan_keys=dict(seq="max_length", batch="per_device_train_batch_size", rank="lora_rank",
                   grad_checkpointing="gradient_checkpointing", optimizer="optim", targets="target_modules",
                   lora_dropout="lora_dropout", attn="attn_impl"),
    spell=spell, known_latest="4.6.0",
    examples=(dict(model="M", tuner_type="lora", quant_method="bnb", quant_bits=4, torch_dtype="bfloat16"),
              dict(model="M", tuner_type="lora", torch_dtype="bfloat16")))
