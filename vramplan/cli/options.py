"""Scenario flags shared by ``estimate``, ``plan``, ``profile`` and ``plot`` (the CLI contract of issue 3).

One flag per ``Scenario`` field, generated from the field: its name, type, default and
``FieldMeta`` (help, short flag, whether ``profile`` sweeps a comma list); plus ``--model`` and
``--preset`` (a named bundle of fields, ``vramplan.recipes.PRESETS``).
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from typing import Any, Callable

import click
from click.core import ParameterSource

from vramplan.recipes import PRESETS, preset, preset_names
from vramplan.scenario import Scenario, field_meta

_MODEL = click.option("--model", "-m", required=True,
                      help="Registry name (Qwen3-14B), hub id, config.json path or model dir.")
_MODEL_OPT = click.option("--model", "-m", default=None,
                          help="Registry name (Qwen3-14B), hub id, config.json path or model dir (overrides "
                               "the --config's model).")
_CONFIG = [
    click.option("--config", "configs", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
                 help="The run's own config: axolotl / LLaMA-Factory / torchtune / Unsloth / TRL YAML, an ms-swift "
                      "script or args file, or TrainingArguments JSON + adapter_config.json (give both). Flags "
                      "given explicitly win."),
    click.option("--framework", "framework_name", default=None, metavar="NAME",
                 help="Force the framework of --config (ms-swift, axolotl, llamafactory, trl, hf, torchtune, "
                      "unsloth)."),
    click.option("--framework-version", default=None, metavar="X.Y.Z",
                 help="The framework's version (default: the installed one, else the newest vramplan knows)."),
    click.argument("command", nargs=-1, type=click.UNPROCESSED),
]
_PRESET = click.option("--preset", default=None, metavar="NAME",
                       help=f"The program of a framework version ({', '.join(preset_names()[len(PRESETS):])}: "
                            f"its table's era) or an older loop ({', '.join(PRESETS)}). Flags given explicitly "
                            "win.")


def _option(f: "dataclasses.Field[Any]", kind: Any, multi: bool) -> Callable[..., Any]:
    """The click option of Scenario field ``f`` of type ``kind``."""
    meta = field_meta(f)
    flag = "--" + f.name.replace("_", "-")
    names = [flag] + ([meta.short] if meta.short else [])
    kw: dict[str, Any] = dict(default=f.default, show_default=True, help=meta.help)
    if kind is bool:
        if f.default:
            names = [f"{flag}/--no-{flag[2:]}"]
        else:
            kw.update(is_flag=True)
    elif isinstance(kind, type) and issubclass(kind, Enum):
        kw.update(type=click.Choice([m.value for m in kind], case_sensitive=False), default=f.default.value)
    elif isinstance(f.default, tuple):
        kw.update(default=",".join(f.default))
    elif multi and meta.sweep:
        kw.update(type=str, default=str(f.default), help=f"{meta.help} Comma list sweeps.")
    else:
        kw.update(type=kind)
    return click.option(*names, **kw)


def scenario_options(multi: bool = False, config: bool = False,
                     model: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``--model``, every scenario flag and ``--preset``. With ``multi`` (profile
    sweeps), the fields marked ``sweep`` (--seq/--batch/--rank) take comma lists and arrive as strings.
    With ``config``: ``--config`` / ``--framework`` / ``--framework-version`` and a launch command after
    ``--`` (``pop_run`` reads them), ``--model`` then optional. ``model=False``: no ``--model`` (a command
    over many models)."""
    kinds = typing.get_type_hints(Scenario)
    head = [_MODEL_OPT if config else _MODEL] if model else []
    opts = head + [_option(f, kinds[f.name], multi) for f in dataclasses.fields(Scenario)]
    opts += [_PRESET] + (_CONFIG if config else [])

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


