"""Training frameworks as data: read a user's config, price what that framework really runs.

Each framework is one module here holding a ``Framework`` table (``vramplan.frameworks.base``):
ms-swift, axolotl, LLaMA-Factory, TRL, the plain HF Trainer + peft, torchtune and Unsloth. This
package reads the config (YAML with ``yaml.safe_load``, JSON, or a shell script *parsed* for the
launch command, never executed), detects the framework, picks its version (``--framework-version``,
else the installed package, else the newest release its table knows) and turns the config into
Scenario fields, recording every key used, every default that filled a gap and every key ignored.

Adding a framework: a module with ``FRAMEWORK = Framework(...)`` (its keys with their defaults in
that framework, its eras by version, its ``scenario`` function and its plan keys), an entry in
``FRAMEWORKS`` and ``_SIGNS`` below, a real-format config under tests/data/frameworks/ with its
expected resolution (tests/exact/test_frameworks.py), and, where the framework installs on CPU, an
ours-vs-theirs check of its recipe (tests/theirs/test_frameworks_theirs.py).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vramplan.frameworks import axolotl, hf, llamafactory, ms_swift, torchtune, trl, unsloth
from vramplan.frameworks.base import ConfigError, Framework, Reader, parse_mapping, parse_version

FRAMEWORKS: dict[str, Framework] = {m.FRAMEWORK.name: m.FRAMEWORK for m in (
    ms_swift, axolotl, llamafactory, trl, hf, torchtune, unsloth)}
ALIASES = {"swift": "ms-swift", "ms_swift": "ms-swift", "llama-factory": "llamafactory", "llama_factory": "llamafactory",
           "lmf": "llamafactory", "transformers": "hf", "hf-trainer": "hf", "peft": "hf"}

#: Keys that mark a framework's config (each match scores one; the model key must be present).
_SIGNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "axolotl": ("base_model", ("adapter", "sequence_len", "micro_batch_size", "lora_r", "lora_target_linear",
                               "datasets", "sample_packing", "load_in_4bit")),
    "llamafactory": ("model_name_or_path", ("stage", "finetuning_type", "cutoff_len", "lora_target", "template",
                                            "quantization_bit", "lora_rank")),
    "trl": ("model_name_or_path", ("use_peft", "lora_r", "load_in_4bit", "dataset_name", "max_length",
                                   "max_seq_length", "lora_target_modules", "use_bnb_nested_quant")),
    "ms-swift": ("model", ("train_type", "tuner_type", "quant_method", "quant_bits", "lora_rank", "target_modules",
                           "max_length", "lora_dtype", "attn_impl")),
    "unsloth": ("model", ("training", "lora", "data", "logging")),
    "torchtune": ("model", ("tokenizer", "checkpointer", "batch_size", "enable_activation_checkpointing", "loss",
                            "optimizer")),
}


def framework(name: str) -> Framework:
    """A framework by name or alias; ConfigError naming the choices."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in FRAMEWORKS:
        raise ConfigError(f"unknown framework '{name}' (choose from: {', '.join(FRAMEWORKS)})")
    return FRAMEWORKS[key]


# ---------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """What the given files (or launch command) hold, before any framework reading."""

    data: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    framework: str | None = None
    """Named by a launch command (``swift sft``...), if any."""
    script: Path | None = None
    """The shell script holding the launch command (what ``--write`` patches for CLI frameworks)."""
    yaml_file: Path | None = None
    """The YAML/JSON config file the run reads (what ``--write`` patches for YAML frameworks)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Command-line values given on top of a config file (``trl sft --config x.yaml --max_length 1``)."""
    launch: dict[str, Any] = field(default_factory=dict)
    """What the launch command says before the framework's words: ``VAR=value`` prefixes, torchrun /
    accelerate / deepspeed options, accelerate's config file (``vramplan.frameworks.parallel.launch_side``)."""


def read_sources(paths: list[str], argv: list[str] | None = None) -> Source:
    """Read ``--config`` files and/or a launch command given after ``--``."""
    if not paths and not argv:
        raise ConfigError("no config given: --config FILE or a launch command after --")
    src = Source(data={})
    mappings: list[tuple[Path, dict[str, Any]]] = []
    for p in paths:
        path = Path(p).expanduser()
        text = _read_text(path)
        if path.suffix.lower() in (".yaml", ".yml", ".json") or text.lstrip().startswith("{"):
            mappings.append((path, _mapping(path, text)))
        else:
            _from_command(src, _launch_command(text, str(path)), base=path.parent, script=path)
    if argv:
        _from_command(src, list(argv), base=Path.cwd(), script=None)
    if mappings:
        _merge_mappings(src, mappings)
    return src


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > 4 * 2**20:
        raise ConfigError(f"{path}: larger than 4 MiB, not a training config")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def _mapping(path: Path, text: str) -> dict[str, Any]:
    """A YAML (``safe_load``) or JSON file that must hold one mapping (``base.parse_mapping``)."""
    return parse_mapping(path, text, "", "a mapping of config keys")


