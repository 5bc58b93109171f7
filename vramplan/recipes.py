"""Recipes as data: how a training framework leaves the dtypes of the parameters it does not quantize.

One ``RecipeSpec`` per ``Scenario.recipe``; both engines read it (the analytic engine's dtype widths,
``vramplan.analytic.terms.dtypes``; the trace's and profiler's build step,
``vramplan.hf.build.apply_recipe``). Named ``PRESETS`` bundle the fields that describe an older
framework or a hand-written loop (loss kernel, how long the loop holds the logits, adapter dtype,
bitsandbytes' input saving), so a scenario can say "torchtune 2024" instead of five flags.

Adding a recipe: a ``Recipe`` member (``vramplan/scenario.py``), its ``RecipeSpec`` here, and the
build step in ``vramplan.hf.build.apply_recipe`` if it runs framework code; a test in
tests/theirs/test_hf_build.py (``test_recipe_spec_matches_the_real_build``) builds a tiny model with that
framework and checks every parameter group's dtype against the spec.
Adding a preset: one ``PRESETS`` entry, citing the source of each field. A framework version's
preset is not added here: it is the framework table's era (``vramplan.frameworks.era_presets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vramplan.errors import VramplanError
from vramplan.scenario import LORA_ONLY_FIELDS, Recipe

#: The unquantized parameter groups a recipe can cast (names of ``Arch`` parameter groups).
GROUPS = ("embeddings", "lm_head", "norms", "biases", "router", "experts")


@dataclass(frozen=True)
class RecipeSpec:
    """The dtype policy of one recipe for a quantized base (without quantization every parameter
    stays in the load dtype, whatever the recipe: no k-bit preparation runs)."""

    recipe: Recipe
    upcast_fp32: bool
    """Every floating parameter that is not 4-bit is upcast to fp32 (peft 0.21
    ``prepare_model_for_kbit_training``: ``param.data = param.data.to(torch.float32)`` for fp16/bf16
    parameters that are not ``Params4bit``)."""
    cast_back: frozenset[str]
    """Groups returned to the compute dtype after the upcast (TRL's ``peft_module_casting_to_bf16``:
    ``lm_head`` and ``embed_tokens`` whose weight is fp32; norms stay fp32; axolotl's conversion:
    norms, embeddings and lm_head)."""
    build_step: str
    """What ``vramplan.hf.build.apply_recipe`` runs, in words."""

    def upcasts(self, quantized: bool) -> bool:
        """Whether the upcast runs: only for a quantized model, and only if the recipe upcasts."""
        return quantized and self.upcast_fp32

    def group_bytes(self, group: str, quantized: bool, compute_bytes: int) -> int:
        """Bytes per element of an unquantized parameter group after the recipe ran."""
        if group not in GROUPS:
            raise ValueError(f"unknown parameter group {group!r}")
        if self.upcasts(quantized) and group not in self.cast_back:
            return 4
        return compute_bytes


#: Every recipe's spec (the one place a recipe's dtype policy is written).
RECIPES: dict[Recipe, RecipeSpec] = {
    Recipe.HF_PEFT: RecipeSpec(
        Recipe.HF_PEFT, upcast_fp32=True, cast_back=frozenset(),
        build_step="peft prepare_model_for_kbit_training"),
    Recipe.TRL: RecipeSpec(
        Recipe.TRL, upcast_fp32=True, cast_back=frozenset({"embeddings", "lm_head"}),
        build_step="peft prepare_model_for_kbit_training, then trl peft_module_casting_to_bf16"),
    Recipe.PLAIN: RecipeSpec(
        Recipe.PLAIN, upcast_fp32=False, cast_back=frozenset(), build_step="none"),
    # axolotl 0.19.0 loaders/model.py: peft prepare_model_for_kbit_training, then (``should_convert``,
    # every LoRA/QLoRA run without FSDP) modules named *norm* and the embedding modules back to
    # torch_dtype; what else the upcast touched (biases, MoE router, unquantized experts) stays fp32
    Recipe.AXOLOTL: RecipeSpec(
        Recipe.AXOLOTL, upcast_fp32=True, cast_back=frozenset({"embeddings", "lm_head", "norms"}),
        build_step="peft prepare_model_for_kbit_training, then norms, embeddings and lm_head cast back"),
}


def spec(recipe: Recipe) -> RecipeSpec:
    """The spec of ``recipe``."""
    return RECIPES[Recipe.parse(recipe)]


@dataclass(frozen=True)
class Preset:
    """A named bundle of Scenario fields describing a framework version or a training loop."""

    name: str
    fields: dict[str, Any]
    """Scenario field -> value; the string ``"dtype"`` for ``adapter_dtype`` means "the scenario's
    compute dtype" (bf16 adapters with a bf16 run, fp16 with fp16)."""
    source: str
    """Where each field's value comes from."""
    quantized_fields: tuple[str, ...] = ()
    """Fields that apply only when the base is 4-bit (dropped for ``quant none``)."""

    def resolve(self, dtype: str, quantized: bool, full: bool = False) -> dict[str, Any]:
        """The fields for a run of compute dtype ``dtype`` (a ``Dtype`` value); a 4-bit field is
        dropped for an unquantized base, a LoRA field (``LORA_ONLY_FIELDS``) under full fine-tuning."""
        out = {k: (dtype if v == "dtype" else v) for k, v in self.fields.items()}
        drop = (() if quantized else self.quantized_fields) + (LORA_ONLY_FIELDS if full else ())
        return {k: v for k, v in out.items() if k not in drop}


