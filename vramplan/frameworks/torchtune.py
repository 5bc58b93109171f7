"""torchtune (``tune run lora_finetune_single_device --config ...``): its YAML.

Read from torchtune 0.2.1 – 0.6.1 (research §6): the model is built pure bf16 (no autocast), its
LoRA adapters bf16, frozen projections stored as torchao NF4 (``qlora_*`` builders; the output
projection stays bf16); activation checkpointing wraps each layer non-reentrantly; since 0.3 the
default loss is ``CEWithChunkedOutputLoss`` (8 chunks) with ``del logits`` before backward; 0.2.1
upcast and shifted the logits and kept them to the next step (``Loss.LEGACY``, ``Hold.LOOP``).
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks import base as b
from vramplan.frameworks import parallel as par
from vramplan.frameworks.base import Era, Framework, Key, parse_version

KEYS = (
    Key("model._component_", None, "the model builder (lora_* / qlora_* / full)"),
    Key("model.lora_attn_modules", None, "attention projections with LoRA (the builders have no default)"),
    Key("model.apply_lora_to_mlp", False, "LoRA on w1/w2/w3"),
    Key("model.apply_lora_to_output", False, "LoRA on the output projection"),
    Key("model.lora_rank", 8, "LoRA rank"),
    Key("model.lora_dropout", 0.0, "LoRA dropout"),
    Key("model.use_dora", False, "torchtune's own DoRALinear (not priced: refused)"),
    Key("model.quantize_base", None, "NF4 base (set by the qlora_* builders)"),
    Key("checkpointer.checkpoint_dir", None, "where the weights are (its name can name the model)"),
    Key("tokenizer.max_seq_len", None, "truncation length (None: the data's)"),
    Key("batch_size", 2, "micro-batch"),
    Key("dtype", "bf16", "bf16 (fp32 also; fp16 is refused)"),
    Key("enable_activation_checkpointing", False, "checkpoint every layer"),
    Key("enable_activation_offloading", False, "OffloadActivations (needs activation checkpointing)"),
    Key("optimizer._component_", "torch.optim.AdamW", "optimizer"),
    Key("loss._component_", "torchtune.modules.loss.CEWithChunkedOutputLoss", "loss"),
    Key("dataset.packed", False, "PackedDataset rows of max_seq_len, flex attention"),
    Key("dataset_val", None, "validation data: no validation loop in 0.6.1's recipe"),
    Key("run_val_every_n_steps", None, "validation cadence: no validation loop in 0.6.1's recipe"),
    Key("compile", False, "torch.compile (not priced)"),
    Key("fsdp_cpu_offload", False, "distributed recipes: FSDP2 CPUOffloadPolicy"),
    Key("fsdp_reshard_after_forward", True, "distributed recipes: fully_shard(reshard_after_forward=...)"),
)

#: torchtune builder (after lora_/qlora_) -> registry model.
MODELS = {
    "llama2_7b": "Llama-2-7b-hf", "llama2_13b": "Llama-2-13b-hf", "llama2_70b": "Llama-2-70b-hf",
    "llama3_8b": "Meta-Llama-3-8B", "llama3_1_8b": "Llama-3.1-8B", "llama3_1_70b": "Llama-3.1-70B",
    "llama3_2_1b": "Llama-3.2-1B", "llama3_2_3b": "Llama-3.2-3B", "llama3_3_70b": "Llama-3.3-70B-Instruct",
    "mistral_7b": "Mistral-7B-v0.1", "qwen2_7b": "Qwen2-7B",
    "qwen2_5_0_5b": "Qwen2.5-0.5B", "qwen2_5_1_5b_base": "Qwen2.5-1.5B", "qwen2_5_3b": "Qwen2.5-3B",
    "qwen2_5_7b_base": "Qwen2.5-7B", "qwen2_5_14b_base": "Qwen2.5-14B", "qwen2_5_32b_base": "Qwen2.5-32B",
    "qwen3_0_6b_base": "Qwen3-0.6B", "qwen3_1_7b_base": "Qwen3-1.7B", "qwen3_4b_base": "Qwen3-4B",
    "qwen3_8b_base": "Qwen3-8B", "qwen3_14b_base": "Qwen3-14B", "qwen3_32b": "Qwen3-32B",
    "phi3_mini": "Phi-3-mini-4k-instruct", "gemma2_2b": "gemma-2-2b", "gemma2_9b": "gemma-2-9b",
}
#: torchtune module names -> transformers' (``lora_attn_modules``; MLP w1/w3/w2 = gate/up/down).
NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
OPTIMIZERS = {"torch.optim.AdamW": "adamw", "torch.optim.SGD": "sgd",
              "bitsandbytes.optim.PagedAdamW": "paged_adamw", "bitsandbytes.optim.PagedAdamW8bit": "paged_adamw8bit",
              "bitsandbytes.optim.AdamW8bit": "adamw8bit"}


def builder(component: Any) -> tuple[str, str]:
    """(kind, model) of a builder path: kind ``full``/``lora``/``qlora``, the builder's model name."""
    name = str(component).rsplit(".", 1)[-1]
    for kind in ("qlora_", "lora_"):
        if name.startswith(kind):
            return kind[:-1], name[len(kind):]
    return "full", name