def pop_scenario(kwargs: dict[str, Any]) -> Scenario:
    """Remove the scenario flags from a command's kwargs and build the Scenario (errors exit 2).

    A ``--preset`` sets its fields, except those given explicitly on the command line."""
    values = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(Scenario)}
    name = kwargs.pop("preset")
    if name is not None:
        ctx = click.get_current_context()
        given = {k for k in values if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
        bundle = preset(name).resolve(values["dtype"], Scenario(quant=values["quant"]).quantized_4bit,
                                      full=values["full"])
        values.update({k: v for k, v in bundle.items() if k not in given})
    return Scenario(**values)


@dataclasses.dataclass
class Run:
    """What a command prices: the architecture, the scenario, and the framework reading when a
    ``--config`` (or launch command) was given."""

    arch: Any
    scenario: Scenario
    resolved: Any = None
    """``vramplan.frameworks.Resolved`` or None."""
    command_line: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Scenario fields given on the command line over the config (CLI spellings)."""

    def config_dict(self) -> dict[str, Any] | None:
        if self.resolved is None:
            return None
        return self.resolved.to_dict(self.command_line)


def pop_run(kwargs: dict[str, Any]) -> Run:
    """``pop_scenario`` plus the config: without ``--config`` the scenario of the flags; with it the
    framework's reading, every flag given explicitly winning (and recorded in ``command_line``)."""
    configs, command = list(kwargs.pop("configs", ()) or ()), list(kwargs.pop("command", ()) or ())
    fw_name, fw_version = kwargs.pop("framework_name", None), kwargs.pop("framework_version", None)
    from vramplan.arch import resolve

    if not configs and not command:
        if fw_name or fw_version:
            raise click.UsageError("--framework and --framework-version describe a --config")
        model = kwargs.pop("model")
        if model is None:
            raise click.UsageError("Missing option '--model' / '-m' (or give the run's --config).")
        scenario = pop_scenario(kwargs)
        return Run(resolve(model), scenario)
    from vramplan import frameworks

    loaded = frameworks.load(configs, command, fw_name, fw_version)
    if loaded.framework.name == "hf" and "training_args" not in loaded.source.data:
        raise click.UsageError("an adapter_config.json alone: give the TrainingArguments JSON too")
    ctx = click.get_current_context()
    model = kwargs.pop("model")
    given_model = model is not None
    model = model or loaded.model
    if not model:
        raise frameworks.ConfigError(f"the {loaded.framework.title} config names no model "
                                     f"({loaded.framework.model_key}): pass --model")
    arch = resolve(model)
    resolved = frameworks.resolve(loaded, arch)
    values = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(Scenario)}
    given = {k for k in values if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
    name = kwargs.pop("preset")
    fields = dict(resolved.fields)
    if name is not None:
        quant = values["quant"] if "quant" in given else fields.get("quant", values["quant"])
        full = values["full"] if "full" in given else fields.get("full", False)
        fields.update(preset(name).resolve(values.get("dtype") if "dtype" in given else fields.get("dtype", "bf16"),
                                           Scenario(quant=quant).quantized_4bit, full=full))
    chosen = dict(fields)
    chosen.update({k: values[k] for k in given})
    multiple = resolved.framework.seq_multiple
    if "seq" in given and multiple is not None:  # the command line's length, as the framework pads it
        m = multiple(loaded.source.data)
        padded = m * -(-int(chosen["seq"]) // m)
        if padded != chosen["seq"]:
            resolved.notes.append(f"{resolved.framework.title} pads each batch to a multiple of {m}: --seq "
                                  f"{chosen['seq']} runs at {padded} positions, priced so")
            chosen["seq"] = padded
    if chosen.get("full"):
        from vramplan.scenario import LORA_ONLY_FIELDS

        for k in LORA_ONLY_FIELDS:
            if k not in given:
                chosen.pop(k, None)
    if "dtype" in given and chosen.get("adapter_dtype") not in (None, "fp32", values["dtype"]):
        chosen["adapter_dtype"] = values["dtype"]
    line = {k: (v.value if hasattr(v, "value") else v) for k, v in values.items() if k in given}
    if given_model:
        line["model"] = model
    return Run(arch, Scenario(**chosen), resolved, line)
