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

from vramplan.recipes import PRESETS, preset
from vramplan.scenario import Scenario, field_meta

_MODEL = click.option("--model", "-m", required=True,
                      help="Registry name (Qwen3-14B), hub id, config.json path or model dir.")
_PRESET = click.option("--preset", default=None, metavar="NAME",
                       help=f"Fields of an older framework or loop: {', '.join(PRESETS)}. "
                            "Flags given explicitly win.")


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


def scenario_options(multi: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``--model``, every scenario flag and ``--preset``. With ``multi`` (profile
    sweeps), the fields marked ``sweep`` (--seq/--batch/--rank) take comma lists and arrive as strings."""
    kinds = typing.get_type_hints(Scenario)
    opts = [_MODEL] + [_option(f, kinds[f.name], multi) for f in dataclasses.fields(Scenario)] + [_PRESET]

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
