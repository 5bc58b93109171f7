"""What every framework table is made of, and the reader that records what a config said.

A framework module (``vramplan/frameworks/<name>.py``) is one ``Framework`` record:

- ``keys``: every config key the framework reads that moves memory, with its default *in that
  framework* (``Key``); ``eras`` change defaults and fixed semantics by framework version (``Era``);
- ``fixed``: the Scenario fields the framework's code decides whatever the config says (recipe,
  adapter dtype, checkpointing kind, loss kernel), per era;
- ``scenario``: a small function from the read keys to Scenario fields, with notes for anything
  approximated or not yet priced;
- ``plan_keys``: which config key carries each Scenario field, so a plan speaks the framework's words.

``Reader`` wraps the parsed config: ``get`` returns the config's value (recorded as *used*) or the
framework's default (recorded as *default*); whatever no ``get`` touched is *ignored*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vramplan.errors import VramplanError


class ConfigError(VramplanError):
    """A training config that cannot be read or priced as written (exit 2)."""


MISSING = object()
"""A key with no default: the config must give it."""


@dataclass(frozen=True)
class Key:
    """One config key the framework reads: its default there and what it changes."""

    name: str
    default: Any
    meaning: str
    aliases: tuple[str, ...] = ()
    """Older or alternative spellings the framework also accepts."""


@dataclass(frozen=True)
class Era:
    """A range of framework versions (``since`` inclusive, up to the next era) with its own behaviour."""

    since: str
    fixed: dict[str, Any]
    """Scenario fields the framework's code decides in this era."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Key defaults that differ from ``Framework.keys`` in this era."""
    source: str = ""
    """Where the era's behaviour is read (package version, file and lines)."""