#: Builder family (the builder name's first word) -> its RoPE module's table layout (torchtune 0.6.1
#: ``models/<family>/_component_builders.py``): one table for every layer, or one per layer in the
#: LoRA builders of the families whose attention builder constructs its own (Qwen2, Phi-3).
ROPE = {"llama2": "shared", "llama3": "shared", "mistral": "shared", "gemma": "shared", "gemma2": "shared",
        "code": "shared", "qwen2": "wide", "phi3": "wide", "phi4": "wide"}


def rope_cache(component: Any, kind: str) -> tuple[str, str | None]:
    """(``Scenario.rope_cache``, a note or None) for a builder path."""
    _, name = builder(component)
    family = name.split("_", 1)[0]
    family = "llama3" if family.startswith("llama3") else "qwen2" if family.startswith("qwen2") else family
    layout = ROPE.get(family)
    if layout is None:
        return "none", (f"torchtune's RoPE table for the {family} builders is not modelled here (read from "
                        f"torchtune 0.6.1's llama, mistral, gemma, qwen2 and phi3 builders): not priced")
    if layout == "wide" and kind != "full":
        layout = "per-layer"
    return layout, None


def model_id(data: dict[str, Any]) -> str | None:
    """The registry model the config's builder (or checkpoint directory) names."""
    comp = (data.get("model") or {}).get("_component_") if isinstance(data.get("model"), dict) else None
    if comp:
        _, name = builder(comp)
        for key in (name, name.replace("_instruct", ""), name + "_base"):
            if key in MODELS:
                return MODELS[key]
    ckpt = (data.get("checkpointer") or {}).get("checkpoint_dir") if isinstance(data.get("checkpointer"), dict) \
        else None
    return str(ckpt).rstrip("/").rsplit("/", 1)[-1] if ckpt else None


def scenario(r: b.Reader, era: Era, arch: Any, notes: list[str]) -> dict[str, Any]:
    who = "torchtune"
    v = parse_version(era.since)
    comp = r.get("model._component_")
    if comp is None:
        raise b.ConfigError(f"{who}: the config has no model._component_ (the model builder)")
    r.get("checkpointer.checkpoint_dir")
    kind, _ = builder(comp)
    out: dict[str, Any] = {"full": kind == "full"}
    d = str(r.get("dtype")).lower()
    if d not in ("bf16", "fp32"):
        raise b.ConfigError(f"{who}: dtype '{d}' is not supported by torchtune's recipes (bf16, fp32)")
    out["dtype"] = d
    quant = kind == "qlora" or b.boolean(r.get("model.quantize_base"), "quantize_base")
    out["quant"] = "nf4" if quant else "none"
    if quant:
        out["double_quant"] = True
        notes.append("torchao NF4 (block 64, int8 scalers per 256 blocks) is priced as bitsandbytes nf4 with "
                     "double quantization: the quantization state differs by under 0.01 % of the weights")
    if kind != "full":
        attn = r.get("model.lora_attn_modules")
        if attn is None:
            raise b.ConfigError(f"{who}: model.lora_attn_modules is required by the LoRA builders")
        if not isinstance(attn, list) or not all(isinstance(a, str) for a in attn):
            raise b.ConfigError(f"{who}: model.lora_attn_modules must be a list of names")
        unknown = [a for a in attn if a not in NAMES]
        if unknown:
            raise b.ConfigError(f"{who}: unknown lora_attn_modules {unknown} (q_proj, k_proj, v_proj, output_proj)")
        names = [NAMES[a] for a in attn]
        if b.boolean(r.get("model.apply_lora_to_mlp"), "apply_lora_to_mlp"):
            names += ["gate_proj", "up_proj", "down_proj"]
        if b.boolean(r.get("model.apply_lora_to_output"), "apply_lora_to_output"):
            names.append("lm_head")
        if not names:
            raise b.ConfigError(f"{who}: the LoRA builder adapts no module (lora_attn_modules is empty)")
        out["targets"] = tuple(names)
        if b.boolean(r.get("model.use_dora"), "use_dora"):
            # torchtune 0.6 modules/peft/dora.py: DoRALinear is its own module (not peft's DoRA layers)
            raise b.ConfigError(f"{who}: use_dora builds torchtune's own DoRALinear (modules/peft/dora.py), "
                                "which vramplan does not price (peft's DoRA is --dora)")
        out["rank"] = b.integer(r.get("model.lora_rank"), "lora_rank")
        out["lora_dropout"] = b.fraction(r.get("model.lora_dropout"), "lora_dropout")
        out["adapter_dtype"] = d
    out["rope_cache"], why = rope_cache(comp, kind)
    if why:
        notes.append(why)
    length = r.get("tokenizer.max_seq_len")
    if length is None:
        notes.append("tokenizer.max_seq_len unset: torchtune does not truncate; priced at --seq (default 2048)")
    else:
        out["seq"] = b.integer(length, "max_seq_len")
    out["batch"] = b.integer(r.get("batch_size"), "batch_size")
    gc = b.boolean(r.get("enable_activation_checkpointing"), "enable_activation_checkpointing")
    out["grad_checkpointing"] = gc
    opt = str(r.get("optimizer._component_"))
    if opt not in OPTIMIZERS:
        raise b.ConfigError(f"{who}: optimizer {opt} is not priced ({', '.join(OPTIMIZERS)})")
    out["optimizer"] = OPTIMIZERS[opt]
    loss = str(r.get("loss._component_")).rsplit(".", 1)[-1]
    if loss == "CEWithChunkedOutputLoss":
        if v < (0, 3):
            notes.append("torchtune 0.2 recipes upcast and shift the logits and keep them to the next step: "
                         "priced so (the chunked loss class is not what 0.2 runs)")
        elif "lm_head" in out.get("targets", ()):
            raise b.ConfigError(f"{who}: apply_lora_to_output with the chunked loss is not priced")
    elif loss in ("CrossEntropyLoss",):
        out["loss"] = "legacy" if v < (0, 3) else "hf"
        if v >= (0, 3):
            notes.append("torch.nn.CrossEntropyLoss on the full logits: priced with the transformers loss "
                         "(fp32 upcast of the logits)")
    else:
        raise b.ConfigError(f"{who}: loss {loss} is not priced yet (CEWithChunkedOutputLoss, CrossEntropyLoss)")
    if b.boolean(r.get("enable_activation_offloading"), "enable_activation_offloading"):
        out["offload"] = "activations"  # training/_activation_offloading.py: OffloadActivations
    if b.boolean(r.get("dataset.packed"), "packed"):
        out["packing"] = "packed"
        out["attn"] = "flash2"
        notes.append("dataset.packed: PackedDataset rows padded to max_seq_len with per-sample positions; the "
                     "recipe's flex attention takes a BlockMask (modules/attention_utils.py::create_block_causal_mask, "
                     "O(blocks²), no b·s·s tensor) and saves q, k, v, output and log-sum-exp: priced as "
                     "flash-attention's varlen kernel")
    if b.boolean(r.get("compile"), "compile"):
        notes.append("compile: torch.compile changes saved tensors and is not priced; priced eager")
    if r.get("dataset_val") is not None or r.get("run_val_every_n_steps") is not None:
        notes.append("dataset_val / run_val_every_n_steps: torchtune 0.6.1's lora_finetune_single_device has no "
                     "validation loop (grep of the recipe), so nothing is evaluated; priced as training alone")
    _distributed(r, out, notes)
    return out