def _merge_mappings(src: Source, mappings: list[tuple[Path, dict[str, Any]]]) -> None:
    """One file is the config; two are TrainingArguments JSON + peft adapter_config.json (either order)."""
    adapters = [(p, d) for p, d in mappings if "peft_type" in d]
    args = [(p, d) for p, d in mappings if "peft_type" not in d and _is_training_args(d)]
    if adapters or (len(mappings) > 1 and args):
        if len(adapters) > 1 or len(args) > 1 or len(adapters) + len(args) != len(mappings):
            raise ConfigError("pass one TrainingArguments JSON and one adapter_config.json")
        src.framework = src.framework or "hf"
        if args:
            src.data["training_args"] = args[0][1]
            src.yaml_file = args[0][0]
        if adapters:
            src.data["adapter_config"] = adapters[0][1]
        src.files += [p for p, _ in mappings]
        return
    if len(mappings) > 1:
        raise ConfigError("several config files given: only TrainingArguments JSON + adapter_config.json pair up")
    path, data = mappings[0]
    if src.data:  # a launch command already read its --config; this one replaces nothing
        raise ConfigError(f"{path}: a config file and a launch command with its own config: give one")
    src.data, src.yaml_file = data, path
    src.files.append(path)


def _is_training_args(d: dict[str, Any]) -> bool:
    return "per_device_train_batch_size" in d and ("output_dir" in d or "optim" in d)


def _launch_command(text: str, where: str) -> list[str]:
    """The one recognised launch command of a shell script, as tokens (the script is parsed only)."""
    joined = re.sub(r"\\\r?\n", " ", text)
    found: list[list[str]] = []
    for line in joined.splitlines():
        if line.lstrip().startswith("#"):
            continue
        try:  # as sh: a word that starts with '#' starts a comment, a '#' inside a word ('a#500') does not
            tokens = shlex.split(line, comments=False)
        except ValueError:
            try:  # an unbalanced quote in a trailing comment (``# don't``)
                tokens = shlex.split(line, comments=True)
            except ValueError as e:
                raise ConfigError(f"{where}: cannot parse shell line ({e}): {line.strip()[:80]}") from None
        cut = next((i for i, t in enumerate(tokens) if t.startswith("#")), None)
        tokens = tokens if cut is None else tokens[:cut]
        for part in _split_tokens(tokens):
            if _launcher(part) is not None:
                found.append(part)
    if not found:
        known = "; ".join(" ".join(w) for f in FRAMEWORKS.values() for w in f.launchers[:1])
        raise ConfigError(f"{where}: no launch command found (looked for: {known})")
    if len(found) > 1:
        raise ConfigError(f"{where}: {len(found)} launch commands found; keep one per script")
    return found[0]


def _split_tokens(tokens: list[str]) -> list[list[str]]:
    out, cur = [], []
    for t in tokens:
        if t in ("&&", "||", ";", "|", "&"):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        out.append(cur)
    return out


#: Words that may precede a launch command (``CUDA_VISIBLE_DEVICES=0 nohup swift sft ...``).
_WRAPPERS = {"env", "nohup", "time", "exec", "sudo"}
#: Programs that start a Python module: ``python -m axolotl.cli.train``, ``accelerate launch ... -m ...``.
_PYTHONS = {"python", "python3", "accelerate", "torchrun", "deepspeed"}
#: Python modules that are a framework's launcher (``-m MODULE``).
_MODULES = {"axolotl.cli.train": "axolotl", "swift.cli.sft": "ms-swift", "trl.scripts.sft": "trl"}
#: Scripts that are a framework's launcher (``accelerate launch ... trl/scripts/sft.py``), by path ending.
_SCRIPTS = {"trl/scripts/sft.py": "trl", "src/train.py": "llamafactory"}
"""(LLaMA-Factory's README launches FSDP as ``accelerate launch --config_file ... src/train.py cfg.yaml``.)"""


