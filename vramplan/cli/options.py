"""Scenario flags shared by ``estimate``, ``plan`` and ``profile`` (the CLI contract of issue 3)."""

from __future__ import annotations

from typing import Any, Callable

import click

from vramplan.scenario import Attn, Dtype, Hold, Loss, Optim, Quant, Recipe, Scenario

_CHOICES = dict(case_sensitive=False)


def scenario_options(multi: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding every scenario flag. With ``multi`` (profile sweeps), --seq/--batch/--rank
    take comma-separated lists and arrive as strings."""
    size = str if multi else int

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        opts = [
            click.option("--model", "-m", required=True,
                         help="Registry name (Qwen3-14B), hub id, config.json path or model dir."),
            click.option("--rank", "-r", type=size, default="8" if multi else 8, show_default=True,
                         help="LoRA rank r." + (" Comma list sweeps." if multi else "")),
            click.option("--seq", "-s", type=size, default="2048" if multi else 2048, show_default=True,
                         help="Sequence length in tokens." + (" Comma list sweeps." if multi else "")),
            click.option("--batch", "-b", type=size, default="1" if multi else 1, show_default=True,
                         help="Micro-batch size." + (" Comma list sweeps." if multi else "")),
            click.option("--quant", type=click.Choice([q.value for q in Quant], **_CHOICES),
                         default="nf4", show_default=True, help="Base-weight storage."),
            click.option("--double-quant/--no-double-quant", default=True, show_default=True,
                         help="bnb_4bit_use_double_quant."),
            click.option("--blocksize", type=int, default=64, show_default=True,
                         help="4-bit quantization block size."),
            click.option("--dtype", type=click.Choice([d.value for d in Dtype], **_CHOICES),
                         default="bf16", show_default=True, help="Compute dtype."),
            click.option("--targets", default="all-linear", show_default=True,
                         help="LoRA target_modules: all-linear or names, e.g. q_proj,v_proj."),
            click.option("--lora-dropout", type=float, default=0.05, show_default=True),
            click.option("--full", is_flag=True, help="Full fine-tuning, no LoRA (needs --quant none)."),
            click.option("--grad-checkpointing/--no-grad-checkpointing", default=True, show_default=True),
            click.option("--attn", type=click.Choice([a.value for a in Attn], **_CHOICES),
                         default="sdpa", show_default=True, help="attn_implementation."),
            click.option("--optimizer", type=click.Choice([o.value for o in Optim], **_CHOICES),
                         default="adamw", show_default=True),
            click.option("--recipe", type=click.Choice([r.value for r in Recipe], **_CHOICES),
                         default="hf-peft", show_default=True,
                         help="hf-peft (fp32 upcast), trl (embeddings/lm_head bf16) or plain."),
            click.option("--autocast/--no-autocast", default=True, show_default=True,
                         help="Forward under torch.autocast, as the HF Trainer with bf16=True."),
            click.option("--adapter-dtype", type=click.Choice([d.value for d in Dtype], **_CHOICES),
                         default="fp32", show_default=True,
                         help="LoRA weights, grads and AdamW state: fp32 (peft autocast_adapter_dtype=True) "
                              "or the --dtype (autocast_adapter_dtype=False, torchtune, pure-bf16 loops)."),
            click.option("--loss", type=click.Choice([x.value for x in Loss], **_CHOICES),
                         default="hf", show_default=True,
                         help="hf: transformers >= 4.46 loss (bf16 logits, fp32 upcast in the loss); legacy: "
                              "transformers <= 4.44 / torchtune 2024 (fp32 logits in the output + a shifted copy)."),
            click.option("--hold-logits", type=click.Choice([h.value for h in Hold], **_CHOICES),
                         default="none", show_default=True,
                         help="How long the loop keeps `outputs` (the logits): none (HF Trainer), step (through "
                              "backward and optimizer.step, then deleted) or loop (never deleted: until the next "
                              "forward rebinds it)."),
            click.option("--bnb-keeps-input", is_flag=True,
                         help="bitsandbytes < 0.43.2: each 4-bit layer also saves its input for backward."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


SCENARIO_KEYS = ("rank", "seq", "batch", "quant", "double_quant", "blocksize", "dtype", "targets",
                 "lora_dropout", "full", "grad_checkpointing", "attn", "optimizer", "recipe", "autocast",
                 "adapter_dtype", "loss", "hold_logits", "bnb_keeps_input")


def pop_scenario(kwargs: dict[str, Any]) -> Scenario:
    """Remove the scenario flags from a command's kwargs and build the Scenario (errors exit 2)."""
    fields = {k: kwargs.pop(k) for k in SCENARIO_KEYS}
    return Scenario(**fields)