def _distributed(r: b.Reader, out: dict[str, Any], notes: list[str]) -> None:
    """torchtune 0.6.1's distributed recipes (``recipes/lora_finetune_distributed.py`` L276-281, L430-482)
    shard with FSDP2 ``fully_shard`` per layer: ``fsdp_cpu_offload`` -> ``CPUOffloadPolicy``,
    ``fsdp_reshard_after_forward`` (default true); the world is ``tune run``'s torchrun options."""
    recipe = r.side_get("tune:recipe", None)
    if recipe is not None and "distributed" in str(recipe):
        fsdp = par.fsdp_fields(2, r.get("fsdp_reshard_after_forward"),
                               b.boolean(r.get("fsdp_cpu_offload"), "fsdp_cpu_offload"), "torchtune")
        par.resolve(r, notes, out, "torchtune", "torchtune", fsdp=fsdp)
        notes.append(f"torchtune recipe {recipe}: its activations are priced as the single-device recipe's")
    else:
        gpus, nodes = par.world(r, notes)
        if (gpus or 1) * (nodes or 1) > 1:
            raise b.ConfigError(f"torchtune: recipe {recipe} is a single-device recipe; tune run refuses torchrun "
                                "options for it (_cli/run.py)")


FRAMEWORK = Framework(
    name="torchtune", title="torchtune", package="torchtune",
    eras=(
        Era("0.2.0", dict(recipe="plain", autocast=False, loss="legacy", hold_logits="loop", reentrant=False),
            source="torchtune 0.2.1 recipes/lora_finetune_single_device.py L569-578 (research §6)"),
        Era("0.3.0", dict(recipe="plain", autocast=False, loss="chunked-ce", hold_logits="none", reentrant=False),
            source="torchtune 0.3.1-0.6.1 recipes/lora_finetune_single_device.py (research §6)"),
    ),
    keys=KEYS, scenario=scenario, model_key="model._component_", style="yaml",
    launchers=(("tune", "run"),),
    plan_keys=dict(seq="tokenizer.max_seq_len", batch="batch_size", rank="model.lora_rank",
                   grad_checkpointing="enable_activation_checkpointing", lora_dropout="model.lora_dropout"),
    known_latest="0.6.1",
    examples=(dict(model={"_component_": "torchtune.models.llama3_1.qlora_llama3_1_8b",
                     "lora_attn_modules": ["q_proj", "v_proj"]}),
              dict(model={"_component_": "torchtune.models.llama3_1.lora_llama3_1_8b",
                     "lora_attn_modules": ["q_proj", "v_proj"]})))