@dataclass(frozen=True)
class Framework:
    """One framework's declarative table (see the module docstring)."""

    name: str
    title: str
    package: str | None
    """The pip distribution whose installed version is read (None: not pip-installable)."""
    eras: tuple[Era, ...]
    keys: tuple[Key, ...]
    scenario: Callable[..., dict[str, Any]]
    """``scenario(reader, era, arch, notes) -> Scenario fields``."""
    model_key: str
    """The key naming the model (dotted for nested YAML)."""
    plan_keys: dict[str, str]
    """Scenario field -> config key that sets it (only fields the framework exposes)."""
    style: str
    """How keys are written: ``yaml`` (``key: value``) or ``cli`` (``--key value``)."""
    launchers: tuple[tuple[str, ...], ...] = ()
    """Command words that start this framework's launch command (``("swift", "sft")``)."""
    spell: Callable[[str, Any], Any] | None = None
    """(Scenario field, value) -> the value as this framework writes it (optimizer names...)."""

    def key(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(name)

    def era(self, version: str) -> Era:
        """The era that holds ``version`` (the last whose ``since`` is not above it)."""
        v = parse_version(version)
        chosen = self.eras[0]
        for e in self.eras:
            if parse_version(e.since) <= v:
                chosen = e
        return chosen

    companions: dict[str, tuple[str, Any]] = field(default_factory=dict)
    """Scenario field -> (another key, its value) a plan must also set when it changes that field
    (axolotl: naming targets needs ``lora_target_linear: false``)."""
    model_name: Callable[[str], str] | None = None
    """The framework's model id -> the id vramplan looks up (Unsloth's re-uploads -> the base model)."""
    seq_multiple: Callable[[dict[str, Any]], int] | None = None
    """config -> the multiple the framework pads each batch's length to (axolotl's collator), so a plan's
    largest sequence is one it runs at unpadded."""
    pads_to_seq: Callable[[dict[str, Any]], bool] | None = None
    """config -> whether the collator pads every unpacked batch to the full sequence length (axolotl
    ``pad_to_sequence_len: true``), so a plan with ``--lengths`` checks rows of seq whatever the data
    (``vramplan.lengths.longest_batch``); None: batches pad to their longest example."""
    examples: tuple[dict[str, Any], dict[str, Any]] = field(default_factory=lambda: ({}, {}))
    """The smallest QLoRA config and LoRA config in this framework's keys (model ``"M"``): what its
    ``--preset`` eras are resolved from (``vramplan.frameworks.era_presets``)."""
    traceable: bool = True
    """Whether ``--method trace`` can run this framework's program (False: GPU-only kernels)."""
    known_latest: str = ""
    """The newest release this table was checked against (default: the last era's first version)."""

    @property
    def latest(self) -> str:
        return self.known_latest or self.eras[-1].since


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.16.0"`` -> (1, 16, 0); pre-release and local tails are dropped; ConfigError if unreadable."""
    import re

    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if not m:
        raise ConfigError(f"unreadable framework version '{text}' (expected e.g. 1.16.0)")
    return tuple(int(x) for x in m.group(1).split("."))


class Reader:
    """The parsed config, recording each key read as used (given) or default (absent)."""

    def __init__(self, fw: Framework, era: Era, data: dict[str, Any]) -> None:
        self.fw, self.era, self.data = fw, era, data
        self.used: dict[str, Any] = {}
        self.defaults: dict[str, Any] = {}
        self.seen: set[str] = set()
        self.side: dict[str, Any] = {}
        """Values read from beside the config, flat: the launch command (``torchrun:--nproc_per_node``,
        ``env:NPROC_PER_NODE``), accelerate's config file (``accelerate_config:<key>``), a DeepSpeed
        JSON (``ds_config:<key>``); recorded as the config's keys are (``side_get``)."""
        self.side_seen: set[str] = set()
        self.bases: list[Any] = []
        """Folders a file the config names (a DeepSpeed JSON) is looked up in, in order."""

    def _lookup(self, dotted: str) -> tuple[bool, Any, str]:
        """(present, value, the spelling found) for a dotted key, or one of its aliases."""
        names = (dotted,)
        try:
            names += self.fw.key(dotted).aliases
        except KeyError:
            pass
        for name in names:
            node: Any = self.data
            ok = True
            parts = name.split(".")
            for depth, part in enumerate(parts):
                if not isinstance(node, dict):
                    where = ".".join(parts[:depth])
                    raise ConfigError(f"{self.fw.title} config: '{where}' must be a mapping of keys, got "
                                      f"{type(node).__name__}")
                if part not in node:
                    ok = False
                    break
                node = node[part]
            if ok:
                return True, node, name
        return False, None, dotted

    def has(self, name: str) -> bool:
        return self._lookup(name)[0]

    def get(self, name: str) -> Any:
        """The config's value of ``name`` (used), else the framework's default in this era (default)."""
        present, value, spelled = self._lookup(name)
        self.seen.add(spelled)
        default = self.era.defaults.get(name, self.fw.key(name).default)
        if present:
            self.used[spelled] = value
            # an empty YAML value (``key:``) leaves the framework's default, as its schema does
            return default if (value is None and default is not MISSING) else value
        if default is MISSING:
            raise ConfigError(f"{self.fw.title} config: '{name}' is required and missing")
        self.defaults[name] = default
        return default

    def side_get(self, name: str, default: Any) -> Any:
        """A side value (``side``) by its flat name, recorded as used; else ``default``, recorded as a
        default unless it is None (nothing assumed)."""
        self.side_seen.add(name)
        if name in self.side:
            self.used[name] = self.side[name]
            return self.side[name]
        if default is not None:
            self.defaults[name] = default
        return default

    def ignored(self) -> list[str]:
        """Keys of the config no ``get`` read (dotted for nested mappings), then the side values no
        ``side_get`` read."""
        out: list[str] = [k for k in self.side if k not in self.side_seen]

        def walk(node: Any, prefix: str) -> None:
            for k, v in node.items():
                name = f"{prefix}{k}"
                if name in self.seen:
                    continue
                if isinstance(v, dict) and any(s.startswith(name + ".") for s in self.seen):
                    walk(v, name + ".")
                else:
                    out.append(name)

        walk(self.data, "")
        return sorted(out)


# ------------------------------------------------------------------------- shared vocabulary
#: HF ``TrainingArguments.optim`` names (transformers 5.24 ``training_args.py`` OptimizerNames) ->
#: vramplan's optimizer. Every other name is refused: its state is not priced.
HF_OPTIM = {
    "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
    "adamw_apex_fused": "adamw",
    "adamw_bnb_8bit": "adamw8bit", "adamw_8bit": "adamw8bit", "adam8bit": "adamw8bit",
    "paged_adamw_32bit": "paged_adamw", "paged_adamw": "paged_adamw",
    "paged_adamw_8bit": "paged_adamw8bit",
    "sgd": "sgd",
}
#: vramplan optimizer -> the HF name a plan writes back.
HF_OPTIM_NAME = {"adamw": "adamw_torch_fused", "adamw8bit": "adamw_bnb_8bit", "paged_adamw": "paged_adamw_32bit",
                 "paged_adamw8bit": "paged_adamw_8bit", "sgd": "sgd"}

#: peft 0.21.2 ``utils/constants.py`` TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, for the
#: decoder families vramplan prices: what ``target_modules=None`` resolves to.
PEFT_DEFAULT_TARGETS = {
    "llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"), "mixtral": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "stablelm": ("q_proj", "v_proj"),
}