def _launcher(tokens: list[str]) -> tuple[str, int] | None:
    """(framework, index after its launcher words) when the command starts with a launch command (after
    ``VAR=value`` assignments and wrappers such as ``nohup``), or runs a launcher module with ``-m``."""
    i = 0
    while i < len(tokens) and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[i]) or tokens[i] in _WRAPPERS):
        i += 1
    rest = tokens[i:]
    if not rest:
        return None
    head = [Path(rest[0]).name] + rest[1:]
    for name, fw in FRAMEWORKS.items():
        for words in fw.launchers:
            if head[:len(words)] == list(words):
                return name, i + len(words)
    if Path(rest[0]).name.split(".")[0] in _PYTHONS and "-m" in rest:
        j = rest.index("-m")
        module = rest[j + 1] if j + 1 < len(rest) else ""
        if module in _MODULES:
            return _MODULES[module], i + j + 2
    if Path(rest[0]).name.split(".")[0] in _PYTHONS:
        for j, t in enumerate(rest[1:], 1):
            for tail, name in _SCRIPTS.items():
                if t.replace("\\", "/").endswith(tail):
                    return name, i + j + 1
    return None


def _from_command(src: Source, tokens: list[str], base: Path, script: Path | None) -> None:
    hit = _launcher(tokens)
    if hit is None:
        raise ConfigError(f"not a recognised launch command: {' '.join(tokens[:4])}")
    name, start = hit
    if src.framework and src.framework != name:
        raise ConfigError(f"two frameworks given: {src.framework} and {name}")
    src.framework, src.script = name, script
    from vramplan.frameworks.parallel import launch_side

    src.launch = launch_side(tokens[:start], base)
    args = tokens[start:]
    if name == "torchtune":  # tune run [torchrun options] RECIPE [--config f] [key=value ...]
        args = _tune_recipe(src, args)
    if name == "axolotl":  # axolotl train cfg.yml [--launcher accelerate|torchrun|python] [-- launcher options]
        args = _axolotl_launcher(src, args, base)
    values, positional = _parse_args(args)
    config = values.pop("config", None) or (positional[0] if positional and name in ("axolotl", "llamafactory")
                                            else None)
    if config is None and name == "ms-swift" and positional and str(positional[0]).endswith((".json", ".yaml", ".yml")):
        config = positional[0]  # swift sft args.yaml (ms-swift 4.6 swift/cli/main.py parse_yaml_args L38-46)
    data: dict[str, Any] = {}
    if config is not None:
        path = Path(str(config)).expanduser()
        if not path.is_absolute():
            path = base / path
        if not path.suffix:
            raise ConfigError(f"{config}: a built-in {FRAMEWORKS[name].title} config name, not a file; pass the "
                              "YAML itself (e.g. `tune cp` it first)")
        data = _mapping(path, _read_text(path))
        src.yaml_file = path
        src.files.append(path)
    for k, v in values.items():
        set_dotted(data, k, v)
    src.overrides = values
    src.data = data
    if script is not None:
        src.files.append(script)


def _axolotl_launcher(src: Source, args: list[str], base: Path) -> list[str]:
    """axolotl 0.19 ``axolotl train``: ``--launcher`` (accelerate by default, torchrun, python) starts the
    training with the options after ``--`` (``cli/main.py`` L80-129); recorded as that launcher's values."""
    from vramplan.frameworks.parallel import launch_side

    cut = args.index("--") if "--" in args else len(args)
    own, extra = args[:cut], args[cut + 1:]
    launcher = "accelerate"
    for i, a in enumerate(own):
        if a == "--launcher" and i + 1 < len(own):
            launcher = own[i + 1]
            own = own[:i] + own[i + 2:]
            break
        if a.startswith("--launcher="):
            launcher = a.partition("=")[2]
            own = own[:i] + own[i + 1:]
            break
    if launcher in ("accelerate", "torchrun"):
        words = ["accelerate", "launch"] if launcher == "accelerate" else ["torchrun"]
        src.launch.update(launch_side(words + extra + ["-m", "axolotl.cli.train"], base))
    if launcher != "python" and not extra:
        src.launch.setdefault("axolotl:--launcher", launcher)
    return own


