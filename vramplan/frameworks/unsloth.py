"""Unsloth (``unsloth train --config config.yaml``): its CLI/Studio YAML.

Read from unsloth / unsloth_zoo 2026.10.9 (research §7; ``unsloth_cli/config.py`` for the schema):
``load_in_4bit`` (nf4, double quant) by default; only the LoRA parameters are made fp32, frozen
weights stay in the load dtype (``Recipe.PLAIN``); checkpointing ``"unsloth"`` is reentrant and
offloads each layer input to pinned host memory (``Scenario.offload`` unsloth);
the loss is Unsloth's fused linear cross-entropy (``Loss.UNSLOTH``: ``models/llama.py`` L2081-2150 calls
``unsloth_fused_ce_loss`` whenever labels are given and ``UNSLOTH_RETURN_LOGITS`` is unset), which never
builds the b·s·V logits. Unsloth's kernels need a GPU (on CPU it falls back to plain transformers +
peft), so its program cannot be traced here: vramplan prices it analytically, the loss from
unsloth_zoo's own chunk rule (``vramplan.analytic.logits.unsloth_ce_bytes``).
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks import base as b
from vramplan.frameworks.base import MISSING, Era, Framework, Key

KEYS = (
    Key("model", MISSING, "model id or path"),
    Key("training.training_type", "lora", "lora or full"),
    Key("training.max_seq_length", 2048, "tokens per sample"),
    Key("training.load_in_4bit", True, "4-bit base (nf4, double quant)"),
    Key("training.batch_size", 2, "micro-batch"),
    Key("training.packing", False, "TRL bfd packing: one padding-free row of full bins"),
    Key("training.gradient_checkpointing", "unsloth", "unsloth (offloaded), true, none"),
    Key("training.optim", "adamw_8bit", "the Studio trainer's optimizer for text models"),
    Key("lora.lora_r", 64, "LoRA rank"),
    Key("lora.lora_dropout", 0.0, "LoRA dropout"),
    Key("lora.target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "LoRA targets"),
    Key("lora.use_dora", False, "DoRA (priced as peft's DoRA layers)"),
)


def scenario(r: b.Reader, era: Era, arch: Any, notes: list[str]) -> dict[str, Any]:
    who = "Unsloth"
    out: dict[str, Any] = {"dtype": b.dtype("auto", "dtype", arch)}
    kind = str(r.get("training.training_type")).lower()
    if kind not in ("lora", "full"):
        raise b.ConfigError(f"{who}: training_type '{kind}' is not priced (lora or full)")
    out["full"] = kind == "full"
    four = b.boolean(r.get("training.load_in_4bit"), "load_in_4bit") and not out["full"]
    out["quant"] = "nf4" if four else "none"
    out["double_quant"] = True
    out["seq"] = b.integer(r.get("training.max_seq_length"), "max_seq_length")
    out["batch"] = b.integer(r.get("training.batch_size"), "batch_size")
    if not out["full"]:
        out["rank"] = b.integer(r.get("lora.lora_r"), "lora_r")
        out["lora_dropout"] = b.fraction(r.get("lora.lora_dropout"), "lora_dropout")
        out["targets"] = b.targets(r.get("lora.target_modules"), "target_modules") or ("all-linear",)
        if out["lora_dropout"] == 0 and out["dtype"] != "fp32":
            # models/llama.py:L5325-5345: lora_dropout 0, bias none and a 16-bit base
            out["lora_kernels"] = "unsloth"
        else:
            notes.append("lora_dropout > 0 (or an fp32 base): Unsloth runs peft's LoRA forward, priced so")
        if b.boolean(r.get("lora.use_dora"), "use_dora"):
            out["dora"] = True
            notes.append("use_dora: priced as peft's DoRA layers (Unsloth's fused LoRA kernels are not priced)")
    gc = r.get("training.gradient_checkpointing")
    gc = "none" if gc is False else ("true" if gc is True else str(gc).lower())
    if gc not in ("unsloth", "true", "none"):
        raise b.ConfigError(f"{who}: gradient_checkpointing '{gc}' must be unsloth, true or none")
    out["grad_checkpointing"] = gc != "none"
    out["reentrant"] = True  # Unsloth's checkpoint function is its reentrant CheckpointFunction
    if gc == "unsloth" and out["seq"] >= 512:
        # unsloth models/_utils.py L502-515: below max_seq_length 512 Unsloth keeps plain checkpointing
        out["offload"] = "unsloth"
    elif gc == "unsloth":
        notes.append("gradient_checkpointing: unsloth keeps plain checkpointing below max_seq_length 512 "
                     "(apply_unsloth_gradient_checkpointing): priced without offloading")
    out["optimizer"] = b.optimizer(r.get("training.optim"), who)
    notes.append("Unsloth's fused linear cross-entropy never builds the logits: priced from unsloth_zoo's chunk "
                 "rule, its budget min(2 GiB, half the free memory at the first call) taken at 2 GiB (see the "
                 "breakdown note)")
    if b.boolean(r.get("training.packing"), "packing"):
        out["packing"] = "packed"
        out["attn"] = "flash2"
        notes.append("packing: TRL's bfd packing (padding-free rows of full max_seq_length bins) under Unsloth's "
                     "varlen attention (utils/attention_dispatch.py): priced as packed rows, flash-attention's varlen "
                     "state")
    else:
        notes.append("Unsloth's SFTTrainer picks padding-free batches automatically (utils/padding_choice.py "
                     "heuristic): a padding-free row holds the same tensors as padded rows of the longest sample under "
                     "its varlen attention; priced as padded rows")
    return out


def studio_model(filename: str) -> str | None:
    """The model an Unsloth Studio model-defaults file is for: Studio names them ``<org>_<model>.yaml``
    (``studio/backend/assets/configs/model_defaults/qwen/unsloth_Qwen3-14B.yaml`` holds the defaults
    of ``unsloth/Qwen3-14B``) and writes no model key. None for other names (``default.yaml``)."""
    stem = filename.rsplit(".", 1)[0]
    org, sep, name = stem.partition("_")
    return f"{org}/{name}" if sep and org and name else None


def model_name(model: str) -> str:
    """``unsloth/Qwen3-14B`` or ``unsloth/Qwen3-14B-unsloth-bnb-4bit`` -> ``Qwen3-14B``: Unsloth's
    re-uploads of a base model, looked up as that model (its pre-quantized checkpoints carry their own
    quantization config, which vramplan does not read: the YAML's load_in_4bit decides)."""
    if model.lower().startswith("unsloth/"):
        name = model.split("/", 1)[1]
        for tail in ("-unsloth-bnb-4bit", "-bnb-4bit", "-unsloth"):
            if name.lower().endswith(tail):
                name = name[: -len(tail)]
                break
        return name
    return model


def spell(fieldname: str, value: Any) -> Any:
    if fieldname == "optimizer":
        return {"adamw8bit": "adamw_8bit"}.get(value, b.HF_OPTIM_NAME[value])
    if fieldname == "grad_checkpointing":
        return "unsloth" if value else "none"
    if fieldname == "targets":
        return ",".join(value)
    return value


FRAMEWORK = Framework(
    name="unsloth", title="Unsloth", package="unsloth",
    eras=(Era("2026.1", dict(recipe="plain", autocast=True, loss="unsloth", hold_logits="none"),
              source="unsloth 2026.10.9 models/llama.py, unsloth_zoo training_utils.py, "
                     "fused_losses/fused_linear.py, unsloth_cli/config.py (research §7)"),),
    keys=KEYS, scenario=scenario, model_key="model", style="yaml", launchers=(("unsloth", "train"),),
    plan_keys=dict(seq="training.max_seq_length", batch="training.batch_size", rank="lora.lora_r",
                   grad_checkpointing="training.gradient_checkpointing", optimizer="training.optim",
                   lora_dropout="lora.lora_dropout", targets="lora.target_modules"),
    spell=spell, model_name=model_name, traceable=False, known_latest="2026.10.9",
    examples=(dict(model="M", training=dict(training_type="lora", load_in_4bit=True)),
              dict(model="M", training=dict(training_type="lora", load_in_4bit=False))))