def peft_default_targets(arch: Any, who: str) -> tuple[str, ...]:
    """What peft's ``LoraConfig(target_modules=None)`` resolves to for ``arch``; ConfigError when peft
    has no default for the family (peft raises then too)."""
    mt = arch.model_type
    if mt == "gemma3":
        mt = "gemma3_text"
    if mt not in PEFT_DEFAULT_TARGETS:
        raise ConfigError(f"{who}: no LoRA target modules given and peft has no default for model_type "
                          f"'{arch.model_type}' (peft raises too): set the target modules")
    return PEFT_DEFAULT_TARGETS[mt]


def optimizer(name: Any, who: str) -> str:
    """An HF optim name -> vramplan's optimizer; ConfigError naming the priced ones otherwise."""
    key = str(name).strip().lower()
    if key not in HF_OPTIM:
        raise ConfigError(f"{who}: optimizer '{name}' is not priced by vramplan (priced: "
                          f"{', '.join(sorted(HF_OPTIM))})")
    return HF_OPTIM[key]


_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n", "none", "null", ""}


def boolean(value: Any, key: str) -> bool:
    """A config boolean: YAML/JSON booleans or the CLI spellings; ConfigError otherwise."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def integer(value: Any, key: str, minimum: int = 1) -> int:
    """A positive config integer (YAML int or CLI string); ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if out < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {out}")
    return out


def mapping(value: Any, key: str) -> dict[str, Any]:
    """A mapping config value (YAML mapping, or the JSON string a CLI passes); {} when unset."""
    if value is None:
        return {}
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a mapping (or its JSON), got {value!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def fraction(value: Any, key: str) -> float:
    """A dropout-like number in [0, 1); ConfigError otherwise."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not 0.0 <= out < 1.0:
        raise ConfigError(f"{key}: must be in [0, 1), got {out}")
    return out


#: dtype spellings of the frameworks -> vramplan's Dtype values (``auto`` is resolved by the caller).
DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
          "half": "fp16", "torch.float16": "fp16", "fp32": "fp32", "float32": "fp32", "float": "fp32",
          "torch.float32": "fp32"}


def dtype(value: Any, key: str, arch: Any = None) -> str:
    """A dtype spelling -> ``bf16``/``fp16``/``fp32``; ``auto``/None -> the checkpoint's (config.json
    ``torch_dtype``/``dtype``, bf16 when it names none)."""
    if value is None or str(value).strip().lower() == "auto":
        cfg = getattr(arch, "config", {}) or {}
        named = cfg.get("torch_dtype") or cfg.get("dtype")
        return DTYPES.get(str(named).lower(), "bf16") if named else "bf16"
    text = str(value).strip().lower()
    if text not in DTYPES:
        raise ConfigError(f"{key}: unknown dtype {value!r} (bfloat16, float16 or float32)")
    return DTYPES[text]


def targets(value: Any, key: str) -> tuple[str, ...] | None:
    """LoRA targets: a list, a comma string, ``all-linear``/``all`` -> ("all-linear",); None if unset."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [t.strip() for t in value.replace(" ", ",").split(",") if t.strip()]
    elif isinstance(value, (list, tuple)):
        if not all(isinstance(t, str) for t in value):
            raise ConfigError(f"{key}: module names must be strings, got {value!r}")
        items = [t.strip() for t in value if t.strip()]
    else:
        raise ConfigError(f"{key}: expected module names, got {value!r}")
    if not items:
        return None
    if any(t.lower() in ("all-linear", "all_linear", "all") for t in items):
        return ("all-linear",)
    return tuple(items)