def _tune_recipe(src: Source, args: list[str]) -> list[str]:
    """torchtune 0.6.1 ``tune run``: options before the recipe go to torchrun (``_cli/run.py``
    ``_is_distributed_args``, ``_run_distributed``), recorded as ``torchrun:`` launch values, the recipe as
    ``tune:recipe``; returns the recipe's own arguments."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        key, eq, val = args[i].lstrip("-").partition("=")
        key = key.replace("-", "_")
        if eq:
            src.launch[f"torchrun:--{key}"] = val
            i += 1
        else:
            src.launch[f"torchrun:--{key}"] = args[i + 1] if i + 1 < len(args) else True
            i += 2
    if i < len(args):
        src.launch["tune:recipe"] = args[i]
        i += 1
    return args[i:]


def _parse_args(args: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """``--key value`` / ``--key=value`` / ``--flag`` / ``--key v1 v2`` and torchtune's ``key=value``."""
    values: dict[str, Any] = {}
    positional: list[Any] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and len(a) > 2:
            key, eq, val = a[2:].partition("=")
            key = key.replace("-", "_")
            if eq:
                values[key] = val
                i += 1
                continue
            j = i + 1
            vals = []
            while j < len(args) and not args[j].startswith("--") and not ("=" in args[j] and
                                                                           not args[j].startswith("-")):
                vals.append(args[j])
                j += 1
            values[key] = True if not vals else (vals[0] if len(vals) == 1 else vals)
            i = j
        elif "=" in a and not a.startswith("-"):
            k, _, v = a.partition("=")
            values[k] = v
            i += 1
        else:
            positional.append(a)
            i += 1
    return values, positional


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (``model.lora_rank``) in nested mappings, making the missing levels."""
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------- detection
def detect(src: Source) -> str:
    """The framework of the config: named by its launch command, else by its keys."""
    if src.framework:
        return src.framework
    data = src.data
    if isinstance(data.get("model"), dict) and "_component_" in data["model"]:
        return "torchtune"
    scores = {}
    for name, (model_key, signs) in _SIGNS.items():
        hits = sum(1 for s in signs if s in data)
        if hits:
            scores[name] = hits + (1 if model_key in data else 0)
    if isinstance(data.get("training"), dict) or isinstance(data.get("lora"), dict):
        scores["unsloth"] = scores.get("unsloth", 0) + 10
    if not any(scores.values()) and _is_training_args(data):
        return "hf"
    best = max(scores.values(), default=0)
    top = [n for n, s in scores.items() if s == best]
    if best == 0 or len(top) > 1:
        what = f"it could be {' or '.join(top)}" if len(top) > 1 and best else "no framework's keys found"
        raise ConfigError(f"cannot tell which framework this config is for ({what}): pass --framework "
                          f"({', '.join(FRAMEWORKS)})")
    return top[0]


def installed_version(fw: Framework) -> str | None:
    if not fw.package:
        return None
    from importlib import metadata

    try:
        return metadata.version(fw.package)
    except metadata.PackageNotFoundError:
        return None


def pick_version(fw: Framework, given: str | None) -> tuple[str, str]:
    """(version, where it came from): ``--framework-version``, the installed package, or the table's newest."""
    if given:
        parse_version(given)
        if parse_version(given) < parse_version(fw.eras[0].since):
            raise ConfigError(f"{fw.title} {given} is older than vramplan's table ({fw.eras[0].since} and later)")
        return given.strip(), "--framework-version"
    found = installed_version(fw)
    if found:
        try:
            old = parse_version(found) < parse_version(fw.eras[0].since)
        except ConfigError:
            old = False
        if old:
            return found, f"installed package, older than vramplan's table: priced as {fw.eras[0].since}"
        return found, "installed package"
    return fw.latest, "newest release vramplan's table knows"


# ---------------------------------------------------------------------------------- resolution
@dataclass
class Loaded:
    """A config read and its framework known; the model id peeked, nothing priced yet."""

    source: Source
    framework: Framework
    version: str
    version_source: str
    model: str | None


def load(paths: list[str], argv: list[str] | None = None, framework_name: str | None = None,
         version: str | None = None) -> Loaded:
    src = read_sources(paths, argv)
    fw = framework(framework_name) if framework_name else framework(detect(src))
    if fw.name == "hf" and "training_args" not in src.data and "adapter_config" not in src.data:
        src.data = {"training_args": src.data}
    ver, where = pick_version(fw, version)
    return Loaded(src, fw, ver, where, _model_of(src.data, fw, src))


def _model_of(data: dict[str, Any], fw: Framework, src: Source | None = None) -> str | None:
    if fw.name == "torchtune":
        return torchtune.model_id(data)
    node: Any = data
    for part in fw.model_key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None and fw.name == "unsloth" and src is not None and src.yaml_file is not None:
        node = unsloth.studio_model(src.yaml_file.name)
    if node is None or isinstance(node, (dict, list)):
        return None
    return fw.model_name(str(node)) if fw.model_name else str(node)