#: Older frameworks and loops whose memory differs from today's HF Trainer (docs/methodology.md).
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("transformers-4.44", dict(loss="legacy"),
           "transformers <= 4.44 LlamaForCausalLM.forward: logits.float() in the model, then a shifted copy"),
    Preset("bitsandbytes-0.43.1", dict(bnb_keeps_input=True),
           "bitsandbytes < 0.43.2 MatMul4Bit.forward saves its input whenever it needs a gradient",
           quantized_fields=("bnb_keeps_input",)),
    Preset("litgpt-2023", dict(recipe="plain", autocast=False, bnb_keeps_input=True),
           "litgpt @8641822 (Oct 2023): pure-precision model, bitsandbytes < 0.43.2",
           quantized_fields=("bnb_keeps_input",)),
    Preset("fsdp-qlora-2024", dict(recipe="plain", autocast=False, adapter_dtype="dtype", loss="legacy",
                                   hold_logits="step", bnb_keeps_input=True, reentrant=True),
           "AnswerDotAI fsdp_qlora train.py (Mar 2024): pure bf16, adapters in the weight dtype, transformers "
           "4.38 loss, `output` deleted after the optimizer step, bitsandbytes 0.43.0, the benchmark command's "
           "--reentrant_checkpointing True",
           quantized_fields=("bnb_keeps_input",)),
)}


#: Retired preset names -> the framework era preset that replaced them (same fields).
RETIRED = {"torchtune-2024": "torchtune-0.2"}


def preset(name: str) -> Preset:
    """A preset by name: a bundle above, or a framework era (``torchtune-0.2``, ``trl-0.26``: the
    program that era runs, read from its table by ``vramplan.frameworks.era_presets``); a one-line
    error naming the choices."""
    key = name.strip().lower()
    key = RETIRED.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    from vramplan.frameworks import era_presets

    eras = era_presets()
    if key in eras:
        return eras[key]
    raise VramplanError(f"unknown preset '{name}' (choose from: {', '.join([*PRESETS, *eras])})")


def preset_names() -> list[str]:
    """Every preset name: the bundles, then the framework eras."""
    from vramplan.frameworks import era_names

    return [*PRESETS, *era_names()]