def hf_spell(fieldname: str, value: Any) -> Any:
    """A Scenario value as HF-style configs write it: optimizer names of ``TrainingArguments.optim``,
    targets as a list; anything else as is."""
    if fieldname == "optimizer":
        return HF_OPTIM_NAME[value]
    if fieldname == "targets":
        return list(value)
    return value


def unpriced(r: Reader, notes: list[str], features: tuple[tuple[str, str], ...]) -> None:
    """A note for each (key, feature) the config switches on that vramplan does not price yet."""
    for key, what in features:
        if boolean(r.get(key), key):
            notes.append(f"{key}: {what} not yet priced; priced without it")


def quant_storage(value: Any, key: str) -> str | None:
    """``bnb_4bit_quant_storage`` -> ``Scenario.quant_storage`` (uint8, bf16, fp16, fp32); None when unset."""
    if value is None:
        return None
    text = str(value).strip().lower().removeprefix("torch.")
    if text == "uint8":
        return "uint8"
    if text not in DTYPES:
        raise ConfigError(f"{key}: {value!r} is not a storage dtype (uint8, bfloat16, float16, float32)")
    return DTYPES[text]


def hf_eval_keys(prefix: str = "", batch: int = 8) -> tuple[Key, ...]:
    """The HF ``TrainingArguments`` keys that size what evaluation keeps (``hf_evaluation`` reads them),
    as the framework spells them (``prefix``: ``training_args.`` for the HF pair), with its default eval
    batch (transformers 5.24 ``training_args.py``: 8; ms-swift's own default is 1)."""
    return (Key(prefix + "per_device_eval_batch_size", batch, "evaluation batch"),
            Key(prefix + "eval_accumulation_steps", None, "batches of kept predictions before they move to the CPU"),
            Key(prefix + "prediction_loss_only", False, "keep only the loss"),
            Key(prefix + "batch_eval_metrics", False, "metrics per batch (predictions freed per batch)"))


#: What the readers of HF-Trainer-based configs assume about ``compute_metrics`` (the script's, never
#: the config's): none, so ``Trainer.evaluate`` forces ``prediction_loss_only`` and keeps only the loss
#: (transformers 5.24 ``trainer.py`` L2871-2877).
NO_METRICS_NOTE = ("compute_metrics is the script's, not the config's: priced without it (the Trainer then keeps "
                   "only each batch's loss); a script passing compute_metrics keeps every eval sample's logits on "
                   "the device: add --eval-keep logits --eval-samples N (the eval set, or eval_accumulation_steps "
                   "× the eval batch)")