@dataclass
class Resolved:
    """A config turned into Scenario fields, with the record of what was read."""

    framework: Framework
    version: str
    version_source: str
    fields: dict[str, Any]
    used: dict[str, Any]
    defaults: dict[str, Any]
    ignored: list[str]
    notes: list[str]
    source: Source

    def to_dict(self, command_line: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(framework=self.framework.name, version=self.version, version_source=self.version_source,
                    files=[str(p) for p in self.source.files], used=_jsonable(self.used),
                    defaults=_jsonable(self.defaults), ignored=self.ignored, notes=self.notes,
                    command_line=_jsonable(command_line or {}))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def resolve(loaded: Loaded, arch: Any) -> Resolved:
    """The config's Scenario fields for ``arch`` (the framework's fixed fields of its era, then the keys)."""
    fw = loaded.framework
    era = fw.era(loaded.version)
    reader = Reader(fw, era, loaded.source.data)
    src = loaded.source
    reader.side = dict(src.launch)
    reader.bases = list(dict.fromkeys(p.parent for p in (src.yaml_file, src.script) if p is not None)) + [Path.cwd()]
    notes: list[str] = []
    if fw.model_key in ("model", "base_model", "model_name_or_path"):
        reader.seen.add(fw.model_key)
        if loaded.model is not None:
            reader.used[fw.model_key] = loaded.model
            if fw.name == "unsloth" and not reader.has(fw.model_key) and loaded.source.yaml_file is not None:
                notes.append(f"model {loaded.model} read from the Unsloth Studio file name "
                             f"{loaded.source.yaml_file.name} (<org>_<model>.yaml; Studio writes no model key)")
    fields = dict(era.fixed)
    fields.update(fw.scenario(reader, era, arch, notes))
    if fw.model_key.startswith("adapter_config."):
        reader.get(fw.model_key)
    return Resolved(fw, loaded.version, loaded.version_source, fields, reader.used, reader.defaults,
                    reader.ignored(), notes, loaded.source)


# ------------------------------------------------------------------------------------ planning
# (vramplan.frameworks.patch; imported last: it needs Source, Resolved and the readers above)
from vramplan.frameworks.patch import describe_change, framework_changes, patch_yaml, patched_text  # noqa: E402,F401




# ------------------------------------------------------------------------------------ presets
#: The fields a framework era's ``--preset`` sets: the program it runs, not the run's shape or its
#: LoRA hyper-parameters (those stay the command line's, or the config's with ``--config``).
PRESET_FIELDS = ("recipe", "autocast", "loss", "hold_logits", "reentrant", "adapter_dtype")


def era_name(fw: Framework, era: Any) -> str:
    """``torchtune-0.2``, ``trl-1.15``: the framework and its era's first version (major.minor)."""
    return f"{fw.name}-{'.'.join(era.since.split('.')[:2])}"


def era_names() -> list[str]:
    return [era_name(fw, era) for fw in FRAMEWORKS.values() for era in fw.eras]


@functools.lru_cache(maxsize=1)
def era_presets() -> dict[str, Any]:
    """One ``vramplan.recipes.Preset`` per framework era, resolved from the framework's own table: its
    example QLoRA and LoRA configs (``Framework.examples``) read as that era reads them, on a
    registry model. A field the two readings differ on holds for 4-bit bases only."""
    from vramplan.arch import resolve as resolve_arch
    from vramplan.recipes import Preset

    arch = resolve_arch("Qwen3-0.6B")
    out: dict[str, Any] = {}
    for fw in FRAMEWORKS.values():
        for era in fw.eras:
            read = []
            for example in fw.examples:
                src = Source(data=json.loads(json.dumps(example)))
                r = resolve(Loaded(src, fw, era.since, "preset", "M"), arch)
                read.append({k: r.fields[k] for k in PRESET_FIELDS if k in r.fields})
            q, plain = read
            fields = {k: ("dtype" if k == "adapter_dtype" and v != "fp32" else v) for k, v in q.items()}
            only_4bit = tuple(k for k in fields if plain.get(k, _UNSET) != q[k])
            assert era_name(fw, era) not in out, f"two eras of {fw.name} share the preset name {era_name(fw, era)}"
            out[era_name(fw, era)] = Preset(era_name(fw, era), fields, f"{fw.title} {era.since}+: {era.source}",
                                            quantized_fields=only_4bit)
    return out


_UNSET = object()