def hf_evaluation(r: Reader, notes: list[str], prefix: str = "", *, data: bool = True, metrics: str | None = None,
                  samples: int | None = None, script_metrics: bool = True, strategy: Any = None) -> dict[str, Any]:
    """HF ``TrainingArguments``' evaluation keys (transformers 5.24 ``training_args.py``, ``trainer.py``
    L2805-3111; research §5) -> the Scenario's evaluation fields ({} when no evaluation runs during
    training: ``eval_strategy`` "no", or no eval data).

    ``data``: the framework has eval data (a validation split or set); ``metrics``: what the framework's
    own ``compute_metrics`` keeps ("ids" or "logits"; None: it sets none); ``samples``: the eval set's
    size when the config gives it; ``script_metrics``: a plain Trainer script may pass its own
    ``compute_metrics`` (the assumption is then stated, ``NO_METRICS_NOTE``); ``strategy``: the
    framework's resolved strategy (default: the config's ``eval_strategy``)."""
    strategy = str(strategy if strategy is not None else r.get(prefix + "eval_strategy")).strip().lower()
    if strategy in ("no", "none", "false", "") or not data:
        return {}
    batch = integer(r.get(prefix + "per_device_eval_batch_size"), "per_device_eval_batch_size")
    out: dict[str, Any] = {"eval_batch": batch}
    if boolean(r.get(prefix + "prediction_loss_only"), "prediction_loss_only"):
        return out
    steps = r.get(prefix + "eval_accumulation_steps")
    per_batch = boolean(r.get(prefix + "batch_eval_metrics"), "batch_eval_metrics")
    if metrics is None:
        if script_metrics:
            notes.append(NO_METRICS_NOTE)
        return out
    out["eval_keep"] = metrics
    if per_batch:
        out["eval_samples"] = batch
        notes.append("batch_eval_metrics: each batch's predictions are freed after its metrics, priced with one "
                     "eval batch kept")
    elif steps is not None:
        moved = integer(steps, "eval_accumulation_steps") * batch
        out["eval_samples"] = min(moved, samples) if samples else moved
        notes.append(f"eval_accumulation_steps moves the kept predictions to the CPU every {steps} batches: at most "
                     f"{out['eval_samples']} samples' {metrics} on the device")
    elif samples:
        out["eval_samples"] = samples
    else:
        out["eval_samples"] = batch
        notes.append(f"evaluation keeps every eval sample's {metrics} on the device until it ends, and the config "
                     f"does not give the eval set's size: priced with one eval batch ({batch}), the least; give "
                     "--eval-samples N (or set eval_accumulation_steps)")
    return out


def eval_set_size(value: Any) -> int | None:
    """A validation-set size (LLaMA-Factory ``val_size``, axolotl ``val_set_size``, ms-swift
    ``split_dataset_ratio``): a count when it is at least 1, None for a fraction of the data (the size is
    the data's)."""
    try:
        v = float(value or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"validation size: expected a number, got {value!r}") from None
    return int(v) if v >= 1 else None


# ----------------------------------------------------------------------------------- Liger kernels
#: model_types liger-kernel 0.8.5 has an ``apply_liger_kernel_to_*`` for (``transformers/monkey_patch.py``
#: ``MODEL_TYPE_TO_APPLY_LIGER_FN``, L3904-3970); ``_apply_liger_kernel_to_instance`` applies nothing to others.
LIGER_MODEL_TYPES = frozenset((
    "deepseek_v2", "deepseek_v3", "deepseek_v4", "gemma", "gemma2", "gemma3_text", "gemma3", "gemma4_text", "gemma4",
    "glm4", "glm4v", "glm4v_moe", "gpt_oss", "internvl", "llama", "llama4_text", "llama4", "llava", "granite",
    "mllama", "mllama_text_model", "ministral", "mistral", "mixtral", "muse_glimmer", "nemotron", "olmo2", "pixtral",
    "olmo3", "qwen2", "qwen3", "qwen3_moe", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text",
    "qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_vl", "qwen3_vl_text",
    "qwen3_vl_moe", "qwen3_vl_moe_text", "smollm3", "phi3", "paligemma", "falcon_h1", "smolvlm", "hunyuan_v1_dense",
    "hunyuan_v1_moe", "exaone4"))
#: The layer kernels every ``apply_liger_kernel_to_*`` of 0.8.5 turns on by default beside the loss
#: (e.g. ``apply_liger_kernel_to_qwen3(rope=True, cross_entropy=False, fused_linear_cross_entropy=True,
#: rms_norm=True, swiglu=True)``, L1817-1823).
LIGER_LAYER_KERNELS = ("rope", "rms_norm", "swiglu")


#: Liger's layer kernel switch -> the Scenario field that prices it
LIGER_LAYER_FIELDS = {"rope": "liger_rope", "rms_norm": "liger_rms_norm", "swiglu": "liger_swiglu"}


def liger(arch: Any, config: dict[str, Any], notes: list[str], who: str,
          model_types: frozenset[str] = LIGER_MODEL_TYPES, flce_allowed: bool = True,
          out: dict[str, Any] | None = None) -> str | None:
    """The loss a Liger switch gives ``arch``: ``"liger"`` (``Loss.LIGER``) when the fused linear
    cross-entropy is on (``config``: the apply function's keyword arguments, e.g. HF's
    ``liger_kernel_config``; FLCE defaults to on), else None (the framework's own loss stays). Notes say
    what else Liger switches on and how it is priced. ``model_types``: those the framework applies
    Liger to; ``flce_allowed`` False: the framework forces FLCE off (TRL >= 1.15). ``out``: the
    scenario fields being built; the layer kernels that are on (``rope``, ``rms_norm``, ``swiglu``,
    each on by default in ``apply_liger_kernel_to_<model>``) set ``liger_rope`` / ``liger_rms_norm`` /
    ``liger_swiglu`` there."""
    mt = getattr(arch, "model_type", None)
    if mt not in model_types:
        notes.append(f"{who}: Liger has no kernels for model_type {mt}: none applied, priced without")
        return None
    layer = [k for k in LIGER_LAYER_KERNELS if boolean(config.get(k, True), k)]
    if out is not None:
        out.update({LIGER_LAYER_FIELDS[k]: True for k in layer})
    if layer:
        notes.append(f"Liger's {', '.join(layer)} kernels: priced from what their autograd functions save "
                     f"(liger-kernel 0.8.5; {', '.join('--' + LIGER_LAYER_FIELDS[k].replace('_', '-') for k in layer)})")
    if layer and getattr(arch, "moe_layers", ()) and "swiglu" in layer:
        notes.append("Liger's swiglu on a MoE model: its expert kernels are priced as transformers' experts "
                     "(the dense MLPs, if any, as LigerSiLUMulFunction)")
    flce = flce_allowed and boolean(config.get("fused_linear_cross_entropy", True), "fused_linear_cross_entropy")
    if not flce:
        if boolean(config.get("cross_entropy", False), "cross_entropy"):
            notes.append("Liger's cross_entropy (on the full logits, gradient written in place): priced as "
                         "transformers' loss, an upper bound")
        return None
    return "liger"


def modules_to_save(value: Any, key: str) -> tuple[str, ...]:
    """peft ``modules_to_save`` names (a list or a comma string; None -> ()). The input embedding
    and the output projection are priced (``vramplan.scenario.MODULES_TO_SAVE``); any other name is
    refused in one line."""
    from vramplan.scenario import MODULES_TO_SAVE

    names = targets(value, key) or ()
    if names == ("all-linear",):
        raise ConfigError(f"{key}: 'all' names no module to save")
    bad = [n for n in names if n not in MODULES_TO_SAVE]
    if bad:
        raise ConfigError(f"{key}: {', '.join(bad)} is not priced (vramplan prices a trainable copy of "
                          f"{' or '.join(MODULES_TO_SAVE)})")
    return tuple(dict.fromkeys(names))


def adapter_variant(r: Reader, out: dict[str, Any], dora: str | None = None, mts: str | None = None,
                    rslora: str | None = None) -> None:
    """The adapter-variant keys of a framework, by its key names: DoRA -> ``dora``, its
    modules_to_save -> ``modules_to_save``. rsLoRA only rescales the update (alpha/√r for alpha/r,
    peft ``LoraLayer.update_layer``): memory-neutral, so its key is read (validated) and maps to nothing."""
    if dora and r.get(dora) is not None and boolean(r.get(dora), dora):
        out["dora"] = True
    if mts:
        names = modules_to_save(r.get(mts), mts)
        if names:
            out["modules_to_save"] = names
    if rslora and r.get(rslora) is not None:
        boolean(r.get(rslora), rslora)


def parse_mapping(path: Any, text: str, what: str = "", expected: str = "a mapping") -> dict[str, Any]:
    """The one mapping a config file holds: JSON (``json.loads``) when it is named .json or starts with
    ``{``, else YAML (``yaml.safe_load``: data, never code); ConfigError in one line naming ``what`` and
    ``path`` otherwise."""
    import json

    head = f"{what} {path}" if what else f"{path}"
    if str(path).lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{head}: malformed JSON ({e})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{head}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{head}: expected {expected}, got {type(data).__name__}")
    return data
